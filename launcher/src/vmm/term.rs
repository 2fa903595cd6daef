//! Raw mode for the host terminal (`-t`), restored when the guard drops, when the process
//! panics (release builds abort on panic: no drop runs) and before the run ends the process
//! itself ([`restore`]).

use std::sync::{Once, OnceLock};

/// The terminal put in raw mode and its settings before, for [`restore`].
static SAVED: OnceLock<(i32, libc::termios)> = OnceLock::new();

/// Restores the terminal's settings on drop.
pub struct RawTerminal {
    _private: (),
}

impl RawTerminal {
    /// Puts `fd` in raw mode if it is a terminal; `None` when it is not (or cannot be).
    pub fn enter(fd: i32) -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal descriptor.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid out pointer.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        if SAVED.set((fd, saved)).is_err() {
            // One raw terminal per process.
            return None;
        }
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the struct we own.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios for this descriptor.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { _private: () })
    }
}

/// Puts back the settings the terminal had before [`RawTerminal::enter`], if it was entered.
pub fn restore() {
    if let Some((fd, saved)) = SAVED.get() {
        // SAFETY: restoring settings read by tcgetattr on the same descriptor.
        unsafe {
            libc::tcsetattr(*fd, libc::TCSANOW, saved);
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_terminals_are_left_alone() {
        let f = tempfile::tempfile().unwrap();
        use std::os::fd::AsRawFd;
        assert!(RawTerminal::enter(f.as_raw_fd()).is_none());
    }

    fn lflag(fd: i32) -> libc::tcflag_t {
        // SAFETY: a zeroed termios is valid; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is an open terminal and `t` a valid out pointer.
        assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
        t.c_lflag
    }

    #[test]
    fn a_pseudo_terminal_goes_raw_and_comes_back() {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two descriptors; the name, termios and size are optional.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0);
        let cooked = lflag(slave);
        assert_ne!(cooked & libc::ICANON, 0, "a new pty is in canonical mode");
        let guard = RawTerminal::enter(slave).expect("a pty is a terminal");
        assert_eq!(
            lflag(slave) & (libc::ICANON | libc::ECHO),
            0,
            "raw: no line editing, no echo"
        );
        // What the run calls before ending the process itself.
        restore();
        assert_eq!(lflag(slave), cooked);
        drop(guard);
        assert_eq!(lflag(slave), cooked);
        // A second raw terminal in one process is refused (there is one saved state).
        assert!(RawTerminal::enter(slave).is_none());
        // SAFETY: closing the descriptors openpty returned.
        unsafe {
            libc::close(slave);
            libc::close(master);
        }
    }
}
