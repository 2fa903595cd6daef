//! The one supervisor of a run, whatever the engine: it follows init's control lines, maps host
//! signals to control lines (SIGTERM → the pod's stop signal, Ctrl-C → `S 2`, SIGWINCH → `W`),
//! enforces `--timeout` and `--grace`, turns the run's end into the launcher's exit code and
//! keeps the `--timing` marks.
//!
//! An engine is only "how to start a machine and where its bytes come from": it feeds
//! [`Event`]s into a channel and implements [`Machine`] (hand a line to init; end the machine).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{
    Receiver, RecvError, RecvTimeoutError, SendError, SyncSender, TryRecvError, TrySendError,
};
use std::time::{Duration, Instant};

use pod::protocol::{
    EXIT_GRACE_KILLED, EXIT_INIT_PANIC, EXIT_LAUNCHER, EXIT_NO_STATUS, EXIT_PROTOCOL, EXIT_TIMEOUT,
    GuestLine, HostLine, LineError, MAX_BAD_LINES, Mark,
};

/// How often the supervisor retries handing a line to a busy machine.
const LINE_RETRY: Duration = Duration::from_millis(5);
/// How long the machine may take to end after init reported the app's status.
pub const END_AFTER_STATUS: Duration = Duration::from_secs(10);

/// Events queued for the supervisor and not taken yet, at most: the queue holds at most this
/// many (each a control line of at most 64 bytes, a signal number or an end).
pub const EVENT_QUEUE: usize = 64;
/// How often a sender waiting for room in the queue looks again (and whether the supervisor
/// still takes events).
const SEND_RETRY: Duration = Duration::from_millis(1);

/// The queue of [`Event`]s from the engine's threads (the control port's lines on a vCPU
/// thread, the signal forwarder, the end of the machine) to the supervisor, bounded to
/// [`EVENT_QUEUE`] events. Policy: a sender finding it full waits for room — backpressure on
/// the sender (a vCPU stops emulating the guest's write to the control port, and with it that
/// guest vCPU, until the supervisor has caught up), never more memory — and gives up (the event
/// is dropped) once the supervisor has stopped following events ([`EventReceiver::close`]):
/// the end of a run never waits for a full queue.
pub fn event_queue() -> (EventSender, EventReceiver) {
    let (tx, rx) = std::sync::mpsc::sync_channel(EVENT_QUEUE);
    let closed = Arc::new(AtomicBool::new(false));
    (
        EventSender {
            tx,
            closed: closed.clone(),
        },
        EventReceiver { rx, closed },
    )
}

/// The sending side of [`event_queue`].
#[derive(Clone, Debug)]
pub struct EventSender {
    tx: SyncSender<Event>,
    closed: Arc<AtomicBool>,
}

impl EventSender {
    /// Queues `ev`, waiting while the queue is full; an error gives `ev` back when the
    /// supervisor is gone or no longer follows events.
    pub fn send(&self, ev: Event) -> Result<(), SendError<Event>> {
        let mut ev = ev;
        loop {
            match self.tx.try_send(ev) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(e)) => return Err(SendError(e)),
                Err(TrySendError::Full(e)) => {
                    if self.closed.load(Ordering::SeqCst) {
                        return Err(SendError(e));
                    }
                    ev = e;
                    std::thread::sleep(SEND_RETRY);
                }
            }
        }
    }
}

/// The supervisor's side of [`event_queue`].
#[derive(Debug)]
pub struct EventReceiver {
    rx: Receiver<Event>,
    closed: Arc<AtomicBool>,
}

impl EventReceiver {
    pub fn recv(&self) -> Result<Event, RecvError> {
        self.rx.recv()
    }

    pub fn recv_timeout(&self, limit: Duration) -> Result<Event, RecvTimeoutError> {
        self.rx.recv_timeout(limit)
    }

    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        self.rx.try_recv()
    }

    /// The supervisor follows events no more: a sender finding the queue full stops waiting
    /// and drops its event (what is queued can still be taken).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// What the supervisor hears about.
#[derive(Debug)]
pub enum Event {
    /// A control line from init, with the host time it arrived.
    Line(Instant, Result<GuestLine, LineError>),
    /// A host signal the launcher received (SIGINT, SIGTERM, SIGWINCH).
    Signal(i32),
    /// The machine ended by itself (the engine has taken in all of the app's output).
    Ended(MachineEnd),
    /// Stop the machine now (an embedder's request, e.g. a test that has seen enough).
    Stop(String),
}

/// How a machine ended by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineEnd {
    /// init (or anything) wrote this byte to the exit port.
    ExitPort(u8),
    /// The guest reset the machine (i8042, or QEMU's `-no-reboot` exit).
    Reset,
    /// Triple fault / shutdown.
    TripleFault,
    /// The engine failed: it could not run the guest, or lost it (one line saying why).
    Failed(String),
}

