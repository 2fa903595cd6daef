//! dm-verity end to end: the demo image built by `hyperbuild` (verity on by default) has a tree
//! `veritysetup verify` accepts; signed, it boots under `--require-signature` with the guest
//! reading its rootfs through the verity device; with one byte of one file flipped in the pod
//! (manifest and signature untouched) it still boots, the app's read of that file fails with
//! EIO while other files read fine, and init ends the run with a clear line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hyperpod_tests::{init_fixture, kernel};

fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("under <target>/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} missing: cargo build -p builder -p launcher",
        path.display()
    );
    path
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn verity_pod_boots_signed_and_a_flipped_rootfs_byte_reads_as_eio() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let made = run(
        Command::new("bash")
            .arg(root.join("scripts/make-demo-image"))
            .arg(w.join("oci")),
        "make-demo-image (needs umoci)",
    );
    let image = String::from_utf8_lossy(&made.stdout).trim().to_string();
    let pod_path = w.join("demo.pod");
    let hyperbuild = sibling_binary("hyperbuild");
    run(
        Command::new(&hyperbuild)
            .arg(&image)
            .arg("-o")
            .arg(&pod_path)
            .arg("--kernel")
            .arg(kernel::vmlinux())
            .arg("--init")
            .arg(init_fixture::init_binary())
            .arg("-q"),
        "hyperbuild",
    );
    let pod = pod::Pod::open(&pod_path).unwrap();
    let v = pod
        .manifest()
        .verity
        .clone()
        .expect("verity is on by default");
    let rootfs = pod.section(pod::Section::Rootfs);

    // veritysetup accepts the tree, on the sections as tar extracts them.
    run(
        Command::new("tar")
            .arg("xf")
            .arg(&pod_path)
            .arg("-C")
            .arg(w)
            .args(["rootfs.ext4", "rootfs.verity"]),
        "tar",
    );
    run(
        Command::new("veritysetup")
            .arg("verify")
            .arg(w.join("rootfs.ext4"))
            .arg(w.join("rootfs.verity"))
            .arg(&v.root_hash)
            .args(["--no-superblock", "--hash=sha256", "--data-block-size=4096"])
            .args(["--hash-block-size=4096", "--format=1"])
            .arg(format!("--data-blocks={}", v.data_blocks))
            .arg(format!("--salt={}", v.salt)),
        "veritysetup verify (apt install cryptsetup-bin)",
    );

    // Signed, booted with the signature required: the app runs off the verity device.
    let (key, public) = (w.join("ci.key"), w.join("ci.pub"));
    run(
        Command::new(&hyperbuild)
            .arg("keygen")
            .arg("--key")
            .arg(&key)
            .arg("--pubkey")
            .arg(&public),
        "keygen",
    );
    run(
        Command::new(&hyperbuild)
            .arg("sign")
            .arg("--key")
            .arg(&key)
            .arg(&pod_path),
        "sign",
    );
    let launch = |pod: &Path, script: &str| {
        Command::new(sibling_binary("hyperlaunch"))
            .arg("--timeout")
            .arg("120")
            .arg("--require-signature")
            .arg(&public)
            .arg("--entrypoint")
            .arg("/bin/sh")
            .arg(pod)
            .arg("--")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap()
    };
    let good = launch(
        &pod_path,
        "cat /sys/block/dm-0/dm/name; ls /sys/block/dm-0/slaves; cat /app/hello.sh >/dev/null && echo read-ok",
    );
    let text = both(&good);
    assert_eq!(good.status.code(), Some(0), "{text}");
    for want in ["hyperpod-root\n", "vda\n", "read-ok\n"] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
    assert!(!text.contains("verification failed"), "{text}");

    // One byte of /app/hello.sh flipped in the pod; the manifest and signature are untouched.
    let bmap = run(
        Command::new("debugfs")
            .arg("-R")
            .arg("bmap /app/hello.sh 0")
            .arg(w.join("rootfs.ext4")),
        "debugfs bmap",
    );
    let block: u64 = String::from_utf8_lossy(&bmap.stdout)
        .trim()
        .parse()
        .unwrap();
    let mut bytes = std::fs::read(&pod_path).unwrap();
    bytes[(rootfs.offset + block * 4096 + 5) as usize] ^= 0x20;
    let bad_path = w.join("flipped.pod");
    std::fs::write(&bad_path, &bytes).unwrap();
    let bad = launch(
        &bad_path,
        "cat /app/hello.sh >/dev/null; echo cat-rc=$?; head -n1 /etc/passwd",
    );
    let text = both(&bad);
    assert_eq!(
        bad.status.code(),
        Some(0),
        "the shell's last command succeeded: {text}"
    );
    for want in [
        "Input/output error",
        "cat-rc=1\n",
        "root:x:0:0:",
        "rootfs verification failed",
    ] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
}
