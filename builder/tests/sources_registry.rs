//! Registry pulls against a real `docker-registry` on 127.0.0.1 (started by each test), with
//! images pushed by skopeo: tags, digests, multi-platform indexes, auth, the offline cache,
//! agreement of the three sources, and tampered registry storage.

#[allow(dead_code)]
#[path = "../../tests/src/registry.rs"]
mod registry;
mod sources_support;

use std::path::Path;

use builder::image::cache::CacheError;
use builder::image::config::Platform;
use builder::image::decompress::Limits;
use builder::image::digest::DigestError;
use builder::image::flatten::flatten;
use builder::image::manifest::ManifestError;
use builder::image::registry::RegistryError;
use builder::image::{FetchOptions, FetchedImage, SourceError, resolve_and_fetch};
use registry::{Registry, skopeo_copy};
use serde_json::json;
use sources_support::*;

fn opts(cache: &Path) -> FetchOptions {
    FetchOptions {
        quiet: true,
        cache_root: Some(cache.to_path_buf()),
        ..FetchOptions::default()
    }
}

fn diff_ids(img: &FetchedImage) -> Vec<String> {
    img.layers.iter().map(|l| l.diff_id.clone()).collect()
}

fn expect_registry(
    r: Result<FetchedImage, SourceError>,
    check: impl Fn(&RegistryError) -> bool,
) -> String {
    match r {
        Err(SourceError::Registry(e)) => {
            assert!(check(&e), "unexpected error: {e:?}");
            eprintln!("error (as expected): {e}");
            e.to_string()
        }
        other => panic!("expected a registry error, got {other:?}"),
    }
}

/// A registry with the standard image pushed as `hyper/app:v1`.
fn registry_with_standard(t: &tempfile::TempDir) -> Registry {
    let layout = t.path().join("layout");
    standard_layout(&layout);
    let reg = Registry::start();
    reg.push(
        &format!("oci:{}:v1", layout.display()),
        "hyper/app:v1",
        false,
    );
    reg
}

fn manifest_of(cache: &Path, img: &FetchedImage) -> serde_json::Value {
    let d = img.manifest_digest.as_ref().unwrap();
    serde_json::from_slice(&std::fs::read(cache.join("blobs/sha256").join(d.hex())).unwrap())
        .unwrap()
}

#[test]
fn pull_by_tag_and_by_digest() {
    let t = tempfile::tempdir().unwrap();
    let reg = registry_with_standard(&t);
    let cache = t.path().join("cache");
    let r = format!("{}/hyper/app:v1", reg.host());
    let img = resolve_and_fetch(&r, &opts(&cache)).unwrap();
    assert_eq!(img.reference, format!("docker://{r}"));
    assert_eq!(img.config.run_spec().entrypoint, ["/bin/app"]);
    let want: Vec<String> = standard_layers("amd64").iter().map(|l| sha256(l)).collect();
    assert_eq!(diff_ids(&img), want);
    for l in &img.layers {
        assert!(
            l.blob.starts_with(cache.join("blobs/sha256")),
            "{:?}",
            l.blob
        );
        assert_eq!(sha256(&std::fs::read(&l.blob).unwrap()), l.digest);
    }
    // The manifest and the tag are cached for offline use.
    assert_eq!(manifest_of(&cache, &img)["schemaVersion"], 2);
    let digest = img.manifest_digest.clone().unwrap();
    let by_digest = format!("{}/hyper/app@{digest}", reg.host());
    let img2 = resolve_and_fetch(&by_digest, &opts(&t.path().join("cache2"))).unwrap();
    assert_eq!(img2.manifest_digest, Some(digest));
    assert_eq!(img2.config, img.config);
    assert_eq!(diff_ids(&img2), want);
    // An unknown tag and a digest the registry does not have.
    expect_registry(
        resolve_and_fetch(&format!("{}/hyper/app:nope", reg.host()), &opts(&cache)),
        |e| matches!(e, RegistryError::NotFound { .. }),
    );
    let missing = format!("{}/hyper/app@sha256:{}", reg.host(), "ab".repeat(32));
    expect_registry(resolve_and_fetch(&missing, &opts(&cache)), |e| {
        matches!(e, RegistryError::NotFound { .. })
    });
}

