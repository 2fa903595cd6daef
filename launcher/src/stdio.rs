//! The host end of the app's stdio (`pod::protocol::stdio`): frames from the guest become the
//! launcher's stdout and stderr, and the launcher's stdin becomes frames for the guest, ending
//! with an end-of-file frame. Both engines use it; only the byte transport differs.

use std::io::{self, Read, Write};

use pod::protocol::stdio::{self, Decoder, Kind, Piece};

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
            Piece::Data(Kind::Stdout, data) => {
                let mut out = io::stdout().lock();
                let _ = out.write_all(data).and_then(|()| out.flush());
            }
            Piece::Data(Kind::Stderr, data) => {
                let _ = io::stderr().lock().write_all(data);
            }
            _ => {
                if *bad == 0 {
                    eprintln!("hyperlaunch: ignoring a frame the guest should not send on stdio");
                }
                *bad += 1;
            }
        });
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