/// Why the run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    Machine(MachineEnd),
    Timeout(Duration),
    GraceExpired(Duration),
    /// Init reported the status but the machine did not end within [`END_AFTER_STATUS`].
    StatusButNoEnd,
    Requested(String),
    /// The guest broke the control protocol (one line saying how).
    Protocol(String),
}

/// How to supervise.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub timeout: Option<Duration>,
    pub grace: Duration,
    /// Signal number SIGTERM maps to (the pod's stop signal).
    pub stop_signal: i32,
    /// The app has a terminal (`-t`): SIGWINCH sends the host terminal's size.
    pub tty: bool,
}

/// The engine's side of the supervision.
pub trait Machine {
    /// Hands a control line to init; `false` when the machine cannot take it now (the
    /// supervisor retries soon).
    fn send_line(&mut self, line: &HostLine) -> bool;
    /// Ends the machine: stops it first when `stop` (it may still run), then waits for it to be
    /// gone and its output drained. `Err` (one line) when it could not be stopped.
    fn finish(&mut self, stop: bool) -> Result<(), String>;
}

/// Opens once init has set up the app's stdio (the `T exec` mark): stdin bytes sent before
/// would meet the stdio device's terminal still in its default, cooked mode (echo, and
/// control characters taken as signals).
#[derive(Debug, Default)]
pub struct StdinGate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl StdinGate {
    pub fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.opened.notify_all();
    }

    /// Blocks until [`StdinGate::open`].
    pub fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The launcher's exit code and, for its own codes, one line saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: i32,
    pub message: Option<String>,
}

/// What the supervisor learnt.
#[derive(Clone, Debug)]
pub struct Report {
    pub ending: Ending,
    pub status: Option<u8>,
    pub panic: Option<String>,
    pub init: Option<Instant>,
    pub app_exec: Option<Instant>,
    pub status_at: Option<Instant>,
    pub ended_at: Instant,
}

impl Report {
    /// The exit code for this run (pure).
    pub fn outcome(&self) -> Outcome {
        outcome(&self.ending, self.status, self.panic.as_deref())
    }
}

