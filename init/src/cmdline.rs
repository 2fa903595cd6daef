//! The kernel command line options init reads (`/proc/cmdline`).
//!
//! * `hyperpod.upper=/dev/vdX`: an ext4 disk to keep the overlay's upper and work dirs on
//!   (persistent writes); without it writes go to a tmpfs and vanish at exit.
//! * `hyperpod.debug`: print init's timings on the console.

use thiserror::Error;

/// Where init reads the kernel command line.
pub const CMDLINE_PATH: &str = "/proc/cmdline";

/// What init takes from the kernel command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Block device holding the persistent overlay upper (`hyperpod.upper=`).
    pub upper: Option<String>,
    /// Whether `hyperpod.debug` is present.
    pub debug: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("hyperpod.upper={0:?} is not a /dev/ path")]
    BadUpper(String),
}

/// Parses a kernel command line. Unknown words are the kernel's business and are ignored.
pub fn parse(cmdline: &str) -> Result<Options, CmdlineError> {
    let mut opts = Options::default();
    for word in cmdline.split_ascii_whitespace() {
        if word == "hyperpod.debug" {
            opts.debug = true;
        } else if let Some(dev) = word.strip_prefix("hyperpod.upper=") {
            let name = dev.strip_prefix("/dev/").unwrap_or("");
            if name.is_empty() || name.contains("..") || name.contains('/') {
                return Err(CmdlineError::BadUpper(dev.to_string()));
            }
            opts.upper = Some(dev.to_string());
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
        for bad in ["vdb", "/dev/", "/dev/../etc/x", "/dev/a/b", ""] {
            assert_eq!(
                parse(&format!("hyperpod.upper={bad}")),
                Err(CmdlineError::BadUpper(bad.into()))
            );
        }
    }
}
