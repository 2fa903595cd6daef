//! Seccomp on the KVM engine's threads: one filter per kind of thread, listing only the system
//! calls that thread makes once the guest may run (ioctl limited to `KVM_RUN` and the terminal
//! requests, mmap/mprotect never executable). Built with `seccompiler`.
//!
//! Use: a run's threads are a [`Crew`] (sandbox/crew.rs), started before the VM is built: each
//! compiles (once per process and kind, only the kinds the run has) and installs its own filter
//! as its first act, on another core while the main thread builds the VM, and then waits for
//! its work. The main thread installs its own last ([`Gate::enter_main_and_wait`]), which
//! returns only when every thread of the crew has its filter, so no guest instruction runs
//! before the whole process is filtered. Filters are per thread and can only be added to: what
//! a thread starts after entering inherits its filter.
//!
//! A system call outside a thread's list raises SIGSYS (`SECCOMP_RET_TRAP`); the handler writes
//! one line naming the call and the thread kind, restores the terminal and ends the process with
//! [`EXIT_LAUNCHER`]. Failing to install a filter ends the process the same way: the launcher
//! never runs a guest unfiltered. The lists are documented in `docs/SECURITY.md`.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

use pod::protocol::EXIT_LAUNCHER;

#[path = "sandbox/crew.rs"]
mod crew;
pub use crew::{Crew, Gate, Plan, Ready};

/// `_IO(KVMIO, 0x80)`: the only KVM ioctl a running vCPU makes.
pub const KVM_RUN: u64 = 0xae80;

/// The kinds of thread of a KVM run, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum ThreadKind {
    /// A spawned vCPU thread: `KVM_RUN` and the device emulation it drives.
    Vcpu = 1,
    /// The main thread: vCPU 0, then the end of the run (joins, report, terminal, exit).
    Main = 2,
    /// The supervisor: events, deadlines, kicking vCPUs, control lines to the guest.
    Supervisor = 3,
    /// The `sigwait` thread forwarding SIGINT/SIGTERM.
    SignalForwarder = 4,
    /// The thread copying standard input into the console.
    StdinForwarder = 5,
    /// The network backend thread: frames from the backend socket into the guest, transmitted
    /// frames the socket held back.
    Net = 6,
    /// The TAP backend's port forwarder (`net::forward`).
    Forward = 7,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Vcpu,
        ThreadKind::Main,
        ThreadKind::Supervisor,
        ThreadKind::SignalForwarder,
        ThreadKind::StdinForwarder,
        ThreadKind::Net,
        ThreadKind::Forward,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Main => "main",
            ThreadKind::Supervisor => "supervisor",
            ThreadKind::SignalForwarder => "signal forwarder",
            ThreadKind::StdinForwarder => "stdin forwarder",
            ThreadKind::Net => "net",
            ThreadKind::Forward => "forward",
        }
    }

    fn from_u8(v: u8) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| *k as u8 == v)
    }
}

