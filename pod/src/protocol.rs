//! The guest protocol (`docs/guest-protocol.md`): what init and the launcher's two engines agree
//! on — devices and ports, exit codes, the control channel's line grammar, stop-signal names, the
//! overrides archive and the framed stdio stream ([`stdio`]). Pure: no I/O, no clocks.
//!
//! This is the one place each of these is defined; init, the launcher and the tests use it.

use thiserror::Error;

use crate::cpio::{CpioError, CpioWriter};
use crate::spec::{OVERRIDES_PATH, Overrides};

pub mod stdio;

/// A 16550 UART as the guest sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uart {
    /// Base I/O port.
    pub port: u16,
    /// ISA IRQ.
    pub irq: u8,
}

/// The console (`ttyS0`): kernel messages and init's own diagnostics, shown on the launcher's
/// stderr.
pub const CONSOLE_UART: Uart = Uart {
    port: 0x3f8,
    irq: 4,
};
/// The control channel (`ttyS1`): the lines of [`GuestLine`] and [`HostLine`].
pub const CONTROL_UART: Uart = Uart {
    port: 0x2f8,
    irq: 3,
};
/// The exit port: a byte written here ends the VM (QEMU's `isa-debug-exit`).
pub const EXIT_PORT: u16 = 0xf4;

/// The guest kernel's tick rate (`CONFIG_HZ`), pinned by `kernel-fragments/common/base.conf`:
/// what [`lpj_arg`] computes for, so for kernels built from [`crate::FRAGMENTS_KEY`] only.
pub const GUEST_KERNEL_HZ: u32 = 250;

/// `lpj=` for a guest whose TSC runs at `tsc_khz` and whose kernel ticks [`GUEST_KERNEL_HZ`]
/// times a second: loops per jiffy with the TSC as delay loop, as Linux computes for its first
/// CPU (`lpj_fine`), so that every other CPU takes it instead of calibrating (which it does
/// when the CPU shows no constant TSC: `calibrate_delay_is_known`). `None` for a rate of 0.
pub fn lpj_arg(tsc_khz: u32) -> Option<String> {
    (tsc_khz > 0).then(|| {
        format!(
            "lpj={}",
            u64::from(tsc_khz) * 1000 / u64::from(GUEST_KERNEL_HZ)
        )
    })
}

/// The control channel's device node in the guest.
pub const CONTROL_DEV: &std::ffi::CStr = c"/dev/ttyS1";
/// The app's stdio stream's device node in the guest (the one virtio console port).
pub const STDIO_DEV: &std::ffi::CStr = c"/dev/hvc0";

/// The guest's network interface (the one virtio-net device), when the launch gives it one
/// (`spec::Overrides::network`).
pub const NET_INTERFACE: &str = "eth0";

/// Exit status byte init writes to the exit port when it panics (the `P` line says why).
pub const PANIC_CODE: u8 = 123;

/// Launcher exit code: the guest broke the control protocol (an overlong control line, or more
/// than [`MAX_BAD_LINES`] refused ones), so the VM was stopped.
pub const EXIT_PROTOCOL: i32 = 121;
/// Launcher exit code: the guest ended without reporting a status.
pub const EXIT_NO_STATUS: i32 = 122;
/// Launcher exit code: init panicked (`P` line).
pub const EXIT_INIT_PANIC: i32 = 123;
/// Launcher exit code: `--timeout` expired.
pub const EXIT_TIMEOUT: i32 = 124;
/// Launcher exit code: the launcher itself failed (one line on stderr says why).
pub const EXIT_LAUNCHER: i32 = 125;
/// Launcher exit code: a stop signal was forwarded and the guest still ran `--grace` later, so
/// the VM was stopped (`128 + SIGKILL`, like `docker kill`).
pub const EXIT_GRACE_KILLED: i32 = 137;

