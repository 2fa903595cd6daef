//! Prints the QEMU command line (`qemu-system-x86_64` and its arguments, each ended by a NUL)
//! that boots a pod's sections from files under TCG, built by the launcher's own builder
//! (`launcher::qemu::Microvm`): the machine, ports, sandbox, rootfs window and kernel command
//! line are the QEMU engine's (TCG unless `--accel kvm`). `bench/boot.sh` and
//! `bench/boot-kvm.sh` run it (`mapfile -d ''`) instead of spelling a
//! command line of its own; it is also a way to rerun a launch's machine by hand.
//!
//! Usage: `qemu_argv POD --kernel VMLINUX --initrd INITRAMFS [--append WORDS] [--memory MIB]
//! [--vcpus N] [--accel tcg|kvm] [--console FILE] [--control FILE] [--icount-sleep on|off]
//! [--net-fd FD]`
//!
//! The kernel and initramfs are files (cut from the pod, or another kernel being tried); the
//! rootfs is served from the pod file's window as the launcher serves it. The console goes to
//! QEMU's stdout unless `--console`; without `--control` the machine has no control channel
//! (init then reports on the console). `--icount-sleep` adds `-icount shift=0`.
//! `--net-fd` adds the network device on an inherited stream socket (passt's other end).
//! Bad arguments: one line on stderr, exit 2.

use std::io::Write;
use std::path::PathBuf;

use launcher::qemu::{Accel, Chardev, Drive, Microvm, NetPlan, QEMU_BINARY, kernel_cmdline};

fn fail(msg: &str) -> ! {
    eprintln!("qemu_argv: {msg}");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (mut pod, mut kernel, mut initrd) = (None, None, None);
    let (mut append, mut memory, mut vcpus) = (String::new(), None, None);
    let (mut console, mut control, mut icount, mut net_fd) = (None, None, None, None);
    let mut accel = Accel::Tcg;
    while let Some(a) = args.next() {
        let a = a.to_string_lossy().into_owned();
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{a} needs a value")))
        };
        let number = |v: std::ffi::OsString| -> u32 {
            v.to_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| fail(&format!("{a}: not a number: {}", v.to_string_lossy())))
        };
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(value())),
            "--initrd" => initrd = Some(PathBuf::from(value())),
            "--append" => append = value().to_string_lossy().into_owned(),
            "--memory" => memory = Some(number(value())),
            "--vcpus" => vcpus = Some(number(value())),
            "--console" => console = Some(PathBuf::from(value())),
            "--control" => control = Some(PathBuf::from(value())),
            "--net-fd" => net_fd = Some(number(value())),
            "--accel" => {
                accel = match value().to_str() {
                    Some("tcg") => Accel::Tcg,
                    Some("kvm") => Accel::Kvm,
                    _ => fail("--accel: tcg or kvm"),
                }
            }
            "--icount-sleep" => {
                icount = Some(match value().to_str() {
                    Some("on") => true,
                    Some("off") => false,
                    _ => fail("--icount-sleep: on or off"),
                })
            }
            _ if a.starts_with('-') => fail(&format!("unknown option {a}")),
            _ if pod.is_none() => pod = Some(PathBuf::from(a)),
            _ => fail(&format!("one pod only: {a}")),
        }
    }
    let pod_path = pod.unwrap_or_else(|| fail("no pod given"));
    let pod =
        pod::Pod::open(&pod_path).unwrap_or_else(|e| fail(&format!("{}: {e}", pod_path.display())));
    let m = pod.manifest();
    let rootfs = pod.rootfs_disk();
    let mut cmdline = kernel_cmdline(&m.kernel_cmdline);
    if !append.trim().is_empty() {
        cmdline = format!("{cmdline} {}", append.trim());
    }
    let mut vm = Microvm::new(kernel.unwrap_or_else(|| fail("no --kernel")), cmdline)
        .accel(accel)
        .memory_mib(memory.unwrap_or(m.resources.memory_mib))
        .vcpus(vcpus.unwrap_or(m.resources.vcpus))
        .initrd(initrd.unwrap_or_else(|| fail("no --initrd")))
        .drive(Drive {
            path: pod_path.clone(),
            window: Some((rootfs.offset, rootfs.len)),
            read_only: true,
        });
    if let Some(c) = console {
        vm = vm.console(Chardev::File(c));
    }
    if let Some(c) = control {
        vm = vm.control(Chardev::File(c));
    }
    if let Some(sleep) = icount {
        vm = vm.icount(sleep);
    }
    if let Some(fd) = net_fd {
        vm = vm.net(NetPlan {
            fd: fd as i32,
            tap: false,
            mac: launcher::net::GUEST_MAC,
        });
    }
    let mut out = Vec::new();
    for a in std::iter::once(QEMU_BINARY.into()).chain(vm.args()) {
        out.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str()));
        out.push(0);
    }
    std::io::stdout()
        .write_all(&out)
        .unwrap_or_else(|e| fail(&format!("write: {e}")));
}
