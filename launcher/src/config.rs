//! What a launch asks for, engine-independent: parsed from the command line by `main`, consumed
//! by the KVM engine (`vmm`) and the QEMU engine (`qemu`).

use std::path::PathBuf;
use std::time::Duration;

use pod::spec::Overrides;

use crate::publish::{NetworkMode, PortRequest};

/// Which machine runs the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Our KVM VMM when the host's KVM runs guest code natively, else QEMU (with a notice).
    Auto,
    Kvm,
    Qemu,
}

/// An extra disk (`--disk FILE[:ro]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Everything one launch needs besides the pod's own manifest.
#[derive(Clone, Debug)]
pub struct LaunchConfig {
    pub pod: PathBuf,
    pub engine: Engine,
    /// Guest memory in MiB; `None` takes the manifest's.
    pub memory_mib: Option<u32>,
    /// vCPU count; `None` takes the manifest's.
    pub vcpus: Option<u32>,
    pub overrides: Overrides,
    pub disks: Vec<Disk>,
    /// `-p`: guest ports published on the host.
    pub publish: Vec<PortRequest>,
    /// `-P`: publish the image's exposed ports on free host ports too.
    pub publish_all: bool,
    /// `--network`; `None` takes the engine's default (see [`crate::net`]).
    pub network: Option<NetworkMode>,
    /// Stop the VM (exit code 124) after this long.
    pub timeout: Option<Duration>,
    /// How long after forwarding a stop signal the VM may keep running.
    pub grace: Duration,
    /// Put the host terminal in raw mode and give the app a terminal (`-t`).
    pub tty: bool,
    /// Keep stdin attached (`-i`).
    pub interactive: bool,
    /// Print the boot phases on stderr at exit.
    pub timing: bool,
    /// Hash the whole rootfs section before booting.
    pub verify: bool,
    /// No notices from the launcher itself (`-q`); errors are still printed.
    pub quiet: bool,
    /// `--require-signature PUB` (see `signature` for the environment and host config).
    pub require_signature: Option<PathBuf>,
}

/// The pod's stop signal as a number; SIGTERM, with a notice, when the pod names none the
/// launcher knows (`pod::protocol::parse_signal`, Docker's names and numbers).
pub fn stop_signal(name: &str) -> i32 {
    pod::protocol::parse_signal(name).unwrap_or_else(|e| {
        eprintln!("hyperlaunch: the pod's stop signal: {e}; using SIGTERM");
        libc::SIGTERM
    })
}

impl LaunchConfig {
    /// With `-t`, what the app's terminal takes from the host's: `TERM` (or `xterm`) and the
    /// window size (see `pod::spec::Overrides`).
    pub fn with_host_terminal(mut self) -> LaunchConfig {
        if self.tty {
            let term = std::env::var("TERM").ok().filter(|t| !t.is_empty());
            self.overrides.term = Some(term.unwrap_or_else(|| "xterm".into()));
            self.overrides.window_size = crate::supervisor::host_window_size().map(|(r, c)| [r, c]);
        }
        self
    }
}
