//! Running a built VM: one thread per vCPU, the supervisor loop (control lines, host signals,
//! timeout, grace), stdin forwarding, and the final exit code.

use std::io::Read;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Once, OnceLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::exit::{Action, Exit, StopReason, handle_exit};
use crate::control::{
    self, EXIT_INIT_PANIC, EXIT_LAUNCHER, EXIT_NO_STATUS, EXIT_TIMEOUT, GuestEvent, Mark,
};
use crate::devices::Devices;
use crate::devices::serial::{self, ControlReport};
use crate::sandbox::{self, ThreadKind};

/// How often the supervisor retries handing a signal line to busy devices.
const SIGNAL_RETRY: Duration = Duration::from_millis(5);

/// Exit code when the app did not stop within `--grace` after a forwarded stop signal and the
/// VM was stopped (Docker's code for a container killed after its stop timeout: 128 + SIGKILL).
pub const EXIT_GRACE_KILLED: i32 = 137;

/// What the supervisor hears about.
#[derive(Debug)]
pub enum Event {
    Control(ControlReport),
    Stopped(usize, StopReason),
    Signal(i32),
    /// Stop the VM now (an embedder's request, e.g. a test that has seen enough).
    Stop(String),
}

/// Host `CLOCK_MONOTONIC` marks of one launch (`Instant` is CLOCK_MONOTONIC on Linux).
#[derive(Debug)]
pub struct Marks {
    pub exec: Instant,
    pub pod_opened: Option<Instant>,
    pub vm_created: Option<Instant>,
    pub kernel_loaded: Option<Instant>,
    pub first_run: Arc<OnceLock<Instant>>,
    /// First exit of vCPU 0 back to the VMM: the guest has run its first instructions.
    pub first_exit: Arc<OnceLock<Instant>>,
    pub init: Option<Instant>,
    pub app_exec: Option<Instant>,
    pub exit: Option<Instant>,
}

impl Marks {
    pub fn new(exec: Instant) -> Marks {
        Marks {
            exec,
            pod_opened: None,
            vm_created: None,
            kernel_loaded: None,
            first_run: Arc::default(),
            first_exit: Arc::default(),
            init: None,
            app_exec: None,
            exit: None,
        }
    }

