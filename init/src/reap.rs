//! Supervision as PID 1: reap every zombie, forward signals to the app (from init's own
//! signals and from the control channel's `S <signo>` lines), apply the host's window size
//! (`W` lines), and relay the app's stdio ([`crate::stdio::Relay`]), until the app exits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

use pod::protocol::{HostLine, LineSplitter};

use crate::control;
use crate::cvt;
use crate::stdio::Relay;

/// Signals init forwards to the app.
pub const FORWARDED: [libc::c_int; 7] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

#[derive(Debug, Error)]
pub enum ReapError {
    #[error("block signals")]
    Block(#[source] io::Error),
    #[error("signalfd")]
    SignalFd(#[source] io::Error),
    #[error("poll")]
    Poll(#[source] io::Error),
    #[error("read signalfd")]
    Read(#[source] io::Error),
}

/// Init's signals, blocked and readable from a signalfd. Create it before forking the app so
/// nothing sent in between is lost (the child unblocks them).
pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    pub fn block() -> Result<Signals, ReapError> {
        // SAFETY: `set` is plain data initialised by sigemptyset before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            for sig in FORWARDED {
                libc::sigaddset(&mut set, sig);
            }
        }
        // SAFETY: `set` is a valid sigset_t; the old mask is not wanted.
        cvt(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })
            .map_err(ReapError::Block)?;
        // SAFETY: -1 asks for a new signalfd for `set`.
        let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })
            .map_err(ReapError::SignalFd)?;
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signals { fd })
    }
}

/// Reaps every exited child without blocking; returns the app's wait status if it was one.
fn reap_all(app: libc::pid_t) -> Option<libc::c_int> {
    let mut app_status = None;
    loop {
        let mut status = 0;
        // SAFETY: `status` is writable; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return app_status;
        }
        if pid == app {
            app_status = Some(status);
        }
    }
}

fn deliver(app: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory effects; a gone app gives ESRCH, which is fine.
    unsafe { libc::kill(app, sig) };
}

/// Runs until the app exits, returning its wait status. `lines` keeps a control line cut by
/// the return for the relay's drain.
pub fn supervise(
    signals: &Signals,
    app: libc::pid_t,
    mut relay: Option<&mut Relay>,
    lines: &mut LineSplitter,
) -> Result<libc::c_int, ReapError> {
    let mut ctl = control::fd();
    loop {
        if let Some(status) = reap_all(app) {
            return Ok(status);
        }
        let mut pfds = vec![
            libc::pollfd {
                fd: signals.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // poll ignores negative descriptors.
                fd: ctl.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let slots = relay.as_ref().map(|r| r.poll_slots()).unwrap_or_default();
        pfds.extend(slots.iter().map(|(_, p)| *p));
        // SAFETY: `pfds` is a valid array of `len` pollfd.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ReapError::Poll(err));
        }
        if pfds[0].revents != 0 {
            read_signals(signals, app)?;
        }
        if let Some(fd) = ctl
            && pfds[1].revents != 0
        {
            let mut buf = [0u8; 256];
            match control::read_available(fd, &mut buf) {
                Ok(0) => ctl = None,
                Ok(n) => {
                    for line in lines.push(&buf[..n]) {
                        match HostLine::parse(&line) {
                            Ok(HostLine::Signal(sig)) => deliver(app, sig),
                            Ok(HostLine::WindowSize { rows, cols }) => {
                                if let Some(r) = relay.as_deref() {
                                    r.window_size(rows, cols);
                                }
                            }
                            Ok(HostLine::Credit(cost)) => {
                                if let Some(r) = relay.as_deref_mut() {
                                    r.credit(cost);
                                }
                            }
                            Err(e) => control::say(&format!("control channel: {e}")),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    control::say(&format!("control channel: {e}"));
                    ctl = None;
                }
            }
        }
        if let Some(r) = relay.as_deref_mut() {
            for ((slot, _), p) in slots.iter().zip(&pfds[2..]) {
                if p.revents != 0 {
                    r.ready(*slot, p.revents);
                }
            }
        }
    }
}

/// Drains the signalfd, forwarding everything but `SIGCHLD` (handled by reaping).
fn read_signals(signals: &Signals, app: libc::pid_t) -> Result<(), ReapError> {
    loop {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is valid for `size` writable bytes.
        let n = unsafe {
            libc::read(
                signals.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(()),
                io::ErrorKind::Interrupted => continue,
                _ => Err(ReapError::Read(err)),
            };
        }
        if n as usize != size {
            return Ok(());
        }
        let sig = info.ssi_signo as libc::c_int;
        if sig != libc::SIGCHLD {
            deliver(app, sig);
        }
    }
}

/// After the app is gone: kill whatever it left running (Docker stops the whole container) and
/// give the kernel a moment to take it down, so `sync` sees no more writers. Bounded: a process
/// stuck in the kernel must not hang the VM.
pub fn end_all() {
    // SAFETY: kill(-1) from PID 1 signals every other process; no memory effects.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    let deadline = crate::monotonic_us() + 100_000;
    while crate::monotonic_us() < deadline {
        let mut status = 0;
        // SAFETY: `status` is writable; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid < 0 {
            return; // ECHILD: nothing left.
        }
        if pid == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
