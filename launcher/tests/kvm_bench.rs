//! Benchmark of the KVM engine (ignored by default; run through `bench/launcher.sh`):
//! exec → first guest instruction with a probe guest, the launcher's RSS beyond guest memory.
//! Prints results; asserts nothing about speed.

mod probes;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const RUNS: usize = 120;
const MEMORY_MIB: u64 = 128;

fn monotonic_ns() -> u128 {
    // SAFETY: a zeroed timespec is valid and clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn field(stderr: &str, name: &str) -> Option<f64> {
    stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("hyperlaunch timing: ")?;
        let rest = rest.strip_prefix(name)?;
        rest.trim().strip_suffix(" ms")?.trim().parse().ok()
    })
}

fn exec_ns(stderr: &str) -> u128 {
    stderr
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("hyperlaunch timing: engine ")?;
            let (_, clock) = rest.split_once(", exec at CLOCK_MONOTONIC ")?;
            clock.strip_suffix(" ns")?.parse().ok()
        })
        .expect("timing output has the exec clock")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name:<34} n={:<4} p50 {:8.3} ms  p90 {:8.3} ms  p99 {:8.3} ms  max {:8.3} ms  min {:8.3} ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
        v[v.len() - 1],
        v[0]
    );
}

fn hyperlaunch() -> Command {
    let bin =
        std::env::var_os("HYPERLAUNCH").unwrap_or_else(|| env!("CARGO_BIN_EXE_hyperlaunch").into());
    let mut c = Command::new(bin);
    // The VMM alone: the default network (passt) is measured apart (docs/BENCHMARKS.md).
    c.args([
        "--engine",
        "kvm",
        "--network",
        "none",
        "--memory",
        &MEMORY_MIB.to_string(),
    ]);
    c
}

/// RSS of a running launcher, in KiB: (all mappings, guest memory mapping, pod mapping).
fn rss_breakdown(pid: u32, pod: &Path) -> (u64, u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut total, mut guest, mut podmap) = (0, 0, 0);
    let mut size_kb = 0;
    let mut is_pod = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            is_pod = line.ends_with(&*pod.to_string_lossy());
        } else if let Some(v) = line.strip_prefix("Size:") {
            size_kb = v.trim().trim_end_matches(" kB").trim().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let rss: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap();
            total += rss;
            if size_kb == MEMORY_MIB * 1024 {
                guest += rss;
            }
            if is_pod {
                podmap += rss;
            }
        }
    }
    (total, guest, podmap)
}

