//! The control channel on the guest's second serial port (see `docs/guest-protocol.md`):
//! parsing what init reports and formatting what the host sends. Pure functions, no I/O.

use thiserror::Error;

/// Longest control line accepted, without its newline.
pub const MAX_LINE: usize = 64;

/// Exit code when init panicked (`P` line).
pub const EXIT_INIT_PANIC: i32 = 123;
/// Exit code when `--timeout` expired.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code when the launcher itself failed.
pub const EXIT_LAUNCHER: i32 = 125;
/// Exit code when the guest ended without reporting a status.
pub const EXIT_NO_STATUS: i32 = 122;

/// A guest timing mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// init entered.
    Init,
    /// init is about to exec the app.
    Exec,
}

/// One line from the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    Mark(Mark),
    /// The pod's exit status (0–255).
    Exit(u8),
    /// init panicked with this message.
    Panic(String),
}

/// Why a control line was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("control line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("control line is not ASCII")]
    NotAscii,
    #[error("unknown control line {0:?}")]
    Unknown(String),
    #[error("bad exit status {0:?}")]
    BadStatus(String),
}

/// Parses one line (without its `\n`) written by init.
pub fn parse_guest_line(line: &[u8]) -> Result<GuestEvent, ControlError> {
    if line.len() > MAX_LINE {
        return Err(ControlError::TooLong);
    }
    let line = std::str::from_utf8(line)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or(ControlError::NotAscii)?
        .trim_end_matches('\r');
    match line.split_once(' ') {
        Some(("T", "init")) => Ok(GuestEvent::Mark(Mark::Init)),
        Some(("T", "exec")) => Ok(GuestEvent::Mark(Mark::Exec)),
        Some(("X", code)) => code
            .parse::<u8>()
            .map(GuestEvent::Exit)
            .map_err(|_| ControlError::BadStatus(code.to_string())),
        Some(("P", msg)) => Ok(GuestEvent::Panic(msg.to_string())),
        _ => Err(ControlError::Unknown(line.to_string())),
    }
}

/// The line that asks init to deliver signal `signo` to the app.
pub fn signal_line(signo: i32) -> String {
    format!("S {signo}\n")
}

/// Splits complete lines off the front of `buf`, leaving a partial line in it. A line longer than
/// [`MAX_LINE`] is returned as-is (and refused by [`parse_guest_line`]) so it cannot grow forever.
pub fn take_lines(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        let mut line: Vec<u8> = buf.drain(..=pos).collect();
        line.pop();
        lines.push(line);
    }
    if buf.len() > MAX_LINE {
        lines.push(std::mem::take(buf));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_guest_line() {
        assert_eq!(
            parse_guest_line(b"T init"),
            Ok(GuestEvent::Mark(Mark::Init))
        );
        assert_eq!(
            parse_guest_line(b"T exec\r"),
            Ok(GuestEvent::Mark(Mark::Exec))
        );
        assert_eq!(parse_guest_line(b"X 137"), Ok(GuestEvent::Exit(137)));
        assert_eq!(
            parse_guest_line(b"P boom"),
            Ok(GuestEvent::Panic("boom".into()))
        );
        assert_eq!(
            parse_guest_line(b"X 256"),
            Err(ControlError::BadStatus("256".into()))
        );
        assert_eq!(
            parse_guest_line(b"X -1"),
            Err(ControlError::BadStatus("-1".into()))
        );
        assert!(matches!(
            parse_guest_line(b"hello"),
            Err(ControlError::Unknown(_))
        ));
        assert_eq!(parse_guest_line(&[b'x'; 65]), Err(ControlError::TooLong));
        assert_eq!(parse_guest_line(b"X \xff"), Err(ControlError::NotAscii));
        assert_eq!(signal_line(15), "S 15\n");
    }

    #[test]
    fn splits_lines_and_bounds_partial_ones() {
        let mut buf = b"T init\nX 3\nT ex".to_vec();
        assert_eq!(
            take_lines(&mut buf),
            vec![b"T init".to_vec(), b"X 3".to_vec()]
        );
        assert_eq!(buf, b"T ex");
        let mut long = vec![b'a'; 70];
        assert_eq!(take_lines(&mut long).len(), 1);
        assert!(long.is_empty());
    }
}
