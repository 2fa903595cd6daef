//! `hyperbuild IMAGE -o app.pod` as a user runs it: the demo image made by umoci
//! (`scripts/make-demo-image`), built into a pod, read back by the real tools; reproducible across
//! directories and umasks; a SIGKILL never leaves a partial pod; bad input gets its exit code.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use hyperpod_tests::registry::files_under;

const HYPERBUILD: &str = env!("CARGO_BIN_EXE_hyperbuild");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The demo image as an OCI layout, generated once per test run with umoci.
fn demo_image() -> &'static str {
    static IMAGE: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    &IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let layout = dir.path().join("oci");
            let out = Command::new("bash")
                .arg(workspace().join("scripts/make-demo-image"))
                .arg(&layout)
                .output()
                .expect("run scripts/make-demo-image (needs umoci)");
            assert!(
                out.status.success(),
                "make-demo-image: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (dir, format!("oci:{}:demo", layout.display()))
        })
        .1
}

/// A minimal static x86-64 ELF (one PT_LOAD, no interpreter): stands in for the kernel and the
/// init where only their bytes matter.
fn fake_elf(dir: &Path, name: &str, fill: u8) -> PathBuf {
    let p = dir.join(name);
    hyperpod_tests::elf::write_fake_static_elf(&p, 4096, fill);
    p
}

fn hyperbuild(args: &[&str], umask: Option<&str>, cwd: &Path) -> Output {
    let mut cmd = match umask {
        Some(m) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("umask {m} && exec \"$0\" \"$@\""))
                .arg(HYPERBUILD);
            c
        }
        None => Command::new(HYPERBUILD),
    };
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

/// `hyperbuild DEMO -o OUT --kernel K --init I -q [--no-spool]` as owned arguments.
fn demo_build_args(out: &str, kernel: &Path, init: &Path, no_spool: bool) -> Vec<String> {
    let mut args: Vec<String> = [demo_image(), "-o", out, "--kernel"]
        .map(String::from)
        .into();
    args.push(kernel.display().to_string());
    args.push("--init".into());
    args.push(init.display().to_string());
    args.push("-q".into());
    if no_spool {
        args.push("--no-spool".into());
    }
    args
}

fn sha256(path: &Path) -> String {
    pod::SectionInfo::of_file(path).unwrap().sha256
}

#[test]
fn demo_image_builds_into_a_pod_that_tar_e2fsck_and_debugfs_accept() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = fake_elf(dir.path(), "vmlinux", 0x11);
    let init = fake_elf(dir.path(), "init", 0x22);
    let out = hyperbuild(
        &[
            demo_image(),
            "-o",
            "app.pod",
            "--kernel",
            kernel.to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
            "-q",
            "-e",
            "EXTRA=1",
        ],
        None,
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.starts_with("built app.pod ("), "{summary}");
    assert!(summary.contains("sha256:"), "{summary}");
    assert!(
        out.stderr.is_empty(),
        "--quiet printed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pod = pod::Pod::open(&dir.path().join("app.pod")).unwrap();
    pod.verify().unwrap();
    let run = &pod.manifest().run;
    assert_eq!(run.entrypoint, ["/app/hello.sh"]);
    assert_eq!(run.cmd, ["world"]);
    assert_eq!(run.user, "demo");
    assert_eq!(run.working_dir, "/app");
    assert_eq!(run.env, ["GREETING=hi", "EXTRA=1"]);
    assert_eq!(
        pod.read_section(pod::Section::Kernel, 1 << 20).unwrap(),
        std::fs::read(&kernel).unwrap()
    );

    // The real tools read what we wrote.
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    assert!(
        Command::new("tar")
            .arg("xf")
            .arg("app.pod")
            .arg("-C")
            .arg(&x)
            .current_dir(dir.path())
            .status()
            .unwrap()
            .success()
    );
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(x.join("rootfs.ext4"))
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let cat = Command::new("debugfs")
        .arg("-R")
        .arg("cat /app/hello.sh")
        .arg(x.join("rootfs.ext4"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&cat.stdout).contains("hello from a hyperpod micro-VM"));
    let list = Command::new("cpio")
        .arg("-t")
        .stdin(std::fs::File::open(x.join("initramfs")).unwrap())
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&list.stdout);
    for want in [
        "init",
        "hyperpod/spec.json",
        "dev/console",
        "dev/ttyS1",
        "dev/port",
    ] {
        assert!(
            names.lines().any(|l| l == want),
            "{want} not in initramfs: {names}"
        );
    }
    // `inspect --json` agrees with the file.
    let json = hyperbuild(&["inspect", "--json", "app.pod"], None, dir.path());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        v["sections"]["rootfs.ext4"]["offset"].as_u64().unwrap() % 4096,
        0
    );
    assert_eq!(v["manifest"]["run"]["user"], "demo");
}

