//! Pod start time, exec -> app running, for several VMMs booting the same pod (ignored by
//! default; run through `bench/boot-kvm.sh`, which builds the pod and the command lines on a host
//! where `hyperlaunch doctor` exits 0). Prints the seed's table: min/avg/max, p50/p99.
//!
//! `HYPERPOD_COMPARE` names a file with one VMM per line: its name, then its argv, all separated
//! by tabs. Each launch is timed from just before the spawn to the moment the app's marker
//! (`HYPERPOD_COMPARE_MARKER`, printed by the app as its first action) reaches the VMM's stdout;
//! the VM is then left to end by itself (killed after 20 s). `HYPERPOD_COMPARE_RUNS` (default and
//! minimum 100) launches per VMM, after 3 untimed warm-up launches.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// Time from spawn to `marker` on stdout, in ms; `None` if the VMM ended without printing it.
fn launch(argv: &[String], marker: &[u8]) -> Option<f64> {
    let start = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", argv[0]));
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut took = None;
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if took.is_none() && seen.windows(marker.len()).any(|w| w == marker) {
            took = Some(start.elapsed().as_secs_f64() * 1e3);
            break;
        }
    }
    // Let the VM finish (the app exits at once); the rest of its output is drained on a thread
    // so it never blocks on a full pipe, and a VMM that hangs is killed, by its handle.
    let drain = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = drain.join();
    took
}

#[test]
#[ignore = "benchmark: run with bench/boot-kvm.sh on a real KVM host"]
fn pod_start_exec_to_app_running_per_vmm() {
    let Some(spec) = std::env::var_os("HYPERPOD_COMPARE") else {
        hyperpod_tests::skip::skipped(
            "pod_start_exec_to_app_running_per_vmm",
            "HYPERPOD_COMPARE is not set",
        );
        return;
    };
    let marker = std::env::var("HYPERPOD_COMPARE_MARKER").expect("HYPERPOD_COMPARE_MARKER");
    let runs: usize = std::env::var("HYPERPOD_COMPARE_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100)
        .max(100);
    let text = std::fs::read_to_string(&spec).unwrap();
    println!(
        "{:<14} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9}  (exec -> app running, ms)",
        "VMM", "n", "min", "avg", "max", "p50", "p99"
    );
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split('\t').map(String::from);
        let name = parts.next().unwrap();
        let argv: Vec<String> = parts.collect();
        assert!(!argv.is_empty(), "{name}: no command");
        for _ in 0..3 {
            launch(&argv, marker.as_bytes());
        }
        let mut v = Vec::with_capacity(runs);
        let mut missed = 0;
        for _ in 0..runs {
            match launch(&argv, marker.as_bytes()) {
                Some(ms) => v.push(ms),
                None => missed += 1,
            }
        }
        assert!(
            !v.is_empty(),
            "{name}: the app's marker never appeared ({missed} launches)"
        );
        v.sort_by(f64::total_cmp);
        let avg = v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "{name:<14} {:>5} {:>9.2} {avg:>9.2} {:>9.2} {:>9.2} {:>9.2}{}",
            v.len(),
            v[0],
            v[v.len() - 1],
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            if missed > 0 {
                format!("  ({missed} launches without the marker)")
            } else {
                String::new()
            }
        );
    }
}
