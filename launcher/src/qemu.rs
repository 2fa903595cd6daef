//! The QEMU engine: boots a pod under `qemu-system-x86_64 -M microvm`, with KVM where the host's
//! KVM runs guest code natively ([`crate::doctor::kvm_runs_guest_natively`]), else TCG.
//!
//! The guest sees what the KVM engine gives it (`docs/guest-protocol.md`): the pod's kernel and
//! initramfs (plus the overrides archive), the rootfs as `/dev/vda` served straight from the pod
//! file through QEMU's raw driver window, the console on the first serial port, the control
//! channel on the second (0x2f8, IRQ 3), and the exit port at 0xf4 (`isa-debug-exit`).
//!
//! Plumbing: the kernel and the initramfs are copied (their digests checked on the way) into
//! memfds that QEMU opens as `/proc/self/fd/N`, so nothing is written to disk and nothing is
//! left behind; the rootfs window is served from the launcher's own descriptor of the pod
//! (`/proc/self/fd/N` again), so QEMU reads the file that was opened and checked. The control channel is one end of a socketpair handed to QEMU as a socket
//! chardev `fd=N`. QEMU's stdout/stdin carry the console (bridged by [`supervise`]) and QEMU
//! runs in its own process group, so a terminal's Ctrl-C reaches only the launcher, which
//! forwards it as `S 2`.
//!
//! Exit codes are the guest protocol's; one more: when the launcher forwarded a stop signal
//! (Ctrl-C, SIGTERM) and the guest was still running `--grace` later, QEMU is killed and the
//! launcher exits with [`EXIT_KILLED`] (137, `128 + SIGKILL`, like `docker kill`).

mod supervise;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pod::cpio::{CpioError, CpioWriter};
use pod::spec::{OVERRIDES_PATH, Overrides};
use pod::{Pod, PodError, Section, SectionLoc};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::{Disk, LaunchConfig};
use crate::control::{EXIT_INIT_PANIC, EXIT_NO_STATUS, EXIT_TIMEOUT};

pub use supervise::Timing;