#[test]
#[ignore = "benchmark: run with bench/launcher.sh"]
fn kvm_bench_exec_to_first_guest_instruction_and_rss() {
    if !probes::kvm_available("kvm_bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = vec![0u8; 4096];
    let hello = dir.path().join("hello.pod");
    probes::seal_pod(
        &hello,
        &probes::build(dir.path(), "hello", &["EXIT_CODE=0"]),
        b"initramfs",
        &rootfs,
        "quiet",
    );
    if let Some(keep) = std::env::var_os("HYPERPOD_BENCH_KEEP") {
        std::fs::copy(&hello, Path::new(&keep).join("hello.pod")).unwrap();
    }
    let cache = dir.path().join("cache");
    // Warm the verified-digest cache and the page cache.
    for _ in 0..3 {
        let s = hyperlaunch()
            .arg(&hello)
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .unwrap();
        assert_eq!(s.status.code(), Some(0));
    }
    let mut first_exit = Vec::new();
    let mut to_main = Vec::new();
    let mut pod_opened = Vec::new();
    let mut vm_created = Vec::new();
    let mut kvm_run = Vec::new();
    let mut init = Vec::new();
    let mut whole = Vec::new();
    for _ in 0..RUNS {
        let t0 = monotonic_ns();
        let out = hyperlaunch()
            .arg("--timing")
            .arg(&hello)
            .env("XDG_CACHE_HOME", &cache)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let t1 = monotonic_ns();
        assert_eq!(out.status.code(), Some(0));
        let err = String::from_utf8_lossy(&out.stderr);
        let main_ms = (exec_ns(&err) - t0) as f64 / 1e6;
        to_main.push(main_ms);
        first_exit.push(main_ms + field(&err, "first-guest-exit").unwrap());
        pod_opened.push(field(&err, "pod-opened").unwrap());
        vm_created.push(field(&err, "vm-created").unwrap());
        kvm_run.push(field(&err, "first-kvm-run").unwrap());
        init.push(main_ms + field(&err, "init-entered").unwrap());
        whole.push((t1 - t0) as f64 / 1e6);
    }
    println!("hyperlaunch KVM engine, probe guest, {MEMORY_MIB} MiB, 1 vCPU, {RUNS} runs:");
    summary("spawn -> main()", to_main);
    summary("main() -> pod opened", pod_opened);
    summary("main() -> VM created", vm_created);
    summary("main() -> first KVM_RUN", kvm_run);
    summary("spawn -> first guest instruction", first_exit);
    summary("spawn -> guest \"T init\" line", init);
    summary("spawn -> launcher exit (whole run)", whole);

    // RSS while a guest runs (the spin probe never exits; --timeout ends it).
    let spin = dir.path().join("spin.pod");
    probes::seal_pod(
        &spin,
        &probes::build(dir.path(), "spin", &[]),
        b"initramfs",
        &rootfs,
        "quiet",
    );
    if let Some(keep) = std::env::var_os("HYPERPOD_BENCH_KEEP") {
        std::fs::copy(&spin, Path::new(&keep).join("spin.pod")).unwrap();
    }
    let mut child = hyperlaunch()
        .args(["--timeout", "3"])
        .arg(&spin)
        .env("XDG_CACHE_HOME", &cache)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (total, guest, podmap) = rss_breakdown(child.id(), &spin);
    let _ = child.wait();
    println!(
        "launcher RSS while running: total {total} KiB, guest memory {guest} KiB, \
         beyond guest memory {} KiB (pod file mapping: {podmap} KiB; it is unmapped once the \
         kernel and initramfs are loaded)",
        total - guest
    );
}

/// The same launcher costs with a real pod (`HYPERPOD_BENCH_POD`, bench/launcher.sh builds the
/// demo pod): its 15 MB vmlinux and its initramfs go into guest memory before the first KVM_RUN.
/// This host's KVM cannot run Linux far (see kvm_linux_boot.rs), so each launch ends at
/// `--timeout`; the marks up to the first KVM_RUN are what is measured.
#[test]
#[ignore = "benchmark: run with bench/launcher.sh"]
fn kvm_bench_real_pod_exec_to_first_kvm_run() {
    if !probes::kvm_available("kvm_bench_real_pod") {
        return;
    }
    let Some(pod) = std::env::var_os("HYPERPOD_BENCH_POD") else {
        hyperpod_tests::skip::skipped(
            "kvm_bench_real_pod",
            "HYPERPOD_BENCH_POD is not set (bench/launcher.sh sets it)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let launch = |timing: bool| {
        let mut c = hyperlaunch();
        if timing {
            c.arg("--timing");
        }
        c.args(["--timeout", "0.3"])
            .arg(&pod)
            .env("XDG_CACHE_HOME", &cache)
            .stdout(Stdio::null())
            .output()
            .unwrap()
    };
    // Warm the verified-digest and CPUID caches and the page cache.
    for _ in 0..3 {
        launch(false);
    }
    let (mut to_main, mut opened, mut created, mut loaded, mut first_run, mut spawn_run) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    // Launches that never reached the guest within `--timeout` (seen on an overloaded host:
    // a crew thread not scheduled in time, docs/BENCHMARKS.md) are counted and shown, not
    // averaged in.
    let mut missed = Vec::new();
    for _ in 0..RUNS {
        let t0 = monotonic_ns();
        let out = launch(true);
        let err = String::from_utf8_lossy(&out.stderr);
        let Some(run) = field(&err, "first-kvm-run") else {
            let why = err.lines().find(|l| l.starts_with("hyperlaunch: "));
            missed.push(why.unwrap_or("no launcher line").to_string());
            continue;
        };
        let main_ms = (exec_ns(&err) - t0) as f64 / 1e6;
        to_main.push(main_ms);
        opened.push(field(&err, "pod-opened").unwrap());
        created.push(field(&err, "vm-created").unwrap());
        loaded.push(field(&err, "kernel-loaded").unwrap());
        first_run.push(run);
        spawn_run.push(main_ms + run);
    }
    assert!(
        !spawn_run.is_empty(),
        "no launch reached the guest within --timeout: {missed:?}"
    );
    let size = std::fs::metadata(&pod).unwrap().len();
    println!(
        "hyperlaunch KVM engine, real pod ({} MB), {MEMORY_MIB} MiB, 1 vCPU, {RUNS} runs:",
        size / 1_000_000
    );
    summary("real pod: spawn -> main()", to_main);
    summary("real pod: main() -> pod opened", opened);
    summary("real pod: main() -> VM created", created);
    summary("real pod: main() -> kernel loaded", loaded);
    summary("real pod: main() -> first KVM_RUN", first_run);
    summary("real pod: spawn -> first KVM_RUN", spawn_run);
    println!(
        "real pod: launches without a first KVM_RUN: {} of {RUNS} {missed:?}",
        missed.len()
    );
}
