//! The host end of the app's stdio (`pod::protocol::stdio`): frames from the guest become the
//! launcher's stdout and stderr, and the launcher's stdin becomes frames for the guest, ending
//! with an end-of-file frame. Both engines use it; only the byte transport differs.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pod::protocol::stdio::{self, Decoder, Kind, Piece};

/// Set while the KVM engine stops its vCPUs: a vCPU blocked writing the guest's output to a
/// reader that does not read gives up when kicked ([`write_guest_output`]).
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Marks the run as stopping (`true`, before the vCPUs are kicked) or running (`false`, as a
/// run starts).
pub fn set_stopping(stopping: bool) {
    STOPPING.store(stopping, Ordering::SeqCst);
}

/// Writes the guest's output (console, app stdout/stderr) to the launcher's `fd` (1 or 2): all
/// of it, blocking while the reader is slow — the guest waits, nothing queues up — unless the
/// run is stopping: a write interrupted then (the vCPU kick, `EINTR`) drops the rest, so that
/// a reader that never reads cannot hold up the end of the run. Other errors (a closed reader)
/// drop the bytes.
pub fn write_guest_output(fd: i32, data: &[u8]) {
    let mut rest = data;
    while !rest.is_empty() {
        // SAFETY: writing from a valid buffer of `rest.len()` bytes to a standard descriptor.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            rest = &rest[n as usize..];
        } else if n < 0
            && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            && !STOPPING.load(Ordering::SeqCst)
        {
            continue;
        } else {
            return;
        }
    }
}

/// How long the launcher's last lines (refused-line notes, the outcome, `--timing`) may wait for
/// a stderr whose reader is slow.
pub const LAST_LINES_WAIT: Duration = Duration::from_millis(500);
/// Bytes one write of the last lines carries: a pipe that polls writable takes this many
/// without blocking (`PIPE_BUF`).
const LAST_LINES_CHUNK: usize = 4096;

