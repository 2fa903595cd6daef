//! Hostile probe guests against the KVM engine's devices (probes/hostile.c): malformed
//! virtio-blk requests get error statuses, the launcher neither panics nor grows.

mod probes;

use std::process::{Command, Stdio};

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

/// Held by the tests that time the launcher closely and by the ones that keep a core busy for
/// long (an emulated guest reading 1 MiB), so the harness's parallel test threads never run
/// them at the same time.
static TIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn timing_lock() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
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

/// A guest repeating a valid control line forever (probes/ctlflood.c `MODE=4`, "T init"):
/// nothing is refused, so only `--timeout` ends it (124); the lines are consumed as they come,
/// not queued: the launcher's peak RSS after 4 s of it stays within 512 KiB of a calm probe's.
#[test]
fn kvm_an_endless_stream_of_valid_control_lines_keeps_memory_flat() {
    if !probes::kvm_available("kvm_an_endless_stream_of_valid_control_lines") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let calm = probe_pod(dir.path(), "hello", &["EXIT_CODE=0"], "calm");
    assert_eq!(probes::launch_peak_rss(&calm, &cache).0, 0);
    let (_, baseline) = probes::launch_peak_rss(&calm, &cache);
    let pod = probe_pod(dir.path(), "ctlflood", &["MODE=4"], "valid");
    let mut m = probes::Measured::start(&pod, &cache, &["--timeout", "4"], Stdio::null());
    let code = m.child.wait().unwrap().code();
    let peak = m.peak_kib();
    eprintln!("4 s of \"T init\" lines: exit {code:?}; peak RSS {peak} KiB vs calm {baseline} KiB");
    assert_eq!(code, Some(124));
    assert!(peak <= baseline + 512, "{peak} vs {baseline} KiB");
}

/// Feeds `total` bytes of a generated stream to `stdin` until the reader is gone; returns how
/// many the pipe took.
fn feed(mut stdin: std::process::ChildStdin, total: usize) -> usize {
    use std::io::Write;
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut taken = 0;
    while taken < total {
        match stdin.write(&chunk[..chunk.len().min(total - taken)]) {
            Ok(n) => taken += n,
            Err(_) => break,
        }
    }
    taken
}

/// A guest that never reads its stdin (probes/nostdin.c: `T exec`, then no receive buffer ever
/// posted) while the host offers 200 MiB on the launcher's stdin (`-i`): the launcher takes no
/// more than its one read buffer and the pipe hold (backpressure, not buffering: under 1 MiB
/// taken), its peak RSS stays within 512 KiB of the same run with an empty stdin, and the run
/// ends normally with the guest's code (3); a guest that never ends is stopped by `--timeout`
/// (124) the same way.
#[test]
fn kvm_a_guest_that_never_reads_stdin_holds_back_200_mib_without_buffering() {
    if !probes::kvm_available("kvm_a_guest_that_never_reads_stdin") {
        return;
    }
    const OFFERED: usize = 200 << 20;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // About 2 s of TSC at this host's 2.6 GHz.
    let pod = probe_pod(
        dir.path(),
        "nostdin",
        &["SPIN_MCYCLES=5000", "EXIT_CODE=3"],
        "nostdin",
    );
    let mut calm = probes::Measured::start(&pod, &cache, &["-i"], Stdio::null());
    assert_eq!(calm.child.wait().unwrap().code(), Some(3));
    let baseline = calm.peak_kib();
    for (extra, want) in [(&["-i"][..], 3), (&["-i", "--timeout", "2"][..], 124)] {
        let pod = if want == 3 {
            pod.clone()
        } else {
            probe_pod(dir.path(), "nostdin", &[], "nostdin-forever")
        };
        let started = std::time::Instant::now();
        let mut m = probes::Measured::start(&pod, &cache, extra, Stdio::piped());
        let stdin = m.child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || feed(stdin, OFFERED));
        let code = m.child.wait().unwrap().code();
        let took = started.elapsed();
        let taken = feeder.join().unwrap();
        let peak = m.peak_kib();
        eprintln!(
            "{extra:?}: exit {code:?} after {took:?}; {taken} of {OFFERED} bytes taken; \
             peak RSS {peak} KiB vs {baseline} KiB with an empty stdin"
        );
        assert_eq!(code, Some(want), "{extra:?}");
        assert!(
            took < std::time::Duration::from_secs(30),
            "{extra:?}: {took:?}"
        );
        assert!(taken < 1 << 20, "{extra:?}: {taken} bytes taken");
        assert!(
            peak <= baseline + 512,
            "{extra:?}: {peak} vs {baseline} KiB"
        );
    }
}