#[test]
fn docker_schema2_manifest_and_manifest_list() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    standard_layout(&layout);
    let multi = t.path().join("multi");
    multi_platform_layout(&multi);
    let reg = Registry::start();
    reg.push_with(
        &format!("oci:{}:v1", layout.display()),
        "hyper/d2:1",
        &["--format", "v2s2"],
    );
    reg.push_with(
        &format!("oci:{}:multi", multi.display()),
        "hyper/d2:multi",
        &["--all", "--format", "v2s2"],
    );
    let cache = t.path().join("cache");
    let img = resolve_and_fetch(&format!("{}/hyper/d2:1", reg.host()), &opts(&cache)).unwrap();
    let m = manifest_of(&cache, &img);
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    for l in &img.layers {
        assert_eq!(
            l.media_type,
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert_eq!(l.compression, builder::image::Compression::Gzip);
    }
    let want: Vec<String> = standard_layers("amd64").iter().map(|l| sha256(l)).collect();
    assert_eq!(diff_ids(&img), want);
    let r = format!("{}/hyper/d2:multi", reg.host());
    let img = resolve_and_fetch(&r, &opts(&cache)).unwrap();
    assert_eq!(img.config.architecture, "amd64");
    assert_eq!(diff_ids(&img), want);
    // The tag names the manifest list.
    let top = std::fs::read_to_string(
        cache
            .join("refs")
            .join(reg.host())
            .join("hyper/d2/_tags/multi"),
    )
    .unwrap();
    let top: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cache.join("blobs/sha256").join(&top.trim()[7..])).unwrap(),
    )
    .unwrap();
    assert_eq!(
        top["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
}

#[test]
fn multi_platform_index_resolves_to_amd64_or_platform() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let (_, _, _) = multi_platform_layout(&layout);
    let reg = Registry::start();
    reg.push(
        &format!("oci:{}:multi", layout.display()),
        "hyper/multi:1",
        true,
    );
    let r = format!("{}/hyper/multi:1", reg.host());
    let cache = t.path().join("cache");
    let img = resolve_and_fetch(&r, &opts(&cache)).unwrap();
    assert_eq!(img.config.architecture, "amd64");
    let want: Vec<String> = standard_layers("amd64").iter().map(|l| sha256(l)).collect();
    assert_eq!(diff_ids(&img), want);
    let mut o = opts(&cache);
    o.platform = Platform::parse("linux/arm64").unwrap();
    let arm = resolve_and_fetch(&r, &o).unwrap();
    assert_eq!(arm.config.architecture, "arm64");
    assert_ne!(arm.manifest_digest, img.manifest_digest);
    o.platform = Platform::parse("linux/riscv64").unwrap();
    let msg = expect_registry(resolve_and_fetch(&r, &o), |e| {
        matches!(e, RegistryError::Manifest(ManifestError::NoPlatform { .. }))
    });
    assert!(msg.contains("linux/riscv64"), "{msg}");
}

#[test]
fn hostile_index_without_amd64_in_registry() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let arm = write_image(
        &layout,
        &ImageSpec {
            arch: "arm64".into(),
            layers: standard_layers("arm64"),
            gzip: true,
        },
    );
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [with_platform(&arm, "arm64")]});
    let id = put_blob(&layout, OCI_INDEX, &serde_json::to_vec(&idx).unwrap());
    write_index(&layout, vec![named(&id, "arm")]);
    let reg = Registry::start();
    reg.push(
        &format!("oci:{}:arm", layout.display()),
        "hyper/arm:1",
        true,
    );
    let r = format!("{}/hyper/arm:1", reg.host());
    let msg = expect_registry(resolve_and_fetch(&r, &opts(&t.path().join("c"))), |e| {
        matches!(e, RegistryError::Manifest(ManifestError::NoPlatform { .. }))
    });
    assert!(
        msg.contains("linux/amd64") && msg.contains("linux/arm64"),
        "{msg}"
    );
}