#[test]
fn builds_in_different_directories_umasks_and_modes_are_byte_identical() {
    let inputs = tempfile::tempdir().unwrap();
    let kernel = fake_elf(inputs.path(), "vmlinux", 0x33);
    let init = fake_elf(inputs.path(), "init", 0x44);
    let mut digests = Vec::new();
    // The two-pass mode (no spool) must give the same bytes as the spooled one.
    for (umask, no_spool) in [("022", false), ("077", true), ("002", false)] {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join(format!("deep/er/{umask}"));
        std::fs::create_dir_all(&nested).unwrap();
        let args = demo_build_args("x.pod", &kernel, &init, no_spool);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = hyperbuild(&args, Some(umask), &nested);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        digests.push(sha256(&nested.join("x.pod")));
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "{digests:?}");
}

#[test]
fn sigkill_at_any_point_never_leaves_a_partial_pod() {
    let inputs = tempfile::tempdir().unwrap();
    let kernel = fake_elf(inputs.path(), "vmlinux", 0x55);
    let init = fake_elf(inputs.path(), "init", 0x66);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("app.pod");
    // Time one build, then kill builds at points spread across that time.
    let start = std::time::Instant::now();
    let args = [
        demo_image(),
        "-o",
        output.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--init",
        init.to_str().unwrap(),
        "-q",
    ];
    assert!(hyperbuild(&args, None, dir.path()).status.success());
    let full = start.elapsed();
    let good = std::fs::read(&output).unwrap();
    std::fs::remove_file(&output).unwrap();
    let mut completed = 0;
    for i in 0..24u32 {
        let delay = full.mul_f64(f64::from(i) / 20.0);
        let mut child = Command::new(HYPERBUILD)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        match std::fs::read(&output) {
            Ok(bytes) => {
                assert_eq!(
                    bytes, good,
                    "kill after {delay:?} left a pod that differs from a complete one"
                );
                completed += 1;
                std::fs::remove_file(&output).unwrap();
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        }
        let left = files_under(dir.path());
        assert!(left.is_empty(), "kill after {delay:?} left {left:?}");
    }
    eprintln!(
        "sigkill: {completed} of 24 builds completed before their kill (full build {full:?})"
    );
    // Kills spread over 0..1.15 × the build time: some must land mid-build, some after it.
    assert!(completed < 24, "no kill landed before the end of a build");
}

#[test]
fn bad_input_gets_a_one_line_error_and_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = fake_elf(dir.path(), "vmlinux", 0x77);
    let init = fake_elf(dir.path(), "init", 0x78);
    let k = kernel.to_str().unwrap();
    let i = init.to_str().unwrap();
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec![
                "oci:/nonexistent/layout:x".into(),
                "-o".into(),
                "a.pod".into(),
            ],
            5,
            "/nonexistent/layout",
        ),
        (
            vec![
                demo_image().into(),
                "-o".into(),
                "a.pod".into(),
                "--kernel".into(),
                "/nonexistent/vmlinux".into(),
            ],
            8,
            "/nonexistent/vmlinux",
        ),
        (
            vec![
                demo_image().into(),
                "-o".into(),
                "a.pod".into(),
                "--kernel".into(),
                k.into(),
                "--init".into(),
                "/etc/hostname".into(),
            ],
            8,
            "/etc/hostname",
        ),
        (
            vec![
                demo_image().into(),
                "-o".into(),
                "a.pod".into(),
                "--memory".into(),
                "1".into(),
            ],
            2,
            "--memory",
        ),
        (
            vec![
                demo_image().into(),
                "-o".into(),
                "/nonexistent/dir/a.pod".into(),
                "--kernel".into(),
                k.into(),
                "--init".into(),
                i.into(),
            ],
            6,
            "/nonexistent/dir",
        ),
        (vec!["inspect".into(), k.into()], 3, "not a pod"),
        // A platform the x86-64 guest cannot run is refused, naming both.
        (
            vec![
                demo_image().into(),
                "-o".into(),
                "a.pod".into(),
                "--platform".into(),
                "linux/arm64".into(),
                "--kernel".into(),
                k.into(),
                "--init".into(),
                i.into(),
            ],
            2,
            "--platform linux/arm64: a pod's kernel and init are linux/amd64",
        ),
        // A kernel argument that would split or quote the command line.
        (
            vec![
                demo_image().into(),
                "-o".into(),
                "a.pod".into(),
                "--kernel-arg".into(),
                "rodata=on".into(),
                "--kernel-arg".into(),
                "a=\"b".into(),
            ],
            2,
            "--kernel-arg \"a=\\\"b\": '\"' is not allowed",
        ),
    ];
    for (args, code, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = hyperbuild(&args, None, dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            last.starts_with("hyperbuild: ") && last.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!dir.path().join("a.pod").exists());
    }
    // A pod with one flipped byte in its rootfs: verify names the section, exit 4.
    let out = hyperbuild(
        &[
            demo_image(),
            "-o",
            "a.pod",
            "--kernel",
            k,
            "--init",
            i,
            "-q",
        ],
        None,
        dir.path(),
    );
    assert!(out.status.success());
    let path = dir.path().join("a.pod");
    let mut bytes = std::fs::read(&path).unwrap();
    let loc = pod::Pod::open(&path).unwrap().section(pod::Section::Rootfs);
    bytes[loc.offset as usize + 2048] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let out = hyperbuild(&["verify", "a.pod"], None, dir.path());
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rootfs.ext4: sha256 is"));
    // No temp files left in the output directory by any of the failures.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A full disk (a 256 KiB tmpfs as the output directory, so the spool, the initramfs or the pod
