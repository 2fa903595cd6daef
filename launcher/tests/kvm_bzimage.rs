//! The KVM engine's bzImage path (launcher/src/vmm/boot.rs: linux-loader's `BzImage::load`,
//! entered in 64-bit mode at the load address + 0x200 with boot_params in %rsi), end to end:
//! a bzImage built here (an x86 boot-protocol setup header around a 64-bit probe payload,
//! tests/probes/bz*.{c,S,ld}) is sealed into a real .pod and booted by `hyperlaunch --engine
//! kvm`. The probe checks the handover from inside (see bz.c) and prints what it found.

mod probes;

use std::path::{Path, PathBuf};

use probes::{BzHeader, BzPayload, Run, launch};

const CMDLINE: &str = "probe=bz quiet";

fn hyperlaunch(dir: &Path, pod: &Path, extra: &[&str]) -> Run {
    // No network: its addressing would be appended to the initramfs as an overrides archive,
    // and the probe checks the initramfs byte for byte as sealed.
    let mut args = vec!["--timeout", "20", "--network", "none"];
    args.extend_from_slice(extra);
    launch(dir, pod, &args, &[])
}

/// Bytes that differ at every offset, so the probe's hash pins address and size.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 251) % 256) as u8).collect()
}

fn seal(dir: &Path, name: &str, kernel: &[u8], initramfs: &[u8]) -> PathBuf {
    let pod = dir.join(format!("{name}.pod"));
    probes::seal_pod(&pod, kernel, initramfs, &[0u8; 4096], CMDLINE);
    pod
}

/// The value after `prefix` on the first stdout line that starts with it.
fn line<'a>(r: &'a Run, prefix: &str) -> &'a str {
    r.console
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("the probe printed no {prefix:?} line"))
}

/// Boots a bzImage around a probe linked at `load` and checks everything it reports.
fn boot_and_check(dir: &Path, load: u64, exit_code: u8, memory_mib: u64) {
    let payload = probes::build_bz_payload(dir, load, &[&format!("EXIT_CODE={exit_code}")]);
    let image = probes::bzimage(&payload.code, &BzHeader::for_payload(&payload));
    assert_eq!(&image[0x202..0x206], b"HdrS");
    assert_eq!(
        image.len(),
        (usize::from(probes::BZ_SETUP_SECTS) + 1) * 512 + payload.code.len()
    );
    let initramfs = pattern(3000);
    let pod = seal(dir, &format!("bz-{load:x}"), &image, &initramfs);
    let r = hyperlaunch(dir, &pod, &["--memory", &memory_mib.to_string()]);

    assert!(
        !r.console.contains("startup_32"),
        "the launcher entered at the load address, not at +0x200"
    );
    assert!(!r.console.contains("BZ FAIL"), "a handover check failed");
    assert_eq!(r.code, i32::from(exit_code), "the probe's X code");
    assert_eq!(
        line(&r, "BZ: startup_64 at "),
        format!("{:#x}", load + 0x200)
    );
    assert_eq!(line(&r, "BZ: long mode"), ", cs 0x10 ds 0x18 ss 0x18");
    let setup = line(&r, "SETUP: ");
    let want = format!(
        "HdrS version {:#x} setup_sects {} xloadflags 0x1 code32_start {load:#x} init_size {:#x}",
        probes::BZ_VERSION,
        probes::BZ_SETUP_SECTS,
        payload.init_size
    );
    assert!(setup.starts_with(&want), "{setup}\nwant {want}");
    let cmdline = line(&r, "CMDLINE: ");
    assert!(cmdline.starts_with(CMDLINE), "{cmdline}");
    assert!(cmdline.contains("console=ttyS0"), "{cmdline}");
    assert!(
        cmdline.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{cmdline}"
    );
    let entries: u32 = line(&r, "E820: ")
        .strip_suffix(" entries")
        .unwrap()
        .parse()
        .unwrap();
    assert!(entries > 0);
    assert_eq!(line(&r, "RAMTOP: "), (memory_mib << 20).to_string());
    let rd = line(&r, "INITRAMFS: ");
    assert!(rd.starts_with("3000 at 0x"), "{rd}");
    let fnv = format!(" fnv {:08x}", probes::fnv1a(&initramfs));
    assert!(rd.ends_with(&fnv), "{rd}\nwant {fnv}");
    assert!(r.console.contains("BZ: all checks passed"));
}

