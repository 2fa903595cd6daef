//! The guest kernel for the end-to-end tests: `kernel-fragments/build-kernel.sh` (cached by the
//! script itself, so only the first run on a machine builds) and a tiny busybox initramfs made
//! with `pod::cpio`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use pod::cpio::CpioWriter;

/// The workspace root (the directory holding `kernel-fragments/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `kernel-fragments/` of this checkout.
pub fn fragments_dir() -> PathBuf {
    workspace_root().join("kernel-fragments")
}

/// Runs `kernel-fragments/build-kernel.sh` with `args` and returns its output (any status).
pub fn run_build_script<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new("bash")
        .arg(fragments_dir().join("build-kernel.sh"))
        .args(args)
        .output()
        .expect("run bash")
}

/// The cached guest vmlinux, built on first use (minutes) and found at once after that.
/// Panics with the script's stderr if the build fails.
pub fn vmlinux() -> &'static Path {
    static VMLINUX: OnceLock<PathBuf> = OnceLock::new();
    VMLINUX.get_or_init(|| {
        let out = run_build_script::<[&str; 0], &str>([]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "build-kernel.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build-kernel.sh printed a path"),
        );
        assert!(
            path.is_file(),
            "build-kernel.sh printed {}, not a file",
            path.display()
        );
        path
    })
}

/// The static busybox the test initramfs runs.
pub const BUSYBOX: &str = "/bin/busybox";

/// A newc initramfs: `/bin/busybox` (streamed from the host's busybox-static), `/bin/sh` ->
/// busybox, `/init` = `init_script` (mode 0755), empty `/proc`, `/sys`, `/tmp`, `/dev` with
/// `console` (5:1) and `port` (1:4) nodes. Panics if busybox-static is missing.
pub fn busybox_initramfs(init_script: &str) -> Vec<u8> {
    let busybox = std::fs::File::open(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX}: {e} (apt-get install busybox-static)"));
    let size = busybox.metadata().expect("stat busybox").len();
    let mut w = CpioWriter::new(Vec::new(), 0);
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        w.dir(dir, 0o755).unwrap();
    }
    w.file_from_reader("bin/busybox", 0o755, size, busybox)
        .expect("copy busybox into the initramfs");
    w.symlink("bin/sh", "busybox").unwrap();
    w.char_device("dev/console", 0o600, 5, 1).unwrap();
    w.char_device("dev/port", 0o600, 1, 4).unwrap();
    w.file("init", 0o755, init_script.as_bytes()).unwrap();
    w.finish().unwrap()
}

/// 16 random hex digits from the kernel's RNG.
pub fn random_token() -> String {
    let mut bytes = [0u8; 8];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").expect("open /dev/urandom"),
        &mut bytes,
    )
    .expect("read /dev/urandom");
    hex::encode(bytes)
}