#[test]
fn auth_anonymous_creds_and_authfile() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    standard_layout(&layout);
    let reg = Registry::start_with_auth("hyper", "s3cret:pw");
    reg.push(
        &format!("oci:{}:v1", layout.display()),
        "hyper/app:v1",
        false,
    );
    let r = format!("{}/hyper/app:v1", reg.host());
    let cache = t.path().join("cache");
    // Anonymous: refused, naming the registry. An empty authfile keeps ~/.docker out of it.
    let empty = t.path().join("empty.json");
    std::fs::write(&empty, br#"{"auths":{}}"#).unwrap();
    let mut o = opts(&cache);
    o.authfile = Some(empty.clone());
    let msg = expect_registry(resolve_and_fetch(&r, &o), |e| {
        matches!(e, RegistryError::Unauthorized { .. })
    });
    assert!(msg.contains(&reg.host()), "{msg}");
    // Wrong password.
    o.creds = Some("hyper:wrong".into());
    expect_registry(resolve_and_fetch(&r, &o), |e| {
        matches!(e, RegistryError::Unauthorized { .. })
    });
    // --creds.
    o.creds = Some("hyper:s3cret:pw".into());
    let img = resolve_and_fetch(&r, &o).unwrap();
    assert_eq!(img.layers.len(), 2);
    // A docker config.json-style authfile (fresh cache, so blobs really come over the wire).
    let authfile = t.path().join("config.json");
    std::fs::write(
        &authfile,
        serde_json::to_vec(&json!({"auths": {
            format!("http://{}", reg.host()): {"auth": "aHlwZXI6czNjcmV0OnB3"}
        }}))
        .unwrap(),
    )
    .unwrap();
    let mut o = opts(&t.path().join("cache2"));
    o.authfile = Some(authfile);
    let img2 = resolve_and_fetch(&r, &o).unwrap();
    assert_eq!(diff_ids(&img2), diff_ids(&img));
}

#[test]
fn token_auth() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    standard_layout(&layout);
    let reg = Registry::start_with_token_auth("tok", "en");
    reg.push(
        &format!("oci:{}:v1", layout.display()),
        "hyper/app:v1",
        false,
    );
    let r = format!("{}/hyper/app:v1", reg.host());
    let empty = t.path().join("empty.json");
    std::fs::write(&empty, br#"{"auths":{}}"#).unwrap();
    let mut o = opts(&t.path().join("cache"));
    o.authfile = Some(empty);
    let msg = expect_registry(resolve_and_fetch(&r, &o), |e| {
        matches!(e, RegistryError::Unauthorized { .. })
    });
    assert!(msg.contains(&reg.host()), "{msg}");
    o.creds = Some("tok:wrong".into());
    expect_registry(resolve_and_fetch(&r, &o), |e| {
        matches!(e, RegistryError::Unauthorized { .. })
    });
    o.creds = Some("tok:en".into());
    let img = resolve_and_fetch(&r, &o).unwrap();
    let want: Vec<String> = standard_layers("amd64").iter().map(|l| sha256(l)).collect();
    assert_eq!(diff_ids(&img), want);
}

#[test]
fn three_sources_agree() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    standard_layout(&layout);
    let archive = t.path().join("img.tar");
    skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker-archive:{}:hyper/app:v1", archive.display()),
    );
    let reg = Registry::start();
    reg.push(
        &format!("oci:{}:v1", layout.display()),
        "hyper/app:v1",
        false,
    );
    let o = opts(&t.path().join("cache"));
    let a = resolve_and_fetch(&format!("oci:{}:v1", layout.display()), &o).unwrap();
    let b = resolve_and_fetch(&format!("docker-archive:{}", archive.display()), &o).unwrap();
    let c = resolve_and_fetch(&format!("{}/hyper/app:v1", reg.host()), &o).unwrap();
    assert_eq!(a.config, b.config);
    assert_eq!(a.config, c.config);
    assert_eq!(a.config.run_spec(), c.config.run_spec());
    assert_eq!(diff_ids(&a), diff_ids(&b));
    assert_eq!(diff_ids(&a), diff_ids(&c));
    assert_eq!(a.config_digest, c.config_digest);
    // The layers flatten to the same tree from every source.
    let limits = Limits::default();
    let ta = flatten(&a.layers, &limits).unwrap();
    assert_eq!(ta, flatten(&b.layers, &limits).unwrap());
    assert_eq!(ta, flatten(&c.layers, &limits).unwrap());
}