/// Why the sandbox could not be set up.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("building the {0} seccomp filter: {1}")]
    Build(&'static str, seccompiler::BackendError),
    #[error("installing the {0} seccomp filter: {1}")]
    Install(&'static str, seccompiler::Error),
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    #[error("cannot start the {0} thread: {1}")]
    Spawn(String, std::io::Error),
}

/// An argument condition on a system call.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// Argument `n` (its low 32 bits) equals one of these.
    OneOf(u8, &'static [u64]),
    /// Argument `n` has none of these bits set.
    NoBits(u8, u64),
}

/// One allowed system call: its name (for the docs and the SIGSYS line), number and optional
/// argument condition.
#[derive(Clone, Copy, Debug)]
pub struct Allowed {
    pub name: &'static str,
    pub nr: i64,
    pub arg: Option<Arg>,
}

const fn any(name: &'static str, nr: i64) -> Allowed {
    Allowed {
        name,
        nr,
        arg: None,
    }
}

const fn with(name: &'static str, nr: i64, arg: Arg) -> Allowed {
    Allowed {
        name,
        nr,
        arg: Some(arg),
    }
}

// `as u64`: libc types these requests as c_ulong with glibc and c_int with musl.
#[allow(clippy::unnecessary_cast)]
const TERMINAL_IOCTLS: &[u64] = &[
    libc::TCGETS as u64,
    libc::TCSETS as u64,
    libc::TCSETSW as u64,
    libc::TCSETSF as u64,
    libc::TIOCGWINSZ as u64,
];
const VCPU_IOCTLS: &[u64] = &[KVM_RUN];
#[allow(clippy::unnecessary_cast)]
const MAIN_IOCTLS: &[u64] = &[
    KVM_RUN,
    libc::TCGETS as u64,
    libc::TCSETS as u64,
    libc::TCSETSW as u64,
    libc::TCSETSF as u64,
    libc::TIOCGWINSZ as u64,
];
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;
/// `fcntl(fd, F_GETFD)`: std's debug builds check a descriptor is open before closing it.
const FCNTL_GETFD: &[u64] = &[libc::F_GETFD as u64];

/// What every thread of the run needs: memory (never executable), locks, time, sleeping,
/// signal returns, its own end and the process's, and writing (stderr, eventfds).
const COMMON: &[Allowed] = &[
    any("futex", libc::SYS_futex),
    any("brk", libc::SYS_brk),
    with("mmap", libc::SYS_mmap, Arg::NoBits(2, PROT_EXEC)),
    with("mprotect", libc::SYS_mprotect, Arg::NoBits(2, PROT_EXEC)),
    any("munmap", libc::SYS_munmap),
    any("mremap", libc::SYS_mremap),
    any("madvise", libc::SYS_madvise),
    any("write", libc::SYS_write),
    any("clock_gettime", libc::SYS_clock_gettime),
    any("clock_nanosleep", libc::SYS_clock_nanosleep),
    any("nanosleep", libc::SYS_nanosleep),
    any("sched_yield", libc::SYS_sched_yield),
    any("rt_sigreturn", libc::SYS_rt_sigreturn),
    any("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    any("sigaltstack", libc::SYS_sigaltstack),
    any("getpid", libc::SYS_getpid),
    any("gettid", libc::SYS_gettid),
    // abort() on a panic, pthread_kill for the vCPU kicks.
    any("tgkill", libc::SYS_tgkill),
    // The same in a musl build (an experiment, docs/BENCHMARKS.md: musl uses tkill).
    #[cfg(target_env = "musl")]
    any("tkill", libc::SYS_tkill),
    any("exit", libc::SYS_exit),
    any("exit_group", libc::SYS_exit_group),
];

/// A vCPU thread: `KVM_RUN`, virtio-blk reads/writes/flushes on the pod file, console output,
/// transmitted network frames (`send` on the backend socket), closing its vCPU descriptor when
/// it ends.
const VCPU: &[Allowed] = &[
    with("ioctl", libc::SYS_ioctl, Arg::OneOf(1, VCPU_IOCTLS)),
    any("sendto", libc::SYS_sendto),
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
    any("fdatasync", libc::SYS_fdatasync),
    any("close", libc::SYS_close),
    with("fcntl", libc::SYS_fcntl, Arg::OneOf(1, FCNTL_GETFD)),
];

/// `pidfd_send_signal(pidfd, SIGKILL, …)`: the only signal the main thread sends to passt.
const SIGKILL_ONLY: &[u64] = &[libc::SIGKILL as u64];
/// `waitid(P_PIDFD, …)`: waiting only for the child a pidfd names (passt).
const WAIT_PIDFD_ONLY: &[u64] = &[libc::P_PIDFD as u64];

/// The main thread: what a vCPU does, then tearing the VM down (close), passt ended (SIGKILL
/// through its pidfd, reaped with `waitid` on it: net/passt.rs), the terminal restored and the
/// report written (waiting for a slow stderr with `poll`, stdio.rs). No pidfd can be opened
/// under the filter: the only ones are those opened before, for the launcher's own children.
const MAIN: &[Allowed] = &[
    with("ioctl", libc::SYS_ioctl, Arg::OneOf(1, MAIN_IOCTLS)),
    with(
        "pidfd_send_signal",
        libc::SYS_pidfd_send_signal,
        Arg::OneOf(1, SIGKILL_ONLY),
    ),
    with("waitid", libc::SYS_waitid, Arg::OneOf(0, WAIT_PIDFD_ONLY)),
    any("poll", libc::SYS_poll),
    any("sendto", libc::SYS_sendto),
    any("pread64", libc::SYS_pread64),
    any("pwrite64", libc::SYS_pwrite64),
    any("fdatasync", libc::SYS_fdatasync),
    any("close", libc::SYS_close),
    with("fcntl", libc::SYS_fcntl, Arg::OneOf(1, FCNTL_GETFD)),
];

/// The supervisor: waits on its channel, kicks vCPUs (tgkill, in COMMON), feeds control lines
/// (eventfd writes), writes its notes once the machine has ended (waiting for a slow stderr
/// with `poll`, stdio.rs), and on a stuck vCPU restores the terminal and exits.
const SUPERVISOR: &[Allowed] = &[
    with("ioctl", libc::SYS_ioctl, Arg::OneOf(1, TERMINAL_IOCTLS)),
    any("poll", libc::SYS_poll),
    any("close", libc::SYS_close),
    with("fcntl", libc::SYS_fcntl, Arg::OneOf(1, FCNTL_GETFD)),
];

/// The signal forwarder: waits for SIGINT/SIGTERM.
const SIGNAL_FORWARDER: &[Allowed] = &[any("rt_sigtimedwait", libc::SYS_rt_sigtimedwait)];

/// The stdin forwarder: reads standard input; waits for (poll) and clears (read) the stdio
/// device's receive-ready eventfd, closing its copy when it ends; hands bytes to the guest
/// (eventfd writes, in COMMON).
const STDIN_FORWARDER: &[Allowed] = &[
    any("read", libc::SYS_read),
    any("poll", libc::SYS_poll),
    any("close", libc::SYS_close),
    with("fcntl", libc::SYS_fcntl, Arg::OneOf(1, FCNTL_GETFD)),
];

/// The network backend thread: waits for the socket and its wake-up eventfd (poll), reads
/// frames (`recv`), finishes transmitted frames (`send`), clears the eventfd (read), closes its
/// copies when it ends.
const NET: &[Allowed] = &[
    any("poll", libc::SYS_poll),
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("read", libc::SYS_read),
    any("close", libc::SYS_close),
    with("fcntl", libc::SYS_fcntl, Arg::OneOf(1, FCNTL_GETFD)),
];

/// `socket(AF_INET, …)`: the forwarder's connections to the guest, IPv4 only.
const FORWARD_SOCKET_DOMAINS: &[u64] = &[libc::AF_INET as u64];

/// The TAP backend's port forwarder: waits (poll), accepts host connections (accept4), opens
/// IPv4 sockets and connects them to the guest (socket, connect, getsockopt for the result),
/// moves bytes and datagrams (recvfrom, sendto), passes a connection's end on (shutdown),
/// closes. The only thread that may create a socket.
const FORWARD: &[Allowed] = &[
    any("poll", libc::SYS_poll),
    any("accept4", libc::SYS_accept4),
    with(
        "socket",
        libc::SYS_socket,
        Arg::OneOf(0, FORWARD_SOCKET_DOMAINS),
    ),
    any("connect", libc::SYS_connect),
    any("getsockopt", libc::SYS_getsockopt),
    any("recvfrom", libc::SYS_recvfrom),
    any("sendto", libc::SYS_sendto),
    any("shutdown", libc::SYS_shutdown),
    any("close", libc::SYS_close),
    with("fcntl", libc::SYS_fcntl, Arg::OneOf(1, FCNTL_GETFD)),
];

/// The calls `kind` may make beyond [`COMMON`].
fn own_list(kind: ThreadKind) -> &'static [Allowed] {
    match kind {
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Main => MAIN,
        ThreadKind::Supervisor => SUPERVISOR,
        ThreadKind::SignalForwarder => SIGNAL_FORWARDER,
        ThreadKind::StdinForwarder => STDIN_FORWARDER,
        ThreadKind::Net => NET,
        ThreadKind::Forward => FORWARD,
    }
}

/// Every system call `kind` may make, common ones first.
pub fn allowed(kind: ThreadKind) -> Vec<Allowed> {
    COMMON.iter().chain(own_list(kind)).copied().collect()
}

/// The name of call `nr` if any list has it (no allocation: used in the SIGSYS handler).
fn known_name(nr: i64) -> Option<&'static str> {
    let mut lists = [COMMON].into_iter().chain(ThreadKind::ALL.map(own_list));
    lists.find_map(|l| l.iter().find(|a| a.nr == nr).map(|a| a.name))
}

