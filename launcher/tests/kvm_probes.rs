//! The KVM engine on this machine's /dev/kvm, end to end: probe guests (tests/probes/) sealed
//! into real .pod files and booted by the `hyperlaunch` binary with `--engine kvm`.

mod probes;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use probes::{Run, launch};

const CMDLINE: &str = "probe=1 quiet";

fn hyperlaunch(dir: &Path, pod: &Path, extra: &[&str]) -> Run {
    launch(dir, pod, extra, &[])
}

/// A rootfs whose every sector differs.
fn rootfs(sectors: usize) -> Vec<u8> {
    (0..sectors * 512)
        .map(|i| ((i * 7 + i / 512 * 13) % 253) as u8)
        .collect()
}

fn probe_pod(
    dir: &Path,
    probe: &str,
    defines: &[&str],
    initramfs: &[u8],
    disk: &[u8],
) -> std::path::PathBuf {
    let kernel = probes::build(dir, probe, defines);
    let pod = dir.join(format!("{probe}.pod"));
    probes::seal_pod(&pod, &kernel, initramfs, disk, CMDLINE);
    pod
}

#[test]
fn kvm_hello_probe_reports_its_exit_code_and_sees_the_boot_handover() {
    if !probes::kvm_available("kvm_hello_probe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initramfs = vec![0x5au8; 3000];
    let pod = probe_pod(
        dir.path(),
        "hello",
        &["EXIT_CODE=42"],
        &initramfs,
        &rootfs(8),
    );
    // No network: its device would come after the stdio console (kvm_net.rs covers it).
    let r = hyperlaunch(
        dir.path(),
        &pod,
        &["--memory", "48", "--timing", "--network", "none"],
    );
    assert_eq!(r.code, 42, "the launcher exits with the guest's X code");
    assert!(r.console.contains("hello from probe"));
    let cmdline = r
        .console
        .lines()
        .find_map(|l| l.strip_prefix("CMDLINE: "))
        .expect("probe printed the command line");
    assert!(cmdline.starts_with(CMDLINE), "{cmdline}");
    assert!(cmdline.contains("console=ttyS0"), "{cmdline}");
    assert!(
        cmdline.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{cmdline}"
    );
    assert!(
        cmdline.ends_with("virtio_mmio.device=4K@0xd000c000:18"),
        "the stdio console's window comes last: {cmdline}"
    );
    assert!(r.console.contains(&format!("RAMTOP: {}", 48u64 << 20)));
    assert!(r.console.contains("INITRAMFS: 3000\n"));
    assert!(!r.console.contains("OVERRIDES"));
    for phase in [
        "pod-opened",
        "vm-created",
        "kernel-loaded",
        "first-kvm-run",
        "init-entered",
        "app-exec",
        "exit",
    ] {
        assert!(r.stderr.contains(phase), "--timing shows {phase}");
    }

    // Overrides travel as a second archive appended to the initramfs.
    let r = launch(dir.path(), &pod, &["-e", "A=1"], &["x"]);
    assert_eq!(r.code, 42);
    assert!(r.console.contains("OVERRIDES: present"));
    let size: u64 = r
        .console
        .lines()
        .find_map(|l| l.strip_prefix("INITRAMFS: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 3000 && size % 4 == 0, "{size}");

    // Two vCPUs: the MP table describes both; the application processor waits for SIPI.
    let r = hyperlaunch(dir.path(), &pod, &["--vcpus", "2", "--memory", "64"]);
    assert_eq!(r.code, 42);
    assert!(r.console.contains(&format!("RAMTOP: {}", 64u64 << 20)));
}

/// With several vCPUs and a kernel built from this build's fragments (so ticking at
/// `GUEST_KERNEL_HZ`), the command line carries `lpj=` for the guest's TSC rate; with one vCPU,
/// or a kernel of unknown origin, it does not.
#[test]
fn kvm_lpj_only_for_several_vcpus_of_a_known_kernel() {
    if !probes::kvm_available("kvm_lpj") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = probes::build(dir.path(), "hello", &["EXIT_CODE=42"]);
    let ours = dir.path().join("ours.pod");
    let info = pod::manifest::KernelInfo {
        release: "6.12.0-probe".into(),
        fragments: Some(pod::FRAGMENTS_KEY.into()),
    };
    probes::seal_pod_with(&ours, &kernel, b"init", &rootfs(8), CMDLINE, Some(info));
    let foreign = probe_pod(dir.path(), "hello", &["EXIT_CODE=42"], b"init", &rootfs(8));
    let cmdline = |pod: &std::path::Path, vcpus: &str| {
        let r = hyperlaunch(dir.path(), pod, &["--vcpus", vcpus, "--network", "none"]);
        assert_eq!(r.code, 42, "{}", r.stderr);
        r.console
            .lines()
            .find_map(|l| l.strip_prefix("CMDLINE: "))
            .expect("probe printed the command line")
            .to_string()
    };
    // The rate KVM gives this host's guests, as the launcher asks for it.
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let khz = vm.create_vcpu(0).unwrap().get_tsc_khz().unwrap();
    let want = pod::protocol::lpj_arg(khz).unwrap();
    let two = cmdline(&ours, "2");
    assert!(two.split(' ').any(|w| w == want), "{want} not in {two}");
    for (pod, vcpus) in [(&ours, "1"), (&foreign, "2")] {
        let c = cmdline(pod, vcpus);
        assert!(!c.contains("lpj="), "{vcpus} vCPUs: {c}");
    }
}

#[test]
fn kvm_verified_digest_cache_rehashes_a_changed_pod() {
    if !probes::kvm_available("kvm_verified_digest_cache") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = probe_pod(dir.path(), "hello", &["EXIT_CODE=7"], b"init", &rootfs(8));
    let digests = |extra: &[&str]| {
        let mut args = vec!["--timing"];
        args.extend_from_slice(extra);
        let r = hyperlaunch(dir.path(), &pod, &args);
        assert_eq!(r.code, 7, "{}", r.stderr);
        r.stderr
            .lines()
            .find_map(|l| l.strip_prefix("hyperlaunch timing: kernel/initramfs digests: "))
            .unwrap_or_else(|| panic!("no digests line in {}", r.stderr))
            .to_string()
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pod, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(digests(&[]), "hashed");
    let cache = dir.path().join("cache/hyperpod/verified");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    assert_eq!(
        digests(&["--verify"]),
        "verified record",
        "second launch hits the cache"
    );
    // A pod others may write is hashed every time, and its record is not used.
    std::fs::set_permissions(&pod, std::fs::Permissions::from_mode(0o664)).unwrap();
    for _ in 0..2 {
        assert!(digests(&[]).starts_with("hashed, not recorded"));
    }
    std::fs::set_permissions(&pod, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        digests(&[]),
        "hashed",
        "chmod moved the ctime: hashed again"
    );
    assert_eq!(digests(&[]), "verified record");

    // Corrupt one kernel byte in place: the stamp changes, the hash is redone and fails.
    let mut bytes = std::fs::read(&pod).unwrap();
    let kernel_at = bytes.windows(4).position(|w| w == b"\x7fELF").unwrap();
    bytes[kernel_at + 0x1000 + 5] ^= 0xff;
    std::fs::write(&pod, &bytes).unwrap();
    let r = hyperlaunch(dir.path(), &pod, &[]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("kernel: sha256 is"), "{}", r.stderr);
}

#[test]
fn kvm_block_probe_reads_the_rootfs_window() {
    if !probes::kvm_available("kvm_block_probe") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = rootfs(200);
    let chosen = [3usize, 17, 199, 0];
    let list = chosen.map(|s| s.to_string()).join(",");
    let pod = probe_pod(
        dir.path(),
        "blk",
        &[&format!("SECTORS={list}")],
        b"x",
        &disk,
    );
    let r = hyperlaunch(dir.path(), &pod, &[]);
    assert_eq!(r.code, 0);
    assert!(r.console.contains("CAPACITY: 200\n"));
    let mut bytes = Vec::new();
    for s in chosen {
        bytes.extend_from_slice(&disk[s * 512..(s + 1) * 512]);
    }
    let want = format!("SUM {:08x}", probes::fnv1a(&bytes));
    assert!(r.console.contains(&want), "want {want}");
}

#[test]
fn kvm_block_probe_write_to_read_only_rootfs_gets_ioerr() {
    if !probes::kvm_available("kvm_block_write_ro") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = rootfs(16);
    let pod = probe_pod(
        dir.path(),
        "blk",
        &["WRITE_TEST=1", "SECTORS=0"],
        b"x",
        &disk,
    );
    let before = std::fs::read(&pod).unwrap();
    let r = hyperlaunch(dir.path(), &pod, &[]);
    assert!(
        r.console.contains("WRITE STATUS: 1\n"),
        "VIRTIO_BLK_S_IOERR"
    );
    assert_eq!(r.code, 41);
    assert_eq!(std::fs::read(&pod).unwrap(), before, "the pod is untouched");
}

#[test]
fn kvm_triple_fault_is_reported_with_code_122() {
    if !probes::kvm_available("kvm_triple_fault") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = probe_pod(dir.path(), "triple", &[], b"x", &rootfs(8));
    let r = hyperlaunch(dir.path(), &pod, &[]);
    assert!(r.console.contains("about to triple-fault"));
    assert!(!r.console.contains("still alive"));
    assert_eq!(r.code, 122);
    assert!(r.stderr.contains("triple-fault"), "{}", r.stderr);
}

#[test]
fn kvm_guest_that_never_exits_times_out_with_124() {
    if !probes::kvm_available("kvm_timeout") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = probe_pod(dir.path(), "spin", &[], b"x", &rootfs(8));
    let start = std::time::Instant::now();
    let r = hyperlaunch(dir.path(), &pod, &["--timeout", "0.5"]);
    assert!(r.console.contains("spinning"));
    assert_eq!(r.code, 124);
    assert!(r.stderr.contains("timeout expired"), "{}", r.stderr);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn kvm_extra_disk_is_writable_unless_ro() {
    if !probes::kvm_available("kvm_extra_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The probe writes 0xee over sector 0 of device 1, the first --disk.
    let pod = probe_pod(
        dir.path(),
        "blk",
        &["WRITE_TEST=1", "DEV=1", "SECTORS=0"],
        b"x",
        &rootfs(8),
    );
    let extra = dir.path().join("extra.img");
    std::fs::write(&extra, vec![0u8; 8192]).unwrap();
    let spec = format!("{}:ro", extra.display());
    let r = hyperlaunch(dir.path(), &pod, &["--disk", &spec]);
    assert!(r.console.contains("CAPACITY: 16\n"));
    assert_eq!(r.code, 41, "read-only --disk refuses the write");
    assert!(std::fs::read(&extra).unwrap().iter().all(|&b| b == 0));
    let r = hyperlaunch(dir.path(), &pod, &["--disk", extra.to_str().unwrap()]);
    assert_eq!(r.code, 40, "writable --disk takes the write");
    let after = std::fs::read(&extra).unwrap();
    assert!(after[..512].iter().all(|&b| b == 0xee));
    assert!(after[512..].iter().all(|&b| b == 0));

    let hello = probe_pod(dir.path(), "hello", &["EXIT_CODE=0"], b"x", &rootfs(8));
    let r = hyperlaunch(dir.path(), &hello, &["--disk", &spec]);
    assert!(r.console.contains("virtio_mmio.device=4K@0xd0001000:6"));
    let r = hyperlaunch(dir.path(), &hello, &["--disk", "/nonexistent/disk.img"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("/nonexistent/disk.img"));
}

/// A running hyperlaunch whose stderr (the probe's console) is collected in the background.
struct Live {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Live {
    fn start(dir: &Path, pod: &Path, extra: &[&str]) -> Live {
        use std::io::Read;
        let mut child = Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
            .args(["--engine", "kvm"])
            .args(extra)
            .arg(pod)
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut console = child.stderr.take().unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = console.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Live { child, out }
    }

    /// Waits (up to 20 s) until the console contains `marker`.
    fn wait_for(&self, marker: &str) {
        let start = std::time::Instant::now();
        while !self.out.lock().unwrap().contains(marker) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "no {marker:?} in {:?}",
                self.out.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process by pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the exit: (code, console and the launcher's own lines: all of stderr).
    fn finish(self) -> (i32, String) {
        let out = self.child.wait_with_output().unwrap();
        // Let the reader thread drain the last bytes.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let stderr = self.out.lock().unwrap().clone();
        eprintln!("--- exit {:?}\n--- stderr\n{stderr}", out.status);
        (out.status.code().unwrap(), stderr)
    }
}

#[test]
fn kvm_sigterm_reaches_the_guest_as_an_s_line() {
    if !probes::kvm_available("kvm_signals") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = probe_pod(dir.path(), "io", &[], b"x", &rootfs(8));
    let live = Live::start(dir.path(), &pod, &["-i"]);
    live.wait_for("waiting for a signal");
    live.signal(libc::SIGTERM);
    let (code, console) = live.finish();
    assert!(console.contains("CONTROL: S 15"));
    assert_eq!(
        code, 15,
        "SIGTERM is forwarded as the pod's stop signal (default SIGTERM)"
    );
}

#[test]
fn kvm_ctrl_c_arrives_as_sigint_and_grace_expiry_stops_the_vm() {
    if !probes::kvm_available("kvm_grace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = probe_pod(dir.path(), "io", &[], b"x", &rootfs(8));
    let live = Live::start(dir.path(), &pod, &[]);
    live.wait_for("waiting for a signal");
    live.signal(libc::SIGINT);
    let (code, console) = live.finish();
    assert!(console.contains("CONTROL: S 2"));
    assert_eq!(code, 2);

    let pod = probe_pod(dir.path(), "spin", &[], b"x", &rootfs(8));
    let live = Live::start(dir.path(), &pod, &["--grace", "0.3"]);
    live.wait_for("spinning");
    let start = std::time::Instant::now();
    live.signal(libc::SIGTERM);
    let (code, stderr) = live.finish();
    assert_eq!(code, 137, "{stderr}");
    assert!(stderr.contains("did not exit"), "{stderr}");
    assert!(start.elapsed() >= std::time::Duration::from_millis(300));
}

/// A guest that prints forever to a console nobody reads (the launcher's stderr): its vCPU
/// blocks in the console write while holding the devices. A SIGTERM must still start the grace clock, and its expiry end
/// the launcher (137), even though the vCPU cannot be kicked out of that write.
#[test]
fn kvm_stop_signal_and_grace_work_while_stdout_is_stalled() {
    if !probes::kvm_available("kvm_stop_signal_and_grace_work_while_stdout_is_stalled") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = probe_pod(dir.path(), "spin", &["CHATTY=1"], b"init", &rootfs(8));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
        .args(["--engine", "kvm", "--memory", "64", "--grace", "0.3"])
        .arg(&pod)
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Never read: the pipe fills (64 KiB) and the console write blocks.
    let mut console = child.stderr.take().unwrap();
    // By then the guest (a few hundred KB/s of console output here) has filled the pipe.
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: sending a signal to our own child process by pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the launcher ignored SIGTERM and --grace while stdout was stalled");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut console, &mut err).unwrap();
    let tail: Vec<&str> = err.lines().rev().take(5).collect();
    // The console is the launcher's stderr, and it is the stalled pipe: the launcher's own
    // last line cannot get through it (it is written without blocking), the code does.
    assert_eq!(status.code(), Some(137), "{tail:?}");
}

#[test]
fn kvm_i8042_reset_ends_the_vm_with_the_reported_status_or_122() {
    if !probes::kvm_available("kvm_i8042_reset") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = probe_pod(dir.path(), "reset", &[], b"x", &rootfs(8));
    let r = hyperlaunch(dir.path(), &pod, &[]);
    assert!(r.console.contains("resetting"));
    assert_eq!(r.code, 122);
    assert!(
        r.stderr
            .contains("reset the machine without reporting a status"),
        "{}",
        r.stderr
    );
    let pod = probe_pod(dir.path(), "reset", &["WITH_STATUS=1"], b"x", &rootfs(8));
    assert_eq!(hyperlaunch(dir.path(), &pod, &[]).code, 9);
}

/// The KVM engine's stdio end to end through the binary: piped stdin reaches the guest as
/// stdin frames on the virtio console, with the end-of-file frame after the last byte; the
/// guest's stdout and stderr frames come out on the launcher's stdout and stderr apart.
#[test]
fn kvm_stdio_stdin_frames_in_stdout_and_stderr_out_apart() {
    if !probes::kvm_available("kvm_stdio_stdin_frames_in_stdout_and_stderr_out_apart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vcon = format!("VCON={:#x}u", launcher::layout::VIRTIO_CONSOLE_ADDR);
    let pod = probe_pod(dir.path(), "vcon", &["RELAY=1", &vcon], b"x", &rootfs(8));
    // Every byte value, and more than one receive buffer's worth (4 × 64 bytes posted).
    let input: Vec<u8> = (0..=255u8).chain(b"end\n".iter().copied()).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
        .args(["--engine", "kvm", "--memory", "64", "-i"])
        .arg(&pod)
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &input).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(out.stdout, input, "{stderr}");
    eprintln!("relayed {} bytes", out.stdout.len());
    assert!(stderr.contains("stderr of probe"), "{stderr}");
}
