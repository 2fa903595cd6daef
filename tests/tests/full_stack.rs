//! The whole user path, as the README's demo runs it: the demo image generated with umoci →
//! `hyperbuild` (our ext4, our initramfs with the real static init, the cached guest kernel) →
//! `hyperlaunch` → the app's output and exit code. The engine is `auto`: KVM where it runs guests
//! natively, QEMU (TCG) here.

use std::path::{Path, PathBuf};
use std::process::Command;

use hyperpod_tests::{init_fixture, kernel};

/// A binary built next to this test (cargo builds the workspace's binaries for `cargo test
/// --workspace`, because `builder` and `launcher` have integration tests).
fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("under <target>/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} missing: run `cargo test --workspace` (or `cargo build -p builder -p launcher`)",
        path.display()
    );
    path
}

#[test]
fn demo_image_builds_boots_and_reports_its_exit_code() {
    let work = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let made = Command::new("bash")
        .arg(root.join("scripts/make-demo-image"))
        .arg(work.path().join("oci"))
        .output()
        .expect("run scripts/make-demo-image (needs umoci)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let image = String::from_utf8_lossy(&made.stdout).trim().to_string();

    let pod = work.path().join("demo.pod");
    let built = Command::new(sibling_binary("hyperbuild"))
        .arg(&image)
        .arg("-o")
        .arg(&pod)
        .arg("--kernel")
        .arg(kernel::vmlinux())
        .arg("--init")
        .arg(init_fixture::init_binary())
        .arg("-q")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "hyperbuild: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    // The pod says which kernel went in: its release and the fragments it was built from.
    let inspect = Command::new(sibling_binary("hyperbuild"))
        .arg("inspect")
        .arg(&pod)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&inspect.stdout);
    let kernel_row = table
        .lines()
        .find_map(|l| l.strip_prefix("kernel       Linux 6.12."))
        .unwrap_or_else(|| panic!("no kernel row: {table}"));
    let key = kernel_row.rsplit(", fragments ").next().unwrap();
    assert!(
        key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{table}"
    );

    // Default run: the image's entrypoint, cmd, env, user and workdir.
    let run = Command::new(sibling_binary("hyperlaunch"))
        .arg("--timeout")
        .arg("120")
        .arg(&pod)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "stdout: {out}\nstderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    for want in [
        "hello from a hyperpod micro-VM\n",
        "kernel:   Linux 6.12",
        "user:     uid=1000(demo) gid=1000(demo)",
        "workdir:  /app",
        "greeting: hi\n",
        "args:     world\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(
        !out.contains('\r'),
        "raw console expected without -t: {out:?}"
    );

    // Launch-time overrides and a non-zero exit code travel end to end.
    let run = Command::new(sibling_binary("hyperlaunch"))
        .args([
            "--timeout",
            "120",
            "-e",
            "GREETING=hello",
            "--entrypoint",
            "/bin/sh",
            "--user",
            "0",
            "--workdir",
            "/tmp",
        ])
        .arg(&pod)
        .args([
            "--",
            "-c",
            "echo \"$GREETING from $(id -u) in $(pwd)\"; exit 7",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(7),
        "stdout: {out}\nstderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.contains("hello from 0 in /tmp\n"), "{out}");
}