/// init's status when it could not start the app (Docker's 125).
pub const STATUS_SETUP: u8 = 125;
/// init's status when the command is not executable (Docker's 126).
pub const STATUS_NOT_EXECUTABLE: u8 = 126;
/// init's status when the command is not found (Docker's 127).
pub const STATUS_NOT_FOUND: u8 = 127;

/// Longest control line, without its `\n`.
pub const MAX_LINE: usize = 64;
/// How many refused (unknown or malformed, but not overlong) control lines the launcher notes
/// and ignores; one more ends the run with [`EXIT_PROTOCOL`].
pub const MAX_BAD_LINES: u32 = 16;

/// A guest timing mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// init entered (`T init`).
    Init,
    /// init is about to `execve` the app (`T exec`).
    Exec,
}

/// One control line from init.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestLine {
    Mark(Mark),
    /// `X <code>`: the pod's exit status.
    Exit(u8),
    /// `P <message>`: init panicked.
    Panic(String),
}

/// One control line from the launcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostLine {
    /// `S <signo>`: deliver this signal to the app.
    Signal(i32),
    /// `W <rows> <cols>`: the host terminal's size changed (with `-t`).
    WindowSize { rows: u16, cols: u16 },
    /// `C <cost>`: the host has taken this much more of the guest's stdio output (in
    /// [`stdio::frame_cost`] units), so the guest may send that much more (only when the
    /// launch set a window, [`stdio::WINDOW_ARG`]).
    Credit(u32),
}

/// Why a control line was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LineError {
    #[error("control line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("control line is not ASCII")]
    NotAscii,
    #[error("unknown control line {0:?}")]
    Unknown(String),
    #[error("bad exit status {0:?}")]
    BadStatus(String),
    #[error("bad signal number {0:?}")]
    BadSignal(String),
    #[error("bad window size {0:?}")]
    BadSize(String),
    #[error("bad stdio credit {0:?}")]
    BadCredit(String),
}

fn line_text(line: &[u8]) -> Result<&str, LineError> {
    if line.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    let text = std::str::from_utf8(line)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or(LineError::NotAscii)?;
    Ok(text.strip_suffix('\r').unwrap_or(text))
}

/// A decimal number with no sign, no spaces and no leading `+`.
fn plain_number<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl GuestLine {
    /// Parses one line (without its `\n`; a trailing `\r` is ignored).
    pub fn parse(line: &[u8]) -> Result<GuestLine, LineError> {
        let text = line_text(line)?;
        match text.split_once(' ') {
            Some(("T", "init")) => Ok(GuestLine::Mark(Mark::Init)),
            Some(("T", "exec")) => Ok(GuestLine::Mark(Mark::Exec)),
            Some(("X", code)) => plain_number(code)
                .map(GuestLine::Exit)
                .ok_or_else(|| LineError::BadStatus(code.to_string())),
            Some(("P", msg)) => Ok(GuestLine::Panic(msg.to_string())),
            _ => Err(LineError::Unknown(text.to_string())),
        }
    }

    /// The line with its `\n`. A panic message is reduced to printable ASCII and cut so the
    /// line fits in [`MAX_LINE`].
    pub fn format(&self) -> String {
        match self {
            GuestLine::Mark(Mark::Init) => "T init\n".into(),
            GuestLine::Mark(Mark::Exec) => "T exec\n".into(),
            GuestLine::Exit(code) => format!("X {code}\n"),
            GuestLine::Panic(msg) => {
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
        }
    }
}

impl HostLine {
    /// Parses one line (without its `\n`; a trailing `\r` is ignored).
    pub fn parse(line: &[u8]) -> Result<HostLine, LineError> {
        let text = line_text(line)?;
        match text.split_once(' ') {
            Some(("S", num)) => match plain_number::<i32>(num) {
                Some(signo @ 1..=SIGRTMAX) => Ok(HostLine::Signal(signo)),
                _ => Err(LineError::BadSignal(num.to_string())),
            },
            Some(("W", size)) => {
                let bad = || LineError::BadSize(size.to_string());
                let (r, c) = size.split_once(' ').ok_or_else(bad)?;
                let rows = plain_number(r).ok_or_else(bad)?;
                let cols = plain_number(c).ok_or_else(bad)?;
                Ok(HostLine::WindowSize { rows, cols })
            }
            Some(("C", cost)) => match plain_number::<u32>(cost) {
                Some(c @ 1..) => Ok(HostLine::Credit(c)),
                _ => Err(LineError::BadCredit(cost.to_string())),
            },
            _ => Err(LineError::Unknown(text.to_string())),
        }
    }

    /// The line with its `\n`.
    pub fn format(&self) -> String {
        match self {
            HostLine::Signal(signo) => format!("S {signo}\n"),
            HostLine::WindowSize { rows, cols } => format!("W {rows} {cols}\n"),
            HostLine::Credit(cost) => format!("C {cost}\n"),
        }
    }
}

/// Splits a byte stream into control lines, bounding what a line can hold: an overlong line is
/// returned cut to `MAX_LINE + 1` bytes (so the parsers refuse it) and the rest of it, up to its
/// newline, is dropped.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    skipping: bool,
}

