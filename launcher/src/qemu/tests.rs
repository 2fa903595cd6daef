use super::*;

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
    assert!(devices.contains(&"isa-serial,chardev=con,index=0,iobase=0x3f8,irq=4"));
    assert!(devices.contains(&"isa-serial,chardev=ctl,index=1,iobase=0x2f8,irq=3"));
    assert!(devices.contains(&"isa-debug-exit,iobase=0xf4,iosize=0x01"));

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
        "reboot=k panic=-1 quiet console=ttyS0"
    );
    assert_eq!(kernel_cmdline("  "), "console=ttyS0");
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
