//! The guest kernel from `kernel-fragments/` boots under QEMU microvm (TCG) to a busybox `/init`
//! and has what the guest needs; the build script's strict check rejects bad fragments.
//!
//! Needs qemu-system-x86_64, busybox-static, the linux-source-6.12 package (or a cached kernel)
//! and the kernel build tools (gcc, make, flex, bison, bc, libelf-dev). The first run builds the
//! kernel (minutes); later runs find it in the cache.

use std::path::Path;
use std::time::Duration;

use hyperpod_tests::kernel::{
    busybox_initramfs, fragments_dir, random_token, run_build_script, vmlinux,
};
use hyperpod_tests::qemu::{CONSOLE, Chardev, EXIT_PORT, Microvm};

/// Hard limit for one boot under TCG (a boot takes a few seconds).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

const INIT: &str = r#"#!/bin/sh
export PATH=/bin
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
$bb mkdir -p /dev/pts
$bb mount -t devpts devpts /dev/pts
$bb mount -t tmpfs tmpfs /tmp
token=$($bb sed -n 's/.*hp_token=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
echo "HP-BOOT token=$token release=$($bb uname -r) machine=$($bb uname -m) cpus=$($bb nproc)"
echo "HP-FS $($bb awk '{print $NF}' /proc/filesystems | $bb tr '\n' ' ')"
$bb mkdir /tmp/lower /tmp/upper /tmp/work /tmp/merged
echo lower > /tmp/lower/f
if $bb mount -t overlay overlay -o lowerdir=/tmp/lower,upperdir=/tmp/upper,workdir=/tmp/work /tmp/merged \
   && echo upper >> /tmp/merged/f && [ "$($bb cat /tmp/upper/f)" = "$(printf 'lower\nupper')" ]; then
  echo "HP-OVERLAY ok"
else
  echo "HP-OVERLAY failed"
fi
[ -c /dev/ptmx ] && [ -d /dev/pts ] && echo "HP-PTS ok"
echo "HP-SYSCALLS $([ -e /proc/sys/fs/inotify/max_user_watches ] && echo inotify) $([ -e /proc/sys/fs/aio-max-nr ] && echo aio) $([ -d /proc/sys/fs/mqueue ] && echo mqueue)"
echo "HP-PARAMS kernel $($bb ls /sys/module/kernel/parameters | $bb tr '\n' ' ')"
echo "HP-PARAMS rcutree $($bb ls /sys/module/rcutree/parameters | $bb wc -l) $($bb cat /sys/module/rcutree/parameters/use_softirq)"
echo "HP-TTYS1 $token" > /dev/ttyS1
echo "HP-DONE"
printf '\001' | $bb dd of=/dev/port bs=1 seek=@EXIT_PORT@ count=1 2>/dev/null
echo "HP-STILL-RUNNING"
"#;

#[test]
fn kernel_boots_busybox_init_under_tcg() {
    let kernel = vmlinux();
    let work = tempfile::tempdir().unwrap();
    let initrd = work.path().join("initrd.cpio");
    std::fs::write(
        &initrd,
        busybox_initramfs(&INIT.replace("@EXIT_PORT@", &EXIT_PORT.to_string())),
    )
    .unwrap();
    let ctl = work.path().join("ttyS1.out");
    let token = random_token();

    let vm = Microvm::new(
        kernel,
        format!("{CONSOLE} acpi=off reboot=k panic=-1 hp_token={token}"),
    )
    .initrd(&initrd)
    .vcpus(2)
    .memory_mib(128)
    .control(Chardev::File(ctl.clone()));
    let run =
        hyperpod_tests::qemu::run(&vm, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("boot failed: {e}"));
    let console = run.console_text();
    let line = format!("HP-BOOT token={token} release=6.12");
    let seen = run.first_seen(&line).unwrap_or_else(|| {
        panic!(
            "no `{line}` on the console; status {}; console:\n{console}\nqemu stderr:\n{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        )
    });
    eprintln!(
        "kernel_boot: {} ({} bytes): init's line after {} ms, QEMU gone after {} ms (TCG, 2 vCPUs)",
        kernel.display(),
        std::fs::metadata(kernel).unwrap().len(),
        seen.as_millis(),
        run.elapsed.as_millis()
    );
    let boot_line = console.lines().find(|l| l.contains(&line)).unwrap();
    assert!(
        boot_line.contains("machine=x86_64 cpus=2"),
        "64-bit SMP guest expected: {boot_line}"
    );
    let fs_line = console
        .lines()
        .find(|l| l.starts_with("HP-FS "))
        .unwrap_or_else(|| panic!("no HP-FS line:\n{console}"));
    for fs in [
        "ext4", "overlay", "tmpfs", "devtmpfs", "proc", "sysfs", "devpts",
    ] {
        assert!(
            fs_line.split_whitespace().any(|w| w == fs),
            "{fs} missing: {fs_line}"
        );
    }
    assert!(
        console.contains("HP-OVERLAY ok"),
        "overlay on tmpfs:\n{console}"
    );
    assert!(console.contains("HP-PTS ok"), "devpts:\n{console}");
    // Syscall families common/syscalls.conf turns on leave these /proc/sys files.
    let sys_line = console
        .lines()
        .find(|l| l.starts_with("HP-SYSCALLS"))
        .unwrap_or_else(|| panic!("no HP-SYSCALLS line:\n{console}"));
    for family in ["inotify", "aio", "mqueue"] {
        assert!(
            sys_line.split_whitespace().any(|w| w == family),
            "{family} missing: {sys_line}"
        );
    }
    // Built-in modules' parameters in sysfs, which patches/0001 creates once per run of a
    // module: `kernel`'s come from three files far apart in link order (init/main.c,
    // kernel/panic.c, mm/mmap.c), so they form several runs, each added to the same group;
    // rcutree's 26 (in 6.12) are one long run.
    let param_line = |module: &str| {
        let tag = format!("HP-PARAMS {module} ");
        console
            .lines()
            .find_map(|l| l.strip_prefix(tag.as_str()))
            .unwrap_or_else(|| panic!("no {tag}line:\n{console}"))
            .to_owned()
    };
    let kernel_params = param_line("kernel");
    for p in [
        "initcall_debug",
        "panic",
        "pause_on_oops",
        "ignore_rlimit_data",
    ] {
        assert!(
            kernel_params.split_whitespace().any(|w| w == p),
            "/sys/module/kernel/parameters/{p} missing: {kernel_params}"
        );
    }
    let rcutree = param_line("rcutree");
    let (count, use_softirq) = rcutree.split_once(' ').unwrap_or_default();
    assert!(
        count.parse::<u32>().is_ok_and(|n| n >= 20) && use_softirq == "Y",
        "/sys/module/rcutree/parameters: {rcutree}"
    );
    assert!(console.contains("HP-DONE"), "{console}");
    assert!(
        !console.contains("HP-STILL-RUNNING"),
        "the exit port write did not end the VM:\n{console}"
    );
    assert_eq!(
        run.exit_port_value(),
        Some(1),
        "QEMU status {} is not from the exit port",
        run.status
    );
    let ttys1 = std::fs::read_to_string(&ctl).unwrap();
    assert!(
        ttys1.contains(&format!("HP-TTYS1 {token}")),
        "second UART (ttyS1) output: {ttys1:?}"
    );
}

/// Copies the fragments (the `*.conf` files of `common/` and `x86_64/`) and the source patches
/// (`patches/`) into `dir`.
fn copy_fragments(dir: &Path) {
    for sub in ["common", "x86_64", "patches"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for entry in std::fs::read_dir(fragments_dir().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(sub).join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn check_only(dir: &Path) -> (bool, String) {
    let out = run_build_script([
        "--check-only".as_ref(),
        "--fragments".as_ref(),
        dir.as_os_str(),
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn strict_check_names_every_option_not_as_asked() {
    // The fragments as they are pass.
    let good = tempfile::tempdir().unwrap();
    copy_fragments(good.path());
    let (ok, log) = check_only(good.path());
    assert!(ok, "pristine fragments failed the check:\n{log}");
    assert!(log.contains("strict check passed"), "{log}");

    // An option that does not exist, and one whose dependency (PCI) the fragments turn off.
    let bad = tempfile::tempdir().unwrap();
    copy_fragments(bad.path());
    std::fs::write(
        bad.path().join("common/zz-bad.conf"),
        "# why: test: no such option\nCONFIG_HYPERPOD_NO_SUCH_OPTION=y\n\
         # why: test: needs PCI, which x86_64/base.conf turns off\nCONFIG_VIRTIO_PCI=y\n",
    )
    .unwrap();
    let (ok, log) = check_only(bad.path());
    assert!(!ok, "bad fragments passed:\n{log}");
    assert!(
        log.contains("CONFIG_HYPERPOD_NO_SUCH_OPTION: no such option in this kernel"),
        "{log}"
    );
    assert!(
        log.contains("CONFIG_VIRTIO_PCI: asked =y, got absent (dependencies not met)"),
        "{log}"
    );
    assert!(log.contains("strict check failed: 2 option(s)"), "{log}");
}

#[test]
fn fragment_lint_rejects_conflicts_and_missing_reasons() {
    let dir = tempfile::tempdir().unwrap();
    copy_fragments(dir.path());
    std::fs::write(
        dir.path().join("x86_64/zz-bad.conf"),
        "# why: test: conflicts with common/base.conf\nCONFIG_MODULES=y\nCONFIG_PRINTK_TIME=y\n",
    )
    .unwrap();
    let (ok, log) = check_only(dir.path());
    assert!(!ok, "conflicting fragments passed:\n{log}");
    assert!(
        log.contains("CONFIG_MODULES: already set in common/base.conf"),
        "{log}"
    );
    assert!(
        log.contains("CONFIG_PRINTK_TIME: no \"# why: ...\" comment line above it"),
        "{log}"
    );
}

#[test]
fn a_patch_that_does_not_apply_fails_the_build_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_fragments(dir.path());
    std::fs::write(
        dir.path().join("patches/9999-stale.patch"),
        "A patch written for another kernel.\n\n--- a/kernel/params.c\n+++ b/kernel/params.c\n\
         @@ -1,3 +1,3 @@\n-no such line\n+a new line\n no such context\n nor this one\n",
    )
    .unwrap();
    let (ok, log) = check_only(dir.path());
    assert!(!ok, "a stale patch passed:\n{log}");
    assert!(
        log.contains(
            "build-kernel.sh: patches/9999-stale.patch does not apply to the kernel source"
        ),
        "{log}"
    );
}
