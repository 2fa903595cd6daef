//! Load on the QEMU engine: 20 `hyperlaunch --engine qemu` of the same pod at once, each echoing
//! its own token. Every one exits 0 with its own token (and no other's); afterwards no QEMU of
//! this pod is running, no descriptor is left in the parent, nothing is left in the launches'
//! TMPDIR, and the pod file is byte-identical.

mod qemu_fixture;

use pod::spec::RunSpec;
use qemu_fixture::{build_pod, launch_cmd};

const PARALLEL: usize = 20;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

#[test]
fn twenty_parallel_qemu_launches_each_print_their_own_token() {
    let dir = tempfile::tempdir().unwrap();
    let spec = RunSpec {
        entrypoint: vec!["/bin/sh".into(), "-c".into(), "echo \"token:$0\"".into()],
        env: vec!["PATH=/bin".into()],
        ..RunSpec::default()
    };
    let pod = build_pod(dir.path(), &spec, true);
    let before = std::fs::read(&pod).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let fds_before = open_fds();
    let started = std::time::Instant::now();
    let children: Vec<_> = (0..PARALLEL)
        .map(|i| {
            let token = format!("t{i:02}x{}", std::process::id());
            let child = launch_cmd(&pod, &[], &[&token])
                .env("TMPDIR", &tmp)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (token, child)
        })
        .collect();
    let tokens: Vec<String> = children.iter().map(|(t, _)| t.clone()).collect();
    for (token, child) in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{token}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("token:{token}")),
            "{token}: {stdout}"
        );
        for other in tokens.iter().filter(|t| *t != &token) {
            assert!(
                !stdout.contains(other.as_str()),
                "{token} got {other}'s output"
            );
        }
    }
    eprintln!(
        "{PARALLEL} parallel QEMU launches in {:?}",
        started.elapsed()
    );
    assert_eq!(open_fds(), fds_before, "descriptors left in the parent");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    let running = processes_mentioning(pod.to_str().unwrap());
    assert!(running.is_empty(), "still running: {running:?}");
    assert!(std::fs::read(&pod).unwrap() == before, "the pod changed");
}
