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
