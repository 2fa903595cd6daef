//! The kernel command line options init reads (`/proc/cmdline`).
//!
//! * `hyperpod.upper=/dev/vdX`: an ext4 disk to keep the overlay's upper and work dirs on
//!   (persistent writes); without it writes go to a tmpfs and vanish at exit.
//! * `hyperpod.root=/dev/dm-0`: the rootfs device to mount instead of `/dev/vda` (the
//!   dm-verity device the kernel's `dm-mod.create=` made; `pod::verity`). Fails closed: a
//!   missing device is an error, never a fallback to the unverified disk.
//! * `hyperpod.debug`: print init's timings on the console.
//! * `hyperpod.stdio_window=N`: keep at most `N` cost units of the app's output unacknowledged
//!   on the stdio device (`pod::protocol::stdio::WINDOW_ARG`; the QEMU engine sets it).

use pod::protocol::stdio::{MIN_WINDOW, WINDOW_ARG};
use thiserror::Error;

/// Where init reads the kernel command line.
pub const CMDLINE_PATH: &str = "/proc/cmdline";

/// What init takes from the kernel command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Block device holding the persistent overlay upper (`hyperpod.upper=`).
    pub upper: Option<String>,
    /// Block device holding the rootfs, when not `/dev/vda` (`hyperpod.root=`).
    pub root: Option<String>,
    /// Whether `hyperpod.debug` is present.
    pub debug: bool,
    /// The stdio output window (`hyperpod.stdio_window=`), when the launcher credits output.
    pub stdio_window: Option<u32>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("hyperpod.upper={0:?} is not a /dev/ path")]
    BadUpper(String),
    #[error("hyperpod.root={0:?} is not a /dev/ path")]
    BadRoot(String),
    #[error("{WINDOW_ARG}{0:?} is not a number of at least {MIN_WINDOW}")]
    BadWindow(String),
}

/// `/dev/NAME` with a plain NAME, or `None`.
fn dev_path(dev: &str) -> Option<String> {
    let name = dev.strip_prefix("/dev/").unwrap_or("");
    (!name.is_empty() && !name.contains("..") && !name.contains('/')).then(|| dev.to_string())
}

/// Parses a kernel command line. Unknown words are the kernel's business and are ignored.
pub fn parse(cmdline: &str) -> Result<Options, CmdlineError> {
    let mut opts = Options::default();
    for word in cmdline.split_ascii_whitespace() {
        if word == "hyperpod.debug" {
            opts.debug = true;
        } else if let Some(dev) = word.strip_prefix("hyperpod.upper=") {
            opts.upper = Some(dev_path(dev).ok_or_else(|| CmdlineError::BadUpper(dev.into()))?);
        } else if let Some(dev) = word.strip_prefix("hyperpod.root=") {
            opts.root = Some(dev_path(dev).ok_or_else(|| CmdlineError::BadRoot(dev.into()))?);
        } else if let Some(n) = word.strip_prefix(WINDOW_ARG) {
            let window = n
                .parse::<u32>()
                .ok()
                .filter(|w| *w >= MIN_WINDOW && n.bytes().all(|b| b.is_ascii_digit()));
            opts.stdio_window = Some(window.ok_or_else(|| CmdlineError::BadWindow(n.into()))?);
        }
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upper_and_debug() {
        assert_eq!(parse("console=ttyS0 quiet\n").unwrap(), Options::default());
        let opts = parse("console=ttyS0 hyperpod.upper=/dev/vdb hyperpod.debug\n").unwrap();
        assert_eq!(opts.upper.as_deref(), Some("/dev/vdb"));
        assert!(opts.debug);
        assert!(!parse("hyperpod.debugx").unwrap().debug);
        let opts = parse("dm-mod.create=\"a,,,ro,0 8 verity 1\" hyperpod.root=/dev/dm-0").unwrap();
        assert_eq!(opts.root.as_deref(), Some("/dev/dm-0"));
        assert_eq!(
            parse("hyperpod.root=/dev/../vda"),
            Err(CmdlineError::BadRoot("/dev/../vda".into()))
        );
        assert_eq!(
            parse("console=ttyS0 hyperpod.stdio_window=65536")
                .unwrap()
                .stdio_window,
            Some(65536)
        );
        for bad in ["", "x", "+4096", "4095", "-1", "99999999999"] {
            assert_eq!(
                parse(&format!("hyperpod.stdio_window={bad}")),
                Err(CmdlineError::BadWindow(bad.into()))
            );
        }
        for bad in ["vdb", "/dev/", "/dev/../etc/x", "/dev/a/b", ""] {
            assert_eq!(
                parse(&format!("hyperpod.upper={bad}")),
                Err(CmdlineError::BadUpper(bad.into()))
            );
        }
    }
}
