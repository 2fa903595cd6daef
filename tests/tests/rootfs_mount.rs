//! The kernel mounts what hyperbuild writes: an OCI image made with umoci (a 3 MiB random file,
//! a file with a hole, a symlink, a hardlink, a 20 000-entry directory, owners and modes) is
//! built into a pod by the real `hyperbuild` binary; QEMU microvm (TCG) then boots the guest
//! kernel with a busybox initramfs whose `/init` mounts the pod's rootfs section — served straight
//! from the .pod file through the raw driver's offset/size window — read-only as ext4 and prints
//! checksums and listings, which are compared with the host's.
//!
//! Needs qemu-system-x86_64, umoci, busybox-static, the guest kernel
//! (`kernel-fragments/build-kernel.sh`, built on first use), root (umoci unpack, chown) and the
//! `hyperbuild` binary of the same target directory (`cargo test --workspace` builds it; with
//! `-p hyperpod-tests` alone, run `cargo build -p builder` first).

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyperpod_tests::kernel::{busybox_initramfs, random_token, vmlinux};
use hyperpod_tests::qemu::{CONSOLE, Drive, EXIT_PORT, Microvm};
use sha2::{Digest, Sha256};

/// Hard limit for one boot under TCG (the boot itself takes a few seconds; the machine may be
/// loaded).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Entries in the big directory (an htree directory of many blocks).
const BIG_DIR_ENTRIES: usize = 20_000;
/// Regular files whose bytes are checked inside the guest, relative to the image root.
const CHECKED_FILES: [&str; 4] = [
    "data/known.bin",
    "data/holey.bin",
    "data/small.txt",
    "data/many/f12345",
];

/// The `hyperbuild` binary next to this test's target directory: the test executable lives in
/// `<target>/<profile>/deps/`, cargo puts the builder package's binary in `<target>/<profile>/`.
fn hyperbuild() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is under <target>/<profile>/deps")
        .join("hyperbuild");
    assert!(
        path.is_file(),
        "hyperbuild not found at {}: run `cargo test --workspace`, or `cargo build -p builder` \
         with the same target directory before `cargo test -p hyperpod-tests`",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn umoci(args: &[&str]) -> String {
    run(Command::new("umoci").args(args))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `n` bytes from the kernel's RNG.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("open /dev/urandom"),
        &mut bytes,
    )
    .expect("read /dev/urandom");
    bytes
}

/// Fills the image's root directory; returns the sha256 of every file in [`CHECKED_FILES`].
fn populate(root: &Path) -> BTreeMap<&'static str, String> {
    let data = root.join("data");
    std::fs::create_dir_all(data.join("many")).unwrap();
    let mut files: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    files.insert("data/known.bin", random_bytes(3 << 20));
    // 64 KiB of data, 1 MiB of zeros (a hole in our writer), 64 KiB of data.
    let mut holey = random_bytes(64 << 10);
    holey.resize((64 << 10) + (1 << 20), 0);
    holey.extend(random_bytes(64 << 10));
    files.insert("data/holey.bin", holey);
    files.insert("data/small.txt", b"hello from the rootfs\n".to_vec());
    for (name, bytes) in &files {
        std::fs::write(root.join(name), bytes).unwrap();
    }
    for i in 0..BIG_DIR_ENTRIES {
        let name = data.join(format!("many/f{i:05}"));
        std::fs::write(name, format!("entry {i}\n")).unwrap();
    }
    files.insert(
        "data/many/f12345",
        std::fs::read(data.join("many/f12345")).unwrap(),
    );
    symlink("known.bin", data.join("link-to-known")).unwrap();
    std::fs::hard_link(data.join("known.bin"), data.join("hardlink.bin")).unwrap();
    let mode = |name: &str, mode: u32| {
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode("known.bin", 0o644);
    mode("small.txt", 0o640);
    std::os::unix::fs::chown(data.join("small.txt"), Some(1000), Some(1001))
        .unwrap_or_else(|e| panic!("chown data/small.txt (run the test as root): {e}"));
    files
        .into_iter()
        .map(|(name, bytes)| (name, sha256_hex(&bytes)))
        .collect()
}

