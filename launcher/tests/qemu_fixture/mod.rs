//! Real pods for the QEMU end-to-end tests: the project's kernel (`kernel-fragments/
//! build-kernel.sh`), the static init (`scripts/build-init`), an initramfs written with
//! `pod::cpio`, and an ext4 rootfs of busybox-static made with `mkfs.ext4 -d`, sealed with
//! `pod::seal`.
//!
//! Prerequisites are built or found, never skipped: a missing one fails the test with what to
//! do. `HYPERPOD_KERNEL` and `HYPERPOD_INIT` may point at ready-made files to save the builds;
//! `HYPERLAUNCH_BIN` may point at another `hyperlaunch` binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pod::manifest::{FORMAT_VERSION, Manifest, Resources, Sections, Source};
use pod::spec::RunSpec;
use pod::{SectionInfo, cpio::CpioWriter};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("launcher/ has a parent")
        .to_path_buf()
}

/// The hyperlaunch binary under test.
pub fn hyperlaunch() -> PathBuf {
    std::env::var_os("HYPERLAUNCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hyperlaunch")))
}

/// The guest kernel (an ELF vmlinux), built once and cached by the build script.
pub fn kernel() -> &'static Path {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        if let Some(k) = std::env::var_os("HYPERPOD_KERNEL") {
            let k = PathBuf::from(k);
            assert!(k.is_file(), "HYPERPOD_KERNEL={} is not a file", k.display());
            return k;
        }
        let script = workspace().join("kernel-fragments/build-kernel.sh");
        eprintln!(
            "building (or finding) the guest kernel with {}; the first build takes ~30 min",
            script.display()
        );
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): the QEMU end-to-end tests need the guest kernel",
            script.display(),
            out.status
        );
        let stdout = String::from_utf8(out.stdout).expect("build-kernel.sh prints a path");
        let path = PathBuf::from(stdout.lines().last().expect("a path line").trim());
        assert!(
            path.is_file(),
            "build-kernel.sh printed {path:?}, not a file"
        );
        path
    })
}

/// The static init binary, built once per test run into its own target directory (the test's
/// own one is locked by the running cargo).
pub fn init_binary() -> &'static Path {
    static INIT: OnceLock<PathBuf> = OnceLock::new();
    INIT.get_or_init(|| {
        if let Some(i) = std::env::var_os("HYPERPOD_INIT") {
            let i = PathBuf::from(i);
            assert!(i.is_file(), "HYPERPOD_INIT={} is not a file", i.display());
            return i;
        }
        // scripts/build-init: the one way init is built (static, non-PIE, profile `guest`).
        let out = Command::new(workspace().join("scripts/build-init"))
            .arg("-q")
            .env("CARGO_TARGET_DIR", workspace().join("target/e2e-init"))
            .current_dir(workspace())
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/build-init");
        assert!(out.status.success(), "building the static init failed");
        let printed = String::from_utf8_lossy(&out.stdout);
        let path = PathBuf::from(printed.lines().last().unwrap_or_default());
        assert!(path.is_file(), "{} missing after the build", path.display());
        path
    })
}

/// The initramfs: `/init`, the run spec, and the device nodes init needs before devtmpfs.
pub fn initramfs(spec: &RunSpec, with_init: bool) -> Vec<u8> {
    let mut w = CpioWriter::new(Vec::new(), 0);
    w.dir("dev", 0o755).unwrap();
    w.char_device("dev/console", 0o600, 5, 1).unwrap();
    w.char_device("dev/null", 0o666, 1, 3).unwrap();
    w.char_device("dev/port", 0o600, 1, 4).unwrap();
    w.char_device("dev/ttyS1", 0o600, 4, 65).unwrap();
    w.dir("hyperpod", 0o755).unwrap();
    w.file(
        "hyperpod/spec.json",
        0o644,
        &serde_json::to_vec(spec).unwrap(),
    )
    .unwrap();
    if with_init {
        let init = std::fs::read(init_binary()).unwrap();
        w.file("init", 0o755, &init).unwrap();
    }
    w.finish().unwrap()
}

