//! `--timing`: host `CLOCK_MONOTONIC` marks of one launch, reported the same way by both engines
//! (one `hyperlaunch timing: <phase> <ms> ms` line per phase reached, milliseconds since exec).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::supervisor::Report;

/// Host `CLOCK_MONOTONIC` marks of one launch (`Instant` is CLOCK_MONOTONIC on Linux).
#[derive(Debug)]
pub struct Marks {
    pub exec: Instant,
    /// Which engine ran the pod (`kvm`, `qemu/tcg`, `qemu/kvm`).
    pub engine: &'static str,
    pub pod_opened: Option<Instant>,
    pub vm_created: Option<Instant>,
    pub kernel_loaded: Option<Instant>,
    /// The KVM engine: the network backend was ready (passt had bound the published ports).
    pub network_ready: Option<Instant>,
    /// The QEMU engine: QEMU was spawned.
    pub qemu_spawned: Option<Instant>,
    pub first_run: Arc<OnceLock<Instant>>,
    /// First exit of vCPU 0 back to the VMM: the guest has run its first instructions.
    pub first_exit: Arc<OnceLock<Instant>>,
    pub init: Option<Instant>,
    pub app_exec: Option<Instant>,
    pub status: Option<Instant>,
    pub exit: Option<Instant>,
    /// The published ports as `docker port` prints them (`80/tcp -> 0.0.0.0:8080`).
    pub published: Vec<String>,
}

impl Marks {
    pub fn new(exec: Instant, engine: &'static str) -> Marks {
        Marks {
            exec,
            engine,
            pod_opened: None,
            vm_created: None,
            kernel_loaded: None,
            network_ready: None,
            qemu_spawned: None,
            first_run: Arc::default(),
            first_exit: Arc::default(),
            init: None,
            app_exec: None,
            status: None,
            exit: None,
            published: Vec::new(),
        }
    }

    /// Takes the guest's marks from the supervisor's report.
    pub fn add_report(&mut self, r: &Report) {
        self.init = r.init;
        self.app_exec = r.app_exec;
        self.status = r.status_at;
        self.exit = Some(r.ended_at);
    }

    /// The report: a header line, then one `name ms` line per phase reached.
    pub fn report(&self) -> String {
        let phases = [
            ("pod-opened", self.pod_opened),
            ("vm-created", self.vm_created),
            ("kernel-loaded", self.kernel_loaded),
            ("network-ready", self.network_ready),
            ("qemu-spawned", self.qemu_spawned),
            ("first-kvm-run", self.first_run.get().copied()),
            ("first-guest-exit", self.first_exit.get().copied()),
            ("init-entered", self.init),
            ("app-exec", self.app_exec),
            ("status", self.status),
            ("exit", self.exit),
        ];
        let mut out = format!(
            "hyperlaunch timing: engine {}, exec at CLOCK_MONOTONIC {} ns\n",
            self.engine,
            monotonic_ns_of(self.exec)
        );
        for (name, t) in phases {
            if let Some(t) = t {
                let ms = t.saturating_duration_since(self.exec).as_secs_f64() * 1e3;
                out.push_str(&format!("hyperlaunch timing: {name:<17} {ms:9.3} ms\n"));
            }
        }
        for p in &self.published {
            out.push_str(&format!("hyperlaunch timing: port {p}\n"));
        }
        out
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC` (the clock behind `Instant`) at `t`, for comparing marks
/// across processes.
pub fn monotonic_ns_of(t: Instant) -> u128 {
    // SAFETY: a zeroed timespec is valid; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128;
    now.saturating_sub(t.elapsed().as_nanos())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timing_report_lists_reached_phases_in_order() {
        let exec = Instant::now();
        let mut m = Marks::new(exec, "kvm");
        m.pod_opened = Some(exec + Duration::from_millis(1));
        m.exit = Some(exec + Duration::from_millis(30));
        let r = m.report();
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("engine kvm") && lines[0].contains("CLOCK_MONOTONIC"));
        assert!(lines[1].contains("pod-opened") && lines[1].contains("1.000 ms"));
        assert!(lines[2].contains("exit") && lines[2].contains("30.000 ms"));
    }
}
