//! What a launch asks for, engine-independent: parsed from the command line by `main`, consumed
//! by the KVM engine (`vmm`) and the QEMU engine (`qemu`).

use std::path::PathBuf;
use std::time::Duration;

use pod::spec::Overrides;

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
    /// `--require-signature PUB` (see `signature` for the environment and host config).
    pub require_signature: Option<PathBuf>,
}