/// An OCI layout at `dir/oci` (tag `t`) made with umoci; returns the reference and the file
/// checksums.
fn make_image(dir: &Path) -> (String, BTreeMap<&'static str, String>) {
    let layout = dir.join("oci");
    let bundle = dir.join("bundle");
    let image = format!("{}:t", layout.display());
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image]);
    umoci(&["unpack", "--image", &image, bundle.to_str().unwrap()]);
    let sums = populate(&bundle.join("rootfs"));
    umoci(&["repack", "--image", &image, bundle.to_str().unwrap()]);
    umoci(&["config", "--image", &image, "--config.cmd", "/bin/true"]);
    (format!("oci:{image}"), sums)
}

/// A minimal static x86-64 ELF header: the pod's init, never run here (the test boots its own
/// busybox initramfs instead of the pod's).
fn placeholder_init(dir: &Path) -> PathBuf {
    let p = dir.join("init.elf");
    hyperpod_tests::elf::write_fake_static_elf(&p, 4096, 0);
    p
}

/// The test initramfs's `/init`: mount the rootfs read-only, report, end the VM via the exit port.
fn init_script(token: &str) -> String {
    let sums: String = CHECKED_FILES
        .iter()
        .map(|f| format!("echo \"HP-SHA $($bb sha256sum /mnt/{f})\"\n"))
        .collect();
    format!(
        r#"#!/bin/sh
export PATH=/bin
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
$bb mkdir -p /mnt
echo "HP-START {token}"
if $bb mount -t ext4 -o ro /dev/vda /mnt; then echo "HP-MOUNT ok"; else echo "HP-MOUNT failed"; fi
echo "HP-MOUNTS $($bb grep vda /proc/mounts)"
{sums}echo "HP-COUNT $($bb ls /mnt/data/many | $bb wc -l)"
$bb ls -ln /mnt/data | $bb sed 's/^/HP-LS /'
echo "HP-READLINK $($bb readlink /mnt/data/link-to-known)"
echo "HP-VIA-LINK $($bb sha256sum /mnt/data/link-to-known)"
echo "HP-HOLEY $($bb stat -c '%s %b %B' /mnt/data/holey.bin)"
echo "HP-INODES $($bb stat -c '%i %h' /mnt/data/known.bin) / $($bb stat -c '%i %h' /mnt/data/hardlink.bin)"
if $bb touch /mnt/data/new 2>/dev/null; then echo "HP-WRITE allowed"; else echo "HP-WRITE refused"; fi
$bb umount /mnt && echo "HP-UMOUNT ok"
$bb dmesg | $bb grep -i -e ext4 -e vda | $bb sed 's/^/HP-DMESG /'
echo "HP-DONE {token}"
printf '\001' | $bb dd of=/dev/port bs=1 seek={EXIT_PORT} count=1 2>/dev/null
echo "HP-STILL-RUNNING"
"#
    )
}

/// The first console line starting with `prefix`, without the prefix.
fn line<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line on the console:\n{console}"))
}

