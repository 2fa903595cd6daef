//! `hyperbuild push` / `pull` against Debian's docker-registry on loopback: byte-identical round
//! trips, the artifact's media types as skopeo sees them, tampered blobs refused by digest, a
//! killed pull leaving no partial pod, htpasswd auth through --creds and $DOCKER_CONFIG.

#[path = "../../tests/src/registry.rs"]
#[allow(dead_code)]
mod registry;
mod ship_support;

use std::path::Path;
use std::process::{Command, Stdio};

use registry::Registry;
use ship_support::{HYPERBUILD, cache_env, fails, hyperbuild, make_pod, ok};

fn push(pod: &Path, reference: &str, extra: &[&str], cache: &Path) -> std::process::Output {
    let mut args = vec!["push", pod.to_str().unwrap(), reference];
    args.extend_from_slice(extra);
    hyperbuild(&args, &[("HYPERBUILD_CACHE", cache)])
}

fn pull(reference: &str, out: &Path, extra: &[&str], cache: &Path) -> std::process::Output {
    let mut args = vec!["pull", reference, "-o", out.to_str().unwrap(), "-q"];
    args.extend_from_slice(extra);
    hyperbuild(&args, &[("HYPERBUILD_CACHE", cache)])
}

#[test]
fn push_pull_round_trip_is_byte_identical_and_skopeo_shows_the_media_types() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("app.pod");
    make_pod(&pod, 300, 1, true);
    // Signed, so every kind of entry travels.
    let key = dir.path().join("k.key");
    let pubkey = dir.path().join("k.pub");
    ok(
        &hyperbuild(
            &[
                "keygen",
                "--key",
                key.to_str().unwrap(),
                "--pubkey",
                pubkey.to_str().unwrap(),
            ],
            &[],
        ),
        "keygen",
    );
    ok(
        &hyperbuild(
            &[
                "sign",
                "--key",
                key.to_str().unwrap(),
                pod.to_str().unwrap(),
            ],
            &[],
        ),
        "sign",
    );
    let reference = format!("{}/pods/app:v1", reg.host());
    let out = ok(&push(&pod, &reference, &[], &cache_env(dir.path())), "push");
    assert!(out.contains("7 blobs uploaded"), "{out}");
    // A second push of the same pod uploads nothing.
    let again = ok(
        &push(&pod, &reference, &[], &cache_env(dir.path())),
        "push again",
    );
    assert!(
        again.contains("0 blobs uploaded, 7 already there"),
        "{again}"
    );

    let pulled = dir.path().join("pulled.pod");
    let fresh = tempfile::tempdir().unwrap();
    let line = ok(
        &pull(&reference, &pulled, &[], &cache_env(fresh.path())),
        "pull",
    );
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(&pod).unwrap()
    );
    // By digest too, and offline from the cache the first pull filled.
    let digest = line
        .split('@')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let by_digest = dir.path().join("by-digest.pod");
    let r = format!("docker://{}/pods/app@{digest}", reg.host());
    ok(
        &pull(&r, &by_digest, &[], &cache_env(fresh.path())),
        "pull by digest",
    );
    assert_eq!(
        std::fs::read(&by_digest).unwrap(),
        std::fs::read(&pod).unwrap()
    );
    let offline = dir.path().join("offline.pod");
    ok(
        &pull(
            &reference,
            &offline,
            &["--offline"],
            &cache_env(fresh.path()),
        ),
        "pull --offline",
    );
    assert_eq!(
        std::fs::read(&offline).unwrap(),
        std::fs::read(&pod).unwrap()
    );
    ok(
        &hyperbuild(
            &[
                "verify",
                "--pubkey",
                pubkey.to_str().unwrap(),
                pulled.to_str().unwrap(),
            ],
            &[],
        ),
        "verify the pulled pod",
    );

    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["artifactType"], "application/vnd.hyperpod.pod.v1");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    let types: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.hyperpod.pod.manifest.v1+json",
            "application/vnd.hyperpod.pod.kernel.v1",
            "application/vnd.hyperpod.pod.initramfs.v1",
            "application/vnd.hyperpod.pod.rootfs.v1+ext4",
            "application/vnd.hyperpod.pod.rootfs-verity.v1",
            "application/vnd.hyperpod.pod.signature.v1+ed25519",
        ]
    );
    let manifest = pod::Pod::open(&pod).unwrap().manifest().clone();
    assert_eq!(
        m["layers"][3]["digest"],
        format!("sha256:{}", manifest.sections.rootfs.sha256)
    );
}

