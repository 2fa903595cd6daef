//! Hostile probe guests against the KVM engine's devices (probes/hostile.c): malformed
//! virtio-blk requests get error statuses, the launcher neither panics nor grows.

mod probes;

use std::process::Command;

/// A hostile virtio-blk driver (probes/hostile.c): every malformed request gets an error status
/// or is dropped without a status, a live queue is not reconfigured, the run ends normally (0),
/// no panic, and the launcher's peak RSS after 4000 rounds of them stays within 512 KiB of that
/// after 200 rounds: it does not grow with the number of bad requests.
#[test]
fn kvm_hostile_block_requests_get_error_statuses_and_memory_stays_flat() {
    if !probes::kvm_available("kvm_hostile_block_requests_get_error_statuses") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // The baseline: the same hostile driver sending its eight requests 200 times.
    let once = probes::build(dir.path(), "hostile", &["REPEAT=200"]);
    let calm = dir.path().join("once.pod");
    probes::seal_pod(&calm, &once, b"x", &[0x5a; 8 * 512], "probe=1 quiet");
    assert_eq!(probes::launch_peak_rss(&calm, &cache).0, 0);
    let (code, baseline) = probes::launch_peak_rss(&calm, &cache);
    assert_eq!(code, 0);
    let kernel = probes::build(dir.path(), "hostile", &["REPEAT=4000"]);
    let pod = dir.path().join("hostile.pod");
    probes::seal_pod(&pod, &kernel, b"x", &[0x5a; 8 * 512], "probe=1 quiet");
    let out = Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
        .args(["--engine", "kvm", "--memory", "32"])
        .arg(&pod)
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // (case, status the guest must see): 255 = dropped without a status, 1 = IOERR, 0 = OK.
    for (case, status) in [
        (1, 255),
        (2, 1),
        (3, 1),
        (4, 0),
        (5, 255),
        (6, 1),
        (7, 0),
        (8, 1),
    ] {
        let line = format!("CASE {case} STATUS {status} USED 1");
        // The probe prints on the console: the launcher's stderr.
        assert!(stderr.contains(&line), "want {line:?} in {stderr}");
    }
    let (code, hostile) = probes::launch_peak_rss(&pod, &cache);
    assert_eq!(code, 0);
    eprintln!("peak RSS: 200 rounds {baseline} KiB, 4000 rounds {hostile} KiB");
    assert!(hostile <= baseline + 512, "{hostile} vs {baseline} KiB");
}

/// Seals probe `name` built with `defines` into `dir/<file>.pod`.
fn probe_pod(
    dir: &std::path::Path,
    name: &str,
    defines: &[&str],
    file: &str,
) -> std::path::PathBuf {
    let kernel = probes::build(dir, name, defines);
    let pod = dir.join(format!("{file}.pod"));
    probes::seal_pod(&pod, &kernel, b"x", &[0x5a; 8 * 512], "probe=1 quiet");
    pod
}

/// Runs `pod` on the KVM engine with `extra` options; (exit code, stderr).
fn run(dir: &std::path::Path, pod: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
        .args(["--engine", "kvm", "--memory", "32"])
        .args(extra)
        .arg(pod)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- exit {:?}\n{stderr}", out.status.code());
    (
        out.status.code().expect("hyperlaunch killed by a signal"),
        stderr,
    )
}

/// A guest flooding the control channel (probes/ctlflood.c) with one line that never ends, with
/// valid-looking unknown lines, or with garbage: each run ends by itself, well inside its
/// `--timeout`, with exit 121 and one `the guest broke the control protocol` line; at most
/// `MAX_BAD_LINES` notices before it; no panic; and the launcher's peak RSS stays within
/// 512 KiB of a calm probe's.
#[test]
fn kvm_control_channel_floods_end_the_run_with_121_and_memory_stays_flat() {
    if !probes::kvm_available("kvm_control_channel_floods_end_the_run_with_121") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let calm = probe_pod(dir.path(), "hello", &["EXIT_CODE=0"], "calm");
    assert_eq!(probes::launch_peak_rss(&calm, &cache).0, 0);
    let (_, baseline) = probes::launch_peak_rss(&calm, &cache);
    for (mode, what, reason) in [
        (1, "overlong", "control line longer than 64 bytes"),
        (
            2,
            "unknown",
            "more than 16 refused control lines (the last: unknown control line \"Q 16\")",
        ),
        (3, "garbage", "more than 16 refused control lines"),
    ] {
        let pod = probe_pod(dir.path(), "ctlflood", &[&format!("MODE={mode}")], what);
        let started = std::time::Instant::now();
        let (code, stderr) = run(dir.path(), &pod, &["--timeout", "30"]);
        let took = started.elapsed();
        assert_eq!(code, pod::protocol::EXIT_PROTOCOL, "{what}: {stderr}");
        assert_eq!(code, 121);
        assert!(
            stderr.contains("flooding the control channel"),
            "{what}: {stderr}"
        );
        let last = stderr.lines().last().unwrap_or_default();
        let want = format!("hyperlaunch: the guest broke the control protocol: {reason}");
        assert!(last.starts_with(&want), "{what}: {last:?}");
        assert!(last.ends_with("; VM stopped"), "{what}: {last:?}");
        let notes = stderr.matches("hyperlaunch: ignoring control line").count();
        let want = if mode == 1 { 0 } else { 16 };
        assert_eq!(notes, want, "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        let (code, peak) = probes::launch_peak_rss(&pod, &cache);
        assert_eq!(code, 121, "{what}");
        eprintln!("{what}: ended in {took:?}; peak RSS {peak} KiB vs calm {baseline} KiB");
        assert!(peak <= baseline + 512, "{what}: {peak} vs {baseline} KiB");
    }
}
