//! Fixture for booting hyperpod-init under QEMU TCG: the static init binary, the guest kernel,
//! a busybox rootfs made with `mkfs.ext4 -d`, initramfs and overrides archives made with
//! `cpio -o -H newc`, and one boot with the console and control channel captured.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pod::spec::{Overrides, RunSpec};

use crate::kernel::{self, workspace_root};
use crate::qemu::{CONSOLE, Chardev, Drive, Microvm};

/// How long one boot may take before the test fails (TCG boots take a few seconds).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The static init, built once per test process into its own target directory (so the outer
/// cargo's lock is not needed) by `scripts/build-init`:
/// `<target>/init-static/x86_64-unknown-linux-gnu/guest/`.
pub fn init_binary() -> &'static Path {
    static INIT: OnceLock<PathBuf> = OnceLock::new();
    INIT.get_or_init(|| {
        // The test binary lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("test binary path");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("test binary is under <target>/<profile>/deps")
            .join("init-static");
        // scripts/build-init: the one way init is built (static, non-PIE, profile `guest`).
        let printed = run(Command::new(workspace_root().join("scripts/build-init"))
            .current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", &target));
        PathBuf::from(printed.lines().last().unwrap_or_default())
    })
}

/// The guest kernel: [`kernel::vmlinux`] (built and cached by `build-kernel.sh`), or the
/// vmlinux named by `HYPERPOD_KERNEL`.
pub fn kernel() -> PathBuf {
    match std::env::var_os("HYPERPOD_KERNEL") {
        Some(path) => PathBuf::from(path),
        None => kernel::vmlinux().to_path_buf(),
    }
}

/// A file to put in the test image.
pub struct ImageFile<'a> {
    pub path: &'a str,
    pub contents: &'a str,
    pub mode: u32,
}

/// Passwd and group files of the test image: `app` (1000) is in `wheel` and `audio`.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n";
pub const GROUP: &str =
    "root:x:0:\nwheel:x:10:root,app\naudio:x:29:app\napp:x:1000:\nstaff:x:50:\n";

/// Builds a rootfs directory (busybox-static with every applet linked in /bin, passwd, group,
/// `/home/app` owned by app, `/tmp`) plus `files`, and makes `<dir>/../rootfs.ext4` from it.
pub fn rootfs(work: &Path, files: &[ImageFile<'_>]) -> PathBuf {
    let dir = work.join("rootfs");
    for d in ["bin", "etc", "root", "home/app", "apps", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    // Like any image's /tmp: init no longer mounts a tmpfs there (Docker does not either).
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static installed");
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), PASSWD).unwrap();
    std::fs::write(dir.join("etc/group"), GROUP).unwrap();
    std::os::unix::fs::chown(dir.join("home/app"), Some(1000), Some(1000)).unwrap();
    for f in files {
        let path = dir.join(f.path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, f.contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode)).unwrap();
    }
    let image = work.join("rootfs.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "rootfs", "-d"])
        .arg(&dir)
        .arg(&image)
        .arg("16M"));
    image
}

/// Archives `dir`'s contents as newc cpio with the real `cpio`.
fn cpio(dir: &Path) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet")
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("cpio installed");
    assert!(out.status.success(), "cpio failed");
    out.stdout
}

fn mknod(path: &Path, major: u32, minor: u32) {
    run(Command::new("mknod")
        .arg(path)
        .arg("c")
        .arg(major.to_string())
        .arg(minor.to_string()));
}

/// The pod's initramfs: `/init`, `/hyperpod/spec.json` and the device nodes the builder adds.
pub fn initramfs(work: &Path, spec: &RunSpec) -> Vec<u8> {
    let dir = work.join("initramfs");
    std::fs::create_dir_all(dir.join("hyperpod")).unwrap();
    std::fs::create_dir_all(dir.join("dev")).unwrap();
    std::fs::copy(init_binary(), dir.join("init")).unwrap();
    std::fs::write(
        dir.join("hyperpod/spec.json"),
        serde_json::to_vec(spec).unwrap(),
    )
    .unwrap();
    mknod(&dir.join("dev/console"), 5, 1);
    mknod(&dir.join("dev/ttyS1"), 4, 65);
    mknod(&dir.join("dev/port"), 1, 4);
    mknod(&dir.join("dev/null"), 1, 3);
    cpio(&dir)
}

