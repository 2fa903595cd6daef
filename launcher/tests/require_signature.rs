//! `hyperlaunch --require-signature PUB` (and `$HYPERLAUNCH_REQUIRE_SIGNATURE`): an unsigned
//! pod, a pod signed by another key or with a flipped manifest byte, and an unusable key are
//! refused with exit 125 and one line naming the reason, before any engine touches the pod; a
//! good signature gets past the check (the fake kernel then fails to boot, for another reason).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pod::SectionInfo;
use pod::manifest::{Manifest, Resources, Sections, Source};
use pod::signature;

const HYPERLAUNCH: &str = env!("CARGO_BIN_EXE_hyperlaunch");

fn seal(path: &Path) {
    let kernel = vec![0x5au8; 8192];
    let initramfs = vec![0x11u8; 4096];
    let rootfs = vec![0u8; 16 * 4096];
    let manifest = Manifest {
        format_version: pod::manifest::FORMAT_VERSION,
        builder: "test".into(),
        created: "2024-01-02T03:04:05Z".into(),
        source: Source {
            reference: "test".into(),
            manifest_digest: format!("sha256:{}", "1".repeat(64)),
            config_digest: String::new(),
        },
        sections: Sections {
            kernel: SectionInfo::of_bytes(&kernel),
            initramfs: SectionInfo::of_bytes(&initramfs),
            rootfs: SectionInfo::of_bytes(&rootfs),
            verity: None,
        },
        run: Default::default(),
        resources: Resources::default(),
        kernel_cmdline: "quiet".into(),
        kernel: None,
        verity: None,
    };
    pod::seal(
        path,
        &manifest,
        &mut &kernel[..],
        &mut &initramfs[..],
        &mut &rootfs[..],
    )
    .unwrap();
}

fn keys(dir: &Path, name: &str, seed: u8) -> (ed25519_dalek::SigningKey, PathBuf) {
    let (private, public) = signature::key_pair_pem(&[seed; 32]).unwrap();
    let path = dir.join(format!("{name}.pub"));
    std::fs::write(&path, public).unwrap();
    (signature::signing_key_from_pem(&private).unwrap(), path)
}

fn sign(path: &Path, key: &ed25519_dalek::SigningKey) {
    let pod = pod::Pod::open(path).unwrap();
    let sig = signature::sign(key, &pod.layout().manifest_bytes);
    pod::write_signed(&pod, path, &sig).unwrap();
}

fn launch(args: &[&str], env: Option<&Path>) -> Output {
    let mut cmd = Command::new(HYPERLAUNCH);
    cmd.args(args).env_remove("HYPERLAUNCH_REQUIRE_SIGNATURE");
    if let Some(k) = env {
        cmd.env("HYPERLAUNCH_REQUIRE_SIGNATURE", k);
    }
    cmd.output().unwrap()
}

fn refused(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} does not name {n:?}");
    }
}

#[test]
fn unsigned_wrongly_signed_or_altered_pods_are_refused_before_boot() {
    let dir = tempfile::tempdir().unwrap();
    let pod_path = dir.path().join("app.pod");
    let p = pod_path.to_str().unwrap();
    seal(&pod_path);
    let (key, public) = keys(dir.path(), "ci", 1);
    let (_, other) = keys(dir.path(), "other", 2);
    let pubs = public.to_str().unwrap();

    refused(
        &launch(&["--require-signature", pubs, "--engine", "kvm", p], None),
        &["app.pod", "--require-signature", "ci.pub", "not signed"],
    );
    refused(
        &launch(&["--engine", "kvm", p], Some(&public)),
        &["$HYPERLAUNCH_REQUIRE_SIGNATURE", "not signed"],
    );
    sign(&pod_path, &key);
    refused(
        &launch(
            &[
                "--require-signature",
                other.to_str().unwrap(),
                "--engine",
                "kvm",
                p,
            ],
            None,
        ),
        &["other.pub", "does not verify"],
    );
    // The flag wins over the environment.
    refused(
        &launch(
            &["--require-signature", other.to_str().unwrap(), p],
            Some(&public),
        ),
        &["--require-signature", "does not verify"],
    );
    let missing = dir.path().join("missing.pub");
    refused(
        &launch(&["--require-signature", missing.to_str().unwrap(), p], None),
        &["missing.pub"],
    );
    let (private, _) = signature::key_pair_pem(&[3; 32]).unwrap();
    let private_path = dir.path().join("private.pem");
    std::fs::write(&private_path, private).unwrap();
    refused(
        &launch(
            &["--require-signature", private_path.to_str().unwrap(), p],
            None,
        ),
        &["private.pem", "SPKI"],
    );
    // A flipped byte in the manifest (still valid JSON): the signature no longer matches.
    let good = std::fs::read(&pod_path).unwrap();
    let mut bad = good.clone();
    let at = bad.windows(4).position(|w| w == b"test").unwrap();
    bad[at] = b'T';
    let altered = dir.path().join("altered.pod");
    std::fs::write(&altered, &bad).unwrap();
    refused(
        &launch(
            &["--require-signature", pubs, altered.to_str().unwrap()],
            None,
        ),
        &["altered.pod", "does not verify"],
    );

    // A flipped rootfs byte in a pod without a verity tree: the signature still verifies, so
    // the signed rootfs digest is checked before boot.
    let loc = pod::Pod::open(&pod_path)
        .unwrap()
        .section(pod::Section::Rootfs);
    let mut bad = good.clone();
    bad[(loc.offset + 100) as usize] ^= 1;
    std::fs::write(&altered, &bad).unwrap();
    refused(
        &launch(
            &["--require-signature", pubs, altered.to_str().unwrap()],
            None,
        ),
        &["altered.pod", "rootfs.ext4", "sha256"],
    );

    // The right key: past the check, into the engine, which cannot boot a fake kernel.
    for out in [
        launch(
            &[
                "--require-signature",
                pubs,
                "--engine",
                "kvm",
                "--timeout",
                "20",
                p,
            ],
            None,
        ),
        launch(&["--engine", "kvm", "--timeout", "20", p], Some(&public)),
    ] {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("signature"),
            "a good signature was refused: {err}"
        );
    }
}