#[test]
fn two_builds_fill_one_cache_at_once() {
    let t = tempfile::tempdir().unwrap();
    let reg = registry_with_standard(&t);
    let r = format!("{}/hyper/app:v1", reg.host());
    let cache = t.path().join("cache");
    let results: Vec<FetchedImage> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| resolve_and_fetch(&r, &opts(&cache)).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    for l in &results[0].layers {
        assert_eq!(sha256(&std::fs::read(&l.blob).unwrap()), l.digest);
    }
    let names: Vec<String> = std::fs::read_dir(cache.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
}

#[test]
fn offline_second_build_and_corrupt_cache() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = registry_with_standard(&t);
    let r = format!("{}/hyper/app:v1", reg.host());
    let cache = t.path().join("cache");
    let online = resolve_and_fetch(&r, &opts(&cache)).unwrap();
    // Corrupt a cached layer: an online build re-verifies and fetches it again.
    let victim = online.layers[1].blob.clone();
    std::fs::write(&victim, b"garbage").unwrap();
    let again = resolve_and_fetch(&r, &opts(&cache)).unwrap();
    assert_eq!(again, online);
    assert_eq!(
        sha256(&std::fs::read(&victim).unwrap()),
        online.layers[1].digest
    );
    // Registry gone: offline works from the cache alone.
    reg.stop();
    let mut o = opts(&cache);
    o.offline = true;
    let offline = resolve_and_fetch(&r, &o).unwrap();
    assert_eq!(offline, online);
    // Without --offline the registry is needed (and its absence is a clear error).
    expect_registry(resolve_and_fetch(&r, &opts(&cache)), |e| {
        matches!(e, RegistryError::Request { .. })
    });
    // Offline with a corrupt layer: a clear error, the entry is dropped.
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&victim, &bytes).unwrap();
    let msg = expect_registry(resolve_and_fetch(&r, &o), |e| {
        matches!(e, RegistryError::Cache(CacheError::CorruptOffline { .. }))
    });
    assert!(msg.contains(&online.layers[1].digest), "{msg}");
    assert!(!victim.exists());
    // Offline with something never fetched.
    let msg = expect_registry(
        resolve_and_fetch(&format!("{}/hyper/app:v2", reg.host()), &o),
        |e| matches!(e, RegistryError::Cache(CacheError::NotCached { .. })),
    );
    assert!(msg.contains("hyper/app:v2"), "{msg}");
}

/// Pushes the standard image, fetches once into a throwaway cache to learn its digests, and
/// returns (registry, reference, image).
fn pushed(t: &tempfile::TempDir) -> (Registry, String, FetchedImage) {
    let reg = registry_with_standard(t);
    let r = format!("{}/hyper/app:v1", reg.host());
    let img = resolve_and_fetch(&r, &opts(&t.path().join("probe"))).unwrap();
    (reg, r, img)
}

