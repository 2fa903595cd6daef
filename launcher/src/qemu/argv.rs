//! QEMU's command line for a hyperpod `microvm`, built in one place (pure): the QEMU engine's
//! launches ([`super::qemu_args`]), the end-to-end tests' boots of kernels and pod sections
//! outside the launcher (`tests/src/qemu.rs`) and the boot benchmark (`examples/qemu_argv.rs`,
//! used by `bench/boot.sh`) all get theirs from [`Microvm::args`].
//!
//! The machine is the guest protocol's (`docs/guest-protocol.md`, ports and IRQs from
//! `pod::protocol`): ELF vmlinux through PVH, `acpi=off` (QEMU then describes the virtio-mmio
//! devices on the kernel command line), the console on the first serial port, the control
//! channel on the second, `isa-debug-exit` at the exit port, the drives in order as
//! `/dev/vda`, `/dev/vdb`, …, optionally the app's stdio console and the network device, and
//! QEMU's seccomp sandbox.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use pod::protocol::{CONSOLE_UART, CONTROL_UART, EXIT_PORT};

use super::{Accel, NetPlan, SANDBOX};

/// Where a serial port or the stdio console is connected on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chardev {
    /// QEMU's own stdin/stdout, Ctrl-C not taken as a signal (`signal=off`).
    Stdio,
    /// A connected stream socket QEMU inherits as this descriptor.
    SocketFd(RawFd),
    /// Output written to this file; no input.
    File(PathBuf),
    /// QEMU connects to a UNIX socket that is listening.
    Connect(PathBuf),
    /// QEMU listens on a UNIX socket without waiting for a client.
    Listen(PathBuf),
}

impl Chardev {
    /// The `-chardev` value with `id`.
    fn option(&self, id: &str) -> OsString {
        match self {
            Chardev::Stdio => format!("stdio,id={id},signal=off").into(),
            Chardev::SocketFd(fd) => format!("socket,id={id},fd={fd}").into(),
            Chardev::File(p) => {
                os_concat(&[OsStr::new(&format!("file,id={id},path=")), &opt_escape(p)])
            }
            Chardev::Connect(p) => {
                os_concat(&[OsStr::new(&format!("socket,id={id},path=")), &opt_escape(p)])
            }
            Chardev::Listen(p) => os_concat(&[
                OsStr::new(&format!("socket,id={id},path=")),
                &opt_escape(p),
                OsStr::new(",server=on,wait=off"),
            ]),
        }
    }
}

/// A raw disk: the next `/dev/vdX` (virtio-blk over MMIO).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    pub path: PathBuf,
    /// Only this window of the file, `(offset, length)` in bytes (a pod's rootfs section).
    pub window: Option<(u64, u64)>,
    pub read_only: bool,
}

/// A `qemu-system-x86_64 -M microvm` command line (without the binary).
#[derive(Clone, Debug)]
pub struct Microvm {
    accel: Accel,
    memory_mib: u32,
    vcpus: u32,
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    console: Chardev,
    control: Option<Chardev>,
    drives: Vec<Drive>,
    stdio: Option<Chardev>,
    net: Option<NetPlan>,
    /// `-icount shift=0,sleep=…`: `Some(sleep)`.
    icount: Option<bool>,
}

impl Microvm {
    /// TCG, 1 vCPU, 256 MiB, booting `kernel` with `cmdline` (given whole: include
    /// `console=ttyS0`), the console on QEMU's stdio, no control channel, no drives.
    pub fn new(kernel: impl Into<PathBuf>, cmdline: impl Into<String>) -> Microvm {
        Microvm {
            accel: Accel::Tcg,
            memory_mib: 256,
            vcpus: 1,
            kernel: kernel.into(),
            initrd: None,
            cmdline: cmdline.into(),
            console: Chardev::Stdio,
            control: None,
            drives: Vec::new(),
            stdio: None,
            net: None,
            icount: None,
        }
    }

