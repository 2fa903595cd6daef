//! A KVM run's threads, started ahead of their work. Each thread compiles (see `program`) and
//! installs its own seccomp filter first thing, then waits for the work [`Ready::run`] hands it.
//! A launch starts its crew as soon as it knows the run's shape (after opening the pod,
//! `vmm::build_vm_for_boot`), so the threads are created and filtered on the other cores while
//! the main thread builds the VM; measured in docs/BENCHMARKS.md ("cost of the seccomp
//! sandbox"). The main thread enters last ([`Gate::enter_main_and_wait`]) and runs vCPU 0 only
//! once every thread of its crew has its filter.
//!
//! A crew dropped without work (the VM could not be built) ends: each thread's wait for its job
//! fails and it returns, under its filter.

use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{SandboxError, ThreadKind, fatal, install, install_sigsys_reporter};

/// How long [`Gate::enter_main_and_wait`] waits for the other threads' filters. A thread that
/// fails to install its filter ends the process itself; this only bounds a thread never being
/// scheduled. 2 s was too short for a busy host: at load 17 a crew thread missed it and the
/// launch failed (1 in ~1,900 launches, 2026-12-03).
const WAIT: Duration = Duration::from_secs(30);

/// The shape of a run: which threads it has besides the main thread (vCPU 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// vCPUs in all; vCPU 0 runs on the main thread, each other one on a thread of its own.
    pub vcpus: usize,
    /// The signal forwarder (SIGINT/SIGTERM/SIGWINCH to the guest).
    pub signals: bool,
    /// The stdin forwarder (`-i`).
    pub stdin: bool,
    /// The network backend thread (a network device).
    pub net: bool,
    /// The TAP backend's port forwarder (published ports with `--network tap`).
    pub forward: bool,
}

impl Plan {
    /// Threads other than the main thread: the vCPUs but 0, the supervisor, the forwarders and
    /// the network thread.
    pub fn threads(&self) -> usize {
        self.vcpus.saturating_sub(1)
            + 1
            + usize::from(self.signals)
            + usize::from(self.stdin)
            + usize::from(self.net)
            + usize::from(self.forward)
    }
}

/// The threads of a crew still to install their filters.
struct Pending {
    left: Mutex<usize>,
    entered: Condvar,
}

type Job = Box<dyn FnOnce() + Send>;

/// A started thread under its filter (or about to be), waiting for its work.
pub struct Ready {
    job: SyncSender<Job>,
    thread: JoinHandle<()>,
}

impl Ready {
    fn start(kind: ThreadKind, name: String, pending: Arc<Pending>) -> std::io::Result<Ready> {
        let (job, jobs) = sync_channel::<Job>(1);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            if let Err(e) = install(kind) {
                fatal(&format!("hyperlaunch: sandbox: {e}"));
            }
            {
                let mut left = pending.left.lock().unwrap_or_else(|e| e.into_inner());
                *left = left.saturating_sub(1);
            }
            pending.entered.notify_all();
            drop(pending);
            if let Ok(work) = jobs.recv() {
                work();
            }
        })?;
        Ok(Ready { job, thread })
    }

    /// The thread's id, for signals (the vCPU kicks).
    pub fn pthread(&self) -> std::os::unix::thread::RawPthread {
        self.thread.as_pthread_t()
    }

    /// Hands the thread its work; returns its handle.
    pub fn run(self, work: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
        // The thread holds the receiver until it has a job (or the process ends): the send
        // cannot fail, and the one-slot channel never blocks for the one job.
        let _ = self.job.send(Box::new(work));
        self.thread
    }
}

/// Where the main thread waits for its crew's filters.
pub struct Gate {
    pending: Arc<Pending>,
}

impl Gate {
    /// Installs the main thread's filter, then waits until every thread of the crew has
    /// installed its own; a thread that has not within [`WAIT`] ends the process (125).
    pub fn enter_main_and_wait(self) {
        if let Err(e) = install(ThreadKind::Main) {
            fatal(&format!("hyperlaunch: sandbox: {e}"));
        }
        let left = self.pending.left.lock().unwrap_or_else(|e| e.into_inner());
        let (left, timeout) = self
            .pending
            .entered
            .wait_timeout_while(left, WAIT, |l| *l > 0)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() && *left > 0 {
            fatal(&format!(
                "hyperlaunch: sandbox: {} thread(s) did not install their seccomp filter within {WAIT:?}",
                *left
            ));
        }
    }
}

/// The threads of one run, each started and entering its filter.
pub struct Crew {
    pub plan: Plan,
    pub gate: Gate,
    /// vCPUs 1 to `plan.vcpus - 1`, in order.
    pub vcpus: Vec<Ready>,
    pub supervisor: Ready,
    pub signals: Option<Ready>,
    pub stdin: Option<Ready>,
    pub net: Option<Ready>,
    pub forward: Option<Ready>,
}

impl Crew {
    /// Installs the SIGSYS reporter and starts the threads of `plan` (named as `ps` shows
    /// them: `vcpuN`, `supervisor`, `signals`, `stdin`, `net`, `forward`).
    pub fn start(plan: Plan) -> Result<Crew, SandboxError> {
        install_sigsys_reporter()?;
        let pending = Arc::new(Pending {
            left: Mutex::new(plan.threads()),
            entered: Condvar::new(),
        });
        let start = |kind, name: &str| {
            Ready::start(kind, name.to_string(), pending.clone())
                .map_err(|e| SandboxError::Spawn(name.to_string(), e))
        };
        let optional = |wanted: bool, kind, name| wanted.then(|| start(kind, name)).transpose();
        let vcpus = (1..plan.vcpus)
            .map(|id| start(ThreadKind::Vcpu, &format!("vcpu{id}")))
            .collect::<Result<Vec<_>, _>>()?;
        let supervisor = start(ThreadKind::Supervisor, "supervisor")?;
        let signals = optional(plan.signals, ThreadKind::SignalForwarder, "signals")?;
        let stdin = optional(plan.stdin, ThreadKind::StdinForwarder, "stdin")?;
        let net = optional(plan.net, ThreadKind::Net, "net")?;
        let forward = optional(plan.forward, ThreadKind::Forward, "forward")?;
        Ok(Crew {
            plan,
            gate: Gate { pending },
            vcpus,
            supervisor,
            signals,
            stdin,
            net,
            forward,
        })
    }
}
