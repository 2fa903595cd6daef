//! End to end under QEMU (`--engine qemu`): real pods (the project's kernel, the static init, a
//! busybox ext4 rootfs) booted by the `hyperlaunch` binary. Each boot costs a few seconds under
//! TCG. Missing prerequisites (kernel, qemu, busybox, mkfs.ext4) fail these tests loudly.

mod qemu_fixture;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pod::spec::RunSpec;
use qemu_fixture::{Running, build_pod, launch, launch_cmd, shell_spec, unbootable_pod};

/// Longest a boot plus a short app may take under TCG on a loaded 2-core machine.
const BOOT_LIMIT: Duration = Duration::from_secs(90);

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn prints_the_apps_output_and_exits_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(
        dir.path(),
        &shell_spec("echo hello from the pod; echo and its stderr >&2; exit 7"),
        true,
    );
    let out = launch(&pod, &["--timing"], &[]);
    assert_eq!(out.status.code(), Some(7));
    let text = stdout(&out);
    assert!(text.contains("hello from the pod"), "{text}");
    assert!(text.contains("and its stderr"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    let timing = err
        .lines()
        .find(|l| l.contains("timing"))
        .unwrap_or_else(|| panic!("no timing line in {err}"));
    assert!(timing.contains("init="), "{timing}");
    assert!(!timing.contains("init=-"), "init mark missing: {timing}");
    assert!(!timing.contains("exec=-"), "exec mark missing: {timing}");
}

#[test]
fn launch_overrides_reach_the_app() {
    let dir = tempfile::tempdir().unwrap();
    // Without the overrides this pod exits 1 at once.
    let spec = RunSpec {
        entrypoint: vec!["/bin/false".into()],
        env: vec!["PATH=/bin".into(), "GREETING=image".into()],
        ..RunSpec::default()
    };
    let pod = build_pod(dir.path(), &spec, true);
    let out = launch(
        &pod,
        &[
            "--entrypoint",
            "/bin/sh",
            "-e",
            "GREETING=hi",
            "--workdir",
            "/tmp",
            "--user",
            "app",
            "--verify",
        ],
        &[
            "-c",
            "echo \"got $GREETING $(pwd) $(id -u):$(id -g)\"; exit 5",
        ],
    );
    assert_eq!(out.status.code(), Some(5));
    let text = stdout(&out);
    assert!(text.contains("got hi /tmp 1000:1000"), "{text}");
}

#[test]
fn ctrl_c_reaches_the_app_as_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(
        dir.path(),
        &shell_spec("trap 'echo caught INT; exit 43' INT; echo ready; while :; do sleep 0.2; done"),
        true,
    );
    let mut run = Running::start(&pod, &["--grace", "30"]);
    run.wait_for("ready", BOOT_LIMIT);
    run.signal(libc::SIGINT);
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(43));
    assert!(lines.iter().any(|l| l.contains("caught INT")), "{lines:?}");
}

#[test]
fn sigterm_reaches_the_app_as_the_pods_stop_signal() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = shell_spec(
        "trap 'echo caught USR1; exit 44' USR1; trap 'echo caught TERM; exit 45' TERM; \
         echo ready; while :; do sleep 0.2; done",
    );
    spec.stop_signal = "SIGUSR1".into();
    let pod = build_pod(dir.path(), &spec, true);
    let mut run = Running::start(&pod, &["--grace", "30"]);
    run.wait_for("ready", BOOT_LIMIT);
    run.signal(libc::SIGTERM);
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(44));
    assert!(lines.iter().any(|l| l.contains("caught USR1")), "{lines:?}");
}

#[test]
fn an_app_that_ignores_the_stop_signal_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(
        dir.path(),
        &shell_spec("trap '' TERM; echo ready; while :; do sleep 0.2; done"),
        true,
    );
    let mut run = Running::start(&pod, &["--grace", "2"]);
    run.wait_for("ready", BOOT_LIMIT);
    let sent = Instant::now();
    run.signal(libc::SIGTERM);
    let (code, _) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(137));
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "killed before the grace period"
    );
}

#[test]
fn timeout_stops_the_vm_with_124() {
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(dir.path(), &shell_spec("echo ready; sleep 1000"), true);
    let started = Instant::now();
    let out = launch(&pod, &["--timeout", "20"], &[]);
    assert_eq!(out.status.code(), Some(124));
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timeout"),
        "no timeout message"
    );
}

