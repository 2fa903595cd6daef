use super::*;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

fn plan() -> QemuPlan {
    QemuPlan {
        binary: "/usr/bin/qemu-system-x86_64".into(),
        accel: Accel::Tcg,
        memory_mib: 128,
        vcpus: 1,
        kernel: "/proc/self/fd/7".into(),
        initrd: "/proc/self/fd/8".into(),
        cmdline: "quiet console=ttyS0".into(),
        pod: "/pods/a,b.pod".into(),
        rootfs: SectionLoc {
            offset: 8192,
            len: 4096 * 100,
        },
        disks: vec![
            Disk {
                path: "/data/one.img".into(),
                read_only: false,
            },
            Disk {
                path: "/data/two.img".into(),
                read_only: true,
            },
        ],
        control_fd: 5,
        stdio_fd: 6,
        net: None,
    }
}

fn strings(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_str().unwrap().to_string())
        .collect()
}

/// The value following `flag` in `args`, every time it appears.
fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn command_line_has_the_machine_devices_and_boot_files() {
    let args = strings(&qemu_args(&plan()));
    assert_eq!(values(&args, "-M"), ["microvm,acpi=off,isa-serial=off"]);
    assert_eq!(values(&args, "-accel"), ["tcg"]);
    assert_eq!(values(&args, "-cpu"), ["max"]);
    assert_eq!(values(&args, "-m"), ["128M"]);
    assert_eq!(values(&args, "-smp"), ["1"]);
    for flag in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing");
    }
    assert_eq!(values(&args, "-kernel"), ["/proc/self/fd/7"]);
    assert_eq!(values(&args, "-initrd"), ["/proc/self/fd/8"]);
    assert_eq!(values(&args, "-append"), ["quiet console=ttyS0"]);
    assert_eq!(
        values(&args, "-chardev"),
        [
            "stdio,id=con,signal=off",
            "socket,id=ctl,fd=5",
            "socket,id=stdio,fd=6"
        ]
    );
    assert_eq!(values(&args, "-sandbox"), [SANDBOX]);
    assert!(SANDBOX.contains("spawn=deny") && SANDBOX.contains("elevateprivileges=deny"));
    let devices = values(&args, "-device");
    assert!(devices.contains(&"virtio-serial-device,max_ports=1"));
    assert!(devices.contains(&"virtconsole,chardev=stdio"));
    // The guest protocol's ports and IRQs, from `pod::protocol`.
    let (con, ctl) = (pod::protocol::CONSOLE_UART, pod::protocol::CONTROL_UART);
    let exit = pod::protocol::EXIT_PORT;
    for d in [
        format!(
            "isa-serial,chardev=con,index=0,iobase={:#x},irq={}",
            con.port, con.irq
        ),
        format!(
            "isa-serial,chardev=ctl,index=1,iobase={:#x},irq={}",
            ctl.port, ctl.irq
        ),
        format!("isa-debug-exit,iobase={exit:#x},iosize=0x01"),
    ] {
        assert!(devices.contains(&d.as_str()), "{d}");
    }

    let mut kvm = plan();
    kvm.accel = Accel::Kvm;
    kvm.memory_mib = 512;
    kvm.vcpus = 2;
    let args = strings(&qemu_args(&kvm));
    assert_eq!(values(&args, "-accel"), ["kvm"]);
    assert_eq!(values(&args, "-cpu"), ["host"]);
    assert_eq!(values(&args, "-m"), ["512M"]);
    assert_eq!(values(&args, "-smp"), ["2"]);
}

#[test]
fn rootfs_is_a_read_only_window_of_the_pod_and_disks_follow_in_order() {
    let args = strings(&qemu_args(&plan()));
    let drives = values(&args, "-drive");
    // Declared in order: QEMU's transport assignment makes the first /dev/vda.
    assert_eq!(
        drives,
        [
            "driver=raw,offset=8192,size=409600,file.driver=file,file.filename=/pods/a,,b.pod,if=none,id=rootfs,readonly=on",
            "driver=raw,file.driver=file,file.filename=/data/one.img,if=none,id=disk1,readonly=off",
            "driver=raw,file.driver=file,file.filename=/data/two.img,if=none,id=disk2,readonly=on",
        ]
    );
    let blk: Vec<&str> = values(&args, "-device")
        .into_iter()
        .filter(|d| d.starts_with("virtio-blk-device"))
        .collect();
    assert_eq!(
        blk,
        [
            "virtio-blk-device,drive=rootfs",
            "virtio-blk-device,drive=disk1",
            "virtio-blk-device,drive=disk2",
        ]
    );
    // Each -device follows its own -drive.
    let pos = |s: &str| args.iter().position(|a| a == s).unwrap();
    assert!(pos("virtio-blk-device,drive=rootfs") > pos(drives[0]));
}