#[test]
fn hostile_tampered_layer_in_registry() {
    let t = tempfile::tempdir().unwrap();
    let (reg, r, img) = pushed(&t);
    let layer = &img.layers[0];
    let data = reg.blob_data(&layer.digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&data, &bytes).unwrap();
    let cache = t.path().join("fresh");
    let msg = expect_registry(resolve_and_fetch(&r, &opts(&cache)), |e| {
        matches!(e, RegistryError::Verify(DigestError::Mismatch { .. }))
    });
    assert!(msg.contains(&layer.digest), "{msg}");
    // Nothing of the bad blob, and no tag, was cached.
    assert!(!cache.join("blobs/sha256").join(&layer.digest[7..]).exists());
    assert!(
        !cache
            .join("refs")
            .join(reg.host())
            .join("hyper/app/_tags/v1")
            .exists()
    );
    let leftovers = std::fs::read_dir(cache.join("blobs/sha256"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn hostile_missing_blob_in_registry() {
    let t = tempfile::tempdir().unwrap();
    let (reg, r, img) = pushed(&t);
    let layer = &img.layers[0];
    std::fs::remove_file(reg.blob_data(&layer.digest)).unwrap();
    let msg = expect_registry(resolve_and_fetch(&r, &opts(&t.path().join("fresh"))), |e| {
        matches!(e, RegistryError::NotFound { .. })
    });
    assert!(
        msg.contains(&layer.digest) && msg.contains(&reg.host()),
        "{msg}"
    );
}

#[test]
fn hostile_truncated_layer_in_registry() {
    let t = tempfile::tempdir().unwrap();
    let (reg, r, img) = pushed(&t);
    let layer = &img.layers[1];
    let data = reg.blob_data(&layer.digest);
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[..bytes.len() - 7]).unwrap();
    let msg = expect_registry(resolve_and_fetch(&r, &opts(&t.path().join("fresh"))), |e| {
        matches!(e, RegistryError::Verify(DigestError::SizeMismatch { .. }))
    });
    assert!(msg.contains(&layer.digest), "{msg}");
}

#[test]
fn hostile_tampered_config_in_registry() {
    let t = tempfile::tempdir().unwrap();
    let (reg, r, img) = pushed(&t);
    let data = reg.blob_data(&img.config_digest.to_string());
    let s = std::fs::read_to_string(&data)
        .unwrap()
        .replace("SIGINT", "SIGKIL");
    std::fs::write(&data, s).unwrap();
    let msg = expect_registry(resolve_and_fetch(&r, &opts(&t.path().join("fresh"))), |e| {
        matches!(e, RegistryError::Verify(DigestError::Mismatch { .. }))
    });
    assert!(msg.contains(&img.config_digest.to_string()), "{msg}");
}

#[test]
fn hostile_tampered_manifest_in_registry() {
    let t = tempfile::tempdir().unwrap();
    let (reg, r, img) = pushed(&t);
    let digest = img.manifest_digest.clone().unwrap();
    let data = reg.blob_data(&digest.to_string());
    let mut bytes = std::fs::read(&data).unwrap();
    bytes.extend_from_slice(b"\n ");
    std::fs::write(&data, &bytes).unwrap();
    // By tag: the registry's digest header no longer matches the bytes.
    let msg = expect_registry(resolve_and_fetch(&r, &opts(&t.path().join("a"))), |e| {
        matches!(e, RegistryError::ManifestDigest { .. })
    });
    assert!(msg.contains(&reg.host()), "{msg}");
    // By digest: the bytes do not hash to the digest asked for.
    let by_digest = format!("{}/hyper/app@{digest}", reg.host());
    let msg = expect_registry(
        resolve_and_fetch(&by_digest, &opts(&t.path().join("b"))),
        |e| matches!(e, RegistryError::ManifestDigest { .. }),
    );
    assert!(msg.contains(&digest.to_string()), "{msg}");
}

/// A fake registry on 127.0.0.1 (docker-registry itself will not serve a manifest over
/// 4 MiB): `/v2/` answers 200, HEADs 404, and a manifest GET gets `size` bytes of JSON
/// whitespace, with a Content-Length or chunked. Returns the port and how many bytes it managed
/// to send.
fn fake_registry(size: usize, chunked: bool) -> (u16, std::thread::JoinHandle<usize>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut sent = 0;
        // Never block forever if the client gives up early.
        l.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        for _ in 0..3 {
            let mut c = loop {
                match l.accept() {
                    Ok((c, _)) => break c,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    Err(e) => panic!("fake registry: no request: {e}"),
                }
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0);
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8_lossy(&req).to_string();
            if req.starts_with("GET /v2/ ") {
                let _ = c.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                );
                continue;
            }
            if req.starts_with("HEAD ") {
                let _ = c.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            assert!(req.starts_with("GET /v2/x/manifests/v1 "), "{req}");
            let head = if chunked {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                    .to_string()
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
            };
            if c.write_all(head.as_bytes()).is_err() {
                return sent;
            }
            let chunk = vec![b' '; 64 << 10];
            while sent < size {
                let ok = if chunked {
                    c.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .is_ok()
                        && c.write_all(&chunk).is_ok()
                        && c.write_all(b"\r\n").is_ok()
                } else {
                    c.write_all(&chunk).is_ok()
                };
                if !ok {
                    return sent;
                }
                sent += chunk.len();
            }
            let _ = c.write_all(b"0\r\n\r\n");
            return sent;
        }
        sent
    });
    (port, h)
}

