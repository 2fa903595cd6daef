//! hyperpod-init: PID 1 of the guest.
//!
//! `main.rs` is the list of steps; each module here is one concern. The parsers (spec, overrides,
//! kernel command line, passwd/group, control lines) and Docker's run rules are pure functions.

pub mod cmdline;
pub mod control;
pub mod exit;
pub mod guest;
pub mod mounts;
pub mod net;
pub mod plan;
pub mod reap;
pub mod spawn;
pub mod spec;
pub mod stdio;
pub mod user;
pub mod verity;

use thiserror::Error;

/// Docker's codes for a setup failure, a command that cannot be executed, and one not found.
pub use pod::protocol::{
    STATUS_NOT_EXECUTABLE as EXIT_NOT_EXECUTABLE, STATUS_NOT_FOUND as EXIT_NOT_FOUND,
    STATUS_SETUP as EXIT_SETUP,
};

/// Why init could not run the app.
#[derive(Debug, Error)]
pub enum InitError {
    #[error("kernel command line")]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error("mounts")]
    Mount(#[from] mounts::MountError),
    #[error("spec")]
    Spec(#[from] spec::SpecError),
    #[error("run spec")]
    Plan(#[from] plan::PlanError),
    #[error("guest setup")]
    Guest(#[from] guest::GuestError),
    #[error("network")]
    Net(#[from] net::NetError),
    #[error("user")]
    User(#[from] user::UserError),
    #[error("app")]
    Spawn(#[from] spawn::SpawnError),
    #[error("app stdio")]
    Stdio(#[from] stdio::StdioError),
    #[error("supervision")]
    Reap(#[from] reap::ReapError),
}

impl InitError {
    /// The pod's exit status for this failure (Docker's 125/126/127).
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Spawn(e) => e.exit_code(),
            _ => EXIT_SETUP,
        }
    }
}

/// One line naming the error and each of its causes: `a: b: c`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// Current `CLOCK_MONOTONIC` time in microseconds.
pub fn monotonic_us() -> u64 {
    clock_us(libc::CLOCK_MONOTONIC)
}

/// CPU time the calling thread has used, in microseconds (user and kernel, `sum_exec_runtime`):
/// the part of a step that was work rather than waiting (for the disk, say).
pub fn thread_cpu_us() -> u64 {
    clock_us(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks used here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// How long each of init's steps took, for `hyperpod.debug`: on the monotonic clock and in
/// init's own CPU time.
#[derive(Debug)]
pub struct Steps {
    last: u64,
    last_cpu: u64,
    done: Vec<(&'static str, u64, u64)>,
}

impl Steps {
    /// Starts counting at `t0` (microseconds, [`monotonic_us`]) and `cpu0` ([`thread_cpu_us`]).
    pub fn new(t0: u64, cpu0: u64) -> Steps {
        Steps {
            last: t0,
            last_cpu: cpu0,
            done: Vec::new(),
        }
    }

    /// Records that step `name` ended at `now`, with `cpu` used by then.
    pub fn mark_at(&mut self, name: &'static str, now: u64, cpu: u64) {
        self.done.push((
            name,
            now.saturating_sub(self.last),
            cpu.saturating_sub(self.last_cpu),
        ));
        self.last = now;
        self.last_cpu = cpu;
    }

    /// Records that step `name` ended now.
    pub fn mark(&mut self, name: &'static str) {
        self.mark_at(name, monotonic_us(), thread_cpu_us());
    }

    /// `steps: a=1us b=2us`.
    pub fn summary(&self) -> String {
        self.line("steps:", |(_, us, _)| *us)
    }

    /// `steps-cpu: a=1us b=1us`: the CPU time init used in each step.
    pub fn cpu_summary(&self) -> String {
        self.line("steps-cpu:", |(_, _, cpu)| *cpu)
    }

    fn line(&self, head: &str, value: impl Fn(&(&'static str, u64, u64)) -> u64) -> String {
        let mut out = String::from(head);
        for step in &self.done {
            out.push_str(&format!(" {}={}us", step.0, value(step)));
        }
        out
    }
}

/// Turns a `-1` return into the current `errno` as an [`std::io::Error`].
pub(crate) fn cvt(ret: libc::c_int) -> std::io::Result<libc::c_int> {
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_joins_causes_and_codes_follow_docker() {
        let err = InitError::Spec(spec::SpecError::Missing(pod::spec::SPEC_PATH.into()));
        assert_eq!(error_chain(&err), "spec: missing /hyperpod/spec.json");
        assert_eq!(err.exit_code(), 125);
        let err = InitError::Spawn(spawn::SpawnError::NotFound("app".into()));
        assert_eq!(err.exit_code(), 127);
    }

    #[test]
    fn steps_summarise_durations() {
        let mut steps = Steps::new(100, 10);
        steps.mark_at("mounts", 150, 40);
        steps.mark_at("root", 400, 120);
        assert_eq!(steps.summary(), "steps: mounts=50us root=250us");
        assert_eq!(steps.cpu_summary(), "steps-cpu: mounts=30us root=80us");
    }
}
