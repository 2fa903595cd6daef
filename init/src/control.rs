//! The control channel (`/dev/ttyS1`, see `docs/guest-protocol.md`) and console messages. The
//! lines themselves — `T init`, `T exec`, `X <code>`, `P <message>` from init, `S <signo>` and
//! `W <rows> <cols>` from the host — are `pod::protocol`'s.

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use pod::protocol::GuestLine;

/// The control channel's descriptor, or -1 when absent. Global so the panic hook can reach it.
static CONTROL_FD: AtomicI32 = AtomicI32::new(-1);

/// Puts the terminal `fd` in raw mode (no echo, no translation; reads return what is there);
/// `false` when it is not a terminal.
pub fn make_raw(fd: RawFd) -> bool {
    // SAFETY: `tio` is plain data; tcgetattr fills it from an open descriptor.
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `tio` is a valid termios to fill.
    if unsafe { libc::tcgetattr(fd, &mut tio) } != 0 {
        return false;
    }
    // SAFETY: `tio` was filled by tcgetattr; cfmakeraw only edits it.
    unsafe { libc::cfmakeraw(&mut tio) };
    tio.c_cc[libc::VMIN] = 1;
    tio.c_cc[libc::VTIME] = 0;
    // SAFETY: `fd` is open and `tio` is a valid termios.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &tio) == 0 }
}

/// Opens a terminal device read-write for init (not as a controlling terminal) in raw mode;
/// `None` when it is absent or not a terminal.
pub fn open_raw(path: &std::ffi::CStr) -> Option<RawFd> {
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
    if !make_raw(fd) {
        // Not a terminal (or no device behind the node).
        // SAFETY: `fd` is ours and not used after this.
        unsafe { libc::close(fd) };
        return None;
    }
    Some(fd)
}

/// Opens the control channel in raw mode; `None` when the device is absent (then init works
/// without marks and prints the exit status on the console).
pub fn open() -> Option<RawFd> {
    let fd = open_raw(pod::protocol::CONTROL_DEV)?;
    CONTROL_FD.store(fd, Ordering::SeqCst);
    Some(fd)
}

/// The open control channel, if any.
pub fn fd() -> Option<RawFd> {
    let fd = CONTROL_FD.load(Ordering::SeqCst);
    (fd >= 0).then_some(fd)
}

/// Writes a line to the control channel, if there is one; returns whether it was sent.
pub fn send(line: &GuestLine) -> bool {
    match fd() {
        Some(fd) => write_all(fd, line.format().as_bytes()),
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
    fn a_file_that_is_not_a_terminal_is_no_channel() {
        // A regular file is not a terminal: no channel.
        let f = tempfile_path();
        let c = std::ffi::CString::new(f.clone()).unwrap();
        assert_eq!(open_raw(&c), None);
        let _ = std::fs::remove_file(f);
    }

    fn tempfile_path() -> String {
        let p = std::env::temp_dir().join(format!("hyperpod-init-ctl-{}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        p.display().to_string()
    }
}