/// A busybox-static ext4 image with `/etc/passwd` (root and `app`, uid 1000) and `/tmp`.
pub fn rootfs(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    for d in [
        "bin", "etc", "tmp", "root", "home/app", "proc", "sys", "dev",
    ] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .expect("/bin/busybox missing: apt-get install busybox-static");
    for tool in [
        "sh", "echo", "cat", "sleep", "env", "pwd", "id", "head", "ls", "true", "false", "kill",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(tool)).unwrap();
    }
    std::fs::write(
        tree.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(tree.join("etc/group"), "root:x:0:\napp:x:1000:\n").unwrap();
    let img = dir.join("rootfs.ext4");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("16M")
        .output()
        .expect("mkfs.ext4 missing: apt-get install e2fsprogs");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// A run spec running `script` with busybox sh.
pub fn shell_spec(script: &str) -> RunSpec {
    RunSpec {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec![script.into()],
        env: vec!["PATH=/bin".into()],
        ..RunSpec::default()
    }
}

/// Seals a pod for `spec` in `dir` and returns its path.
pub fn build_pod(dir: &Path, spec: &RunSpec, with_init: bool) -> PathBuf {
    build_pod_with_kernel(dir, spec, with_init, kernel())
}

/// A pod that can never boot (its "kernel" is a few bytes of text and it has no init), for
/// tests where QEMU must not get that far.
pub fn unbootable_pod(dir: &Path) -> PathBuf {
    let fake = dir.join("not-a-kernel");
    std::fs::write(&fake, b"this is not a kernel\n").unwrap();
    build_pod_with_kernel(dir, &shell_spec("exit 0"), false, &fake)
}

fn build_pod_with_kernel(dir: &Path, spec: &RunSpec, with_init: bool, kernel: &Path) -> PathBuf {
    let initramfs = initramfs(spec, with_init);
    let rootfs = rootfs(dir);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        builder: "launcher e2e fixture".into(),
        created: "2024-01-01T00:00:00Z".into(),
        source: Source {
            reference: "test:busybox".into(),
            manifest_digest: format!("sha256:{}", "0".repeat(64)),
            ..Source::default()
        },
        sections: Sections {
            kernel: SectionInfo::of_file(kernel).unwrap(),
            initramfs: SectionInfo::of_bytes(&initramfs),
            rootfs: SectionInfo::of_file(&rootfs).unwrap(),
            verity: None,
        },
        run: spec.clone(),
        resources: Resources {
            memory_mib: 128,
            vcpus: 1,
        },
        // `no_timer_check` as in hyperbuild's `DEFAULT_CMDLINE`: without it a guest on a loaded
        // host can fail the kernel's IO-APIC timer check and panic (seen with 20 parallel TCG
        // launches). Not the whole default: its `root=/dev/vda` would let a kernel without an
        // init in its initramfs run the rootfs's shell instead of panicking (the 122 cases).
        kernel_cmdline: "reboot=k panic=-1 no_timer_check quiet".into(),
        kernel: None,
        verity: None,
    };
    let path = dir.join("app.pod");
    pod::seal(
        &path,
        &manifest,
        &mut std::fs::File::open(kernel).unwrap(),
        &mut initramfs.as_slice(),
        &mut std::fs::File::open(&rootfs).unwrap(),
    )
    .unwrap();
    path
}

/// `hyperlaunch --engine qemu <args> POD [-- ARGS]` as a command.
pub fn launch_cmd(pod: &Path, opts: &[&str], app_args: &[&str]) -> Command {
    let mut cmd = Command::new(hyperlaunch());
    cmd.arg("--engine").arg("qemu").args(opts).arg(pod);
    if !app_args.is_empty() {
        cmd.arg("--").args(app_args);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs a launch to its end.
pub fn launch(pod: &Path, opts: &[&str], app_args: &[&str]) -> Output {
    let out = launch_cmd(pod, opts, app_args)
        .output()
        .expect("run hyperlaunch");
    eprintln!(
        "--- hyperlaunch exited {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A running launch whose stdout is read line by line.
pub struct Running {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn start(pod: &Path, opts: &[&str]) -> Running {
        Running::start_with_stdin(pod, opts, Stdio::null())
    }

    /// Like [`Running::start`], with the launcher's stdin from `stdin`.
    pub fn start_with_stdin(pod: &Path, opts: &[&str], stdin: Stdio) -> Running {
        let mut child = launch_cmd(pod, opts, &[])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run hyperlaunch");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line containing `what`; panics after `limit`.
    pub fn wait_for(&mut self, what: &str, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("guest: {line}");
                    let hit = line.contains(what);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no {what:?} on stdout within {limit:?}; saw {:?}",
                        self.seen
                    );
                }
            }
        }
    }

    pub fn signal(&self, signo: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signo) };
        assert_eq!(rc, 0, "kill hyperlaunch");
    }

    /// Waits for the launcher to exit; returns its code and the rest of stdout.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                eprintln!(
                    "--- hyperlaunch exited {:?}; stdout: {:?}",
                    status.code(),
                    self.seen
                );
                return (status.code(), self.seen);
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                panic!(
                    "hyperlaunch still running after {limit:?}; stdout: {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