#[test]
fn kvm_bzimage_is_entered_at_its_64bit_entry_with_boot_params() {
    if !probes::kvm_available("kvm_bzimage_64bit_entry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    boot_and_check(dir.path(), 0x10_0000, 37, 48);
}

#[test]
fn kvm_bzimage_is_loaded_at_its_code32_start() {
    if !probes::kvm_available("kvm_bzimage_code32_start") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // LOAD_PHYSICAL_ADDR of a default x86-64 kernel: 16 MiB.
    boot_and_check(dir.path(), 0x100_0000, 38, 64);
}

fn payload(dir: &Path, load: u64, defines: &[&str]) -> (BzPayload, BzHeader) {
    let p = probes::build_bz_payload(dir, load, defines);
    let h = BzHeader::for_payload(&p);
    (p, h)
}

#[test]
fn kvm_bzimage_that_is_not_loaded_high_is_refused() {
    if !probes::kvm_available("kvm_bzimage_not_loaded_high") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, mut h) = payload(dir.path(), 0x10_0000, &["EXIT_CODE=0"]);
    h.loadflags = 0;
    let pod = seal(dir.path(), "low", &probes::bzimage(&p.code, &h), b"x");
    let r = hyperlaunch(dir.path(), &pod, &[]);
    assert_eq!(r.code, 125, "a zImage-style kernel is not booted");
    assert!(r.stderr.contains("cannot load the kernel"), "{}", r.stderr);
    assert!(!r.console.contains("BZ:"));
}

/// Without `XLF_KERNEL_64` the image does not promise a 64-bit entry at +0x200 (a 32-bit
/// kernel, or one older than protocol 2.12): the launcher must refuse it, not jump there.
#[test]
fn kvm_bzimage_without_a_64bit_entry_is_refused() {
    if !probes::kvm_available("kvm_bzimage_no_64bit_entry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (p, mut h) = payload(dir.path(), 0x10_0000, &["EXIT_CODE=0"]);
    h.xloadflags = 0;
    let pod = seal(dir.path(), "no64", &probes::bzimage(&p.code, &h), b"x");
    let r = hyperlaunch(dir.path(), &pod, &[]);
    assert!(
        !r.console.contains("BZ:"),
        "the launcher jumped to a 64-bit entry the header does not offer"
    );
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("64-bit"), "{}", r.stderr);
}

/// The kernel needs `init_size` bytes from its runtime start (here `pref_address`: the image
/// is not relocatable) before it looks at the memory map, so the initramfs must stay out of
/// that window: placed above it when there is room, refused when there is none.
#[test]
fn kvm_bzimage_initramfs_stays_out_of_the_init_size_window() {
    if !probes::kvm_available("kvm_bzimage_init_size") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A 40 MiB bss: the window is [1 MiB, ~41 MiB).
    let (p, h) = payload(
        dir.path(),
        0x10_0000,
        &["EXIT_CODE=39", &format!("BSS_BYTES={}", 40 << 20)],
    );
    assert!(h.init_size >= 40 << 20 && p.code.len() < 1 << 20);
    let initramfs = pattern(8 << 20);
    let pod = seal(
        dir.path(),
        "window",
        &probes::bzimage(&p.code, &h),
        &initramfs,
    );

    // 64 MiB: the initramfs fits above the window.
    let r = hyperlaunch(dir.path(), &pod, &["--memory", "64"]);
    assert!(!r.console.contains("BZ FAIL"));
    assert_eq!(r.code, 39);
    assert!(line(&r, "INITRAMFS: ").starts_with(&format!("{} at ", 8 << 20)));

    // 48 MiB: 8 MiB do not fit between the window's end and the end of RAM.
    let r = hyperlaunch(dir.path(), &pod, &["--memory", "48"]);
    assert!(
        !r.console
            .contains("initramfs inside the kernel memory window"),
        "the launcher put the initramfs where the kernel decompresses itself"
    );
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("initramfs"), "{}", r.stderr);

    // 32 MiB and no initramfs: the window itself does not fit in RAM.
    let pod = seal(
        dir.path(),
        "window-only",
        &probes::bzimage(&p.code, &h),
        b"",
    );
    let r = hyperlaunch(dir.path(), &pod, &["--memory", "32"]);
    assert!(
        !r.console.contains("BZ:"),
        "the launcher started a kernel whose init_size window is beyond RAM"
    );
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("init_size"), "{}", r.stderr);
}