/// The exit code for a run that ended for `why`, given what init reported (pure). A launcher
/// failure is always 125; otherwise the app's reported status wins; then init's panic; then the
/// launcher's own reasons.
pub fn outcome(why: &Ending, status: Option<u8>, panic: Option<&str>) -> Outcome {
    let own = |code, m: String| Outcome {
        code,
        message: Some(m),
    };
    match why {
        Ending::Machine(MachineEnd::Failed(m)) => return own(EXIT_LAUNCHER, m.clone()),
        Ending::Requested(why) => return own(EXIT_LAUNCHER, format!("stopped: {why}")),
        _ => {}
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
    match why {
        Ending::Timeout(d) => own(
            EXIT_TIMEOUT,
            format!("timeout expired after {d:?}; VM stopped"),
        ),
        Ending::GraceExpired(d) => own(
            EXIT_GRACE_KILLED,
            format!("the app did not exit within {d:?} of the stop signal; VM stopped"),
        ),
        Ending::Protocol(why) => own(
            EXIT_PROTOCOL,
            format!("the guest broke the control protocol: {why}; VM stopped"),
        ),
        Ending::Machine(MachineEnd::ExitPort(v)) => own(
            EXIT_NO_STATUS,
            format!("guest wrote {v} to the exit port without reporting a status"),
        ),
        Ending::Machine(MachineEnd::Reset) => own(
            EXIT_NO_STATUS,
            "guest reset the machine without reporting a status (kernel panic?)".into(),
        ),
        _ => own(
            EXIT_NO_STATUS,
            "guest triple-faulted (shutdown) without reporting a status".into(),
        ),
    }
}

/// The control line a host signal becomes, if any (pure). `window` gives the host terminal's
/// size for SIGWINCH.
pub fn signal_line(
    sig: i32,
    opts: &Options,
    window: impl FnOnce() -> Option<(u16, u16)>,
) -> Option<HostLine> {
    match sig {
        libc::SIGTERM => Some(HostLine::Signal(opts.stop_signal)),
        libc::SIGWINCH if opts.tty => {
            window().map(|(rows, cols)| HostLine::WindowSize { rows, cols })
        }
        libc::SIGWINCH => None,
        s => Some(HostLine::Signal(s)),
    }
}

/// The size of the terminal on the launcher's stdin, stdout or stderr, as (rows, cols).
pub fn host_window_size() -> Option<(u16, u16)> {
    for fd in [0, 1, 2] {
        // SAFETY: winsize is plain data; TIOCGWINSZ only writes it.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is one of our standard descriptors (kept open by main); `ws` is valid.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Follows `events` until the run ends, then ends the machine; opens `stdin` when the app
/// starts. On a machine that cannot be stopped it prints the run's outcome and exits the
/// process (a vCPU stuck in the kernel would keep it alive).
pub fn supervise(
    opts: &Options,
    events: &EventReceiver,
    machine: &mut dyn Machine,
    stdin: &StdinGate,
) -> Report {
    let start = Instant::now();
    // An unrepresentable deadline (the command line caps it first) is no deadline.
    let deadline = opts.timeout.and_then(|t| start.checked_add(t));
    let mut grace_at: Option<Instant> = None;
    let mut status: Option<u8> = None;
    let mut status_at: Option<Instant> = None;
    let mut panic: Option<String> = None;
    let (mut init, mut app_exec) = (None, None);
    // Lines for init wait here until init has opened the control port (the UART drops what
    // comes before) and the machine takes them.
    let mut unsent: Vec<HostLine> = Vec::new();
    // Refused control lines so far: a few are noted and ignored, a flood ends the run. The
    // notes are printed once the machine has ended: during the run this thread never writes to
    // stderr, which a stalled reader could block (and with it the deadlines, while the events
    // pile up).
    let mut bad_lines: u32 = 0;
    let mut notes: Vec<String> = Vec::new();
    let ending = loop {
        if init.is_some() {
            while let Some(line) = unsent.first() {
                if !machine.send_line(line) {
                    break;
                }
                unsent.remove(0);
            }
        }
        let retry = (init.is_some() && !unsent.is_empty()).then(|| Instant::now() + LINE_RETRY);
        let after_status = status_at.and_then(|s| s.checked_add(END_AFTER_STATUS));
        let next = match after_status {
            // Once the status is in, only the wait for the machine's end counts.
            Some(a) => [Some(a), None, None, None],
            None => [deadline, grace_at, retry, None],
        }
        .into_iter()
        .flatten()
        .min();
        let ev = match next {
            Some(at) => events.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match ev {
            Ok(Event::Line(at, Ok(line))) => match line {
                GuestLine::Mark(Mark::Init) => {
                    init.get_or_insert(at);
                }
                GuestLine::Mark(Mark::Exec) => {
                    app_exec.get_or_insert(at);
                    stdin.open();
                }
                GuestLine::Exit(code) => {
                    if status.is_none() {
                        status = Some(code);
                        status_at = Some(at);
                    }
                }
                GuestLine::Panic(p) => {
                    panic.get_or_insert(p);
                }
            },
            Ok(Event::Line(_, Err(e))) => {
                if status.is_some() {
                    continue;
                }
                if e == LineError::TooLong {
                    break Ending::Protocol(e.to_string());
                }
                bad_lines += 1;
                if bad_lines > MAX_BAD_LINES {
                    break Ending::Protocol(format!(
                        "more than {MAX_BAD_LINES} refused control lines (the last: {e})"
                    ));
                }
                notes.push(format!("hyperlaunch: ignoring control line: {e}"));
            }
            Ok(Event::Ended(end)) => break Ending::Machine(end),
            Ok(Event::Stop(why)) => break Ending::Requested(why),
            Ok(Event::Signal(sig)) => {
                if status.is_some() {
                    continue;
                }
                if let Some(line) = signal_line(sig, opts, host_window_size) {
                    unsent.push(line);
                }
                if sig == libc::SIGINT || sig == libc::SIGTERM {
                    if let Some(at) = Instant::now().checked_add(opts.grace) {
                        grace_at.get_or_insert(at);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if after_status.is_some_and(|a| now >= a) {
                    break Ending::StatusButNoEnd;
                }
                if status.is_none() {
                    if let (Some(t), Some(d)) = (opts.timeout, deadline) {
                        if now >= d {
                            break Ending::Timeout(t);
                        }
                    }
                    if grace_at.is_some_and(|g| now >= g) {
                        break Ending::GraceExpired(opts.grace);
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                break Ending::Machine(MachineEnd::Failed(
                    "the machine ended without saying why".into(),
                ));
            }
        }
    };
    // From here no sender waits for room: a vCPU blocked on a full queue would hold up its
    // own stop.
    events.close();
    let stop = !matches!(ending, Ending::Machine(_));
    let finished = machine.finish(stop);
    // Lines that arrived while the machine was ending still count (the status above all).
    while let Ok(ev) = events.try_recv() {
        if let Event::Line(at, Ok(GuestLine::Exit(code))) = ev {
            if status.is_none() {
                status = Some(code);
                status_at = Some(at);
            }
        }
    }
    if finished.is_ok() {
        // Never blocking for long on a stalled stderr (stdio.rs).
        let text: String = notes.iter().map(|n| format!("{n}\n")).collect();
        crate::stdio::eprint_last(&text);
    }
    let report = Report {
        ending,
        status,
        panic,
        init,
        app_exec,
        status_at,
        ended_at: Instant::now(),
    };
    if let Err(why) = finished {
        let o = report.outcome();
        let m = o.message.map(|m| format!("{m}; ")).unwrap_or_default();
        // The stuck vCPU may be the one writing to a stalled stderr: write around any lock,
        // never blocking for long.
        crate::stdio::eprint_last(&format!("hyperlaunch: {m}{why}; exiting\n"));
        crate::vmm::term::restore();
        std::process::exit(o.code);
    }
    report
}

#[cfg(test)]
mod tests;
