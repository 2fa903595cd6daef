//! The probe image (`tests/fixtures/probe-image.sh`) built into a pod with the real `hyperbuild`
//! and booted with the real `hyperlaunch --engine qemu`; its `/probe.sh` output parsed into
//! `key → value`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{init_fixture, kernel};

/// A binary built next to this test (cargo builds the workspace's binaries for `cargo test
/// --workspace`, because `builder` and `launcher` have integration tests).
pub fn sibling_binary(name: &str) -> PathBuf {
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

/// Generates the probe image under `dir`; returns its reference (`oci:DIR:probe`).
pub fn image(dir: &Path) -> String {
    let script = kernel::workspace_root().join("tests/fixtures/probe-image.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir.join("oci"))
        .output()
        .expect("run tests/fixtures/probe-image.sh (needs umoci)");
    assert!(
        out.status.success(),
        "probe-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `hyperbuild IMAGE -o DIR/probe.pod` with the cached kernel and the static init.
pub fn build_pod(image: &str, dir: &Path) -> PathBuf {
    let pod = dir.join("probe.pod");
    let built = Command::new(sibling_binary("hyperbuild"))
        .arg(image)
        .arg("-o")
        .arg(&pod)
        .arg("--kernel")
        .arg(init_fixture::kernel())
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
    pod
}

/// `hyperlaunch --engine qemu --timeout 300 ARGS... POD [-- APP_ARGS...]`, stdin from /dev/null.
pub fn launch(pod: &Path, args: &[&str], app_args: &[&str]) -> Output {
    let mut cmd = Command::new(sibling_binary("hyperlaunch"));
    cmd.args(["--engine", "qemu", "--timeout", "300"])
        .args(args)
        .arg(pod);
    if !app_args.is_empty() {
        cmd.arg("--").args(app_args);
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// `launch` that must exit 0; returns its stdout.
pub fn launch_ok(pod: &Path, args: &[&str], app_args: &[&str]) -> String {
    let out = launch(pod, args, app_args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "hyperlaunch {args:?} {app_args:?}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `/probe.sh`'s lines as `key → value`; every line must be `key=value`, each key once.
pub fn parse(output: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in output.lines().map(|l| l.trim_end_matches('\r')) {
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("probe line {line:?} is not key=value in:\n{output}"));
        assert!(
            map.insert(k.to_string(), v.to_string()).is_none(),
            "probe key {k} twice in:\n{output}"
        );
    }
    map
}
