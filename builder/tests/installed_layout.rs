//! `hyperbuild` installed as the package lays it out (`PREFIX/bin/hyperbuild`,
//! `PREFIX/lib/hyperpod/{vmlinux,vmlinux.fragments,hyperpod-init}`), run by a user with an empty
//! home and no `HYPERPOD_*` variables: it finds its kernel and init there, records which kernel
//! went in, says so in `--version` and `inspect`, and refuses a kernel from other fragments.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HYPERBUILD: &str = env!("CARGO_BIN_EXE_hyperbuild");

/// A fake static ELF "kernel" carrying a Linux banner, and a fake static init.
fn install(prefix: &Path, fragments: &str) -> PathBuf {
    let lib = prefix.join("lib/hyperpod");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    let bin = prefix.join("bin/hyperbuild");
    std::fs::copy(HYPERBUILD, &bin).unwrap();
    let kernel = lib.join("vmlinux");
    hyperpod_tests::elf::write_fake_static_elf(&kernel, 8192, 0x11);
    let mut bytes = std::fs::read(&kernel).unwrap();
    bytes.extend_from_slice(b"\0Linux version 9.8.7-test (nobody@nowhere) #1\n\0");
    std::fs::write(&kernel, bytes).unwrap();
    std::fs::write(lib.join("vmlinux.fragments"), format!("{fragments}\n")).unwrap();
    hyperpod_tests::elf::write_fake_static_elf(&lib.join("hyperpod-init"), 4096, 0x22);
    bin
}

fn run(bin: &Path, args: &[&str], home: &Path) -> Output {
    Command::new(bin)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home)
        .output()
        .unwrap()
}

fn our_fragments_key(home: &Path) -> String {
    let out = run(Path::new(HYPERBUILD), &["--version"], home);
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("kernel fragments: "))
        .unwrap_or_else(|| panic!("no fragments line in {text}"))
        .to_string()
}

fn demo_image(dir: &Path) -> String {
    let layout = dir.join("oci");
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-demo-image"))
        .arg(&layout)
        .output()
        .expect("run scripts/make-demo-image (needs umoci)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("oci:{}:demo", layout.display())
}

#[test]
fn installed_kernel_and_init_are_found_recorded_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let key = our_fragments_key(&home);
    let prefix = dir.path().join("opt/hyper pod");
    let bin = install(&prefix, &key);

    let version = String::from_utf8(run(&bin, &["--version"], &home).stdout).unwrap();
    let lib = prefix.join("lib/hyperpod");
    assert!(
        version.contains(&format!(
            "kernel: {} (installed, Linux 9.8.7-test, fragments {key})",
            lib.join("vmlinux").display()
        )),
        "{version}"
    );
    assert!(
        version.contains(&format!("init: {}", lib.join("hyperpod-init").display())),
        "{version}"
    );

    let image = demo_image(dir.path());
    let pod = dir.path().join("app.pod");
    let built = run(&bin, &[&image, "-o", pod.to_str().unwrap(), "-q"], &home);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let inspect = run(&bin, &["inspect", pod.to_str().unwrap()], &home);
    let table = String::from_utf8(inspect.stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l == format!("kernel       Linux 9.8.7-test, fragments {key}")),
        "{table}"
    );
    let json = run(&bin, &["inspect", "--json", pod.to_str().unwrap()], &home);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["manifest"]["kernel"]["release"], "9.8.7-test");
    assert_eq!(v["manifest"]["kernel"]["fragments"], key.as_str());

    // A kernel installed from other fragments is refused with the missing-part code.
    std::fs::write(lib.join("vmlinux.fragments"), "0000000000000000\n").unwrap();
    let refused = run(&bin, &[&image, "-o", pod.to_str().unwrap(), "-q"], &home);
    assert_eq!(refused.status.code(), Some(8));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("built from fragments 0000000000000000") && err.lines().count() == 1,
        "{err}"
    );
    // `--kernel` still wins over the installed one.
    let explicit = run(
        &bin,
        &[
            &image,
            "-o",
            pod.to_str().unwrap(),
            "-q",
            "--kernel",
            lib.join("vmlinux").to_str().unwrap(),
        ],
        &home,
    );
    assert!(
        explicit.status.success(),
        "{}",
        String::from_utf8_lossy(&explicit.stderr)
    );
}
