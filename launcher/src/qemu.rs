//! The QEMU engine: boots a pod under `qemu-system-x86_64 -M microvm`, with KVM where the host's
//! KVM runs guest code natively ([`crate::doctor::kvm_runs_guest_natively`]), else TCG.
//!
//! The guest sees what the KVM engine gives it (`docs/guest-protocol.md`, `pod::protocol`): the
//! pod's kernel and initramfs (plus the overrides archive), the rootfs as `/dev/vda` served
//! straight from the pod file through QEMU's raw driver window, the console on the first serial
//! port, the control channel on the second, the app's stdio on a one-port virtio console
//! (`/dev/hvc0`), and the exit port (`isa-debug-exit`).
//!
//! Plumbing: the kernel and the initramfs are copied (their digests checked on the way) into
//! memfds that QEMU opens as `/proc/self/fd/N`, so nothing is written to disk and nothing is
//! left behind; the rootfs window is served from the launcher's own descriptor of the pod
//! (`/proc/self/fd/N` again), so QEMU reads the file that was opened and checked. The control
//! channel and the stdio stream are each one end of a socketpair handed to QEMU as a socket
//! chardev `fd=N`; QEMU's stdout carries the console. QEMU runs sandboxed (`-sandbox`), in its
//! own process group, so a terminal's Ctrl-C reaches only the launcher, which forwards it.
//! Everything else — signals, deadlines, exit codes, timing — is the shared
//! [`crate::supervisor`]'s.

pub mod argv;
mod machine;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pod::protocol::stdio;
use pod::{Pod, PodError, Section, SectionLoc};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use argv::{Chardev, Drive, Microvm};

use crate::config::{Disk, LaunchConfig};
use crate::supervisor::Outcome;
use crate::timing::Marks;

