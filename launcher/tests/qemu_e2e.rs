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
    // stdout and stderr arrive apart, byte for byte, as with `docker run`.
    assert_eq!(stdout(&out), "hello from the pod\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("and its stderr\n"), "{err}");
    assert!(err.contains("hyperlaunch timing: engine qemu/"), "{err}");
    for phase in [
        "pod-opened",
        "qemu-spawned",
        "init-entered",
        "app-exec",
        "status",
        "exit",
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("hyperlaunch timing: ") && l.contains(phase)),
            "no {phase} mark in {err}"
        );
    }
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

/// Runs the pod with `input` piped to the launcher's stdin (all of it written before the guest
/// even boots, then closed).
fn launch_with_input(
    pod: &std::path::Path,
    opts: &[&str],
    args: &[&str],
    input: &[u8],
) -> std::process::Output {
    let mut child = launch_cmd(pod, opts, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    eprintln!("--- stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn piped_stdin_arrives_byte_exact_and_ends_with_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    // The arguments replace the script run by `sh -c`.
    let pod = build_pod(dir.path(), &shell_spec("exit 3"), true);
    // `cat` ends only if end of file reaches it; nothing is echoed or translated.
    let out = launch_with_input(
        &pod,
        &["-i", "--timeout", "80"],
        &["cat"],
        b"line1\nline2\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "line1\nline2\n");
    // Binary bytes (every value but the newline: CR, NUL and the terminal's control characters
    // among them) pass unchanged; `head -n 2` takes two lines of a longer input.
    let line: Vec<u8> = (0..=255u8).filter(|&b| b != b'\n').collect();
    let mut input = line.clone();
    input.extend_from_slice(b"\nsecond\nthird\n");
    let out = launch_with_input(&pod, &["-i", "--timeout", "80"], &["head -n 2"], &input);
    assert_eq!(out.status.code(), Some(0));
    let mut want = line;
    want.extend_from_slice(b"\nsecond\n");
    assert_eq!(out.stdout, want);
}

#[test]
fn without_i_and_t_the_app_has_pipes_and_an_empty_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(
        dir.path(),
        &shell_spec(
            "for fd in 0 1 2; do if [ -t $fd ]; then echo \"$fd:tty\"; else echo \"$fd:no-tty\"; fi; done; \
             cat; echo \"cat:$?\"; ls -l /proc/self/fd/0",
        ),
        true,
    );
    // The launcher's own stdin has data, but without -i the app must not see it.
    let out = launch_with_input(&pod, &["--timeout", "80"], &[], b"not for the app\n");
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.starts_with("0:no-tty\n1:no-tty\n2:no-tty\ncat:0\n"),
        "{text}"
    );
    assert!(text.contains("/dev/null"), "{text}");
    assert!(!text.contains("not for the app"), "{text}");
}

/// Runs the shell command `inner` on a terminal of its own (util-linux `script`), with `TERM`
/// set to `term` when given.
fn in_terminal(inner: &str, term: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", inner, "/dev/null"]).stdin(Stdio::null());
    if let Some(t) = term {
        cmd.env("TERM", t);
    }
    let out = cmd.output().expect("script (util-linux) runs");
    eprintln!("--- stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn with_t_the_app_has_a_terminal_with_the_hosts_term_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(
        dir.path(),
        &shell_spec("if [ -t 1 ]; then echo tty; fi; echo \"TERM=$TERM\"; stty size; exit 0"),
        true,
    );
    // The launcher on a terminal of 33 rows and 111 columns (util-linux `script` makes one).
    let inner = format!(
        "stty rows 33 cols 111; exec {} --engine qemu -t --timeout 80 {}",
        qemu_fixture::hyperlaunch().display(),
        pod.display()
    );
    let out = in_terminal(&inner, Some("xterm-hyperpod-test"));
    assert_eq!(out.status.code(), Some(0));
    // (`script`'s own terminal turns each \n into \r\n once more.)
    let text = stdout(&out).replace("\r\r\n", "\r\n");
    assert!(text.contains("tty\r\n"), "{text:?}");
    assert!(text.contains("TERM=xterm-hyperpod-test\r\n"), "{text:?}");
    assert!(text.contains("33 111\r\n"), "{text:?}");
    // Without a TERM on the host, Docker's default; on a pipe, the app's terminal's \r\n
    // arrives as it is: \n becomes \r\n once (Docker's -t), never twice.
    let plain = launch_cmd(&pod, &["-t", "--timeout", "80"], &[])
        .env_remove("TERM")
        .output()
        .unwrap();
    let text = stdout(&plain);
    assert!(text.contains("TERM=xterm\r\n"), "{text:?}");
    assert!(!text.contains("\r\r"), "{text:?}");
}

#[test]
fn with_t_a_host_window_change_reaches_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(
        dir.path(),
        &shell_spec(
            "trap 'echo \"resized to $(stty size)\"; exit 0' WINCH; echo ready; \
             while :; do sleep 0.1; done",
        ),
        true,
    );
    // Starts at 33x111; every second the terminal changes size (40x120, 41x121 in turn: the
    // kernel signals only a change) and the launcher gets SIGWINCH, until the app (which exits
    // on its first SIGWINCH once its trap is set) is gone.
    let inner = format!(
        "stty rows 33 cols 111; {} --engine qemu -t --timeout 80 {} & pid=$!; \
         for i in $(seq 1 30); do sleep 1; stty rows 40 cols 120; kill -WINCH $pid 2>/dev/null || break; \
         sleep 1; stty rows 41 cols 121; kill -WINCH $pid 2>/dev/null || break; done; \
         wait $pid",
        qemu_fixture::hyperlaunch().display(),
        pod.display()
    );
    let out = in_terminal(&inner, None);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text:?}");
    assert!(
        text.contains("resized to 40 120\r") || text.contains("resized to 41 121\r"),
        "{text:?}"
    );
}