/// runs out of room) is an I/O error, exit 6, one line, and leaves nothing behind. Needs root
/// for the mount.
#[test]
fn a_full_disk_is_an_io_error_and_leaves_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        hyperpod_tests::skip::skipped(
            "a_full_disk_is_an_io_error_and_leaves_nothing",
            "needs root to mount a tmpfs",
        );
        return;
    }
    let inputs = tempfile::tempdir().unwrap();
    let kernel = fake_elf(inputs.path(), "vmlinux", 0x21);
    let init = fake_elf(inputs.path(), "init", 0x22);
    let small = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(small.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(small.path());
    // A big init fills the disk while the initramfs is written, before any pod exists.
    let big_init = inputs.path().join("big-init");
    let mut elf = std::fs::read(&init).unwrap();
    elf.resize(400 << 10, 0x5a);
    std::fs::write(&big_init, elf).unwrap();
    for (no_spool, init) in [(false, &init), (true, &init), (true, &big_init)] {
        let args = demo_build_args("a.pod", &kernel, init, no_spool);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = hyperbuild(&args, None, small.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "no_spool {no_spool}: {err}");
        assert!(err.starts_with("hyperbuild: "), "{err}");
        if init == &big_init {
            assert!(err.contains("initramfs"), "{err}");
        }
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("No space left on device"), "{err}");
        let left: Vec<_> = std::fs::read_dir(small.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

/// The digest printed on the `built ...` line is the one `inspect` shows as `image`, also for a
/// `docker save` archive (which has no manifest digest: its config digest, the image ID).
#[test]
fn inspect_shows_the_image_digest_the_build_printed_for_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = fake_elf(dir.path(), "vmlinux", 0x31);
    let init = fake_elf(dir.path(), "init", 0x32);
    let archive = dir.path().join("demo.tar");
    let layout = demo_image().trim_start_matches("oci:");
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(format!("oci:{layout}"))
        .arg(format!("docker-archive:{}:demo:latest", archive.display()))
        .output()
        .expect("run skopeo (install the skopeo package)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive_ref = format!("docker-archive:{}", archive.display());
    for (image, name) in [
        (demo_image(), "oci.pod"),
        (archive_ref.as_str(), "archive.pod"),
    ] {
        let args = [
            image,
            "-o",
            name,
            "--kernel",
            kernel.to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
            "-q",
        ];
        let out = hyperbuild(&args, None, dir.path());
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = summary
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("no digest in {summary}"))
            .to_string();
        let out = hyperbuild(&["inspect", name], None, dir.path());
        assert!(out.status.success());
        let table = String::from_utf8_lossy(&out.stdout);
        let row = table
            .lines()
            .find(|l| l.starts_with("image "))
            .unwrap_or_else(|| panic!("no image row:\n{table}"));
        let shown = row.split_whitespace().nth(1).unwrap_or_default();
        assert_eq!(shown, printed, "{image}: {row}");
        let manifest = pod::Pod::open(&dir.path().join(name))
            .unwrap()
            .manifest()
            .clone();
        assert!(manifest.source.config_digest.starts_with("sha256:"));
        if image == archive_ref {
            assert_eq!(manifest.source.manifest_digest, "");
            assert_eq!(manifest.source.config_digest, printed);
            assert!(row.ends_with("(image ID)"), "{row}");
        } else {
            assert_eq!(manifest.source.manifest_digest, printed);
        }
    }
}

/// Checks a blob cache holds only whole, correct entries: every blob's sha256 is its name,
/// every tag record names a digest, and nothing else (no temp file) is there.
fn assert_cache_clean(cache: &Path, when: &str) {
    for rel in files_under(cache) {
        let path = cache.join(&rel);
        let rel_s = rel.display().to_string();
        if let Some(hex) = rel_s.strip_prefix("blobs/sha256/") {
            assert_eq!(
                sha256(&path),
                hex,
                "{when}: cache blob {rel_s} is not whole"
            );
        } else if rel_s.starts_with("refs/") && rel_s.contains("/_tags/") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("sha256:") && text.len() == 72,
                "{when}: tag record {rel_s}: {text:?}"
            );
        } else {
            panic!("{when}: unexpected file in the cache: {rel_s}");
        }
    }
}