/// The QEMU binary looked up on `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// QEMU's seccomp sandbox: no obsolete system calls, no privilege changes, no new processes, no
/// resource-control calls.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Why the QEMU engine could not run the pod (the launcher exits with 125).
#[derive(Debug, Error)]
pub enum QemuError {
    #[error("{path}")]
    Pod {
        path: String,
        #[source]
        source: PodError,
    },
    #[error("{QEMU_BINARY} not found: apt-get install qemu-system-x86")]
    NotFound,
    #[error("{path}: {section}: sha256 is {actual}, the manifest says {expected}")]
    Digest {
        path: String,
        section: &'static str,
        expected: String,
        actual: String,
    },
    #[error("copy the {0} out of the pod")]
    Extract(&'static str, #[source] io::Error),
    #[error("build the overrides archive")]
    Overrides(#[source] pod::cpio::CpioError),
    #[error("extra disk {0}: not found")]
    DiskMissing(PathBuf),
    #[error("extra disk {0}: size {1} is not a multiple of 512 bytes")]
    DiskSize(PathBuf, u64),
    #[error("socketpair for the {0}")]
    Socket(&'static str, #[source] io::Error),
    #[error("start {QEMU_BINARY}")]
    Spawn(#[source] io::Error),
    #[error("supervise {QEMU_BINARY}")]
    Supervise(#[source] io::Error),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
}

/// How QEMU executes guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// QEMU's translator (`-accel tcg -cpu max`), ~10-50x slower.
    Tcg,
}

/// Everything that goes on QEMU's command line.
#[derive(Clone, Debug)]
pub struct QemuPlan {
    pub binary: PathBuf,
    pub accel: Accel,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Path QEMU opens for the kernel (a `/proc/self/fd/N` of a memfd in practice).
    pub kernel: PathBuf,
    /// Path QEMU opens for the initramfs.
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The pod file and where its rootfs section is.
    pub pod: PathBuf,
    pub rootfs: SectionLoc,
    pub disks: Vec<Disk>,
    /// QEMU's descriptor of its end of the control socketpair.
    pub control_fd: RawFd,
    /// QEMU's descriptor of its end of the stdio socketpair.
    pub stdio_fd: RawFd,
    /// The network device: QEMU's descriptor of the backend's frame stream and the guest's MAC;
    /// `None`: no network device (`--network none`).
    pub net: Option<NetPlan>,
}

/// The guest's network device on QEMU's command line.
#[derive(Clone, Copy, Debug)]
pub struct NetPlan {
    /// A connected stream socket carrying QEMU stream-protocol frames (passt's other end), or
    /// a TAP device (`tap`).
    pub fd: RawFd,
    pub tap: bool,
    pub mac: [u8; 6],
}

/// QEMU's arguments (without the binary) for `plan`. Pure.
pub fn qemu_args(plan: &QemuPlan) -> Vec<OsString> {
    let mut vm = Microvm::new(&plan.kernel, plan.cmdline.clone())
        .accel(plan.accel)
        .memory_mib(plan.memory_mib)
        .vcpus(plan.vcpus)
        .initrd(&plan.initrd)
        .console(Chardev::Stdio)
        .control(Chardev::SocketFd(plan.control_fd))
        // Drives: the rootfs first (/dev/vda), then the extra disks in order (/dev/vdb, ...).
        .drive(Drive {
            path: plan.pod.clone(),
            window: Some((plan.rootfs.offset, plan.rootfs.len)),
            read_only: true,
        });
    for d in &plan.disks {
        vm = vm.drive(Drive {
            path: d.path.clone(),
            window: None,
            read_only: d.read_only,
        });
    }
    vm = vm.stdio(Chardev::SocketFd(plan.stdio_fd));
    if let Some(net) = plan.net {
        vm = vm.net(net);
    }
    vm.args()
}

/// The kernel command line: the manifest's, then the console and the stdio window (QEMU's
/// virtio console drops what its chardev does not take, so init sends only what the launcher
/// has room for: `pod::protocol::stdio::WINDOW_ARG`).
pub fn kernel_cmdline(manifest_cmdline: &str) -> String {
    let tail = format!("console=ttyS0 {}{}", stdio::WINDOW_ARG, stdio::QEMU_WINDOW);
    let base = manifest_cmdline.trim();
    if base.is_empty() {
        tail
    } else {
        format!("{base} {tail}")
    }
}

/// Finds `qemu-system-x86_64` in the `PATH` value `path_var`.
pub fn find_qemu(path_var: Option<&OsStr>) -> Result<PathBuf, QemuError> {
    use std::os::unix::fs::PermissionsExt;
    let path_var = path_var.ok_or(QemuError::NotFound)?;
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(QEMU_BINARY))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(QemuError::NotFound)
}

/// An anonymous in-memory file that QEMU opens as `/proc/self/fd/N` (the descriptor is
/// inherited, so the number is the same in QEMU).
struct MemFile {
    file: File,
}

impl MemFile {
    fn new(name: &str) -> io::Result<MemFile> {
        let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
        // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked and
        // owned right away. MFD_CLOEXEC: only QEMU gets it, by clearing the flag in the child.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(MemFile { file })
    }
}

/// The path by which QEMU, which inherits descriptor `fd`, opens it.
fn inherited_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Copies section `s` of the pod to the start of `out`, checking its sha256 against the
/// manifest's. Returns the bytes copied.
fn copy_section(pod: &Pod, pod_path: &Path, s: Section, out: &File) -> Result<u64, QemuError> {
    let loc = pod.section(s);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < loc.len {
        let n = buf.len().min((loc.len - done) as usize);
        pod.file()
            .read_exact_at(&mut buf[..n], loc.offset + done)
            .map_err(|e| QemuError::Extract(s.name(), e))?;
        hasher.update(&buf[..n]);
        out.write_all_at(&buf[..n], done)
            .map_err(|e| QemuError::Extract(s.name(), e))?;
        done += n as u64;
    }
    let actual = hex::encode(hasher.finalize());
    let expected = pod.recorded_sha256(s);
    if actual != expected {
        return Err(QemuError::Digest {
            path: pod_path.display().to_string(),
            section: s.name(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(done)
}

/// Boots the pod described by `cfg` under QEMU and returns how the run ended, recording its
/// marks. `Err` means the launcher failed before the guest ran (exit 125).
pub fn run(cfg: &LaunchConfig, marks: &mut Marks) -> Result<Outcome, QemuError> {
    let pod_err = |source| QemuError::Pod {
        path: cfg.pod.display().to_string(),
        source,
    };
    let pod = Pod::open(&cfg.pod).map_err(pod_err)?;
    if cfg.verify {
        pod.verify_section(Section::Rootfs).map_err(pod_err)?;
    }
    for d in &cfg.disks {
        // As the KVM engine's virtio-blk: a disk is whole sectors (QEMU would hide the tail).
        match std::fs::metadata(&d.path) {
            Err(_) => return Err(QemuError::DiskMissing(d.path.clone())),
            Ok(m) if m.len() % 512 != 0 => {
                return Err(QemuError::DiskSize(d.path.clone(), m.len()));
            }
            Ok(_) => {}
        }
    }
    let binary = find_qemu(std::env::var_os("PATH").as_deref())?;
    let manifest = pod.manifest();
    // The network before the guest's overrides: they carry its addressing.
    let mut net = crate::net::start(
        cfg,
        crate::config::Engine::Qemu,
        &manifest.run.exposed_ports,
    )?;
    if let Some(n) = &mut net {
        n.spawn_forwarder()?;
    }
    let mut overrides = cfg.overrides.clone();
    if let Some(n) = &net {
        overrides.network = Some(n.guest.clone());
        marks.published = n.published.iter().map(ToString::to_string).collect();
    }

    let kernel = MemFile::new("hyperpod-kernel").map_err(|e| QemuError::Extract("kernel", e))?;
    copy_section(&pod, &cfg.pod, Section::Kernel, &kernel.file)?;
    let initrd =
        MemFile::new("hyperpod-initramfs").map_err(|e| QemuError::Extract("initramfs", e))?;
    let len = copy_section(&pod, &cfg.pod, Section::Initramfs, &initrd.file)?;
    if let Some(archive) =
        pod::protocol::overrides_archive(&overrides).map_err(QemuError::Overrides)?
    {
        // Linux unpacks concatenated archives; each starts 4-byte aligned (zeros in between
        // are skipped).
        let at = len.next_multiple_of(4);
        initrd
            .file
            .write_all_at(&archive, at)
            .map_err(|e| QemuError::Extract("initramfs", e))?;
    }
    marks.pod_opened = Some(Instant::now());

    let pair =
        |what| std::os::unix::net::UnixStream::pair().map_err(|e| QemuError::Socket(what, e));
    let (ctl_ours, ctl_theirs) = pair("control channel")?;
    let (io_ours, io_theirs) = pair("stdio stream")?;
    let accel = if crate::doctor::kvm_runs_guest_natively() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    marks.engine = match accel {
        Accel::Kvm => "qemu/kvm",
        Accel::Tcg => "qemu/tcg",
    };
    let plan = QemuPlan {
        binary,
        accel,
        memory_mib: cfg.memory_mib.unwrap_or(manifest.resources.memory_mib),
        vcpus: cfg.vcpus.unwrap_or(manifest.resources.vcpus),
        kernel: inherited_path(&kernel.file),
        initrd: inherited_path(&initrd.file),
        cmdline: kernel_cmdline(&manifest.kernel_cmdline),
        // QEMU reopens the very file we opened and checked, even if the path is replaced
        // meanwhile.
        pod: inherited_path(pod.file()),
        rootfs: pod.rootfs_disk(),
        disks: cfg.disks.clone(),
        control_fd: ctl_theirs.as_raw_fd(),
        stdio_fd: io_theirs.as_raw_fd(),
        net: net.as_ref().map(|n| NetPlan {
            fd: n.link.raw_fd(),
            tap: n.link.is_tap(),
            mac: n.mac,
        }),
    };
    let mut inherit = vec![
        ctl_theirs.as_raw_fd(),
        io_theirs.as_raw_fd(),
        kernel.file.as_raw_fd(),
        initrd.file.as_raw_fd(),
        pod.file().as_raw_fd(),
    ];
    inherit.extend(net.as_ref().map(|n| n.link.raw_fd()));
    let opts = crate::supervisor::Options {
        timeout: cfg.timeout,
        grace: cfg.grace,
        stop_signal: crate::config::stop_signal(&manifest.run.stop_signal),
        tty: cfg.tty,
    };
    let report = machine::run(
        &plan,
        &inherit,
        machine::Channels {
            control: ctl_ours,
            stdio: io_ours,
            theirs: vec![ctl_theirs, io_theirs],
        },
        cfg.interactive,
        &opts,
        marks,
    )?;
    // QEMU has exited: the memfds can go, and the network backend with them (passt killed
    // first, reaped last: its ports are free for the next launch once the launcher exits).
    if let Some(n) = &net {
        n.stop();
    }
    drop(kernel);
    drop(initrd);
    if let Some(n) = net {
        n.end();
    }
    marks.add_report(&report);
    Ok(report.outcome())
}

#[cfg(test)]
mod tests;