fn condition(arg: Arg) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    match arg {
        Arg::OneOf(n, values) => values
            .iter()
            .map(|&v| {
                SeccompRule::new(vec![SeccompCondition::new(
                    n,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    v,
                )?])
            })
            .collect(),
        Arg::NoBits(n, bits) => Ok(vec![SeccompRule::new(vec![SeccompCondition::new(
            n,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(bits),
            0,
        )?])?]),
    }
}

/// `BPF_LD | BPF_W | BPF_ABS` of the low word of `seccomp_data.args[0]` (offset 16): the first
/// instruction of every filter (see [`compile`]).
const LOAD_ARG0: seccompiler::sock_filter = seccompiler::sock_filter {
    code: 0x20,
    jt: 0,
    jf: 0,
    k: 16,
};

/// The compiled filter of `kind`: listed calls allowed, anything else traps (SIGSYS).
///
/// It starts with a load of an argument that the next instruction (seccompiler's load of the
/// architecture) overwrites: the filter decides exactly as without it, but the kernel's
/// per-call action cache sees a filter that reads arguments first and is not built. Building
/// it emulates the filter for each of the ~450 call numbers, walking seccompiler's linear list
/// each time: about 80 µs of the ~100 µs an install takes on this host, and the main thread's
/// install sits between the VM's setup and the guest's first instruction. Without the cache a
/// call with no argument condition runs the (JIT-compiled) filter instead: tens of
/// nanoseconds on a call; the calls with conditions (`ioctl`, `mmap`) run it anyway
/// (docs/BENCHMARKS.md, "cost of the seccomp sandbox").
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SandboxError> {
    let err = |e| SandboxError::Build(kind.name(), e);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for a in allowed(kind) {
        let r = match a.arg {
            None => Vec::new(),
            Some(arg) => condition(arg).map_err(err)?,
        };
        rules.insert(a.nr, r);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    let listed: BpfProgram = filter.try_into().map_err(err)?;
    Ok([LOAD_ARG0].into_iter().chain(listed).collect())
}

/// The filters of this process, each compiled the first time a thread of its kind enters it.
static PROGRAMS: [OnceLock<BpfProgram>; ThreadKind::ALL.len()] =
    [const { OnceLock::new() }; ThreadKind::ALL.len()];

/// `kind`'s compiled filter (compiled on first use; a race compiles it twice, harmlessly).
fn program(kind: ThreadKind) -> Result<&'static BpfProgram, SandboxError> {
    let cell = &PROGRAMS[kind as usize - 1];
    if let Some(p) = cell.get() {
        return Ok(p);
    }
    let p = compile(kind)?;
    Ok(cell.get_or_init(|| p))
}

