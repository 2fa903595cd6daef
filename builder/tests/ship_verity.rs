//! The rootfs's dm-verity tree (`rootfs.verity`) as the pod crate seals it: `veritysetup verify`
//! (cryptsetup, an implementation nobody here wrote) accepts it with the manifest's parameters,
//! refuses it once a rootfs byte is flipped, and the tree is reproducible.

mod ship_support;

use std::path::Path;
use std::process::Command;

use ship_support::make_pod;

/// `veritysetup verify` on the pod's rootfs and tree as `tar` extracts them.
fn veritysetup_verify(pod_path: &Path, flip_rootfs_byte: Option<usize>) -> (bool, String) {
    let pod = pod::Pod::open(pod_path).unwrap();
    let v = pod.manifest().verity.clone().expect("a verity pod");
    let dir = tempfile::tempdir().unwrap();
    let tar = Command::new("tar")
        .arg("xf")
        .arg(pod_path)
        .arg("-C")
        .arg(dir.path())
        .args(["rootfs.ext4", "rootfs.verity"])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let data = dir.path().join("rootfs.ext4");
    if let Some(at) = flip_rootfs_byte {
        let mut b = std::fs::read(&data).unwrap();
        b[at] ^= 0x80;
        std::fs::write(&data, b).unwrap();
    }
    let out = Command::new("veritysetup")
        .arg("verify")
        .arg(&data)
        .arg(dir.path().join("rootfs.verity"))
        .arg(&v.root_hash)
        .args([
            "--no-superblock",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
            "--format=1",
        ])
        .arg(format!("--data-blocks={}", v.data_blocks))
        .arg(format!("--salt={}", v.salt))
        .arg("--verbose")
        .output()
        .expect("run veritysetup (apt install cryptsetup-bin)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn veritysetup_accepts_our_tree_and_refuses_a_flipped_rootfs_byte() {
    let dir = tempfile::tempdir().unwrap();
    // One, two and three levels (128 and 128² data blocks per level).
    for (blocks, seed) in [(2usize, 20u64), (100, 21), (300, 22), (128 * 128 + 7, 23)] {
        let path = dir.path().join(format!("v{blocks}.pod"));
        let m = make_pod(&path, blocks, seed, true);
        let v = m.verity.as_ref().unwrap();
        assert_eq!(v.data_blocks, blocks as u64);
        assert_eq!(
            m.sections.verity.as_ref().unwrap().size,
            pod::verity::tree_size(blocks as u64)
        );
        assert!(m.kernel_cmdline.ends_with(&pod::verity::kernel_args(v)));
        let (ok, text) = veritysetup_verify(&path, None);
        assert!(ok, "{blocks} blocks: veritysetup refused our tree: {text}");
        let (ok, text) = veritysetup_verify(&path, Some(blocks * 4096 - 1));
        assert!(
            !ok,
            "{blocks} blocks: veritysetup accepted a flipped byte: {text}"
        );
        pod::Pod::open(&path).unwrap().verify().unwrap();
    }
}

#[test]
fn the_tree_is_reproducible_and_salted_per_image() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.pod"), dir.path().join("b.pod"));
    let ma = make_pod(&a, 500, 30, true);
    let mb = make_pod(&b, 500, 30, true);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(ma.verity, mb.verity);
    let salt = pod::verity::salt(&ma.source.manifest_digest, 500 * 4096);
    assert_eq!(ma.verity.unwrap().salt, hex::encode(salt));
    assert_ne!(
        salt,
        pod::verity::salt(&format!("sha256:{}", "6".repeat(64)), 500 * 4096)
    );
}
