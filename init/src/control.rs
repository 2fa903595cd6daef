//! The control channel (`/dev/ttyS1`, see `docs/guest-protocol.md`) and console messages.
//!
//! Guest → host lines are `T init`, `T exec`, `X <code>` and `P <message>`; the host sends
//! `S <signo>`. Every line is ASCII, at most [`MAX_LINE`] bytes before its `\n`.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use thiserror::Error;

/// The control channel's device node (present in the initramfs).
pub const CONTROL_DEV: &str = "/dev/ttyS1";
/// Longest control line, without its newline.
pub const MAX_LINE: usize = 64;

/// The control channel's descriptor, or -1 when absent. Global so the panic hook can reach it.
static CONTROL_FD: AtomicI32 = AtomicI32::new(-1);

/// A request from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCommand {
    /// Deliver this signal to the app.
    Signal(i32),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("control line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("unknown control line {0:?}")]
    Unknown(String),
    #[error("bad signal number {0:?}")]
    BadSignal(String),
}

/// Parses one host line (without its `\n`; a trailing `\r` is ignored).
pub fn parse_host_line(line: &[u8]) -> Result<HostCommand, ControlError> {
    if line.len() > MAX_LINE {
        return Err(ControlError::TooLong);
    }
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    match text.split_once(' ') {
        Some(("S", num)) => match num.parse::<i32>() {
            // Linux signals are 1..=64 (SIGRTMAX).
            Ok(signo @ 1..=64) if !num.starts_with('+') => Ok(HostCommand::Signal(signo)),
            _ => Err(ControlError::BadSignal(num.to_string())),
        },
        _ => Err(ControlError::Unknown(text.to_string())),
    }
}

/// Splits bytes read from the channel into lines, bounding how much a line can hold: an
/// overlong line is returned truncated to `MAX_LINE + 1` bytes (so the parser refuses it) and
/// the rest of it, up to its newline, is dropped.
#[derive(Debug, Default)]
pub struct LineBuf {
    buf: Vec<u8>,
    skipping: bool,
}

impl LineBuf {
    /// Adds `bytes` and returns the lines they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                if !self.skipping {
                    lines.push(std::mem::take(&mut self.buf));
                }
                self.skipping = false;
            } else if !self.skipping {
                self.buf.push(b);
                if self.buf.len() > MAX_LINE {
                    lines.push(std::mem::take(&mut self.buf));
                    self.skipping = true;
                }
            }
        }
        lines
    }
}

/// The `X` line for exit status `code`.
pub fn exit_line(code: u8) -> String {
    format!("X {code}\n")
}

/// The `P` line for a panic message: printable ASCII only, cut to fit in [`MAX_LINE`].
pub fn panic_line(msg: &str) -> String {
    let mut line = String::from("P ");
    for c in msg.chars() {
        if line.len() == MAX_LINE {
            break;
        }
        line.push(if c == ' ' || c.is_ascii_graphic() {
            c
        } else {
            '?'
        });
    }
    line.push('\n');
    line
}

/// Opens the control channel and puts it in raw mode; `None` when the device is absent (then
/// init works without marks and prints the exit status on the console).
pub fn open() -> Option<RawFd> {
    let path = c"/dev/ttyS1";
    // SAFETY: `path` is a NUL-terminated string; open has no other memory effects.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `tio` is plain data; tcgetattr fills it from an open descriptor.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `tio` is a valid termios to fill.
    if unsafe { libc::tcgetattr(fd, &mut tio) } == 0 {
        // SAFETY: `tio` was filled by tcgetattr; cfmakeraw only edits it.
        unsafe { libc::cfmakeraw(&mut tio) };
        tio.c_cc[libc::VMIN] = 1;
        tio.c_cc[libc::VTIME] = 0;
        // SAFETY: `fd` is open and `tio` is a valid termios.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &tio) };
    } else {
        // Not a terminal (or no UART behind the node): no channel.
        // SAFETY: `fd` is ours and not used after this.
        unsafe { libc::close(fd) };
        return None;
    }
    CONTROL_FD.store(fd, Ordering::SeqCst);
    Some(fd)
}

/// The open control channel, if any.
pub fn fd() -> Option<RawFd> {
    let fd = CONTROL_FD.load(Ordering::SeqCst);
    (fd >= 0).then_some(fd)
}

/// Writes a complete line to the control channel, if there is one; returns whether it was sent.
pub fn send(line: &str) -> bool {
    match fd() {
        Some(fd) => write_all(fd, line.as_bytes()),
        None => false,
    }
}

/// Writes `bytes` to `fd` without taking ownership of it (usable after fork, in the panic hook).
pub fn write_all(fd: RawFd, bytes: &[u8]) -> bool {
    // SAFETY: the caller owns `fd` for the duration of the call; ManuallyDrop keeps it open.
    let mut file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    file.write_all(bytes).is_ok()
}

/// Waits until everything written to the channel has left the UART.
pub fn drain() {
    if let Some(fd) = fd() {
        // SAFETY: `fd` is the open control channel.
        unsafe { libc::tcdrain(fd) };
    }
}

/// Prints `hyperpod: <msg>` on the console (init's stderr is `/dev/console`).
pub fn say(msg: &str) {
    write_all(2, format!("hyperpod: {msg}\n").as_bytes());
}

/// Reads what is available on the channel (after poll said it is readable). `Ok(0)` means the
/// channel is gone.
pub fn read_available(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` writable bytes; `fd` is the caller's open descriptor.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signal_lines() {
        assert_eq!(parse_host_line(b"S 15"), Ok(HostCommand::Signal(15)));
        assert_eq!(parse_host_line(b"S 2\r"), Ok(HostCommand::Signal(2)));
        assert_eq!(parse_host_line(b"S 64"), Ok(HostCommand::Signal(64)));
        for bad in ["S 0", "S 65", "S -9", "S +9", "S x", "S "] {
            assert!(
                matches!(
                    parse_host_line(bad.as_bytes()),
                    Err(ControlError::BadSignal(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_host_line(b"X 1"),
            Err(ControlError::Unknown(_))
        ));
        assert!(matches!(
            parse_host_line(b""),
            Err(ControlError::Unknown(_))
        ));
        assert_eq!(parse_host_line(&[b'S'; 65]), Err(ControlError::TooLong));
    }

    #[test]
    fn line_buffer_splits_and_bounds() {
        let mut lb = LineBuf::default();
        assert!(lb.push(b"S 1").is_empty());
        assert_eq!(
            lb.push(b"5\nS 2\nS"),
            vec![b"S 15".to_vec(), b"S 2".to_vec()]
        );
        assert_eq!(lb.push(b" 9\n"), vec![b"S 9".to_vec()]);
        let mut long = vec![b'a'; 200];
        long.extend_from_slice(b"\nS 3\n");
        let lines = lb.push(&long);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE + 1);
        assert_eq!(parse_host_line(&lines[0]), Err(ControlError::TooLong));
        assert_eq!(lines[1], b"S 3");
    }

    #[test]
    fn formats_guest_lines() {
        assert_eq!(exit_line(137), "X 137\n");
        assert_eq!(panic_line("boom\nat x"), "P boom?at x\n");
        let long = panic_line(&"é".repeat(100));
        assert_eq!(long.len(), MAX_LINE + 1);
        assert!(long.is_ascii());
    }
}