impl LineSplitter {
    /// Adds `bytes`; returns the lines they complete, without their `\n`.
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

/// Linux's first real-time signal as the kernel numbers it (glibc reserves two more).
pub const SIGRTMIN: i32 = 34;
/// Linux's last signal number.
pub const SIGRTMAX: i32 = 64;

/// Why a stop signal was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown signal {0:?}")]
pub struct SignalError(pub String);

/// Signal names as images and `kill -l` spell them, without `SIG`, with Linux x86-64 numbers.
const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// A stop signal as images give it (`SIGTERM`, `term`, `15`, `SIGRTMIN+3`, `RTMAX-1`) as its
/// number, case-insensitively, as Docker parses `StopSignal`. An empty name is SIGTERM.
pub fn parse_signal(name: &str) -> Result<i32, SignalError> {
    let s = name.trim();
    let err = || SignalError(name.to_string());
    if s.is_empty() {
        return Ok(15);
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return plain_number::<i32>(s)
            .filter(|n| (1..=SIGRTMAX).contains(n))
            .ok_or_else(err);
    }
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = SIGNAL_NAMES.iter().find(|(n, _)| *n == bare) {
        return Ok(n);
    }
    let offset = |rest: &str, sign: char| -> Option<i32> {
        if rest.is_empty() {
            return Some(0);
        }
        plain_number(rest.strip_prefix(sign)?)
    };
    let n = if let Some(rest) = bare.strip_prefix("RTMIN") {
        offset(rest, '+').map(|o| SIGRTMIN + o)
    } else if let Some(rest) = bare.strip_prefix("RTMAX") {
        offset(rest, '-').map(|o| SIGRTMAX - o)
    } else {
        None
    };
    n.filter(|n| (SIGRTMIN..=SIGRTMAX).contains(n))
        .ok_or_else(err)
}

/// The newc archive holding `/hyperpod/overrides.json` that the launcher appends to the pod's
/// initramfs (4-byte aligned; Linux unpacks concatenated archives in order), or `None` when
/// nothing is overridden. Deterministic: every mtime is 0.
pub fn overrides_archive(o: &Overrides) -> Result<Option<Vec<u8>>, CpioError> {
    if o.is_empty() {
        return Ok(None);
    }
    let json = serde_json::to_vec(o).map_err(|e| CpioError::Write(e.into()))?;
    let path = OVERRIDES_PATH.trim_start_matches('/');
    let mut w = CpioWriter::new(Vec::new(), 0);
    if let Some((dir, _)) = path.rsplit_once('/') {
        w.dir(dir, 0o755)?;
    }
    w.file(path, 0o644, &json)?;
    w.finish().map(Some)
}

#[cfg(test)]
mod tests;