    pub fn accel(mut self, accel: Accel) -> Microvm {
        self.accel = accel;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Microvm {
        self.memory_mib = mib;
        self
    }

    pub fn vcpus(mut self, vcpus: u32) -> Microvm {
        self.vcpus = vcpus;
        self
    }

    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Microvm {
        self.initrd = Some(path.into());
        self
    }

    /// The console (`ttyS0`).
    pub fn console(mut self, to: Chardev) -> Microvm {
        self.console = to;
        self
    }

    /// The control channel (`ttyS1`); without it the machine has no second serial port.
    pub fn control(mut self, to: Chardev) -> Microvm {
        self.control = Some(to);
        self
    }

    /// The next disk (the first is `/dev/vda`).
    pub fn drive(mut self, drive: Drive) -> Microvm {
        self.drives.push(drive);
        self
    }

    /// The app's stdio: a one-port virtio console (`/dev/hvc0`).
    pub fn stdio(mut self, to: Chardev) -> Microvm {
        self.stdio = Some(to);
        self
    }

    /// The network device on a stream socket (QEMU's stream protocol) or a TAP device.
    pub fn net(mut self, net: NetPlan) -> Microvm {
        self.net = Some(net);
        self
    }

    /// Deterministic guest time: `-icount shift=0` (one instruction = 1 ns), idle time passing
    /// in real time (`sleep`) or warped to the next timer.
    pub fn icount(mut self, sleep: bool) -> Microvm {
        self.icount = Some(sleep);
        self
    }

    /// The kernel command line as passed with `-append`.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// QEMU's arguments.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        // acpi=off: our kernel has no ACPI, and only then does QEMU describe the virtio-mmio
        // devices on the kernel command line (virtio_mmio.device=...). isa-serial=off: both
        // serial ports are declared below, explicitly.
        push("-M");
        push("microvm,acpi=off,isa-serial=off");
        let (accel, cpu) = match self.accel {
            Accel::Kvm => ("kvm", "host"),
            Accel::Tcg => ("tcg", "max"),
        };
        for s in ["-accel", accel, "-cpu", cpu] {
            push(s);
        }
        push("-m");
        push(&format!("{}M", self.memory_mib));
        push("-smp");
        push(&self.vcpus.to_string());
        for s in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            push(s);
        }
        push("-sandbox");
        push(SANDBOX);
        serial(&mut a, "con", &self.console, 0, CONSOLE_UART);
        if let Some(control) = &self.control {
            serial(&mut a, "ctl", control, 1, CONTROL_UART);
        }
        a.push("-device".into());
        a.push(format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x01").into());
        a.push("-kernel".into());
        a.push(self.kernel.clone().into_os_string());
        if let Some(initrd) = &self.initrd {
            a.push("-initrd".into());
            a.push(initrd.clone().into_os_string());
        }
        a.push("-append".into());
        a.push(self.cmdline.clone().into());

        // QEMU plugs each virtio-blk-device into the free virtio-mmio transport with the highest
        // address and lists the used transports on the kernel command line from the highest
        // down, so Linux names them in declaration order (checked by the e2e test with two
        // disks).
        for (i, d) in self.drives.iter().enumerate() {
            let id = if i == 0 {
                "rootfs".to_string()
            } else {
                format!("disk{i}")
            };
            let window = d
                .window
                .map(|(offset, len)| format!("offset={offset},size={len},"))
                .unwrap_or_default();
            a.push("-drive".into());
            a.push(os_concat(&[
                OsStr::new(&format!(
                    "driver=raw,{window}file.driver=file,file.filename="
                )),
                &opt_escape(&d.path),
                OsStr::new(&format!(
                    ",if=none,id={id},readonly={}",
                    if d.read_only { "on" } else { "off" }
                )),
            ]));
            a.push("-device".into());
            a.push(format!("virtio-blk-device,drive={id}").into());
        }
        // The app's stdio: one virtio console port (max_ports=1: no multiport, so the guest
        // sees /dev/hvc0 exactly as the KVM engine's device gives it).
        if let Some(stdio) = &self.stdio {
            a.push("-chardev".into());
            a.push(stdio.option("stdio"));
            for s in [
                "-device",
                "virtio-serial-device,max_ports=1",
                "-device",
                "virtconsole,chardev=stdio",
            ] {
                a.push(s.into());
            }
        }
        // The network: one virtio-net device on the stream socket the launcher connected to its
        // backend (4-byte big-endian length + Ethernet frame, passt's and QEMU's stream
        // protocol), or on the TAP device the launcher created (its descriptor, opened without
        // a vnet header; QEMU reads that from the device).
        if let Some(net) = &self.net {
            let netdev = if net.tap {
                format!("tap,id=net0,fd={}", net.fd)
            } else {
                format!("stream,id=net0,server=off,addr.type=fd,addr.str={}", net.fd)
            };
            for arg in [
                "-netdev".to_string(),
                netdev,
                "-device".into(),
                format!(
                    "virtio-net-device,netdev=net0,mac={}",
                    crate::net::mac_text(net.mac)
                ),
            ] {
                a.push(arg.into());
            }
        }
        if let Some(sleep) = self.icount {
            a.push("-icount".into());
            a.push(format!("shift=0,sleep={}", if sleep { "on" } else { "off" }).into());
        }
        a
    }
}

/// `-chardev` and `-device isa-serial` for serial port `index` (`id`) at `uart`, connected to
/// `to`.
fn serial(a: &mut Vec<OsString>, id: &str, to: &Chardev, index: u8, uart: pod::protocol::Uart) {
    let pod::protocol::Uart { port, irq } = uart;
    a.push("-chardev".into());
    a.push(to.option(id));
    a.push("-device".into());
    a.push(format!("isa-serial,chardev={id},index={index},iobase={port:#x},irq={irq}").into());
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
