//! The filters' lists and the SIGSYS report. A forbidden call is made in a child process (this
//! test binary run again for one ignored test, with the case in the environment), which must end
//! with one clear line and the launcher's failure code.

use super::*;
use std::process::Command;

#[test]
fn every_kind_compiles_and_lists_each_call_once() {
    for kind in ThreadKind::ALL {
        let prog = compile(kind).unwrap();
        // An argument load first (no per-call cache to build on install), then seccompiler's
        // own program, which loads the architecture (offset 4) before anything else.
        let (first, second) = (&prog[0], &prog[1]);
        assert_eq!((first.code, first.k), (LOAD_ARG0.code, 16), "{kind:?}");
        assert_eq!((second.code, second.k), (0x20, 4), "{kind:?}");
        let list = allowed(kind);
        let mut nrs: Vec<i64> = list.iter().map(|a| a.nr).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), list.len(), "{kind:?} lists a call twice");
        // Never allowed anywhere: new processes, files, privileges; sockets but for the
        // port forwarder's IPv4 ones to the guest.
        for forbidden in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_execve,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_ptrace,
            libc::SYS_setuid,
            libc::SYS_mount,
        ] {
            assert!(!nrs.contains(&forbidden), "{kind:?} allows {forbidden}");
        }
        // Signals and waits: only the main thread's SIGKILL to, and waitid on, a pidfd it
        // already holds (passt's); never kill, wait4 or a new pidfd.
        for forbidden in [libc::SYS_kill, libc::SYS_wait4, libc::SYS_pidfd_open] {
            assert!(!nrs.contains(&forbidden), "{kind:?} allows {forbidden}");
        }
        let signal = list.iter().find(|a| a.nr == libc::SYS_pidfd_send_signal);
        let wait = list.iter().find(|a| a.nr == libc::SYS_waitid);
        match kind {
            ThreadKind::Main => {
                assert!(
                    matches!(signal.and_then(|a| a.arg), Some(Arg::OneOf(1, s)) if s == [libc::SIGKILL as u64])
                );
                assert!(
                    matches!(wait.and_then(|a| a.arg), Some(Arg::OneOf(0, w)) if w == [libc::P_PIDFD as u64])
                );
            }
            _ => assert!(
                signal.is_none() && wait.is_none(),
                "{kind:?} signals or waits"
            ),
        }
        let socket = list.iter().find(|a| a.nr == libc::SYS_socket);
        match kind {
            ThreadKind::Forward => assert!(
                matches!(socket.and_then(|a| a.arg), Some(Arg::OneOf(0, d)) if d == [libc::AF_INET as u64])
            ),
            _ => assert!(socket.is_none(), "{kind:?} allows socket"),
        }
    }
    // Only vCPU threads (and vCPU 0 on the main thread) may run the guest.
    let has_kvm_run = |k| {
        allowed(k).iter().any(|a| match a.arg {
            Some(Arg::OneOf(1, v)) => a.nr == libc::SYS_ioctl && v.contains(&KVM_RUN),
            _ => false,
        })
    };
    assert!(has_kvm_run(ThreadKind::Vcpu) && has_kvm_run(ThreadKind::Main));
    assert!(!has_kvm_run(ThreadKind::Supervisor));
}

#[test]
fn the_sigsys_line_names_the_thread_and_the_call() {
    let mut buf = [0u8; 192];
    let n = sigsys_line(&mut buf, 57, Some(ThreadKind::Vcpu));
    assert_eq!(
        std::str::from_utf8(&buf[..n]).unwrap(),
        "hyperlaunch: sandbox: the vcpu thread made system call 57, which its seccomp filter forbids; stopping the VM\n"
    );
    let n = sigsys_line(&mut buf, 16, Some(ThreadKind::Supervisor));
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("supervisor thread made system call 16 (ioctl),")
    );
    let n = sigsys_line(&mut buf, -7, None);
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("the unknown thread made system call -7,")
    );
    // A tiny buffer truncates, never overflows.
    let mut small = [0u8; 10];
    assert_eq!(sigsys_line(&mut small, 1, None), 10);
}

const CASE_ENV: &str = "HYPERPOD_SANDBOX_TEST_CASE";

