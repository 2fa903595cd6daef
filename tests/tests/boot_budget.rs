//! The boot budget (issue 11), guarded in guest time so that it cannot flake: the demo pod, built
//! by `hyperbuild` with the probe app of `bench/boot-probe.sh`, is booted under
//! `-icount shift=0,sleep=on` (one guest instruction = 1 ns whatever the host's load; idle time,
//! here only the waits for disk reads, passes in real time) with the pod's own kernel, initramfs, command line and rootfs window,
//! and `bench/boot-table.awk` (the table of `bench/boot.sh`) computes the guest time from
//! power-on to the app's first clock reading, on the TSC that init reads at the app's `execve`
//! (icount's own clock; the kernel's clock misses ~4.4 ms of the early boot's ticks). More than 3x the goal (10 ms with 1 vCPU
//! and 128 MiB) fails: 30 ms. (With 2 vCPUs the secondary CPU's bring-up alone takes ~80 ms of
//! icount time under QEMU's one-vCPU-at-a-time TCG; not guarded here, see docs/BENCHMARKS.md.)
//!
//! QEMU 7.2's TCG has no TSC-deadline timer, so Linux calibrates the LAPIC timer there (216 ms);
//! KVM guests are told they have one (launcher/src/vmm/cpu.rs) and skip it. The table leaves the
//! window holding it ("Mountpoint-cache" to "smpboot: CPU0") out of the "KVM-equivalent" figure
//! it checks; everything else counts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hyperpod_tests::qemu::{CONSOLE, Chardev, Drive, Microvm};
use hyperpod_tests::{init_fixture, kernel};
use pod::{Pod, Section};

fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("under <target>/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} missing: run `cargo test --workspace` (or `cargo build -p builder`)",
        path.display()
    );
    path
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The demo pod with the probe app, built by `hyperbuild` into `work`.
fn probe_pod(work: &Path) -> PathBuf {
    let made = Command::new("bash")
        .arg(root().join("scripts/make-demo-image"))
        .arg(work.join("oci"))
        .output()
        .expect("run scripts/make-demo-image (needs umoci)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let image = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let probe_file = std::fs::read_to_string(root().join("bench/boot-probe.sh")).unwrap();
    let probe = probe_file.lines().last().unwrap();
    let entrypoint = serde_json::to_string(&["/bin/sh", "-c", probe]).unwrap();
    let pod = work.join("demo.pod");
    let built = Command::new(sibling_binary("hyperbuild"))
        .arg(&image)
        .arg("-o")
        .arg(&pod)
        .arg("--kernel")
        .arg(kernel::vmlinux())
        .arg("--init")
        .arg(init_fixture::init_binary())
        .arg("--entrypoint")
        .arg(entrypoint)
        // /proc/timer_list is readable by root only.
        .args(["--user", "root"])
        // TCG emulates the guest's sha256 at ~34 instructions a byte (docs/BENCHMARKS.md,
        // dm-verity), which icount counts as guest time: dm-verity's reads say nothing here
        // about a KVM host with SHA-NI, so this budget is the boot path's; bench/verity.sh
        // measures verity's part.
        .arg("--no-verity")
        .arg("-q")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "hyperbuild: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    pod
}

/// Boots `pod` under icount with `vcpus` and checks the KVM-equivalent guest time to the app
/// against `budget_ms` with the bench's own table.
fn boot_within(vcpus: u32, budget_ms: u32) {
    let work = tempfile::tempdir().unwrap();
    let pod_path = probe_pod(work.path());
    let pod = Pod::open(&pod_path).unwrap();
    let bytes = std::fs::read(&pod_path).unwrap();
    let slice = |s: Section| {
        let loc = pod.section(s);
        bytes[loc.offset as usize..(loc.offset + loc.len) as usize].to_vec()
    };
    let kernel_path = work.path().join("vmlinux");
    std::fs::write(&kernel_path, slice(Section::Kernel)).unwrap();
    let initrd_path = work.path().join("initramfs");
    std::fs::write(&initrd_path, slice(Section::Initramfs)).unwrap();
    // The rootfs and its dm-verity tree: the disk the manifest's `dm-mod.create=` describes.
    let rootfs = pod.rootfs_disk();
    let m = pod.manifest();
    let vm = Microvm::new(
        &kernel_path,
        format!(
            "{} {CONSOLE} printk.time=1 hyperpod.debug",
            m.kernel_cmdline
        ),
    )
    .initrd(&initrd_path)
    .memory_mib(m.resources.memory_mib)
    .vcpus(vcpus)
    .control(Chardev::File(work.path().join("control")))
    .drive(Drive {
        path: pod_path.clone(),
        window: Some((rootfs.offset, rootfs.len)),
        read_only: true,
    })
    // Instructions counted, idle time (waits for disk reads) passing in real time: with
    // sleep=off a read that finds the vCPU idle is charged up to the guest's next timer.
    .icount(true);
    let run = hyperpod_tests::qemu::run(&vm, Duration::from_secs(300)).unwrap();
    let console = run.console_text().replace('\r', "");
    let mut awk = Command::new("awk")
        .arg("-v")
        .arg(format!("check={budget_ms}"))
        .arg("-f")
        .arg(root().join("bench/boot-table.awk"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("awk");
    awk.stdin
        .take()
        .unwrap()
        .write_all(console.as_bytes())
        .unwrap();
    let out = awk.wait_with_output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{vcpus} vCPU(s), guest time under icount:{table}");
    assert!(
        console.contains("bench-app: now at"),
        "the probe app did not run; console:\n{console}"
    );
    assert!(
        out.status.success(),
        "{}{table}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn one_vcpu_pod_reaches_its_app_within_30_ms_of_guest_time() {
    boot_within(1, 30);
}