/// `initrd` with the launcher's overrides archive appended (4-byte aligned).
pub fn append_overrides(work: &Path, initrd: &mut Vec<u8>, ov: &Overrides) {
    let dir = work.join("overrides");
    std::fs::create_dir_all(dir.join("hyperpod")).unwrap();
    std::fs::write(
        dir.join("hyperpod/overrides.json"),
        serde_json::to_vec(ov).unwrap(),
    )
    .unwrap();
    while initrd.len() % 4 != 0 {
        initrd.push(0);
    }
    initrd.extend(cpio(&dir));
}

/// One boot's settings.
pub struct BootConfig<'a> {
    pub work: &'a Path,
    pub initrd: &'a [u8],
    pub rootfs: &'a Path,
    /// Extra kernel command line words.
    pub cmdline: &'a str,
    /// Attach the control channel (second serial port).
    pub control: bool,
    /// When the console prints this text, send `S <signo>` on the control channel.
    pub signal_on: Option<(&'a str, i32)>,
    /// An extra read-write disk (`/dev/vdb`).
    pub extra_disk: Option<&'a Path>,
}

/// What a boot produced.
#[derive(Debug)]
pub struct Boot {
    pub console: String,
    /// Control-channel lines from the guest, in order.
    pub control: Vec<String>,
    /// QEMU's own exit status.
    pub qemu_status: i32,
}

impl Boot {
    /// The status from the `X` line.
    pub fn exit_code(&self) -> Option<u8> {
        self.control
            .iter()
            .find_map(|l| l.strip_prefix("X ").and_then(|c| c.parse().ok()))
    }
}

/// Boots once under TCG and returns when QEMU exits. Boots are serialised: two TCG guests on
/// a 2-core machine would only slow each other down.
pub fn boot(cfg: &BootConfig<'_>) -> Boot {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let kernel = kernel();
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let initrd_path = cfg.work.join("initrd.cpio");
    std::fs::write(&initrd_path, cfg.initrd).unwrap();
    let sock = cfg.work.join("ctl.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();

    let mut vm = Microvm::new(
        &kernel,
        format!("{CONSOLE} reboot=k panic=-1 quiet {}", cfg.cmdline),
    )
    .initrd(&initrd_path)
    .drive(Drive {
        path: cfg.rootfs.to_path_buf(),
        window: None,
        read_only: true,
    });
    if cfg.control {
        vm = vm.control(Chardev::Connect(sock.clone()));
    }
    if let Some(disk) = cfg.extra_disk {
        vm = vm.drive(Drive {
            path: disk.to_path_buf(),
            window: None,
            read_only: false,
        });
    }
    let mut cmd = crate::qemu::command(&vm);
    cmd.stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("qemu-system-x86_64 installed");

    // The control channel: QEMU connects as a client at start.
    let stream: Arc<Mutex<Option<UnixStream>>> = Arc::new(Mutex::new(None));
    let (ctl_tx, ctl_rx) = mpsc::channel::<String>();
    if cfg.control {
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let conn = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(30) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("qemu exited before connecting: {status}");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("qemu never connected the control channel: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        *stream.lock().unwrap() = Some(conn.try_clone().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(conn).lines() {
                match line {
                    Ok(l) => {
                        let _ = ctl_tx.send(l);
                    }
                    Err(_) => break,
                }
            }
        });
    }
    let stdout = child.stdout.take().unwrap();
    let signal_on = cfg.signal_on.map(|(m, s)| (m.to_string(), s));
    let writer = stream.clone();
    let console = std::thread::spawn(move || {
        let mut console = String::new();
        let mut sent = false;
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some((marker, signo)) = &signal_on
                && !sent
                && line.contains(marker.as_str())
                && let Some(s) = writer.lock().unwrap().as_mut()
            {
                s.write_all(format!("S {signo}\n").as_bytes()).unwrap();
                sent = true;
            }
            console.push_str(&line);
            console.push('\n');
        }
        console
    });

    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let console = console.join().unwrap_or_default();
            panic!("guest did not finish within {BOOT_TIMEOUT:?}; console:\n{console}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let console = console.join().unwrap();
    drop(stream.lock().unwrap().take());
    // The reader thread ends when QEMU closes the socket.
    let mut control = Vec::new();
    while let Ok(l) = ctl_rx.recv_timeout(Duration::from_secs(2)) {
        control.push(l.trim_end_matches('\r').to_string());
    }
    Boot {
        console,
        control,
        qemu_status: status.code().unwrap_or(-1),
    }
}