#[test]
fn a_guest_that_never_reports_ends_with_122() {
    let dir = tempfile::tempdir().unwrap();
    // No /init: the kernel panics, and with panic=-1 under -no-reboot QEMU exits 0.
    let pod = build_pod(dir.path(), &shell_spec("exit 0"), false);
    let out = launch(&pod, &[], &[]);
    assert_eq!(out.status.code(), Some(122));
}

#[test]
fn extra_disks_follow_the_rootfs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.img");
    let two = dir.path().join("two.img");
    for (p, tag) in [(&one, "DISK-ONE"), (&two, "DISK-TWO")] {
        let mut data = tag.as_bytes().to_vec();
        data.resize(64 * 1024, 0);
        std::fs::write(p, data).unwrap();
    }
    let pod = build_pod(
        dir.path(),
        &shell_spec(
            "echo \"b=$(head -c 8 /dev/vdb) c=$(head -c 8 /dev/vdc)\"; \
             if (echo x > /dev/vdc) 2>/dev/null; then echo c-writable; else echo c-read-only; fi; exit 0",
        ),
        true,
    );
    let two_ro = format!("{}:ro", two.display());
    let out = launch(
        &pod,
        &["--disk", one.to_str().unwrap(), "--disk", &two_ro],
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("b=DISK-ONE c=DISK-TWO"), "{text}");
    assert!(text.contains("c-read-only"), "{text}");
}

#[test]
fn stdin_reaches_the_app_with_i() {
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(
        dir.path(),
        &shell_spec("echo ready; read line; echo \"got:$line\"; exit 0"),
        true,
    );
    let mut run = Running::start_with_stdin(&pod, &["-i"], Stdio::piped());
    // Input sent before the guest opened its console would be dropped with the UART's FIFO.
    run.wait_for("ready", BOOT_LIMIT);
    let mut stdin = run.child.stdin.take().unwrap();
    stdin.write_all(b"hello guest\n").unwrap();
    stdin.flush().unwrap();
    let (code, lines) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    assert!(
        lines.iter().any(|l| l.contains("got:hello guest")),
        "{lines:?}"
    );
}

#[test]
fn missing_qemu_is_a_launcher_error_that_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let pod = unbootable_pod(dir.path());
    let empty = tempfile::tempdir().unwrap();
    let out = launch_cmd(&pod, &[], &[])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(
        err.contains("qemu-system-x86_64 not found: apt-get install qemu-system-x86"),
        "{err}"
    );
}

#[test]
fn qemu_refusing_to_start_is_a_launcher_error_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pod = unbootable_pod(dir.path());
    // A directory as a disk: QEMU refuses it before the guest runs.
    let out = launch(&pod, &["--disk", dir.path().to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("qemu-system-x86_64 failed to start"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line on stderr: {err}");
}

#[test]
fn a_stop_signal_sent_during_boot_is_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(dir.path(), &shell_spec("exec sleep 1000"), true);
    let run = Running::start(&pod, &["--grace", "60"]);
    // Well before init runs (the boot takes seconds under TCG), after the launcher's start.
    std::thread::sleep(Duration::from_millis(500));
    run.signal(libc::SIGTERM);
    let (code, _) = run.finish(BOOT_LIMIT);
    // The app died of SIGTERM (128+15), not of the grace-period kill (137).
    assert_eq!(code, Some(143));
}

/// Flips one byte in the middle of `section` of the pod at `path`.
fn corrupt(path: &std::path::Path, section: pod::Section) {
    use std::os::unix::fs::FileExt;
    let loc = pod::Pod::open(path).unwrap().section(section);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = loc.offset + loc.len / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
}

#[test]
fn a_tampered_kernel_or_rootfs_is_refused_before_boot() {
    let dir = tempfile::tempdir().unwrap();
    let pod = unbootable_pod(dir.path());
    corrupt(&pod, pod::Section::Kernel);
    let out = launch(&pod, &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("kernel: sha256 is"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let pod = unbootable_pod(dir.path());
    corrupt(&pod, pod::Section::Rootfs);
    let out = launch(&pod, &["--verify"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("rootfs.ext4: sha256 is"), "{err}");
}