/// Writes `text` to stderr without ever blocking for long: each piece only once stderr polls
/// writable, within [`LAST_LINES_WAIT`] in all; what a reader that does not read leaves
/// unwritten by then is dropped, and the launcher ends on time. Used once a run has ended, and
/// by the supervisor when a vCPU is stuck; does not change stderr's flags (shared with other
/// processes).
pub fn eprint_last(text: &str) {
    let deadline = Instant::now() + LAST_LINES_WAIT;
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fd = libc::pollfd {
            fd: 2,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fd` is one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fd, 1, ms) };
        let interrupted = || io::Error::last_os_error().kind() == io::ErrorKind::Interrupted;
        if ready < 0 && interrupted() {
            continue;
        }
        if ready <= 0 || fd.revents & libc::POLLOUT == 0 {
            return;
        }
        let piece = &rest[..rest.len().min(LAST_LINES_CHUNK)];
        // SAFETY: writing from a valid buffer of `piece.len()` bytes to stderr.
        let n = unsafe { libc::write(2, piece.as_ptr().cast(), piece.len()) };
        if n > 0 {
            rest = &rest[n as usize..];
        } else if !(n < 0 && interrupted()) {
            return;
        }
    }
}

/// Writes the guest's stdout and stderr frames to the launcher's own, unbuffered (every byte is
/// passed on as it arrives). A closed stdout or stderr drops that stream's bytes.
#[derive(Debug, Default)]
pub struct OutputDemux {
    decoder: Decoder,
    /// Unknown or misdirected frames seen (reported once).
    bad: u64,
}

impl OutputDemux {
    /// Takes bytes of the guest's stdio stream.
    pub fn write(&mut self, bytes: &[u8]) {
        let bad = &mut self.bad;
        self.decoder.feed(bytes, |p| match p {
            Piece::Data(Kind::Stdout, data) => write_guest_output(1, data),
            Piece::Data(Kind::Stderr, data) => write_guest_output(2, data),
            _ => {
                if *bad == 0 {
                    write_guest_output(
                        2,
                        b"hyperlaunch: ignoring a frame the guest should not send on stdio\n",
                    );
                }
                *bad += 1;
            }
        });
    }

    /// The window cost (`pod::protocol::stdio::frame_cost`) of everything taken so far: what
    /// the guest may be credited once it has been written out.
    pub fn cost(&self) -> u64 {
        self.decoder.cost()
    }
}

/// Reads the launcher's stdin to its end on a thread, handing `deliver` the stream's frames
/// (stdin bytes, then one end-of-file frame) once `gate` has opened. `deliver` blocks until the
/// bytes are taken and returns `false` once the machine is gone, which ends the thread.
pub fn forward_stdin(
    gate: std::sync::Arc<crate::supervisor::StdinGate>,
    deliver: impl FnMut(&[u8]) -> bool + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(stdin_forwarder(gate, deliver));
    if let Err(e) = spawned {
        eprintln!("hyperlaunch: cannot start the stdin thread: {e}");
    }
}

/// The work of [`forward_stdin`]'s thread, for a thread started elsewhere (the KVM engine's
/// crew, already under its seccomp filter).
pub fn stdin_forwarder(
    gate: std::sync::Arc<crate::supervisor::StdinGate>,
    mut deliver: impl FnMut(&[u8]) -> bool + Send + 'static,
) -> impl FnOnce() + Send + 'static {
    move || {
        gate.wait();
        let mut buf = vec![0u8; 16 * 1024];
        let mut frames = Vec::with_capacity(buf.len() + stdio::HEADER_LEN);
        let mut stdin = io::stdin().lock();
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An unreadable stdin ends like an empty one.
                Err(_) => 0,
            };
            frames.clear();
            if n == 0 {
                stdio::encode(Kind::StdinEof, &[], &mut frames);
                deliver(&frames);
                return;
            }
            stdio::encode(Kind::Stdin, &buf[..n], &mut frames);
            if !deliver(&frames) {
                return;
            }
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGWINCH in this thread and the threads it starts later, so that
/// they wait for [`forward_signals`] instead of ending the process. Call first thing, so a
/// Ctrl-C during the setup is forwarded too.
pub fn block_signals() {
    // SAFETY: building a signal set and changing this thread's mask has no memory effects
    // beyond the local set.
    unsafe {
        let set = launch_signals();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Gives the launch's signals their default action back where the launcher was started with
/// them ignored (a shell's background job has SIGINT ignored): an ignored signal is discarded
/// before `sigwait` could take it, and `docker run` forwards it there too. Call once, after
/// [`block_signals`], before any sandbox is entered.
pub fn unignore_signals() {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGWINCH] {
        // SAFETY: `sigaction` reads a disposition and sets SIG_DFL (a zeroed sigaction: no
        // handler code) through valid pointers; the signal is blocked meanwhile.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(s, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
            {
                let dfl: libc::sigaction = std::mem::zeroed();
                libc::sigaction(s, &dfl, std::ptr::null_mut());
            }
        }
    }
}

/// Unblocks them again (for a child process between fork and exec: async-signal-safe).
///
/// # Safety
/// Only changes the calling thread's signal mask.
pub unsafe fn unblock_signals() {
    // SAFETY: as above.
    unsafe {
        let set = launch_signals();
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

fn launch_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGWINCH] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Takes the blocked signals with `sigwait` on a thread and hands each to `send` (until it
/// returns `false`).
pub fn forward_signals(send: impl FnMut(i32) -> bool + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(signal_forwarder(send));
    if let Err(e) = spawned {
        eprintln!("hyperlaunch: cannot start the signal thread: {e}");
    }
}

/// The work of [`forward_signals`]'s thread, for a thread started elsewhere (the KVM engine's
/// crew, already under its seccomp filter). The signals must be blocked in that thread.
pub fn signal_forwarder(
    mut send: impl FnMut(i32) -> bool + Send + 'static,
) -> impl FnOnce() + Send + 'static {
    let set = launch_signals();
    move || {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised signal set and `sig` a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 || !send(sig) {
                return;
            }
        }
    }
}