#[test]
fn hostile_oversize_manifest_from_registry() {
    let t = tempfile::tempdir().unwrap();
    // Announced by Content-Length: refused before the body is read.
    let (port, h) = fake_registry(64 << 20, false);
    let r = format!("127.0.0.1:{port}/x:v1");
    let msg = expect_registry(
        resolve_and_fetch(&r, &opts(&t.path().join("a"))),
        |e| matches!(e, RegistryError::Manifest(ManifestError::TooLarge { size, .. }) if *size == 64 << 20),
    );
    assert!(msg.contains("limit"), "{msg}");
    let sent = h.join().unwrap();
    assert!(
        sent < 32 << 20,
        "the client kept reading: {sent} bytes sent"
    );
    // Chunked, no length: reading stops just past the cap.
    let (port, h) = fake_registry(64 << 20, true);
    let r = format!("127.0.0.1:{port}/x:v1");
    expect_registry(
        resolve_and_fetch(&r, &opts(&t.path().join("b"))),
        |e| matches!(e, RegistryError::Manifest(ManifestError::TooLarge { size, .. }) if *size <= (4 << 20) + (1 << 20)),
    );
    let sent = h.join().unwrap();
    assert!(
        sent < 32 << 20,
        "the client kept reading: {sent} bytes sent"
    );
}

#[test]
fn hostile_references() {
    let t = tempfile::tempdir().unwrap();
    let o = opts(&t.path().join("c"));
    for bad in [
        "127.0.0.1:5000/x@sha256:../../../etc/passwd",
        "127.0.0.1:5000/x/../../y:1",
        "127.0.0.1:5000/x:../../z",
    ] {
        match resolve_and_fetch(bad, &o) {
            Err(SourceError::Reference(_)) => {}
            other => panic!("{bad}: expected a reference error, got {other:?}"),
        }
    }
}

/// This machine's first IPv4 address that is not loopback (a registry there is reached over
/// HTTPS, as any registry not on loopback or listed insecure).
fn non_loopback_ipv4() -> Option<std::net::Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let cidr = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
        cidr.split('/').next()?.parse().ok()
    })
}

/// HTTPS, end to end through the TLS stack and its crypto provider (rustls with ring): a
/// registry whose certificate no trusted root signed (`openssl s_server` with a self-signed
/// one) is refused during the handshake with the registry's name and the reason, and nothing
/// is cached.
#[test]
fn https_registry_with_an_untrusted_certificate_is_refused() {
    const TEST: &str = "https_registry_with_an_untrusted_certificate_is_refused";
    let Some(ip) = non_loopback_ipv4() else {
        hyperpod_tests::skip::skipped(TEST, "no IPv4 address other than loopback");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (key, cert) = registry::self_signed(t.path(), "server", "hyperpod-test");
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-www", "-accept"])
        .arg(format!("{ip}:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect((ip, port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "openssl s_server did not listen on {ip}:{port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let cache = t.path().join("cache");
    let r = format!("{ip}:{port}/hyper/app:v1");
    let msg = expect_registry(resolve_and_fetch(&r, &opts(&cache)), |_| true);
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        msg.contains(&format!("{ip}:{port}")) && msg.contains("https://"),
        "{msg}"
    );
    assert!(msg.contains("certificate"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    if cache.exists() {
        let cached = registry::files_under(&cache);
        assert!(cached.is_empty(), "nothing cached: {cached:?}");
    }
}
