//! The app's stdio, as `docker run` gives it: without `-t`, stdout and stderr are two pipes and
//! stdin a pipe (`-i`) or `/dev/null`; with `-t`, one pseudo-terminal. init relays them over the
//! stdio device ([`pod::protocol::STDIO_DEV`]) in `pod::protocol::stdio` frames: the app's
//! output as stdout/stderr frames, the host's stdin frames into the app's stdin, the end-of-file
//! frame as end of file. Without the device (a VMM that has none), the app runs on the console.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use pod::protocol::stdio::{self, Decoder, Kind, Piece, Window};
use pod::protocol::{HostLine, LineSplitter};
use thiserror::Error;

use crate::control;
use crate::cvt;

/// Bytes of host stdin init holds for an app that does not read: past this it stops reading
/// the stdio device, so the host's writes wait instead of init's memory growing.
const STDIN_HELD_MAX: usize = 256 * 1024;
/// Largest piece of app output read at once (one frame).
const READ_MAX: usize = 32 * 1024;

#[derive(Debug, Error)]
pub enum StdioError {
    #[error("pipe")]
    Pipe(#[source] io::Error),
    #[error("open /dev/null")]
    Null(#[source] io::Error),
    #[error("pseudo-terminal")]
    Pty(#[source] io::Error),
}

/// What the app's descriptors 0, 1 and 2 will be.
pub enum ChildStdio {
    /// The console, as the controlling terminal (no stdio device).
    Console,
    /// These descriptors (pipe ends or `/dev/null`), in the child as 0, 1, 2.
    Fds([RawFd; 3]),
    /// This pseudo-terminal slave, opened in the child as its controlling terminal.
    Pty(CString),
}

/// The app's stdio, prepared before it is forked: the child's side and init's.
pub struct Prepared {
    pub child: ChildStdio,
    /// Descriptors only the child uses; init closes them after the fork.
    child_only: Vec<OwnedFd>,
    pub relay: Option<Relay>,
}

impl Prepared {
    /// Closes init's copies of the child's descriptors (after the fork).
    pub fn forked(&mut self) {
        self.child_only.clear();
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StdioError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }).map_err(StdioError::Pipe)?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an open descriptor of ours.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Opens a pseudo-terminal: the master (init's) and the slave's path (the child's).
fn openpty(size: Option<[u16; 2]>) -> Result<(OwnedFd, CString), StdioError> {
    let err = || StdioError::Pty(io::Error::last_os_error());
    // SAFETY: posix_openpt returns a new descriptor or -1 (checked).
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(err());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: plain calls on the master; ptsname_r writes at most `name.len()` bytes.
    unsafe {
        if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
            return Err(err());
        }
        if libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) != 0 {
            return Err(err());
        }
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string into `name`.
    let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_owned();
    if let Some([rows, cols]) = size {
        set_window_size(fd, rows, cols);
    }
    Ok((master, path))
}

/// Sets a terminal's window size (the kernel sends SIGWINCH to its foreground group).
pub fn set_window_size(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid winsize from our stack.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// Prepares the app's stdio for `tty` (`-t`), `interactive` (`-i`), the host window size and
/// the output window the launcher asked for (`hyperpod.stdio_window=`: the launcher credits
/// output on the control channel).
pub fn prepare(
    tty: bool,
    interactive: bool,
    window: Option<[u16; 2]>,
    credit: Option<u32>,
) -> Result<Prepared, StdioError> {
    let Some(dev) = control::open_raw(pod::protocol::STDIO_DEV) else {
        return Ok(Prepared {
            child: ChildStdio::Console,
            child_only: Vec::new(),
            relay: None,
        });
    };
    // SAFETY: `dev` was just opened and is owned by nobody else.
    let dev = unsafe { OwnedFd::from_raw_fd(dev) };
    if tty {
        let (master, path) = openpty(window)?;
        set_nonblocking(master.as_raw_fd());
        return Ok(Prepared {
            child: ChildStdio::Pty(path),
            child_only: Vec::new(),
            relay: Some(Relay::new(
                dev,
                Some(master),
                None,
                [None, None],
                interactive,
                credit.map(Window::new),
            )),
        });
    }
    let (stdin_child, stdin_ours) = if interactive {
        let (r, w) = pipe()?;
        set_nonblocking(w.as_raw_fd());
        (r, Some(w))
    } else {
        // SAFETY: opening a constant NUL-terminated path; the result is checked and owned.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        let fd = cvt(fd).map_err(StdioError::Null)?;
        // SAFETY: `fd` is fresh and owned by nobody else.
        (unsafe { OwnedFd::from_raw_fd(fd) }, None)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // Non-blocking: draining at the end must not wait for a writer that never ends.
    set_nonblocking(out_r.as_raw_fd());
    set_nonblocking(err_r.as_raw_fd());
    Ok(Prepared {
        child: ChildStdio::Fds([
            stdin_child.as_raw_fd(),
            out_w.as_raw_fd(),
            err_w.as_raw_fd(),
        ]),
        child_only: vec![stdin_child, out_w, err_w],
        relay: Some(Relay::new(
            dev,
            None,
            stdin_ours,
            [Some(out_r), Some(err_r)],
            interactive,
            credit.map(Window::new),
        )),
    })
}

/// init's side of the relay between the app and the stdio device.
pub struct Relay {
    dev: OwnedFd,
    decoder: Decoder,
    /// With `-t`: the pseudo-terminal master (the app's input and output).
    pty: Option<OwnedFd>,
    /// Without `-t`, with `-i`: the write end of the app's stdin pipe (non-blocking).
    stdin: Option<OwnedFd>,
    /// The read ends of the app's stdout and stderr pipes, until their end.
    outputs: [Option<OwnedFd>; 2],
    /// Host stdin bytes not yet taken by the app.
    held: Vec<u8>,
    /// The host's stdin ended: close the app's stdin once `held` is written.
    eof: bool,
    /// Whether the host's stdin is forwarded at all (`-i`).
    interactive: bool,
    /// The output window, when the launcher credits what it has taken (`C` lines).
    window: Option<Window>,
}

/// What one poll slot of the relay is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Device,
    Pty,
    StdinPipe,
    Output(usize),
}

impl Relay {
    fn new(
        dev: OwnedFd,
        pty: Option<OwnedFd>,
        stdin: Option<OwnedFd>,
        outputs: [Option<OwnedFd>; 2],
        interactive: bool,
        window: Option<Window>,
    ) -> Relay {
        Relay {
            dev,
            decoder: Decoder::default(),
            pty,
            stdin,
            outputs,
            held: Vec::new(),
            eof: false,
            interactive,
            window,
        }
    }

    /// The largest piece of output that may be sent now (0: wait for credit).
    fn room(&self) -> usize {
        self.window.map_or(READ_MAX, |w| w.room(READ_MAX))
    }

    /// Takes a `C` line's credit.
    pub fn credit(&mut self, cost: u32) {
        if let Some(w) = &mut self.window {
            w.credit(cost);
        }
    }

    /// The descriptors to poll, with their events.
    pub fn poll_slots(&self) -> Vec<(Slot, libc::pollfd)> {
        let pfd = |fd: RawFd, events| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let mut v = Vec::new();
        if self.interactive && !self.eof && self.held.len() < STDIN_HELD_MAX {
            v.push((Slot::Device, pfd(self.dev.as_raw_fd(), libc::POLLIN)));
        }
        // Output waits while the window is full (a credit on the control channel opens it).
        let room = self.room() > 0;
        if let Some(p) = &self.pty {
            let mut ev = if room { libc::POLLIN } else { 0 };
            if !self.held.is_empty() {
                ev |= libc::POLLOUT;
            }
            if ev != 0 {
                v.push((Slot::Pty, pfd(p.as_raw_fd(), ev)));
            }
        }
        if let Some(s) = &self.stdin {
            if !self.held.is_empty() {
                v.push((Slot::StdinPipe, pfd(s.as_raw_fd(), libc::POLLOUT)));
            }
        }
        for (i, o) in self.outputs.iter().enumerate() {
            if let Some(o) = o
                && room
            {
                v.push((Slot::Output(i), pfd(o.as_raw_fd(), libc::POLLIN)));
            }
        }
        v
    }

    /// Handles a slot that poll reported ready.
    pub fn ready(&mut self, slot: Slot, revents: libc::c_short) {
        match slot {
            Slot::Device => self.read_device(),
            Slot::Pty => {
                if revents & libc::POLLOUT != 0 {
                    self.write_held();
                }
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && self.room() > 0
                {
                    self.forward_output(None);
                }
            }
            Slot::StdinPipe => self.write_held(),
            Slot::Output(i) => {
                self.forward_output(Some(i));
            }
        }
    }

    fn read_device(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        let n = match control::read_available(self.dev.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                return;
            }
            Err(_) => 0,
        };
        if n == 0 {
            // The device is gone: that is the end of the host's stdin too.
            self.eof = true;
        }
        let (held, eof) = (&mut self.held, &mut self.eof);
        self.decoder.feed(&buf[..n], |p| match p {
            Piece::Data(Kind::Stdin, data) => held.extend_from_slice(data),
            Piece::StdinEof => *eof = true,
            _ => {}
        });
        self.write_held();
    }

    /// Writes held stdin bytes as far as the app takes them; closes its stdin at the end.
    fn write_held(&mut self) {
        let fd = match (&self.pty, &self.stdin) {
            (Some(p), _) => p.as_raw_fd(),
            (None, Some(s)) => s.as_raw_fd(),
            (None, None) => {
                self.held.clear();
                return;
            }
        };
        while !self.held.is_empty() {
            // SAFETY: writes from a live buffer to our own non-blocking descriptor.
            let n = unsafe { libc::write(fd, self.held.as_ptr().cast(), self.held.len()) };
            if n > 0 {
                self.held.drain(..n as usize);
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return,
                // The app closed its stdin: what it did not read is dropped, as with a pipe.
                _ => {
                    self.held.clear();
                    self.stdin = None;
                    return;
                }
            }
        }
        if self.eof && self.pty.is_none() {
            // The app sees end of file once every byte before it is read.
            self.stdin = None;
        }
    }

    /// Reads one piece of output (`Some(i)`: that pipe; `None`: the pty), as large as the
    /// window allows, and sends it as a frame; closes the source at its end. `false` when
    /// nothing was sent.
    fn forward_output(&mut self, which: Option<usize>) -> bool {
        let room = self.room();
        if room == 0 {
            return false;
        }
        let (fd, kind) = match which {
            Some(i) => match &self.outputs[i] {
                Some(o) => (
                    o.as_raw_fd(),
                    if i == 0 { Kind::Stdout } else { Kind::Stderr },
                ),
                None => return false,
            },
            None => match &self.pty {
                Some(p) => (p.as_raw_fd(), Kind::Stdout),
                None => return false,
            },
        };
        let mut buf = vec![0u8; room];
        let n = loop {
            // SAFETY: reads into a live buffer of `buf.len()` bytes from our own descriptor.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                break n as usize;
            }
            match io::Error::last_os_error().kind() {
                io::ErrorKind::Interrupted => continue,
                // Nothing there now (a non-blocking pty master).
                io::ErrorKind::WouldBlock => return false,
                // EIO: the pty's last slave descriptor closed.
                _ => break 0,
            }
        };
        if n == 0 {
            match which {
                Some(i) => self.outputs[i] = None,
                None => self.pty = None,
            }
            return false;
        }
        let mut frame = Vec::with_capacity(n + stdio::HEADER_LEN);
        stdio::encode(kind, &buf[..n], &mut frame);
        control::write_all(self.dev.as_raw_fd(), &frame);
        if let Some(w) = &mut self.window {
            w.sent(n);
        }
        true
    }

    /// Whether `which` still has output to pass on (it is open).
    fn open(&self, which: Option<usize>) -> bool {
        match which {
            Some(i) => self.outputs[i].is_some(),
            None => self.pty.is_some(),
        }
    }

    /// Blocks until the launcher credits output on the control channel (`lines` holds what the
    /// reap loop left of a line). Without a control channel there is nothing to wait for: the
    /// window is dropped.
    fn wait_for_credit(&mut self, lines: &mut LineSplitter) {
        let Some(fd) = control::fd() else {
            self.window = None;
            return;
        };
        while self.room() == 0 {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.window = None;
                return;
            }
            let mut buf = [0u8; 256];
            match control::read_available(fd, &mut buf) {
                Ok(0) => {
                    self.window = None;
                    return;
                }
                Ok(n) => {
                    for line in lines.push(&buf[..n]) {
                        // The app is gone: signals and sizes have no one to go to.
                        if let Ok(HostLine::Credit(c)) = HostLine::parse(&line) {
                            self.credit(c);
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(_) => {
                    self.window = None;
                    return;
                }
            }
        }
    }

    /// After the app and everything it started are gone: passes on the output still in the
    /// pipes (or the pty), to its end (waiting for credit when the window is full), then waits
    /// until the device has sent it all.
    pub fn drain(&mut self, lines: &mut LineSplitter) {
        for which in [Some(0), Some(1), None] {
            while self.open(which) {
                if self.room() == 0 {
                    self.wait_for_credit(lines);
                }
                if !self.forward_output(which) && self.room() > 0 {
                    // Nothing there now (a pty master with no writer left reads EAGAIN).
                    break;
                }
            }
        }
        // SAFETY: tcdrain on our own open terminal descriptor.
        unsafe { libc::tcdrain(self.dev.as_raw_fd()) };
    }

    /// Applies a host window-size change to the app's terminal.
    pub fn window_size(&self, rows: u16, cols: u16) {
        if let Some(p) = &self.pty {
            set_window_size(p.as_raw_fd(), rows, cols);
        }
    }
}

#[cfg(test)]
mod tests;
