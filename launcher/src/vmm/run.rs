//! Running a built VM: one thread per vCPU (vCPU 0 on the calling thread), the engine-neutral
//! supervisor ([`crate::supervisor`]) on its own thread, signal and stdin forwarding.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use pod::protocol::{EXIT_LAUNCHER, HostLine};

use super::exit::{Action, Exit, StopReason, handle_exit};
use crate::devices::Devices;
use crate::devices::serial;
use crate::sandbox;
use crate::supervisor::{self, EventReceiver, EventSender, Machine, MachineEnd};
pub use crate::supervisor::{Event, Outcome};
pub use crate::timing::Marks;

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub timeout: Option<Duration>,
    pub grace: Duration,
    /// Forward the launcher's SIGINT/SIGTERM/SIGWINCH to the app (the binary does; tests do not).
    pub forward_signals: bool,
    /// Signal number SIGTERM maps to (the pod's stop signal).
    pub stop_signal: i32,
    /// Feed the launcher's stdin to the app (`-i`).
    pub stdin: bool,
    /// The app has a terminal (`-t`).
    pub tty: bool,
}

impl From<StopReason> for MachineEnd {
    fn from(r: StopReason) -> MachineEnd {
        match r {
            StopReason::ExitPort(v) => MachineEnd::ExitPort(v),
            StopReason::Reset => MachineEnd::Reset,
            StopReason::TripleFault => MachineEnd::TripleFault,
            StopReason::KvmFailure(m) => MachineEnd::Failed(m),
        }
    }
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
    tx: EventSender,
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
            let _ = tx.send(Event::Ended(why.into()));
            return;
        }
    }
}

/// Blocks the launch's signals in this thread: a spawned vCPU thread must never take them.
fn block_stop_signals() {
    crate::stdio::block_signals();
}

/// A VM with its vCPUs ready to run.
pub struct Runner {
    pub vcpus: Vec<VcpuFd>,
    pub devices: Arc<Mutex<Devices>>,
    pub events: EventReceiver,
    pub events_tx: EventSender,
    /// The run's threads when they were started while the VM was built (sandbox.rs); `None`:
    /// [`run`] starts them.
    pub crew: Option<sandbox::Crew>,
    /// The TAP backend's port forwarder: run on a `forward` thread until the VM stops.
    pub forwarder: Option<crate::net::forward::Forwarder>,
    /// What the supervisor thread drops as its first act, off the main thread's way to the
    /// guest: the pod's mapping (its `munmap`, and the TLB shootdown on the other cores that
    /// comes with it, cost the main thread 20-90 µs here).
    pub release: Option<Box<dyn Send>>,
}

/// A running vCPU thread as the supervisor sees it: where to send the kick, and whether its
/// loop has returned.
struct VcpuThread {
    pthread: std::os::unix::thread::RawPthread,
    done: Arc<AtomicBool>,
}

/// The KVM engine as the supervisor drives it.
struct KvmMachine {
    devices: Arc<Mutex<Devices>>,
    stop: Arc<AtomicBool>,
    vcpus: Arc<[VcpuThread]>,
}