/// The cases: a kind and a call its filter forbids.
fn cases() -> [(ThreadKind, &'static str, i64); 7] {
    [
        (ThreadKind::Vcpu, "socket", libc::SYS_socket),
        (ThreadKind::Supervisor, "ioctl(KVM_RUN)", libc::SYS_ioctl),
        (ThreadKind::Main, "mmap(PROT_EXEC)", libc::SYS_mmap),
        (ThreadKind::StdinForwarder, "openat", libc::SYS_openat),
        (ThreadKind::SignalForwarder, "execve", libc::SYS_execve),
        (ThreadKind::Net, "connect", libc::SYS_connect),
        // After ending a child through its pidfd (SIGKILL, waitid), any other signal.
        (
            ThreadKind::Main,
            "pidfd_send_signal(SIGTERM)",
            libc::SYS_pidfd_send_signal,
        ),
    ]
}

/// The case that ends a child (as the main thread ends passt) before its forbidden call.
const PIDFD_CASE: usize = 6;

/// Runs in the child: installs the filter of the case's kind on this thread, makes an allowed
/// call, then the forbidden one, which must not return.
#[test]
#[ignore = "run by an_unlisted_call_ends_the_process_with_one_line_and_exit_125 in a child"]
fn child_makes_a_forbidden_call() {
    let case: usize = std::env::var(CASE_ENV).unwrap().parse().unwrap();
    let (kind, _, _) = cases()[case];
    let prog = compile(kind).unwrap();
    // A child and its pidfd, from before the filter (as passt's is, net/passt.rs).
    #[expect(
        clippy::zombie_processes,
        reason = "the pidfd case reaps it with waitid(P_PIDFD), as the main thread reaps passt"
    )]
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(&sleeper),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    if case != PIDFD_CASE {
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
    install_sigsys_reporter().unwrap();
    install_on_this_thread(kind, &prog).unwrap();
    let ok = b"child: filter installed, allowed calls run\n";
    // SAFETY: writing a valid buffer to stderr.
    unsafe { libc::write(2, ok.as_ptr().cast(), ok.len()) };
    if case == PIDFD_CASE {
        use rustix::process::{Signal, WaitId, WaitIdOptions, pidfd_send_signal, waitid};
        use std::os::fd::AsFd;
        pidfd_send_signal(pidfd.as_fd(), Signal::KILL).unwrap();
        let status = waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED)
            .unwrap()
            .unwrap();
        assert_eq!(status.terminating_signal(), Some(libc::SIGKILL));
        let ok = b"child: killed and reaped its child through the pidfd\n";
        // SAFETY: writing a valid buffer to stderr.
        unsafe { libc::write(2, ok.as_ptr().cast(), ok.len()) };
    }
    // SAFETY: each call gets valid (or harmless invalid) arguments; none returns under the
    // filter.
    let r = unsafe {
        match case {
            0 => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64,
            1 => libc::ioctl(-1, KVM_RUN as _) as i64,
            2 => libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ) as i64,
            3 => libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY) as i64,
            4 => libc::syscall(libc::SYS_execve, c"/bin/true".as_ptr(), 0usize, 0usize),
            5 => libc::connect(-1, std::ptr::null(), 0) as i64,
            _ => libc::syscall(
                libc::SYS_pidfd_send_signal,
                std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                libc::SIGTERM,
                0usize,
                0usize,
            ),
        }
    };
    panic!("the forbidden call returned {r}");
}

#[test]
fn an_unlisted_call_ends_the_process_with_one_line_and_exit_125() {
    for (i, (kind, what, nr)) in cases().into_iter().enumerate() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sandbox::tests::child_makes_a_forbidden_call",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CASE_ENV, i.to_string())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(EXIT_LAUNCHER),
            "{kind:?} {what}: {err}"
        );
        assert!(err.contains("child: filter installed"), "{what}: {err}");
        if i == PIDFD_CASE {
            assert!(err.contains("child: killed and reaped its child"), "{err}");
        }
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("sandbox")).collect();
        let want = format!(
            "hyperlaunch: sandbox: the {} thread made system call {nr}",
            kind.name()
        );
        assert_eq!(lines.len(), 1, "{what}: {err}");
        assert!(lines[0].starts_with(&want), "{what}: {err}");
        assert!(lines[0].ends_with("which its seccomp filter forbids; stopping the VM"));
    }
}

/// `Seccomp:` and `Seccomp_filters:` of thread `tid` of this process.
fn seccomp_of(tid: i32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let field = |name: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    (field("Seccomp:"), field("Seccomp_filters:"))
}

fn threads_of_this_process() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Runs in the child: a crew dropped without work ends its threads; a crew of every kind runs
/// its work on threads each already under exactly one filter while the main thread has none;
/// then the main thread enters and reports through a write before `_exit` (both allowed).
#[test]
#[ignore = "run by a_crew_is_filtered_before_its_work_and_ends_when_dropped in a child"]
fn child_runs_a_crew() {
    let plan = Plan {
        vcpus: 3,
        signals: true,
        stdin: true,
        net: true,
        forward: true,
    };
    assert_eq!(plan.threads(), 7);
    let before = threads_of_this_process();
    let dropped = Crew::start(plan).unwrap();
    assert_eq!(threads_of_this_process(), before + 7);
    drop(dropped);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while threads_of_this_process() > before {
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped crew's threads did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    let crew = Crew::start(plan).unwrap();
    let (tids_tx, tids) = std::sync::mpsc::channel();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Arc::new(std::sync::Mutex::new(held));
    let readies = crew
        .vcpus
        .into_iter()
        .chain([crew.supervisor])
        .chain(crew.signals)
        .chain(crew.stdin)
        .chain(crew.net)
        .chain(crew.forward);
    let handles: Vec<_> = readies
        .map(|ready| {
            let (tx, held) = (tids_tx.clone(), held.clone());
            ready.run(move || {
                // SAFETY: gettid has no preconditions (and is in every filter's list).
                tx.send(unsafe { libc::gettid() }).unwrap();
                let _ = held.lock().unwrap().recv();
            })
        })
        .collect();
    drop(tids_tx);
    let tids: Vec<i32> = tids.iter().take(7).collect();
    assert_eq!(tids.len(), 7);
    for &tid in &tids {
        assert_eq!(seccomp_of(tid), (2, 1), "thread {tid}");
    }
    // SAFETY: as above.
    assert_eq!(seccomp_of(unsafe { libc::gettid() }), (0, 0));
    drop(release);
    for h in handles {
        h.join().unwrap();
    }
    crew.gate.enter_main_and_wait();
    let ok = b"child: main entered after its crew\n";
    // SAFETY: writing a valid buffer to stderr, then ending the process (both allowed).
    unsafe {
        libc::write(2, ok.as_ptr().cast(), ok.len());
        libc::_exit(0);
    }
}

#[test]
fn a_crew_is_filtered_before_its_work_and_ends_when_dropped() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox::tests::child_runs_a_crew",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("child: main entered after its crew"), "{err}");
}