#[test]
fn non_utf8_paths_pass_through() {
    let mut p = plan();
    p.pod = PathBuf::from(OsString::from_vec(b"/pods/\xff.pod".to_vec()));
    let args = qemu_args(&p);
    assert!(
        args.iter()
            .any(|a| a.as_bytes().windows(12).any(|w| w == b"/pods/\xff.pod,"))
    );
}

#[test]
fn kernel_command_line_ends_with_the_console() {
    assert_eq!(
        kernel_cmdline("reboot=k panic=-1 quiet"),
        "reboot=k panic=-1 quiet console=ttyS0 hyperpod.stdio_window=65536"
    );
    assert_eq!(
        kernel_cmdline("  "),
        "console=ttyS0 hyperpod.stdio_window=65536"
    );
}

#[test]
fn finds_qemu_on_path_or_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let path = std::env::join_paths([empty.path(), dir.path()]).unwrap();
    let err = find_qemu(Some(&path)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "qemu-system-x86_64 not found: apt-get install qemu-system-x86"
    );
    assert!(find_qemu(None).is_err());
    let bin = dir.path().join(QEMU_BINARY);
    std::fs::write(&bin, "#!/bin/sh\n").unwrap();
    // Not executable yet.
    assert!(find_qemu(Some(&path)).is_err());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(find_qemu(Some(&path)).unwrap(), bin);
}

#[test]
fn network_device_only_with_a_network() {
    let args = strings(&qemu_args(&plan()));
    assert!(values(&args, "-netdev").is_empty());
    assert!(
        !values(&args, "-device")
            .iter()
            .any(|d| d.starts_with("virtio-net"))
    );
    let mut with = plan();
    with.net = Some(NetPlan {
        fd: 9,
        tap: false,
        mac: [0x02, 0, 0, 0, 0, 0x01],
    });
    let args = strings(&qemu_args(&with));
    assert_eq!(
        values(&args, "-netdev"),
        ["stream,id=net0,server=off,addr.type=fd,addr.str=9"]
    );
    assert!(
        values(&args, "-device").contains(&"virtio-net-device,netdev=net0,mac=02:00:00:00:00:01")
    );
    // A TAP device: QEMU takes the launcher's descriptor, frames without a vnet header.
    with.net = Some(NetPlan {
        fd: 11,
        tap: true,
        mac: [0x02, 0, 0, 0, 0, 0x01],
    });
    let args = strings(&qemu_args(&with));
    assert_eq!(values(&args, "-netdev"), ["tap,id=net0,fd=11"]);
}

/// The builder as the tests and benches use it: chardevs to files and sockets (commas in paths
/// doubled), no control channel means no second serial port, windowless drives, icount.
#[test]
fn the_builder_connects_serial_ports_drives_and_icount_as_asked() {
    let bare = Microvm::new("/k/vmlinux", "console=ttyS0");
    let a = strings(&bare.args());
    assert_eq!(values(&a, "-chardev"), ["stdio,id=con,signal=off"]);
    assert!(!a.iter().any(|x| x.contains("chardev=ctl")), "{a:?}");
    assert!(!a.contains(&"-initrd".to_string()) && !a.contains(&"-icount".to_string()));
    assert_eq!(values(&a, "-m"), ["256M"]);

    let vm = Microvm::new("/k/vmlinux", "console=ttyS0 quiet")
        .initrd("/k/initrd")
        .vcpus(2)
        .console(Chardev::File("/t/con,1".into()))
        .control(Chardev::Connect("/t/ctl.sock".into()))
        .drive(Drive {
            path: "/d/root.img".into(),
            window: None,
            read_only: true,
        })
        .drive(Drive {
            path: "/d/scratch,x.img".into(),
            window: None,
            read_only: false,
        })
        .icount(true);
    let args = strings(&vm.args());
    assert_eq!(
        values(&args, "-chardev"),
        [
            "file,id=con,path=/t/con,,1",
            "socket,id=ctl,path=/t/ctl.sock"
        ]
    );
    assert_eq!(
        values(&args, "-drive"),
        [
            "driver=raw,file.driver=file,file.filename=/d/root.img,if=none,id=rootfs,readonly=on",
            "driver=raw,file.driver=file,file.filename=/d/scratch,,x.img,if=none,id=disk1,readonly=off"
        ]
    );
    assert_eq!(values(&args, "-icount"), ["shift=0,sleep=on"]);
    assert_eq!(values(&args, "-smp"), ["2"]);
    assert_eq!(values(&args, "-append"), ["console=ttyS0 quiet"]);
    assert_eq!(vm.cmdline(), "console=ttyS0 quiet");
    let listen = Microvm::new("/k", "c").control(Chardev::Listen("/s".into()));
    let l = strings(&listen.icount(false).args());
    assert_eq!(
        values(&l, "-chardev")[1],
        "socket,id=ctl,path=/s,server=on,wait=off"
    );
    assert_eq!(values(&l, "-icount"), ["shift=0,sleep=off"]);
}
