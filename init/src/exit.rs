//! Ending the VM: report the status, flush, then stop the machine through the exit port
//! (`pod::protocol::EXIT_PORT`, written through `/dev/port`), falling back to
//! `reboot(RB_POWER_OFF)`. init never returns and never hangs.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use pod::protocol::{EXIT_PORT, GuestLine, PANIC_CODE};

use crate::control;

/// `/dev/port`, opened from the initramfs at entry (or -1).
static PORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Opens `/dev/port` while the initramfs's node is still visible.
pub fn open_port() {
    // SAFETY: the path is NUL-terminated; open has no other memory effects.
    let fd = unsafe { libc::open(c"/dev/port".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    PORT_FD.store(fd, Ordering::SeqCst);
}

/// The pod's exit status for a `waitpid` status: the exit code, or 128 + the signal number.
pub fn status_code(wait_status: libc::c_int) -> u8 {
    if libc::WIFEXITED(wait_status) {
        libc::WEXITSTATUS(wait_status) as u8
    } else if libc::WIFSIGNALED(wait_status) {
        (128 + libc::WTERMSIG(wait_status)) as u8
    } else {
        // Stopped/continued statuses are never asked for; treat anything else as a failure.
        crate::EXIT_SETUP
    }
}

/// Reports `code` and stops the VM.
pub fn power_off(code: u8) -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if !control::send(&GuestLine::Exit(code)) {
        control::say(&format!("exit {code}"));
    }
    stop(code)
}

/// Drains the serial ports, writes `code` to the exit port, then powers off.
fn stop(code: u8) -> ! {
    control::drain();
    // SAFETY: fd 1 is the console (or not a tty, then tcdrain just fails).
    unsafe { libc::tcdrain(1) };
    let mut fd: RawFd = PORT_FD.load(Ordering::SeqCst);
    if fd < 0 {
        // SAFETY: as in open_port; the devtmpfs node works too.
        fd = unsafe { libc::open(c"/dev/port".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    }
    if fd >= 0 {
        let byte = [code];
        // SAFETY: `byte` is one readable byte; the VMM stops the VM on this write.
        unsafe { libc::pwrite(fd, byte.as_ptr().cast(), 1, libc::off_t::from(EXIT_PORT)) };
    }
    // No exit device (or the write returned): power off the ordinary way.
    // SAFETY: sync and reboot have no memory preconditions; init is PID 1 and may power off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Still alive: exiting PID 1 makes the kernel panic, and `panic=-1` resets the VM.
    std::process::exit(code as i32)
}

/// Makes a panic in init report `P <message>` and stop the VM instead of hanging it.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "panic".to_string()
        };
        let msg = match info.location() {
            Some(loc) => format!("{msg} at {}:{}", loc.file(), loc.line()),
            None => msg,
        };
        control::say(&format!("init panicked: {msg}"));
        control::send(&GuestLine::Panic(msg.clone()));
        stop(PANIC_CODE)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_follow_docker() {
        // Encoded as the kernel does: exit code in bits 8..16, signal in the low 7 bits.
        assert_eq!(status_code(0), 0);
        assert_eq!(status_code(3 << 8), 3);
        assert_eq!(status_code(255 << 8), 255);
        assert_eq!(status_code(libc::SIGKILL), 137);
        assert_eq!(status_code(libc::SIGTERM | 0x80), 143); // with core dump flag
    }
}