#[test]
fn kernel_mounts_the_pod_rootfs_read_only_and_reads_it_back() {
    let kernel = vmlinux();
    let hyperbuild = hyperbuild();
    let work = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let (image, sums) = make_image(work.path());
    let image_made = started.elapsed();

    let pod_path = work.path().join("app.pod");
    let init = placeholder_init(work.path());
    run(Command::new(&hyperbuild)
        .arg(&image)
        .arg("-o")
        .arg(&pod_path)
        .arg("--kernel")
        .arg(kernel)
        .arg("--init")
        .arg(&init)
        .arg("-q"));
    let pod_built = started.elapsed() - image_made;
    let pod = pod::Pod::open(&pod_path).unwrap_or_else(|e| panic!("open the pod: {e}"));
    let rootfs = pod.section(pod::Section::Rootfs);
    assert_eq!(rootfs.offset % 4096, 0, "rootfs offset {}", rootfs.offset);
    pod.verify_section(pod::Section::Rootfs)
        .unwrap_or_else(|e| panic!("rootfs section digest: {e}"));

    let token = random_token();
    let initrd = work.path().join("initrd.cpio");
    std::fs::write(&initrd, busybox_initramfs(&init_script(&token))).unwrap();
    let vm = Microvm::new(kernel, format!("{CONSOLE} acpi=off reboot=k panic=-1"))
        .initrd(&initrd)
        .memory_mib(256)
        .drive(Drive {
            path: pod_path.clone(),
            window: Some((rootfs.offset, rootfs.len)),
            read_only: true,
        });
    let run =
        hyperpod_tests::qemu::run(&vm, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("boot failed: {e}"));
    let console = run.console_text();
    eprintln!(
        "rootfs_mount: image made with umoci in {} ms, pod built in {} ms; rootfs {} bytes at \
         offset {} of {}; QEMU gone after {} ms (TCG)",
        image_made.as_millis(),
        pod_built.as_millis(),
        rootfs.len,
        rootfs.offset,
        pod_path.display(),
        run.elapsed.as_millis()
    );
    for l in console.lines().filter(|l| l.starts_with("HP-")) {
        eprintln!("rootfs_mount: guest: {}", l.trim_end_matches('\r'));
    }
    assert!(
        console.contains(&format!("HP-DONE {token}")),
        "init did not finish; status {}; console:\n{console}\nqemu stderr:\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );

    assert_eq!(line(&console, "HP-MOUNT "), "ok", "{console}");
    let mounts = line(&console, "HP-MOUNTS ");
    let fields: Vec<&str> = mounts.split_whitespace().collect();
    assert!(
        fields.len() >= 4 && fields[0] == "/dev/vda" && fields[1] == "/mnt" && fields[2] == "ext4",
        "/proc/mounts line: {mounts:?}"
    );
    assert!(
        fields[3].split(',').any(|o| o == "ro"),
        "not mounted read-only: {mounts:?}"
    );

    for file in CHECKED_FILES {
        let want = format!("{}  /mnt/{file}", sums[file]);
        assert!(
            console
                .lines()
                .any(|l| l.trim_end_matches('\r') == format!("HP-SHA {want}")),
            "guest sha256 of {file} differs from the host's {}:\n{console}",
            sums[file]
        );
    }
    assert_eq!(
        line(&console, "HP-VIA-LINK "),
        format!("{}  /mnt/data/link-to-known", sums["data/known.bin"])
    );
    assert_eq!(line(&console, "HP-READLINK "), "known.bin");
    assert_eq!(
        line(&console, "HP-COUNT "),
        BIG_DIR_ENTRIES.to_string(),
        "entries in data/many"
    );
    let inodes = line(&console, "HP-INODES ");
    let (a, b) = inodes.split_once(" / ").expect("two stat results");
    assert_eq!(a, b, "hardlink.bin and known.bin are one inode: {inodes}");
    assert!(a.ends_with(" 2"), "link count 2 expected: {inodes}");

    // The writer leaves all-zero blocks as holes: 1 MiB of the 1.125 MiB file is not allocated.
    let holey: Vec<u64> = line(&console, "HP-HOLEY ")
        .split_whitespace()
        .map(|n| n.parse().expect("stat numbers"))
        .collect();
    assert_eq!(holey.len(), 3, "stat of holey.bin: {holey:?}");
    assert_eq!(holey[0], (128 << 10) + (1 << 20));
    assert!(
        holey[1] * holey[2] <= 192 << 10,
        "holey.bin allocates {} bytes: the zero run is not a hole",
        holey[1] * holey[2]
    );

    let ls: Vec<&str> = console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix("HP-LS "))
        .collect();
    let entry = |name: &str| {
        ls.iter()
            .find(|l| l.split_whitespace().nth(8) == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from ls -ln:\n{}", ls.join("\n")))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let small = entry("small.txt");
    assert_eq!(&small[..5], ["-rw-r-----", "1", "1000", "1001", "22"]);
    let known = entry("known.bin");
    assert_eq!(known[0], "-rw-r--r--");
    assert_eq!(known[1], "2");
    assert_eq!(known[4], (3u64 << 20).to_string());
    let link = entry("link-to-known");
    assert!(link[0].starts_with('l'), "symlink: {link:?}");
    assert_eq!(link[9..], ["->", "known.bin"]);
    assert!(entry("many")[0].starts_with('d'));

    assert_eq!(
        line(&console, "HP-WRITE "),
        "refused",
        "a read-only mount took a write"
    );
    assert_eq!(line(&console, "HP-UMOUNT "), "ok");
    assert!(
        console.contains("EXT4-fs (vda): mounted filesystem"),
        "no mount message from the kernel:\n{console}"
    );
    for bad in ["EXT4-fs error", "EXT4-fs warning", "I/O error", "bad block"] {
        assert!(!console.contains(bad), "`{bad}` on the console:\n{console}");
    }
    assert!(!console.contains("HP-STILL-RUNNING"), "{console}");
    assert_eq!(
        run.exit_port_value(),
        Some(1),
        "QEMU status {} is not from the exit port",
        run.status
    );
}
