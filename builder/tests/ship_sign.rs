//! `hyperbuild keygen`, `sign`, `verify --pubkey`: a good signature passes ours and OpenSSL's
//! `pkeyutl -verify -rawin` on the documented bytes; OpenSSL's keys work with ours; a flipped
//! byte in any section, in the manifest or in the signature fails; so does the wrong key.

mod ship_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ship_support::{fails, hyperbuild, make_pod, ok};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    ok(
        &hyperbuild(&["keygen", "--key", s(&key), "--pubkey", s(&public)], &[]),
        "keygen",
    );
    (key, public)
}

fn verify(public: &Path, pod: &Path) -> std::process::Output {
    hyperbuild(&["verify", "--pubkey", s(public), s(pod)], &[])
}

/// OpenSSL's verdict on `pod`'s signature, from the two entries as `tar` extracts them.
fn openssl_verifies(public: &Path, pod: &Path) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let tar = Command::new("tar")
        .arg("xf")
        .arg(pod)
        .args(["-C", s(dir.path()), "manifest.json", "signature.ed25519"])
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    let out = Command::new("openssl")
        .args([
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            s(public),
            "-rawin",
            "-in",
        ])
        .arg(dir.path().join("manifest.json"))
        .arg("-sigfile")
        .arg(dir.path().join("signature.ed25519"))
        .output()
        .unwrap();
    out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully")
}

#[test]
fn keygen_sign_verify_agree_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    // keygen's defaults land in the working directory, private key mode 0600.
    let out = Command::new(ship_support::HYPERBUILD)
        .arg("keygen")
        .current_dir(dir.path())
        .output()
        .unwrap();
    ok(&out, "keygen with defaults");
    let (key, public) = (
        dir.path().join("hyperpod.key"),
        dir.path().join("hyperpod.pub"),
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    assert!(
        std::fs::read_to_string(&public)
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    // Never overwrites.
    let again = Command::new(ship_support::HYPERBUILD)
        .arg("keygen")
        .current_dir(dir.path())
        .output()
        .unwrap();
    fails(
        &again,
        6,
        &["hyperpod.key", "already exists"],
        "keygen over a key",
    );

    let pod = dir.path().join("app.pod");
    make_pod(&pod, 200, 10, true);
    let unsigned = std::fs::read(&pod).unwrap();
    fails(&verify(&public, &pod), 9, &["not signed"], "unsigned pod");
    ok(
        &hyperbuild(&["sign", "--key", s(&key), s(&pod)], &[]),
        "sign",
    );
    let signed = std::fs::read(&pod).unwrap();
    // Signing appends: everything before the signature entry is unchanged.
    let payload_end = unsigned.len() - 1024;
    assert_eq!(signed[..payload_end], unsigned[..payload_end]);
    ok(&verify(&public, &pod), "verify");
    assert!(
        openssl_verifies(&public, &pod),
        "openssl refused our signature"
    );

    // OpenSSL's keys work with ours, both ways.
    let ossl_key = dir.path().join("ossl.key");
    let ossl_pub = dir.path().join("ossl.pub");
    for args in [
        vec!["genpkey", "-algorithm", "ed25519", "-out", s(&ossl_key)],
        vec!["pkey", "-in", s(&ossl_key), "-pubout", "-out", s(&ossl_pub)],
    ] {
        assert!(
            Command::new("openssl")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
    ok(
        &hyperbuild(&["sign", "--key", s(&ossl_key), s(&pod)], &[]),
        "sign with openssl's key",
    );
    ok(&verify(&ossl_pub, &pod), "verify with openssl's public key");
    assert!(openssl_verifies(&ossl_pub, &pod));
    // Re-signing replaced the signature: the first key no longer verifies; same length.
    fails(
        &verify(&public, &pod),
        9,
        &["does not verify"],
        "replaced signature",
    );
    assert!(!openssl_verifies(&public, &pod));
    assert_eq!(std::fs::read(&pod).unwrap().len(), signed.len());
}

#[test]
fn any_flipped_byte_or_the_wrong_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "a");
    let (_, other) = keygen(dir.path(), "b");
    let pod = dir.path().join("app.pod");
    make_pod(&pod, 200, 11, true);
    ok(
        &hyperbuild(&["sign", "--key", s(&key), s(&pod)], &[]),
        "sign",
    );
    ok(&verify(&public, &pod), "verify");
    fails(&verify(&other, &pod), 9, &["does not verify"], "wrong key");
    assert!(!openssl_verifies(&other, &pod));
    fails(
        &verify(&key, &pod),
        9,
        &["SPKI"],
        "a private key given as the public one",
    );

    let opened = pod::Pod::open(&pod).unwrap();
    let layout = opened.layout().clone();
    let mut places: Vec<(String, u64, i32, &str)> = Vec::new();
    for sec in opened.sections() {
        let loc = opened.section(sec);
        for at in [
            loc.offset,
            loc.offset + loc.len / 2,
            loc.offset + loc.len - 1,
        ] {
            places.push((sec.name().to_string(), at, 4, sec.name()));
        }
    }
    // In the manifest: a byte inside the "builder" value (still valid JSON, so the signature
    // is what catches it).
    let manifest = String::from_utf8(layout.manifest_bytes.clone()).unwrap();
    let at = layout.manifest_loc.offset + manifest.find("hyperbuild test").unwrap() as u64;
    places.push(("manifest.json".into(), at, 9, "does not verify"));
    let (sig_loc, _) = layout.signature.unwrap();
    for at in [sig_loc.offset, sig_loc.offset + 63] {
        places.push(("signature".into(), at, 9, "does not verify"));
    }
    drop(opened);
    let good = std::fs::read(&pod).unwrap();
    for (what, at, code, needle) in places {
        let mut bad = good.clone();
        bad[at as usize] ^= 0x20;
        let flipped = dir.path().join("flipped.pod");
        std::fs::write(&flipped, &bad).unwrap();
        fails(
            &verify(&public, &flipped),
            code,
            &[needle],
            &format!("{what} byte {at}"),
        );
        if what == "manifest.json" || what == "signature" {
            assert!(
                !openssl_verifies(&public, &flipped),
                "openssl accepted a flipped {what}"
            );
        }
    }
}

#[test]
fn signing_with_a_bad_key_leaves_the_pod_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("app.pod");
    make_pod(&pod, 16, 12, false);
    let before = std::fs::read(&pod).unwrap();
    let junk = dir.path().join("junk.key");
    std::fs::write(&junk, "not a key\n").unwrap();
    fails(
        &hyperbuild(&["sign", "--key", s(&junk), s(&pod)], &[]),
        9,
        &["junk.key", "PKCS#8"],
        "junk key",
    );
    assert_eq!(std::fs::read(&pod).unwrap(), before);
    // A damaged pod is not signed either.
    let mut bad = before.clone();
    let loc = pod::Pod::open(&pod).unwrap().section(pod::Section::Kernel);
    bad[loc.offset as usize + 7] ^= 1;
    std::fs::write(&pod, &bad).unwrap();
    let (key, _) = keygen(dir.path(), "k");
    fails(
        &hyperbuild(&["sign", "--key", s(&key), s(&pod)], &[]),
        4,
        &["kernel"],
        "sign a damaged pod",
    );
    assert_eq!(std::fs::read(&pod).unwrap(), bad);
}