/// The QEMU binary looked up on `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// Exit code when the guest outlived `--grace` after a forwarded stop signal and was killed.
pub const EXIT_KILLED: i32 = 128 + libc::SIGKILL;
/// I/O port of the exit device (`isa-debug-exit`).
pub const EXIT_PORT: u16 = 0xf4;
/// I/O port and IRQ of the control channel's serial port (ttyS1).
pub const CONTROL_PORT: (u16, u8) = (0x2f8, 3);
/// I/O port and IRQ of the console's serial port (ttyS0).
pub const CONSOLE_PORT: (u16, u8) = (0x3f8, 4);

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
    Overrides(#[source] CpioError),
    #[error("serialise the overrides")]
    OverridesJson(#[source] serde_json::Error),
    #[error("extra disk {0}: not found")]
    DiskMissing(PathBuf),
    #[error("control channel socketpair")]
    Socket(#[source] io::Error),
    #[error("start {QEMU_BINARY}")]
    Spawn(#[source] io::Error),
    #[error("{QEMU_BINARY} failed to start: {0}")]
    Failed(String),
    #[error("supervise {QEMU_BINARY}")]
    Supervise(#[source] io::Error),
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
}

/// Doubles commas, QEMU's escape inside `key=value,...` option strings.
fn opt_escape(path: &Path) -> OsString {
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn os_concat(parts: &[&OsStr]) -> OsString {
    let mut s = OsString::new();
    for p in parts {
        s.push(p);
    }
    s
}

/// QEMU's arguments (without the binary) for `plan`. Pure.
pub fn qemu_args(plan: &QemuPlan) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    // acpi=off: our kernel has no ACPI, and only then does QEMU describe the virtio-mmio devices
    // on the kernel command line (virtio_mmio.device=...). isa-serial=off: both serial ports are
    // declared below, explicitly.
    push("-M");
    push("microvm,acpi=off,isa-serial=off");
    match plan.accel {
        Accel::Kvm => {
            push("-accel");
            push("kvm");
            push("-cpu");
            push("host");
        }
        Accel::Tcg => {
            push("-accel");
            push("tcg");
            push("-cpu");
            push("max");
        }
    }
    push("-m");
    push(&format!("{}M", plan.memory_mib));
    push("-smp");
    push(&plan.vcpus.to_string());
    for s in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
        push(s);
    }
    push("-chardev");
    push("stdio,id=con,signal=off");
    push("-device");
    push(&format!(
        "isa-serial,chardev=con,index=0,iobase={:#x},irq={}",
        CONSOLE_PORT.0, CONSOLE_PORT.1
    ));
    push("-chardev");
    push(&format!("socket,id=ctl,fd={}", plan.control_fd));
    push("-device");
    push(&format!(
        "isa-serial,chardev=ctl,index=1,iobase={:#x},irq={}",
        CONTROL_PORT.0, CONTROL_PORT.1
    ));
    push("-device");
    push(&format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x01"));
    a.push("-kernel".into());
    a.push(plan.kernel.clone().into_os_string());
    a.push("-initrd".into());
    a.push(plan.initrd.clone().into_os_string());
    a.push("-append".into());
    a.push(plan.cmdline.clone().into());

    // Drives: the rootfs first (/dev/vda), then the extra disks in order (/dev/vdb, ...).
    let mut drives: Vec<(String, OsString)> = vec![(
        "rootfs".into(),
        os_concat(&[
            OsStr::new(&format!(
                "driver=raw,offset={},size={},file.driver=file,file.filename=",
                plan.rootfs.offset, plan.rootfs.len
            )),
            &opt_escape(&plan.pod),
            OsStr::new(",if=none,id=rootfs,readonly=on"),
        ]),
    )];
    for (i, d) in plan.disks.iter().enumerate() {
        let id = format!("disk{}", i + 1);
        drives.push((
            id.clone(),
            os_concat(&[
                OsStr::new("driver=raw,file.driver=file,file.filename="),
                &opt_escape(&d.path),
                OsStr::new(&format!(
                    ",if=none,id={id},readonly={}",
                    if d.read_only { "on" } else { "off" }
                )),
            ]),
        ));
    }
    // QEMU plugs each virtio-blk-device into the free virtio-mmio transport with the highest
    // address and lists the used transports on the kernel command line from the highest down,
    // so Linux names them in declaration order (checked by the e2e test with two disks).
    for (id, drive) in &drives {
        a.push("-drive".into());
        a.push(drive.clone());
        a.push("-device".into());
        a.push(format!("virtio-blk-device,drive={id}").into());
    }
    a
}

/// The kernel command line: the manifest's, then the console.
pub fn kernel_cmdline(manifest_cmdline: &str) -> String {
    let base = manifest_cmdline.trim();
    if base.is_empty() {
        "console=ttyS0".to_string()
    } else {
        format!("{base} console=ttyS0")
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

/// A signal name or number as images give it (`SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`) to its
/// number; `None` when unknown. An empty name is SIGTERM.
pub fn signal_number(name: &str) -> Option<i32> {
    const NAMES: &[(&str, i32)] = &[
        ("HUP", libc::SIGHUP),
        ("INT", libc::SIGINT),
        ("QUIT", libc::SIGQUIT),
        ("ILL", libc::SIGILL),
        ("TRAP", libc::SIGTRAP),
        ("ABRT", libc::SIGABRT),
        ("IOT", libc::SIGIOT),
        ("BUS", libc::SIGBUS),
        ("FPE", libc::SIGFPE),
        ("KILL", libc::SIGKILL),
        ("USR1", libc::SIGUSR1),
        ("SEGV", libc::SIGSEGV),
        ("USR2", libc::SIGUSR2),
        ("PIPE", libc::SIGPIPE),
        ("ALRM", libc::SIGALRM),
        ("TERM", libc::SIGTERM),
        ("STKFLT", libc::SIGSTKFLT),
        ("CHLD", libc::SIGCHLD),
        ("CONT", libc::SIGCONT),
        ("STOP", libc::SIGSTOP),
        ("TSTP", libc::SIGTSTP),
        ("TTIN", libc::SIGTTIN),
        ("TTOU", libc::SIGTTOU),
        ("URG", libc::SIGURG),
        ("XCPU", libc::SIGXCPU),
        ("XFSZ", libc::SIGXFSZ),
        ("VTALRM", libc::SIGVTALRM),
        ("PROF", libc::SIGPROF),
        ("WINCH", libc::SIGWINCH),
        ("IO", libc::SIGIO),
        ("POLL", libc::SIGPOLL),
        ("PWR", libc::SIGPWR),
        ("SYS", libc::SIGSYS),
    ];
    // Linux's SIGRTMIN/SIGRTMAX as the kernel sees them (glibc reserves the first two).
    const RTMIN: i32 = 34;
    const RTMAX: i32 = 64;
    let s = name.trim();
    if s.is_empty() {
        return Some(libc::SIGTERM);
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=RTMAX).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = NAMES.iter().find(|(n, _)| *n == bare) {
        return Some(n);
    }
    let rt = |rest: &str, base: i32, sign: i32| -> Option<i32> {
        let off = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix(if sign > 0 { '+' } else { '-' })?
                .parse::<i32>()
                .ok()?
        };
        let n = base + sign * off;
        (RTMIN..=RTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        return rt(rest, RTMIN, 1);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        return rt(rest, RTMAX, -1);
    }
    None
}

/// How a QEMU run ended, as seen by the launcher.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ending {
    /// The status from an `X` line.
    pub status: Option<u8>,
    /// The message of a `P` line.
    pub panic: Option<String>,
    /// `--timeout` expired and QEMU was killed.
    pub timed_out: bool,
    /// `--grace` expired after a forwarded stop signal and QEMU was killed.
    pub killed: bool,
    /// Whether the guest ever wrote to the console or the control channel.
    pub guest_seen: bool,
    /// QEMU's own exit status (`None` when killed by a signal).
    pub qemu_code: Option<i32>,
    /// The last lines QEMU wrote on stderr.
    pub qemu_stderr: String,
}

/// The launcher's exit code for `e`, or the error when QEMU never ran the guest. Pure.
pub fn exit_code(e: &Ending) -> Result<i32, QemuError> {
    if let Some(code) = e.status {
        return Ok(i32::from(code));
    }
    if e.panic.is_some() {
        return Ok(EXIT_INIT_PANIC);
    }
    if e.timed_out {
        return Ok(EXIT_TIMEOUT);
    }
    if e.killed {
        return Ok(EXIT_KILLED);
    }
    if !e.guest_seen && e.qemu_code != Some(0) {
        let msg = e.qemu_stderr.trim();
        return Err(QemuError::Failed(if msg.is_empty() {
            match e.qemu_code {
                Some(c) => format!("exit status {c}"),
                None => "killed by a signal".to_string(),
            }
        } else {
            msg.lines().last().unwrap_or(msg).to_string()
        }));
    }
    Ok(EXIT_NO_STATUS)
}

/// The one-line explanation printed on stderr for an exit code the guest did not choose.
pub fn ending_message(e: &Ending, code: i32) -> Option<String> {
    if e.status.is_some() {
        return None;
    }
    Some(match code {
        EXIT_INIT_PANIC => format!("init panicked: {}", e.panic.as_deref().unwrap_or_default()),
        EXIT_TIMEOUT => "timeout expired: the VM was stopped".to_string(),
        EXIT_KILLED => "the pod did not stop within the grace period: the VM was killed".into(),
        _ => "the guest ended without reporting a status (kernel panic, reset or crash)".into(),
    })
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

/// The newc archive holding `/hyperpod/overrides.json`, or `None` when nothing is overridden.
pub fn overrides_archive(o: &Overrides, mtime: u32) -> Result<Option<Vec<u8>>, QemuError> {
    if o.is_empty() {
        return Ok(None);
    }
    let json = serde_json::to_vec(o).map_err(QemuError::OverridesJson)?;
    let path = OVERRIDES_PATH.trim_start_matches('/');
    let mut w = CpioWriter::new(Vec::new(), mtime);
    if let Some((dir, _)) = path.rsplit_once('/') {
        w.dir(dir, 0o755).map_err(QemuError::Overrides)?;
    }
    w.file(path, 0o644, &json).map_err(QemuError::Overrides)?;
    w.finish().map(Some).map_err(QemuError::Overrides)
}

/// Boots the pod described by `cfg` under QEMU and returns the launcher's exit code.
/// `Err` means the launcher failed (exit 125); the error says why in one line.
pub fn run(cfg: &LaunchConfig) -> Result<i32, QemuError> {
    let started = Instant::now();
    // First, so a Ctrl-C or SIGTERM during the setup is forwarded, not fatal.
    let signals = supervise::SignalPipe::install().map_err(QemuError::Supervise)?;
    let pod_err = |source| QemuError::Pod {
        path: cfg.pod.display().to_string(),
        source,
    };
    let pod = Pod::open(&cfg.pod).map_err(pod_err)?;
    if cfg.verify {
        pod.verify_section(Section::Rootfs).map_err(pod_err)?;
    }
    for d in &cfg.disks {
        if !d.path.exists() {
            return Err(QemuError::DiskMissing(d.path.clone()));
        }
    }
    let binary = find_qemu(std::env::var_os("PATH").as_deref())?;
    let manifest = pod.manifest();

    let kernel = MemFile::new("hyperpod-kernel").map_err(|e| QemuError::Extract("kernel", e))?;
    copy_section(&pod, &cfg.pod, Section::Kernel, &kernel.file)?;
    let initrd =
        MemFile::new("hyperpod-initramfs").map_err(|e| QemuError::Extract("initramfs", e))?;
    let len = copy_section(&pod, &cfg.pod, Section::Initramfs, &initrd.file)?;
    let mtime = u32::try_from(manifest.created_unix()).unwrap_or(0);
    if let Some(archive) = overrides_archive(&cfg.overrides, mtime)? {
        // Linux unpacks concatenated archives; each starts 4-byte aligned (zeros in between
        // are skipped).
        let at = len.next_multiple_of(4);
        initrd
            .file
            .write_all_at(&archive, at)
            .map_err(|e| QemuError::Extract("initramfs", e))?;
    }
    let pod_opened = started.elapsed();

    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(QemuError::Socket)?;
    let accel = if crate::doctor::kvm_runs_guest_natively() {
        Accel::Kvm
    } else {
        Accel::Tcg
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
        control_fd: theirs.as_raw_fd(),
    };
    let stop_signal = signal_number(&manifest.run.stop_signal).unwrap_or_else(|| {
        eprintln!(
            "hyperlaunch: unknown stop signal {:?} in the pod, using SIGTERM",
            manifest.run.stop_signal
        );
        libc::SIGTERM
    });
    let inherit = [
        theirs.as_raw_fd(),
        kernel.file.as_raw_fd(),
        initrd.file.as_raw_fd(),
        pod.file().as_raw_fd(),
    ];
    let (ending, timing) = supervise::supervise(
        &signals,
        &plan,
        &inherit,
        ours,
        theirs,
        supervise::Options {
            timeout: cfg.timeout,
            grace: cfg.grace,
            interactive: cfg.interactive,
            tty: cfg.tty,
            stop_signal,
            started,
        },
    )?;
    // QEMU has exited: the memfds can go.
    drop(kernel);
    drop(initrd);
    let code = exit_code(&ending)?;
    if let Some(msg) = ending_message(&ending, code) {
        eprintln!("hyperlaunch: {msg}");
    }
    if cfg.timing {
        let _ = writeln!(
            io::stderr(),
            "{}",
            timing.report(pod_opened, accel, started.elapsed())
        );
    }
    Ok(code)
}

#[cfg(test)]
mod tests;