/// 200 builds from a real registry SIGKILLed at random moments (half with an empty blob cache,
/// so kills land while blobs stream into it): the output directory holds nothing or the whole
/// pod, the cache only whole verified blobs, and no temp file is left anywhere. Then every
/// cached blob is corrupted and a build still makes the same pod: entries are re-verified on
/// use, never trusted.
#[test]
fn two_hundred_sigkills_leave_no_partial_pod_temp_file_or_cache_entry() {
    const KILLS: u32 = 200;
    let reg = hyperpod_tests::registry::Registry::start();
    let layout = demo_image();
    reg.push(layout, "demo:1", false);
    let image = format!("docker://{}/demo:1", reg.host());
    let inputs = tempfile::tempdir().unwrap();
    let kernel = fake_elf(inputs.path(), "vmlinux", 0x55);
    let init = fake_elf(inputs.path(), "init", 0x66);
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let output = dir.path().join("app.pod");
    let args = [
        image.as_str(),
        "-o",
        output.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--init",
        init.to_str().unwrap(),
        "--insecure-registry",
        &reg.host(),
        "-q",
    ];
    let build = |args: &[&str]| {
        let mut c = Command::new(HYPERBUILD);
        c.args(args)
            .env("HYPERBUILD_CACHE", cache.path())
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let empty_cache = || {
        std::fs::remove_dir_all(cache.path()).unwrap();
        std::fs::create_dir(cache.path()).unwrap();
    };
    // One cold build: its time spreads the kills, its bytes are the reference.
    let start = std::time::Instant::now();
    let out = build(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let full = start.elapsed();
    let good = std::fs::read(&output).unwrap();
    std::fs::remove_file(&output).unwrap();
    // And one with the blobs cached: kills into those builds are spread over its time.
    let start = std::time::Instant::now();
    assert!(build(&args).status().unwrap().success());
    let warm = start.elapsed();
    std::fs::remove_file(&output).unwrap();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("sigkills: random seed {seed:#x}, cold build {full:?}, warm build {warm:?}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut completed, started) = (0, std::time::Instant::now());
    for i in 0..KILLS {
        let span = if i % 2 == 0 {
            empty_cache();
            full
        } else {
            warm
        };
        // A moment in 0..1.2 × the build.
        let delay = span.mul_f64((next() % 1200) as f64 / 1000.0);
        let mut child = build(&args).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let when = format!("kill {i} after {delay:?}");
        let left = files_under(dir.path());
        match left.as_slice() {
            [] => {}
            [p] if p == Path::new("app.pod") => {
                assert!(
                    std::fs::read(&output).unwrap() == good,
                    "{when}: pod differs"
                );
                completed += 1;
                std::fs::remove_file(&output).unwrap();
            }
            _ => panic!("{when}: left behind {left:?}"),
        }
        assert_cache_clean(cache.path(), &when);
    }
    eprintln!(
        "sigkills: {completed} of {KILLS} builds completed before their kill; {:?} in all",
        started.elapsed()
    );
    assert!(
        completed < KILLS * 3 / 4,
        "a quarter of the kills must land mid-build"
    );

    // Whatever the kills left in the cache is re-verified: corrupt all of it.
    let blobs = cache.path().join("blobs/sha256");
    if blobs.is_dir() {
        for e in std::fs::read_dir(&blobs).unwrap() {
            let p = e.unwrap().path();
            let mut bytes = std::fs::read(&p).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(&p, bytes).unwrap();
        }
    }
    let out = build(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&output).unwrap() == good,
        "a corrupted cache changed the pod"
    );
    assert_cache_clean(cache.path(), "after the rebuild");
    assert_eq!(files_under(dir.path()), [PathBuf::from("app.pod")]);
}

/// ENOSPC and EIO injected by `strace -e inject` into the writes (buffered and positioned), the
/// fsyncs, and the final link (or link + rename over an existing pod) of a build: one line
/// naming the failure, exit 6 (I/O), nothing left beside the output, and a pod already at the
/// output path left as it was.
#[test]
fn injected_enospc_and_eio_give_one_line_exit_6_and_leave_nothing() {
    let inputs = tempfile::tempdir().unwrap();
    let kernel = fake_elf(inputs.path(), "vmlinux", 0x31);
    let init = fake_elf(inputs.path(), "init", 0x32);
    let args = demo_build_args("app.pod", &kernel, &init, false);
    // (system call, errno, which call fails, whether a pod is already at the output path)
    let cases = [
        ("write", "ENOSPC", 1, false),
        ("write", "EIO", 2, false),
        ("pwrite64", "ENOSPC", 1, false),
        ("pwrite64", "EIO", 3, false),
        ("fsync", "EIO", 1, false),
        ("fdatasync", "ENOSPC", 1, false),
        ("linkat", "ENOSPC", 1, false),
        ("linkat", "EIO", 1, true),
        ("rename", "EIO", 1, true),
    ];
    let old_pod = b"an older pod the failed build must not touch".to_vec();
    for (call, errno, nth, existing) in cases {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("app.pod");
        if existing {
            std::fs::write(&output, &old_pod).unwrap();
        }
        let out = Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-e"])
            .arg(format!("trace={call}"))
            .arg("-e")
            .arg(format!("inject={call}:error={errno}:when={nth}"))
            .arg(HYPERBUILD)
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("run strace (scripts/setup installs it)");
        let err = String::from_utf8_lossy(&out.stderr);
        let case = format!("{errno} on {call} #{nth}");
        assert_eq!(out.status.code(), Some(6), "{case}: {err}");
        assert_eq!(err.lines().count(), 1, "{case}: {err}");
        assert!(err.starts_with("hyperbuild: "), "{case}: {err}");
        let text = match errno {
            "ENOSPC" => "No space left on device",
            _ => "Input/output error",
        };
        assert!(err.contains(text), "{case}: {err}");
        let left = files_under(dir.path());
        if existing {
            assert_eq!(left, [PathBuf::from("app.pod")], "{case}");
            assert_eq!(std::fs::read(&output).unwrap(), old_pod, "{case}");
        } else {
            assert!(left.is_empty(), "{case}: left {left:?}");
        }
    }
}