    /// One `name ms` line per phase reached, milliseconds since exec.
    pub fn report(&self) -> String {
        let phases = [
            ("pod-opened", self.pod_opened),
            ("vm-created", self.vm_created),
            ("kernel-loaded", self.kernel_loaded),
            ("first-kvm-run", self.first_run.get().copied()),
            ("first-guest-exit", self.first_exit.get().copied()),
            ("init-entered", self.init),
            ("app-exec", self.app_exec),
            ("exit", self.exit),
        ];
        let mut out = format!(
            "hyperlaunch timing: exec at CLOCK_MONOTONIC {} ns\n",
            monotonic_ns_of(self.exec)
        );
        for (name, t) in phases {
            if let Some(t) = t {
                let ms = t.saturating_duration_since(self.exec).as_secs_f64() * 1e3;
                out.push_str(&format!("hyperlaunch timing: {name:<17} {ms:9.3} ms\n"));
            }
        }
        out
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC` (the clock behind `Instant`) at `t`, for comparing marks
/// across processes.
pub fn monotonic_ns_of(t: Instant) -> u128 {
    // SAFETY: a zeroed timespec is valid; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now = ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128;
    now.saturating_sub(t.elapsed().as_nanos())
}

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub timeout: Option<Duration>,
    pub grace: Duration,
    /// Forward the launcher's SIGINT/SIGTERM to the app (the binary does; tests do not).
    pub forward_signals: bool,
    /// Signal number SIGTERM maps to (the pod's stop signal).
    pub stop_signal: i32,
    /// Feed the launcher's stdin to the console.
    pub stdin: bool,
}

/// How the VM ended: the launcher's exit code and, for its own codes, one line saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    pub message: Option<String>,
}

/// The exit code for a VM that stopped for `why`, given what init reported (pure).
pub fn outcome(why: &Ending, status: Option<u8>, panic: Option<&str>) -> Outcome {
    let own = |code, m: String| Outcome {
        code,
        message: Some(m),
    };
    match why {
        Ending::Timeout(d) => return own(EXIT_TIMEOUT, format!("timed out after {d:?}")),
        Ending::GraceExpired(d) => {
            return own(
                EXIT_GRACE_KILLED,
                format!("the app did not exit within {d:?} of the stop signal; VM stopped"),
            );
        }
        Ending::Vcpu(StopReason::KvmFailure(m)) => return own(EXIT_LAUNCHER, m.clone()),
        Ending::Requested(why) => return own(EXIT_LAUNCHER, format!("stopped: {why}")),
        Ending::Vcpu(_) => {}
    }
    if let Some(code) = status {
        return Outcome {
            code: i32::from(code),
            message: None,
        };
    }
    if let Some(p) = panic {
        return own(EXIT_INIT_PANIC, format!("init panicked: {p}"));
    }
    let m = match why {
        Ending::Vcpu(StopReason::ExitPort(v)) => {
            format!("guest wrote {v} to the exit port without reporting a status")
        }
        Ending::Vcpu(StopReason::Reset) => {
            "guest reset the machine without reporting a status (kernel panic?)".to_string()
        }
        _ => "guest triple-faulted (KVM shutdown exit) without reporting a status".to_string(),
    };
    own(EXIT_NO_STATUS, m)
}

/// Why the supervisor stopped the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Vcpu(StopReason),
    Timeout(Duration),
    GraceExpired(Duration),
    Requested(String),
}

fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// Installs the no-op handler for the vCPU kick signal (without `SA_RESTART`, so `KVM_RUN`
/// returns `EINTR`).
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler that does nothing is a valid argument; the
        // handler is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop_handler as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// Runs vCPU `id` until it stops or `stop` is set.
fn vcpu_loop(
    mut vcpu: VcpuFd,
    id: usize,
    devices: Arc<Mutex<Devices>>,
    stop: Arc<AtomicBool>,
    tx: Sender<Event>,
    first_run: Arc<OnceLock<Instant>>,
    first_exit: Arc<OnceLock<Instant>>,
) {
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if id == 0 {
            first_run.get_or_init(Instant::now);
        }
        let mut internal = false;
        let action = match vcpu.run() {
            Ok(exit) => {
                if id == 0 {
                    first_exit.get_or_init(Instant::now);
                }
                let exit = match exit {
                    VcpuExit::IoIn(p, d) => Exit::IoIn(p, d),
                    VcpuExit::IoOut(p, d) => Exit::IoOut(p, d),
                    VcpuExit::MmioRead(a, d) => Exit::MmioRead(a, d),
                    VcpuExit::MmioWrite(a, d) => Exit::MmioWrite(a, d),
                    VcpuExit::Hlt => Exit::Hlt,
                    VcpuExit::Shutdown => Exit::Shutdown,
                    VcpuExit::Intr => Exit::Interrupted,
                    VcpuExit::InternalError => {
                        internal = true;
                        Exit::Interrupted
                    }
                    VcpuExit::FailEntry(reason, _) => Exit::FailEntry(reason),
                    VcpuExit::Exception => Exit::Other("Exception"),
                    VcpuExit::Debug(_) => Exit::Other("Debug"),
                    VcpuExit::SystemEvent(..) => Exit::Shutdown,
                    VcpuExit::Unknown => Exit::Other("Unknown"),
                    _ => Exit::Other("unsupported"),
                };
                let mut d = devices.lock().unwrap_or_else(|e| e.into_inner());
                handle_exit(exit, &mut *d)
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Action::Continue,
            Err(e) => Action::Stop(StopReason::KvmFailure(format!("KVM_RUN failed: {e}"))),
        };
        let action = if internal {
            // SAFETY: after a KVM_EXIT_INTERNAL_ERROR exit, KVM filled the `internal` member of
            // the run structure's exit union.
            let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
            let mut d = devices.lock().unwrap_or_else(|e| e.into_inner());
            handle_exit(Exit::InternalError(sub), &mut *d)
        } else {
            action
        };
        if let Action::Stop(why) = action {
            let _ = tx.send(Event::Stopped(id, why));
            return;
        }
    }
}

/// Blocks SIGINT and SIGTERM in this thread: with forwarding they go to the `sigwait` thread
/// only; without it, to a thread that is not a spawned vCPU's (and end the process).
fn block_stop_signals() {
    // SAFETY: building a signal set and changing this thread's mask has no memory effects
    // beyond the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Blocks SIGINT/SIGTERM in this thread (and the threads it spawns later) and forwards them as
/// [`Event::Signal`] from a `sigwait` thread.
fn forward_signals(tx: Sender<Event>) {
    // SAFETY: building a signal set and changing this thread's mask has no memory effects
    // beyond the local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        // Seccomp (sandbox.rs): this thread's filter, first thing.
        sandbox::enter(ThreadKind::SignalForwarder);
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised signal set and `sig` a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if tx.send(Event::Signal(sig)).is_err() {
                return;
            }
        }
    });
}

fn forward_stdin(devices: Arc<Mutex<Devices>>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        // Seccomp (sandbox.rs): this thread's filter, first thing.
        sandbox::enter(ThreadKind::StdinForwarder);
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                return;
            }
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let fed = {
                    let mut d = devices.lock().unwrap_or_else(|e| e.into_inner());
                    serial::feed(&mut d.console, rest)
                };
                rest = &rest[fed..];
                if fed == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    });
}

/// A VM with its vCPUs ready to run.
pub struct Runner {
    pub vcpus: Vec<VcpuFd>,
    pub devices: Arc<Mutex<Devices>>,
    pub events: Receiver<Event>,
    pub events_tx: Sender<Event>,
}

/// A running vCPU thread as the supervisor sees it: where to send the kick, and whether its
/// loop has returned.
struct VcpuThread {
    pthread: libc::pthread_t,
    done: Arc<AtomicBool>,
}

/// What the supervisor learnt by the end of the run.
struct Supervised {
    ending: Ending,
    status: Option<u8>,
    panic: Option<String>,
    init: Option<Instant>,
    app_exec: Option<Instant>,
    exit: Instant,
}

/// Runs the VM to its end; returns the launcher's exit code. vCPU 0 runs on the calling
/// thread, so nothing but this thread's own work stands between the caller and the guest's
/// first instruction; a supervisor thread (events, signals, stdin, timeout) and the other
/// vCPUs' threads are started first.
pub fn run(runner: Runner, opts: &RunOptions, marks: &mut Marks) -> Outcome {
    install_kick_handler();
    if opts.forward_signals {
        // Every thread of the run inherits this mask; the forwarding thread takes the
        // signals with sigwait.
        block_stop_signals();
    }
    let Runner {
        vcpus,
        devices,
        events,
        events_tx,
    } = runner;
    // Seccomp (sandbox.rs): every filter compiled before a run thread starts; each thread enters
    // its own first thing, and vCPU 0 runs only once all have.
    if let Err(e) = sandbox::prepare_run(vcpus.len(), opts.forward_signals, opts.stdin) {
        return Outcome {
            code: EXIT_LAUNCHER,
            message: Some(e.to_string()),
        };
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut vcpus = vcpus.into_iter();
    let Some(vcpu0) = vcpus.next() else {
        return Outcome {
            code: EXIT_LAUNCHER,
            message: Some("no vCPU to run".into()),
        };
    };
    let done0 = Arc::new(AtomicBool::new(false));
    // SAFETY: pthread_self has no preconditions.
    let this_thread = unsafe { libc::pthread_self() };
    let mut kicks = vec![VcpuThread {
        pthread: this_thread,
        done: done0.clone(),
    }];
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut failed = None;
    for (id, vcpu) in vcpus.enumerate().map(|(i, v)| (i + 1, v)) {
        let (d, s, tx) = (devices.clone(), stop.clone(), events_tx.clone());
        let (fr, fe) = (marks.first_run.clone(), marks.first_exit.clone());
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                // Seccomp (sandbox.rs): this thread's filter, first thing.
                sandbox::enter(ThreadKind::Vcpu);
                block_stop_signals();
                vcpu_loop(vcpu, id, d, s, tx, fr, fe);
                finished.store(true, Ordering::SeqCst);
            });
        match spawned {
            Ok(t) => {
                kicks.push(VcpuThread {
                    pthread: t.as_pthread_t(),
                    done,
                });
                threads.push(t);
            }
            Err(e) => {
                failed = Some(format!("cannot start vCPU thread: {e}"));
                break;
            }
        }
    }
    let kicks: Arc<[VcpuThread]> = kicks.into();
    let supervisor = if failed.is_none() {
        let (opts, devices, stop, tx, kicks) = (
            opts.clone(),
            devices.clone(),
            stop.clone(),
            events_tx.clone(),
            kicks.clone(),
        );
        std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || supervise(&opts, events, tx, devices, stop, &kicks))
            .map_err(|e| failed = Some(format!("cannot start the supervisor thread: {e}")))
            .ok()
    } else {
        None
    };
    let Some(supervisor) = supervisor else {
        // vCPU 0 has not run: only the started threads need stopping.
        done0.store(true, Ordering::SeqCst);
        stop_vcpus(&stop, &kicks);
        join_finished(threads);
        return Outcome {
            code: EXIT_LAUNCHER,
            message: failed,
        };
    };
    let (fr, fe) = (marks.first_run.clone(), marks.first_exit.clone());
    // Seccomp (sandbox.rs): the main thread's filter; returns once every run thread has its own.
    sandbox::enter_and_wait(ThreadKind::Main);
    vcpu_loop(vcpu0, 0, devices, stop, events_tx, fr, fe);
    done0.store(true, Ordering::SeqCst);
    let Ok(sup) = supervisor.join() else {
        return Outcome {
            code: EXIT_LAUNCHER,
            message: Some("the supervisor thread panicked".into()),
        };
    };
    // The supervisor returned after every vCPU loop did (or gave up on one).
    join_finished(threads);
    marks.init = sup.init;
    marks.app_exec = sup.app_exec;
    marks.exit = Some(sup.exit);
    outcome(&sup.ending, sup.status, sup.panic.as_deref())
}

/// The supervisor thread: starts signal and stdin forwarding, then follows the run's events
/// until the VM ends, and stops every vCPU.
fn supervise(
    opts: &RunOptions,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    devices: Arc<Mutex<Devices>>,
    stop: Arc<AtomicBool>,
    vcpus: &[VcpuThread],
) -> Supervised {
    if opts.forward_signals {
        forward_signals(events_tx);
    } else {
        drop(events_tx);
    }
    if opts.stdin {
        forward_stdin(devices.clone(), stop.clone());
    }
    // Seccomp (sandbox.rs): this thread's filter, once the forwarders are started.
    sandbox::enter(ThreadKind::Supervisor);
    let start = Instant::now();
    // An unrepresentable deadline (the command line caps it first) is no deadline.
    let deadline = opts.timeout.and_then(|t| start.checked_add(t));
    let mut grace_deadline: Option<Instant> = None;
    let mut status: Option<u8> = None;
    let mut panic: Option<String> = None;
    let (mut init, mut app_exec) = (None, None);
    // Signal lines for the guest wait here until the devices are free: a vCPU can hold them
    // for long (a console write to a stdout nobody reads), and the deadlines must still run.
    let mut unsent: Vec<String> = Vec::new();
    let ending = loop {
        if !unsent.is_empty() {
            let free = match devices.try_lock() {
                Ok(d) => Some(d),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut d) = free {
                for line in unsent.drain(..) {
                    serial::feed(&mut d.control, line.as_bytes());
                }
            }
        }
        let retry = (!unsent.is_empty()).then(|| Instant::now() + SIGNAL_RETRY);
        let next = [deadline, grace_deadline, retry]
            .into_iter()
            .flatten()
            .min();
        let ev = match next {
            Some(at) => events.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match ev {
            Ok(Event::Control(ControlReport::Event(at, ev))) => match ev {
                GuestEvent::Mark(Mark::Init) => init = Some(at),
                GuestEvent::Mark(Mark::Exec) => app_exec = Some(at),
                GuestEvent::Exit(code) => status = Some(code),
                GuestEvent::Panic(p) => panic = Some(p),
            },
            Ok(Event::Control(ControlReport::Bad(e))) => {
                eprintln!("hyperlaunch: ignoring control line: {e}");
            }
            Ok(Event::Stopped(_, why)) => break Ending::Vcpu(why),
            Ok(Event::Stop(why)) => break Ending::Requested(why),
            Ok(Event::Signal(sig)) => {
                let signo = if sig == libc::SIGTERM {
                    opts.stop_signal
                } else {
                    sig
                };
                unsent.push(control::signal_line(signo));
                if let Some(at) = Instant::now().checked_add(opts.grace) {
                    grace_deadline.get_or_insert(at);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if let (Some(t), Some(d)) = (opts.timeout, deadline) {
                    if now >= d {
                        break Ending::Timeout(t);
                    }
                }
                if grace_deadline.is_some_and(|g| now >= g) {
                    break Ending::GraceExpired(opts.grace);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                break Ending::Vcpu(StopReason::KvmFailure(
                    "every vCPU thread ended without a reason".into(),
                ));
            }
        }
    };
    let stopped = stop_vcpus(&stop, vcpus);
    // Lines written just before the stop are already queued: take them into account.
    while let Ok(ev) = events.try_recv() {
        if let Event::Control(ControlReport::Event(_, GuestEvent::Exit(code))) = ev {
            status.get_or_insert(code);
        }
    }
    let sup = Supervised {
        ending,
        status,
        panic,
        init,
        app_exec,
        exit: Instant::now(),
    };
    if !stopped {
        // A vCPU stuck in KVM_RUN (the calling thread's among them) would keep the process
        // alive: end it here with the run's outcome.
        let o = outcome(&sup.ending, sup.status, sup.panic.as_deref());
        let why = o.message.map(|m| format!("{m}; ")).unwrap_or_default();
        eprintln!("hyperlaunch: {why}a vCPU did not stop within 2 s of the VM's end; exiting");
        super::term::restore();
        std::process::exit(o.code);
    }
    sup
}

/// Stops every vCPU: sets the flag, then kicks each thread out of `KVM_RUN` until its loop has
/// returned. False if one has not within 2 s.
fn stop_vcpus(stop: &AtomicBool, vcpus: &[VcpuThread]) -> bool {
    stop.store(true, Ordering::SeqCst);
    let give_up = Instant::now() + Duration::from_secs(2);
    for v in vcpus {
        while !v.done.load(Ordering::SeqCst) {
            if Instant::now() >= give_up {
                return false;
            }
            // SAFETY: the thread is alive: its owner joins it only after this function has
            // returned; the kick signal has a no-op handler.
            unsafe {
                libc::pthread_kill(v.pthread, kick_signal());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    true
}

/// Joins the threads that have ended (one stuck in `KVM_RUN` is left to the process's exit).
fn join_finished(threads: Vec<JoinHandle<()>>) {
    for t in threads.into_iter().filter(|t| t.is_finished()) {
        let _ = t.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_protocol_table() {
        let port = Ending::Vcpu(StopReason::ExitPort(0));
        assert_eq!(outcome(&port, Some(42), None).code, 42);
        assert_eq!(outcome(&port, None, Some("boom")).code, EXIT_INIT_PANIC);
        assert_eq!(outcome(&port, None, None).code, EXIT_NO_STATUS);
        let reset = Ending::Vcpu(StopReason::Reset);
        assert_eq!(outcome(&reset, Some(0), None).code, 0);
        let o = outcome(&reset, None, None);
        assert_eq!(o.code, EXIT_NO_STATUS);
        assert!(o.message.unwrap().contains("reset"));
        let tf = outcome(&Ending::Vcpu(StopReason::TripleFault), None, None);
        assert_eq!(tf.code, EXIT_NO_STATUS);
        assert!(tf.message.unwrap().contains("triple-fault"));
        let t = outcome(&Ending::Timeout(Duration::from_secs(1)), Some(3), None);
        assert_eq!(t.code, EXIT_TIMEOUT);
        let k = Ending::Vcpu(StopReason::KvmFailure("KVM internal error: x".into()));
        let o = outcome(&k, Some(3), None);
        assert_eq!(
            (o.code, o.message.as_deref()),
            (125, Some("KVM internal error: x"))
        );
        let g = outcome(&Ending::GraceExpired(Duration::from_secs(2)), None, None);
        assert_eq!(g.code, EXIT_GRACE_KILLED);
        let r = outcome(&Ending::Requested("enough".into()), None, None);
        assert_eq!(
            (r.code, r.message.as_deref()),
            (125, Some("stopped: enough"))
        );
    }

    #[test]
    fn timing_report_lists_reached_phases_in_order() {
        let exec = Instant::now();
        let mut m = Marks::new(exec);
        m.pod_opened = Some(exec + Duration::from_millis(1));
        m.exit = Some(exec + Duration::from_millis(30));
        let r = m.report();
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("CLOCK_MONOTONIC"));
        assert!(lines[1].contains("pod-opened") && lines[1].contains("1.000 ms"));
        assert!(lines[2].contains("exit") && lines[2].contains("30.000 ms"));
    }
}