/// Odd accesses to the i8042, the exit port and both UARTs' non-data registers (probes/ports.c):
/// 1-, 2- and 4-byte reads and writes of pseudo-random values (never the reset command) do
/// nothing; the exit port ends the
/// run on its first write of any size, taking the low byte; the reported status wins over both
/// the exit port's value and an i8042 reset (5, 6); without one, 122 naming the value. No panic,
/// and peak RSS after 8000 rounds stays within 512 KiB of that after 200.
#[test]
fn kvm_i8042_and_exit_port_odd_accesses_follow_the_protocol() {
    if !probes::kvm_available("kvm_i8042_and_exit_port_odd_accesses_follow_the_protocol") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for (final_act, want, line) in [
        (1, 5, None),
        (
            2,
            122,
            Some("hyperlaunch: guest wrote 52 to the exit port without reporting a status"),
        ),
        (3, 6, None),
    ] {
        let pod = probe_pod(
            dir.path(),
            "ports",
            &["ROUNDS=2000", &format!("FINAL={final_act}")],
            &format!("ports{final_act}"),
        );
        let (code, stderr) = run(dir.path(), &pod, &["--timeout", "60"]);
        assert_eq!(code, want, "FINAL={final_act}: {stderr}");
        assert!(stderr.contains("PORTS DONE"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        if let Some(line) = line {
            assert!(stderr.lines().any(|l| l == line), "{stderr}");
        }
    }
    let few = probe_pod(dir.path(), "ports", &["ROUNDS=200", "FINAL=1"], "few");
    let many = probe_pod(dir.path(), "ports", &["ROUNDS=8000", "FINAL=1"], "many");
    assert_eq!(probes::launch_peak_rss(&few, &cache).0, 5);
    let (code, baseline) = probes::launch_peak_rss(&few, &cache);
    assert_eq!(code, 5);
    let (code, peak) = probes::launch_peak_rss(&many, &cache);
    assert_eq!(code, 5);
    eprintln!("peak RSS: 200 rounds {baseline} KiB, 8000 rounds {peak} KiB");
    assert!(peak <= baseline + 512, "{peak} vs {baseline} KiB");
}

/// A console flood (probes/spin.c `CHATTY`) with the host never reading the launcher's stdout
/// or stderr (where the console goes): the launcher's peak RSS (`VmHWM`) 6 s into the stall is
/// within 512 KiB of that at 1.5 s (the guest is held back, nothing queues up), and SIGTERM with
/// `--grace` still ends the run with 137.
#[test]
fn kvm_console_flood_with_the_host_reader_stalled_keeps_memory_flat() {
    if !probes::kvm_available("kvm_console_flood_with_the_host_reader_stalled") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = probe_pod(dir.path(), "spin", &["CHATTY=1"], "chatty");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
        .args(["--engine", "kvm", "--memory", "32", "--grace", "0.3"])
        .arg(&pod)
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held, never read.
    let (_out, _err) = (child.stdout.take(), child.stderr.take());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let early = probes::hwm_kib(child.id()).expect("launcher running");
    std::thread::sleep(std::time::Duration::from_millis(4500));
    let late = probes::hwm_kib(child.id()).expect("launcher running");
    // SAFETY: sending a signal to our own child process by pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the launcher ignored SIGTERM and --grace while its output was stalled");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    eprintln!("stalled console: VmHWM {early} KiB at 1.5 s, {late} KiB at 6 s");
    assert_eq!(status.code(), Some(137));
    assert!(late <= early + 512, "{late} vs {early} KiB");
}

/// The stdio console's hostile driver (probes/vcon.c `HOSTILE NO_RX`: loops, descriptors outside
/// the queue or RAM, overflowing addresses, 6 MiB chains, writable or indirect descriptors,
/// queue rewrites after DRIVER_OK, a queue moved outside RAM, reset) through the launcher
/// binary: the probe checks every refusal itself (0, or 98 with the reason), no panic, and the
/// launcher's peak RSS after 300 rounds stays within 512 KiB of that after 10.
#[test]
fn kvm_hostile_stdio_console_chains_through_the_launcher_keep_memory_flat() {
    if !probes::kvm_available("kvm_hostile_stdio_console_chains_through_the_launcher") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let vcon = format!("VCON={:#x}u", launcher::layout::VIRTIO_CONSOLE_ADDR);
    let pod_of = |rounds: u32| {
        let repeat = format!("REPEAT={rounds}");
        let defines = ["HOSTILE", "NO_RX", vcon.as_str(), repeat.as_str()];
        probe_pod(dir.path(), "vcon", &defines, &format!("vcon{rounds}"))
    };
    let (few, many) = (pod_of(10), pod_of(300));
    let (code, stderr) = run(dir.path(), &many, &["--timeout", "60"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("PROBE FAIL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(probes::launch_peak_rss(&few, &cache).0, 0);
    let (code, baseline) = probes::launch_peak_rss(&few, &cache);
    assert_eq!(code, 0);
    let (code, peak) = probes::launch_peak_rss(&many, &cache);
    assert_eq!(code, 0);
    eprintln!("hostile stdio console: peak RSS 10 rounds {baseline} KiB, 300 rounds {peak} KiB");
    assert!(peak <= baseline + 512, "{peak} vs {baseline} KiB");
}

/// Set in the child process that runs the launcher's run loop for
/// `kvm_a_control_flood_with_a_slow_supervisor_holds_the_guest_back`.
const SLOW_CHILD_ENV: &str = "HYPERPOD_KVM_SLOW_SUPERVISOR_CHILD";

/// VmRSS of this process, in KiB.
fn own_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The queue from the control port to the supervisor is bounded (`supervisor::event_queue`):
/// a guest writing valid control lines as fast as it can (probes/ctlflood.c `MODE=4`) to a
/// supervisor that takes one every 10 ms is held back on its vCPU, not queued for: after 4 s no
/// more than the queue's bound (plus what arrives while they are counted) wait in it, and the
/// launcher's RSS 4 s into the flood is within 512 KiB of that at 1 s. The run loop is the
/// launcher's own (`vmm::run::run`, in a child process: it installs seccomp filters on the
/// test's thread); a thread of the test stands in for the slow supervisor on the control
/// port's queue, then stops following it (`close`), and the run still ends by its
/// `--timeout` (124): a vCPU waiting for room never holds up the end.
#[test]
fn kvm_a_control_flood_with_a_slow_supervisor_holds_the_guest_back() {
    if !probes::kvm_available("kvm_a_control_flood_with_a_slow_supervisor_holds_the_guest_back") {
        return;
    }
    if std::env::var_os(SLOW_CHILD_ENV).is_none() {
        let name = "kvm_a_control_flood_with_a_slow_supervisor_holds_the_guest_back";
        let out = Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(SLOW_CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        eprintln!("{text}");
        assert!(out.status.success(), "the child run failed");
        assert!(text.contains("1 passed"), "the child ran the test");
        assert!(!text.contains("sandbox:"), "a filter stopped the run");
        return;
    }
    use launcher::supervisor::event_queue;
    use launcher::vmm::run::{Marks, RunOptions, run};
    use launcher::vmm::{BootInputs, build_vm};
    use std::time::{Duration, Instant};

    let kernel = {
        let dir = tempfile::tempdir().unwrap();
        probes::build(dir.path(), "ctlflood", &["MODE=4"])
        // The directory goes now: nothing may unlink files once the filters are in.
    };
    let inputs = BootInputs {
        kernel: &kernel,
        initramfs: Vec::new(),
        cmdline: "probe=1".into(),
        memory_mib: 64,
        vcpus: 1,
        disks: Vec::new(),
        console: Box::new(std::io::sink()),
        stdio: Box::new(|_| {}),
        net: None,
        use_pvh: true,
        backing: None,
        kernel_hz_known: false,
    };
    let mut marks = Marks::new(Instant::now(), "kvm");
    let mut vm = build_vm(inputs, &mut marks).unwrap();
    // The control port's lines stay on the VM's queue, for the slow reader below; the run's
    // supervisor gets a queue of its own (the vCPU's end, its deadline).
    let (tx, rx) = event_queue();
    let control = std::mem::replace(&mut vm.runner.events, rx);
    vm.runner.events_tx = tx;
    let slow = std::thread::spawn(move || {
        let start = Instant::now();
        let (mut taken, mut at_1s) = (0u64, None);
        while start.elapsed() < Duration::from_secs(4) {
            if control.recv_timeout(Duration::from_millis(10)).is_ok() {
                taken += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
            if at_1s.is_none() && start.elapsed() >= Duration::from_secs(1) {
                at_1s = Some(own_rss_kib());
            }
        }
        let at_4s = own_rss_kib();
        // What waits in the queue now: at most its bound (and what the guest adds while it is
        // counted), where an unbounded queue would hold thousands of lines.
        let mut queued = 0usize;
        while control.try_recv().is_ok() && queued < 100_000 {
            queued += 1;
        }
        control.close();
        (taken, queued, at_1s.unwrap(), at_4s)
    });
    let opts = RunOptions {
        timeout: Some(Duration::from_secs(6)),
        ..Default::default()
    };
    let outcome = run(vm.runner, &opts, &mut marks);
    // From here this thread runs under the main thread's filter.
    let (taken, queued, at_1s, at_4s) = slow.join().unwrap();
    eprintln!(
        "control lines taken: {taken}, then {queued} queued; RSS at 1 s {at_1s} KiB, at 4 s {at_4s} KiB"
    );
    assert_eq!(outcome.code, 124, "{:?}", outcome.message);
    assert!(taken > 100, "the guest was not flooding ({taken} lines)");
    let bound = launcher::supervisor::EVENT_QUEUE;
    assert!(queued <= 2 * bound, "{queued} lines queued (bound {bound})");
    assert!(at_4s <= at_1s + 512, "RSS {at_1s} KiB -> {at_4s} KiB");
}

/// Runs `pod` on the KVM engine with `extra` options, its stdout discarded and its stderr a
/// pipe that is full before it starts and never read; (exit code, how long the run took). A
/// launcher still running after 30 s is killed and the test fails.
fn run_with_stalled_stderr(
    dir: &std::path::Path,
    pod: &std::path::Path,
    extra: &[&str],
) -> (Option<i32>, std::time::Duration) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just returned these two descriptors; each is owned once.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // Fill the pipe: non-blocking while filling, blocking again for the launcher.
    // SAFETY: fcntl and write on the pipe's write end, owned here, with a valid buffer.
    unsafe {
        let flags = libc::fcntl(fds[1], libc::F_GETFL);
        libc::fcntl(fds[1], libc::F_SETFL, flags | libc::O_NONBLOCK);
        let chunk = [b'.'; 4096];
        while libc::write(fds[1], chunk.as_ptr().cast(), chunk.len()) > 0 {}
        libc::fcntl(fds[1], libc::F_SETFL, flags);
    }
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
        .args(["--engine", "kvm", "--memory", "32"])
        .args(extra)
        .arg(pod)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(write_end))
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the launcher did not end within 30 s with its stderr stalled");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    drop(read_end);
    (status.code(), started.elapsed())
}

/// The launcher never blocks for good on its own stderr: with stderr a full pipe nobody reads,
/// (a) a guest whose console output (which goes to stderr) is stuck ends by `--timeout 2` with
/// 124 well before the bug's 6 s (4 s past the deadline), though its vCPU is blocked writing;
/// (b) a guest that makes the launcher note refused control lines (probes/ctlflood.c `MODE=5`,
/// no console output) ends with its own status (7), its notes and `--timing` lines dropped, not
/// waited for past their 0.5 s (the bug: never). The bounds (4.5 s, 4 s; quiet-host runs take
/// 2.2-2.8 s and 0.2-1.2 s) leave room for a loaded host: 3.03 s was seen at load 14.
#[test]
fn kvm_a_stalled_stderr_never_holds_up_the_end_of_the_run() {
    if !probes::kvm_available("kvm_a_stalled_stderr_never_holds_up_the_end_of_the_run") {
        return;
    }
    let _serial = timing_lock();
    let dir = tempfile::tempdir().unwrap();
    let chatty = probe_pod(dir.path(), "spin", &["CHATTY=1"], "chatty");
    let (code, took) = run_with_stalled_stderr(dir.path(), &chatty, &["--timeout", "2"]);
    eprintln!("console stuck, --timeout 2: exit {code:?} after {took:?}");
    assert_eq!(code, Some(124));
    assert!(took < std::time::Duration::from_millis(4500), "{took:?}");
    let noted = probe_pod(dir.path(), "ctlflood", &["MODE=5"], "noted");
    let (code, took) =
        run_with_stalled_stderr(dir.path(), &noted, &["--timeout", "20", "--timing"]);
    eprintln!("refused lines noted, status 7: exit {code:?} after {took:?}");
    assert_eq!(code, Some(7));
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
}

/// The probes/vcon.c `RX_HOSTILE` probe sealed as a pod named `name`, with `extra` defines.
fn rx_hostile_pod(dir: &std::path::Path, extra: &[&str], name: &str) -> std::path::PathBuf {
    let vcon = format!("VCON={:#x}u", launcher::layout::VIRTIO_CONSOLE_ADDR);
    let ram_end = format!("RAM_END={:#x}u", 32u32 << 20);
    let mut defines = vec!["RX_HOSTILE", &vcon, &ram_end];
    defines.extend_from_slice(extra);
    probe_pod(dir, "vcon", &defines, name)
}

/// Byte `p` of the stdin stream the receive-side tests feed: what probes/vcon.c `RX_HOSTILE`
/// expects at stream offset `p` (a shift by any offset is caught within a few bytes).
fn rx_pattern(p: u64) -> u8 {
    ((p as u32).wrapping_mul(2_654_435_761) >> 24) as u8
}

/// Writes the first `total` bytes of [`rx_pattern`] to `stdin` in pieces of uneven sizes (so
/// the launcher's frames vary) until done or the reader is gone, then closes it; returns how
/// many bytes the pipe took.
fn feed_pattern(mut stdin: std::process::ChildStdin, total: u64) -> u64 {
    use std::io::Write;
    let (mut at, mut step, mut buf) = (0u64, 1u64, Vec::new());
    while at < total {
        step = (step * 7919 + 4099) % 70_001 + 1;
        let end = (at + step).min(total);
        buf.clear();
        buf.extend((at..end).map(rx_pattern));
        let mut piece = &buf[..];
        while !piece.is_empty() {
            match stdin.write(piece) {
                Ok(n) => piece = &piece[n..],
                Err(_) => return at + (buf.len() - piece.len()) as u64,
            }
        }
        at = end;
    }
    at
}

/// What one launch fed by [`run_fed`] gave.
struct Fed {
    code: i32,
    stderr: String,
    /// Bytes the launcher's stdin took.
    taken: u64,
    took: std::time::Duration,
    /// The launcher's peak RSS in KiB (GNU time's `%M`, as `probes::launch_peak_rss`).
    peak: i64,
}

/// Runs `pod` on the KVM engine with `-i` and `extra` under GNU time, feeding it `total` bytes
/// of [`rx_pattern`], its stderr captured.
fn run_fed(dir: &std::path::Path, pod: &std::path::Path, extra: &[&str], total: u64) -> Fed {
    use std::io::Read;
    let report = dir.join("rss-report");
    let started = std::time::Instant::now();
    let mut child = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&report)
        .arg(env!("CARGO_BIN_EXE_hyperlaunch"))
        .args(["--engine", "kvm", "--memory", "32", "-i"])
        .args(extra)
        .arg(pod)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/time (Debian package time, scripts/setup installs it)");
    let stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || feed_pattern(stdin, total));
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().unwrap();
    pipe.read_to_string(&mut stderr).unwrap();
    let code = child.wait().unwrap().code();
    let took = started.elapsed();
    let taken = feeder.join().unwrap();
    let peak = std::fs::read_to_string(&report).unwrap();
    let peak = peak.lines().last().unwrap().trim().parse().unwrap();
    eprintln!(
        "--- exit {code:?} after {took:?}, {taken} of {total} bytes taken, peak RSS {peak} KiB\n\
         {stderr}"
    );
    Fed {
        code: code.expect("hyperlaunch killed by a signal"),
        stderr,
        taken,
        took,
        peak,
    }
}

/// The stdio console's receive side against a hostile driver, through the launcher binary with
/// 1 MiB on `-i` (probes/vcon.c `RX_HOSTILE`): batches of receive chains mixing loops, next
/// and head indexes outside the queue, buffers in the MMIO hole, across RAM's end or
/// overflowing, empty, device-readable and indirect descriptors, a 6 MiB chain and chains that
/// go bad after a good first buffer, with good buffers of 1, 2 and 3 bytes (shorter than a
/// frame header), a header spread over three descriptors and chains out of table order; and,
/// every 8 batches, an avail index more than the queue size ahead; every 50, a reset and a new
/// set-up of the device in mid-stream. The documented outcome: each malformed chain comes back
/// in order with used length 0 and nothing written, a head outside the queue never comes back,
/// the queue serves nothing while its index is invalid and goes on once it is put right, a
/// reset loses no input the launcher holds, and the device goes on after every refusal: the
/// guest checks all of that and that every input byte arrives once and in order into the good
/// buffers (pattern and FNV-1a of the whole stream, compared here). The run ends with the
/// guest's 0 (`--timeout` is only a safety net: guest code is emulated on this host's KVM, and
/// 1 MiB takes 8-20 s), no panic, and the launcher's peak RSS with 1 MiB fed stays within
/// 512 KiB of that with 64 KiB fed.
#[test]
fn kvm_hostile_receive_chains_with_stdin_deliver_every_byte_once_and_keep_memory_flat() {
    if !probes::kvm_available("kvm_hostile_receive_chains_with_stdin_deliver_every_byte_once") {
        return;
    }
    let _serial = timing_lock();
    const FED: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let pod = rx_hostile_pod(dir.path(), &[], "rx-hostile");
    let calm = run_fed(dir.path(), &pod, &["--timeout", "180"], 64 << 10);
    assert_eq!(calm.code, 0, "{}", calm.stderr);
    let baseline = calm.peak;
    let Fed {
        code,
        stderr,
        taken,
        took,
        peak,
    } = run_fed(dir.path(), &pod, &["--timeout", "180"], FED);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("PROBE FAIL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(taken, FED);
    let stream: Vec<u8> = (0..FED).map(rx_pattern).collect();
    let want = format!(
        "RX OK bytes={FED} fnv={:08x} refused=",
        probes::fnv1a(&stream)
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("RX OK"))
        .unwrap_or_else(|| panic!("no RX OK line in {stderr}"));
    assert!(line.starts_with(&want), "{line:?}, want {want:?}");
    let count = |key: &str| -> u64 {
        let v = line.split(key).nth(1).and_then(|v| v.split(' ').next());
        v.and_then(|v| v.parse().ok()).unwrap()
    };
    let (refused, jumps, resets) = (count("refused="), count("jumps="), count("resets="));
    eprintln!(
        "1 MiB through hostile receive batches in {took:?}: {refused} refused, {jumps} jumps, \
         {resets} resets"
    );
    // About 4 KiB of good buffers per batch: some 250 batches of 4-5 refused chains each.
    assert!(refused > 500, "{line}");
    assert!(jumps > 20, "{line}");
    assert!(resets > 2, "{line}");
    eprintln!("hostile receive side: peak RSS 64 KiB fed {baseline} KiB, 1 MiB fed {peak} KiB");
    assert!(peak <= baseline + 512, "{peak} vs {baseline} KiB");
}

/// A guest whose receive queue's avail index jumps more than the queue size ahead and stays
/// there (probes/vcon.c `RX_HOSTILE JUMP_FOREVER=4`, after reading some 16 KiB of its stdin
/// intact) while the host writes 64 MiB into `-i`: the device serves that queue nothing more
/// (the guest kicks for ~0.4 s and checks), the launcher holds the writer back (it takes less
/// than 1 MiB), `--timeout 5` ends the run with 124 and its one line, no panic, and the
/// launcher's peak RSS stays within 512 KiB of the same probe's run with 64 KiB fed.
#[test]
fn kvm_a_receive_queue_with_its_avail_index_run_away_stops_and_the_timeout_ends_the_run() {
    if !probes::kvm_available("kvm_a_receive_queue_with_its_avail_index_run_away_stops") {
        return;
    }
    let _serial = timing_lock();
    const OFFERED: u64 = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let calm = rx_hostile_pod(dir.path(), &[], "rx-calm");
    let calm = run_fed(dir.path(), &calm, &[], 64 << 10);
    assert_eq!(calm.code, 0, "{}", calm.stderr);
    let baseline = calm.peak;
    let stuck = rx_hostile_pod(
        dir.path(),
        &["JUMP_FOREVER=4", "SPIN_MCYCLES=1000"],
        "rx-stuck",
    );
    let Fed {
        code,
        stderr,
        taken,
        took,
        peak,
    } = run_fed(dir.path(), &stuck, &["--timeout", "5"], OFFERED);
    assert_eq!(code, 124, "{stderr}");
    assert!(!stderr.contains("PROBE FAIL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("RX QUEUE STOPPED after "), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last, "hyperlaunch: timeout expired after 5s; VM stopped",
        "{stderr}"
    );
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    assert!(taken < 1 << 20, "{taken} bytes taken");
    eprintln!(
        "run-away avail index: exit 124 after {took:?}, {taken} of {OFFERED} bytes taken; \
         peak RSS {peak} KiB vs {baseline} KiB with 64 KiB fed to a reading guest"
    );
    assert!(peak <= baseline + 512, "{peak} vs {baseline} KiB");
}