impl Machine for KvmMachine {
    fn send_line(&mut self, line: &HostLine) -> bool {
        // A vCPU can hold the devices for long (a console write to a stdout nobody reads): the
        // supervisor must not wait for them, its deadlines still run.
        let mut d = match self.devices.try_lock() {
            Ok(d) => d,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        let bytes = line.format();
        if d.control.fifo_capacity() < bytes.len() {
            return false;
        }
        serial::feed(&mut d.control, bytes.as_bytes());
        true
    }

    fn finish(&mut self, _stop: bool) -> Result<(), String> {
        // Whatever ended the run, every vCPU stops now.
        if stop_vcpus(&self.stop, &self.vcpus) {
            Ok(())
        } else {
            Err("a vCPU did not stop within 2 s of the VM's end".into())
        }
    }
}

/// Runs the VM to its end; returns the launcher's exit code. vCPU 0 runs on the calling
/// thread, so nothing but this thread's own work stands between the caller and the guest's
/// first instruction; the run's other threads (the runner's crew if it was started while the
/// VM was built and fits the run, else one started here) are handed their work first.
pub fn run(runner: Runner, opts: &RunOptions, marks: &mut Marks) -> Outcome {
    install_kick_handler();
    crate::stdio::set_stopping(false);
    if opts.forward_signals {
        // Every thread started from here inherits this mask; the forwarding thread takes the
        // signals with sigwait.
        block_stop_signals();
    }
    let Runner {
        vcpus,
        devices,
        events,
        events_tx,
        crew,
        forwarder,
        release,
    } = runner;
    let fail = |message: String| Outcome {
        code: EXIT_LAUNCHER,
        message: Some(message),
    };
    if vcpus.is_empty() {
        return fail("no vCPU to run".into());
    }
    // The network backend thread's handles and the stdin thread's wake-up eventfd, duplicated
    // before any thread is handed its work.
    let net_io = match net_io(&devices) {
        Ok(io) => io,
        Err(e) => return fail(format!("network device: {e}")),
    };
    let stdin_ready = match opts.stdin.then(|| stdin_ready(&devices)).transpose() {
        Ok(ready) => ready,
        Err(e) => return fail(format!("cannot watch the stdio device: {e}")),
    };
    // Seccomp (sandbox.rs): every thread of the run is under its own filter before it is
    // handed its work, and vCPU 0 runs only once all are.
    let plan = sandbox::Plan {
        vcpus: vcpus.len(),
        signals: opts.forward_signals,
        stdin: stdin_ready.is_some(),
        net: net_io.is_some(),
        forward: forwarder.is_some(),
    };
    let crew = match crew.filter(|c| c.plan == plan) {
        Some(c) => c,
        None => match sandbox::Crew::start(plan) {
            Ok(c) => c,
            Err(e) => return fail(e.to_string()),
        },
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut vcpus = vcpus.into_iter();
    let vcpu0 = vcpus.next().expect("checked above");
    let done0 = Arc::new(AtomicBool::new(false));
    // SAFETY: pthread_self has no preconditions.
    let this_thread = unsafe { libc::pthread_self() } as std::os::unix::thread::RawPthread;
    let mut kicks = vec![VcpuThread {
        pthread: this_thread,
        done: done0.clone(),
    }];
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for ((id, vcpu), thread) in (1..).zip(vcpus).zip(crew.vcpus) {
        let (d, s, tx) = (devices.clone(), stop.clone(), events_tx.clone());
        let (fr, fe) = (marks.first_run.clone(), marks.first_exit.clone());
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        kicks.push(VcpuThread {
            pthread: thread.pthread(),
            done,
        });
        threads.push(thread.run(move || {
            block_stop_signals();
            vcpu_loop(vcpu, id, d, s, tx, fr, fe);
            finished.store(true, Ordering::SeqCst);
        }));
    }
    if let (Some(io), Some(thread)) = (net_io, crew.net) {
        let (d, s) = (devices.clone(), stop.clone());
        // The thread is not joined: it returns within 100 ms of the stop flag, or ends with the
        // process.
        thread.run(move || {
            block_stop_signals();
            crate::devices::virtio_net::serve(io, &s, &*d);
        });
    }
    if let (Some(f), Some(thread)) = (forwarder, crew.forward) {
        let s = stop.clone();
        // Not joined either: it returns within 100 ms of the stop flag.
        thread.run(move || {
            block_stop_signals();
            f.run(&s);
        });
    }
    let kicks: Arc<[VcpuThread]> = kicks.into();
    if let Some(thread) = crew.signals {
        let tx = events_tx.clone();
        let forward =
            crate::stdio::signal_forwarder(move |sig| tx.send(Event::Signal(sig)).is_ok());
        thread.run(move || {
            block_stop_signals();
            forward();
        });
    }
    let gate = Arc::new(supervisor::StdinGate::default());
    if let (Some(ready), Some(thread)) = (stdin_ready, crew.stdin) {
        thread.run(stdin_forwarder(
            gate.clone(),
            devices.clone(),
            ready,
            stop.clone(),
        ));
    }
    let sup_opts = supervisor::Options {
        timeout: opts.timeout,
        grace: opts.grace,
        stop_signal: opts.stop_signal,
        tty: opts.tty,
    };
    let mut machine = KvmMachine {
        devices: devices.clone(),
        stop: stop.clone(),
        vcpus: kicks,
    };
    let (report_tx, report) = std::sync::mpsc::sync_channel(1);
    let supervisor = crew.supervisor.run(move || {
        drop(release);
        block_stop_signals();
        let r = supervisor::supervise(&sup_opts, &events, &mut machine, &gate);
        let _ = report_tx.send(r);
    });
    let (fr, fe) = (marks.first_run.clone(), marks.first_exit.clone());
    // Seccomp (sandbox.rs): the main thread's filter; returns once every run thread has its own.
    crew.gate.enter_main_and_wait();
    vcpu_loop(vcpu0, 0, devices, stop, events_tx, fr, fe);
    done0.store(true, Ordering::SeqCst);
    let Some(report) = supervisor.join().ok().and_then(|()| report.try_recv().ok()) else {
        return fail("the supervisor thread panicked".into());
    };
    // The supervisor returned after every vCPU loop did.
    join_finished(threads);
    marks.add_report(&report);
    report.outcome()
}

/// The network device's socket and wake-up eventfd, duplicated for its backend thread (`None`:
/// the VM has no network device).
fn net_io(
    devices: &Mutex<Devices>,
) -> Result<Option<crate::devices::virtio_net::NetIo>, crate::devices::virtio_net::VirtioNetError> {
    let d = devices.lock().unwrap_or_else(|e| e.into_inner());
    d.net.as_ref().map(|n| n.io()).transpose()
}

/// The stdio device's receive-ready eventfd, duplicated for the stdin thread.
fn stdin_ready(devices: &Mutex<Devices>) -> std::io::Result<vmm_sys_util::eventfd::EventFd> {
    let d = devices.lock().unwrap_or_else(|e| e.into_inner());
    d.stdio.rx_ready_evt().try_clone()
}

/// The stdin thread's work: feeds the launcher's stdin to the app through the stdio device,
/// until the VM stops. When the guest has no receive buffer posted, waits for it to post some
/// (`ready`, the device's eventfd), checking the stop flag every 50 ms.
fn stdin_forwarder(
    gate: Arc<supervisor::StdinGate>,
    devices: Arc<Mutex<Devices>>,
    ready: vmm_sys_util::eventfd::EventFd,
    stop: Arc<AtomicBool>,
) -> impl FnOnce() + Send + 'static {
    crate::stdio::stdin_forwarder(gate, move |mut frames| {
        while !frames.is_empty() {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let fed = {
                let mut d = devices.lock().unwrap_or_else(|e| e.into_inner());
                d.push_stdin(frames)
            };
            frames = &frames[fed..];
            if fed == 0 {
                wait_readable(&ready, Duration::from_millis(50));
            }
        }
        true
    })
}

/// Waits up to `limit` for `evt` to be signalled and clears it.
fn wait_readable(evt: &vmm_sys_util::eventfd::EventFd, limit: Duration) {
    use std::os::fd::AsRawFd;
    let mut fds = [libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
    if n > 0 {
        let _ = evt.read();
    }
}

/// Stops every vCPU: sets the flag, then kicks each thread out of `KVM_RUN` until its loop has
/// returned. False if one has not within 2 s.
fn stop_vcpus(stop: &AtomicBool, vcpus: &[VcpuThread]) -> bool {
    stop.store(true, Ordering::SeqCst);
    // A vCPU blocked writing output to a stalled reader gives up when kicked.
    crate::stdio::set_stopping(true);
    let give_up = Instant::now() + Duration::from_secs(2);
    for v in vcpus {
        while !v.done.load(Ordering::SeqCst) {
            if Instant::now() >= give_up {
                return false;
            }
            // SAFETY: the thread is alive: its owner joins it only after this function has
            // returned; the kick signal has a no-op handler.
            unsafe {
                libc::pthread_kill(v.pthread as libc::pthread_t, kick_signal());
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