#[test]
fn the_last_output_arrives_before_the_status_with_two_vcpus() {
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(
        dir.path(),
        &shell_spec(
            "i=1; while [ $i -le 300 ]; do echo \"line $i\"; i=$((i+1)); done; echo END >&2",
        ),
        true,
    );
    let want: String = (1..=300).map(|i| format!("line {i}\n")).collect();
    for run in 0..3 {
        let out = launch(&pod, &["--vcpus", "2", "--timeout", "80"], &[]);
        assert_eq!(out.status.code(), Some(0), "run {run}");
        assert_eq!(stdout(&out), want, "run {run}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("END\n"),
            "run {run}"
        );
    }
}

/// A reader of the launcher's stdout that pauses, then reads slowly: QEMU's virtio console
/// drops what the launcher cannot take at once, so without the stdio window
/// (`pod::protocol::stdio::WINDOW_ARG`) bytes went missing mid-frame and the launcher said
/// "ignoring a frame the guest should not send on stdio".
#[test]
fn a_slow_reader_of_the_output_loses_no_byte() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let pod = build_pod(
        dir.path(),
        &shell_spec("yes 0123456789abcdef | head -c 4000000; echo done >&2"),
        true,
    );
    let mut child = launch_cmd(&pod, &["--timeout", "80"], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut out = child.stdout.take().unwrap();
    // Nothing read for 3 s (the guest fills everything between it and the launcher), then
    // small reads with pauses.
    std::thread::sleep(Duration::from_secs(3));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read stdout: {e}"),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = child.wait().unwrap();
    let err = String::from_utf8_lossy(&errors.join().unwrap()).into_owned();
    assert_eq!(status.code(), Some(0), "{err}");
    let want: Vec<u8> = b"0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(4_000_000)
        .collect();
    assert_eq!(got.len(), want.len(), "{err}");
    assert!(got == want, "the output differs from the app's");
    assert!(err.contains("done\n"), "{err}");
    assert!(!err.contains("should not send"), "{err}");
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