thread_local! {
    /// The calling thread's kind, for the SIGSYS line (0: none).
    static KIND: AtomicU8 = const { AtomicU8::new(0) };
}

/// Installs `kind`'s filter on the calling thread, compiling it first if no thread has yet.
fn install(kind: ThreadKind) -> Result<(), SandboxError> {
    install_on_this_thread(kind, program(kind)?)
}

/// Installs `prog` on the calling thread with `kind` recorded for the SIGSYS line (tests).
pub fn install_on_this_thread(kind: ThreadKind, prog: &BpfProgram) -> Result<(), SandboxError> {
    KIND.with(|k| k.store(kind as u8, Ordering::Relaxed));
    seccompiler::apply_filter(prog).map_err(|e| SandboxError::Install(kind.name(), e))
}

fn fatal(line: &str) -> ! {
    eprintln!("{line}");
    crate::vmm::term::restore();
    // SAFETY: _exit ends the process at once; nothing is left half-done that must run.
    unsafe { libc::_exit(EXIT_LAUNCHER) }
}

/// Offset of `si_syscall` in x86-64's `siginfo_t` (`_sigsys`: `_call_addr` at 16, then the
/// call number).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t; for SIGSYS from seccomp its `_sigsys`
    // member holds the call number at this offset.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read()
    };
    let kind = KIND.with(|k| k.load(Ordering::Relaxed));
    let mut buf = [0u8; 192];
    let len = sigsys_line(&mut buf, nr, ThreadKind::from_u8(kind));
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf[..len]` is initialised.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
    }
    crate::vmm::term::restore();
    // SAFETY: as above.
    unsafe { libc::_exit(EXIT_LAUNCHER) }
}

/// Formats the SIGSYS line into `buf` without allocating; returns its length.
pub fn sigsys_line(buf: &mut [u8], nr: i32, kind: Option<ThreadKind>) -> usize {
    let mut len = 0;
    let mut put = |s: &[u8]| {
        let n = s.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&s[..n]);
        len += n;
    };
    put(b"hyperlaunch: sandbox: the ");
    put(kind.map_or("unknown", ThreadKind::name).as_bytes());
    put(b" thread made system call ");
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    let neg = nr < 0;
    let mut v = nr.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        digits[i] = b'-';
    }
    put(&digits[i..]);
    if let Some(name) = known_name(i64::from(nr)) {
        put(b" (");
        put(name.as_bytes());
        put(b")");
    }
    put(b", which its seccomp filter forbids; stopping the VM\n");
    len
}

/// Installs [`on_sigsys`] for SIGSYS (process-wide).
pub fn install_sigsys_reporter() -> Result<(), SandboxError> {
    // SAFETY: a zeroed sigaction with an SA_SIGINFO handler of the right signature is valid;
    // the handler only does async-signal-safe work.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(SandboxError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
#[path = "sandbox/tests.rs"]
mod tests;