#[test]
fn pull_refuses_a_tampered_blob_naming_its_digest() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("app.pod");
    let manifest = make_pod(&pod, 64, 2, true);
    let reference = format!("{}/pods/tamper:v1", reg.host());
    ok(&push(&pod, &reference, &[], &cache_env(dir.path())), "push");
    let rootfs = format!("sha256:{}", manifest.sections.rootfs.sha256);
    let blob = reg.blob_data(&rootfs);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[5000] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    let out = dir.path().join("out.pod");
    let fresh = tempfile::tempdir().unwrap();
    fails(
        &pull(&reference, &out, &[], &cache_env(fresh.path())),
        4,
        &[&rootfs],
        "tampered rootfs blob",
    );
    assert!(!out.exists(), "a refused pull left {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".out.pod"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn a_killed_pull_never_leaves_a_partial_pod() {
    let reg = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("big.pod");
    make_pod(&pod, 12 * 1024, 3, true); // 48 MiB of rootfs
    let reference = format!("{}/pods/big:v1", reg.host());
    ok(&push(&pod, &reference, &[], &cache_env(dir.path())), "push");
    let good = std::fs::read(&pod).unwrap();
    let out = dir.path().join("pulled.pod");
    let start = std::time::Instant::now();
    let fresh = tempfile::tempdir().unwrap();
    ok(
        &pull(&reference, &out, &[], &cache_env(fresh.path())),
        "pull",
    );
    let full = start.elapsed();
    std::fs::remove_file(&out).unwrap();
    let mut completed = 0;
    for i in 0..12u32 {
        let delay = full.mul_f64(f64::from(i) / 10.0);
        let cache = tempfile::tempdir().unwrap();
        let mut child = Command::new(HYPERBUILD)
            .args(["pull", &reference, "-o", out.to_str().unwrap(), "-q"])
            .env("HYPERBUILD_CACHE", cache.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        match std::fs::read(&out) {
            Ok(bytes) => {
                assert!(
                    bytes == good,
                    "kill after {delay:?} left a pod that differs"
                );
                completed += 1;
                std::fs::remove_file(&out).unwrap();
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        }
    }
    eprintln!("killed pulls: {completed} of 12 completed before their kill (full pull {full:?})");
    assert!(completed < 12, "no kill landed before the end of a pull");
}

#[test]
fn push_and_pull_with_htpasswd_auth() {
    let reg = Registry::start_with_auth("shipper", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("app.pod");
    make_pod(&pod, 32, 4, false);
    let reference = format!("{}/pods/private:v1", reg.host());
    let cache = cache_env(dir.path());
    fails(
        &push(&pod, &reference, &[], &cache),
        5,
        &["authentication"],
        "push without credentials",
    );
    fails(
        &push(&pod, &reference, &["--creds", "shipper:wrong"], &cache),
        5,
        &["authentication"],
        "push with a wrong password",
    );
    ok(
        &push(&pod, &reference, &["--creds", "shipper:s3cret"], &cache),
        "push with --creds",
    );
    let out = dir.path().join("pulled.pod");
    let fresh = tempfile::tempdir().unwrap();
    fails(
        &pull(&reference, &out, &[], &cache_env(fresh.path())),
        5,
        &["authentication"],
        "pull without credentials",
    );
    // Credentials from $DOCKER_CONFIG/config.json, as docker login writes them.
    let docker = dir.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = "c2hpcHBlcjpzM2NyZXQ="; // base64("shipper:s3cret")
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let status = Command::new(HYPERBUILD)
        .args(["pull", &reference, "-o", out.to_str().unwrap(), "-q"])
        .env("HYPERBUILD_CACHE", cache_env(fresh.path()))
        .env("DOCKER_CONFIG", &docker)
        .output()
        .unwrap();
    ok(&status, "pull with $DOCKER_CONFIG");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&pod).unwrap());
}
