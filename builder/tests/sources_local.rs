//! Image sources that need no network: OCI layouts and `docker save` archives (made by skopeo),
//! and hostile inputs to both.

mod sources_support;

use std::path::Path;

use builder::image::config::{ConfigError, Platform};
use builder::image::digest::DigestError;
use builder::image::docker_archive::DockerArchiveError;
use builder::image::manifest::ManifestError;
use builder::image::oci_layout::OciLayoutError;
use builder::image::{Compression, FetchOptions, FetchedImage, SourceError, resolve_and_fetch};
use serde_json::json;
use sources_support::*;

fn opts() -> FetchOptions {
    FetchOptions {
        quiet: true,
        ..FetchOptions::default()
    }
}

fn fetch(r: &str) -> Result<FetchedImage, SourceError> {
    resolve_and_fetch(r, &opts())
}

fn oci(dir: &Path, name: &str) -> String {
    format!("oci:{}:{name}", dir.display())
}

fn check_standard(img: &FetchedImage, arch_tag: &str) {
    let spec = img.config.run_spec();
    assert_eq!(spec.entrypoint, ["/bin/app"]);
    assert_eq!(spec.cmd, ["--serve", "8080"]);
    assert_eq!(spec.env, ["PATH=/usr/bin:/bin", "GREETING=hi"]);
    assert_eq!(spec.working_dir, "/srv");
    assert_eq!(spec.user, "1000:1000");
    assert_eq!(spec.stop_signal, "SIGINT");
    assert_eq!(spec.exposed_ports, ["8080/tcp"]);
    assert_eq!(spec.labels["org.example.name"], "fixture");
    assert_eq!(img.config.created.as_deref(), Some("2024-05-06T07:08:09Z"));
    let want: Vec<String> = standard_layers(arch_tag)
        .iter()
        .map(|l| sha256(l))
        .collect();
    let got: Vec<String> = img.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(got, want);
}

#[test]
fn oci_layout_by_name() {
    let t = tempfile::tempdir().unwrap();
    let m = standard_layout(t.path());
    let img = fetch(&oci(t.path(), "v1")).unwrap();
    check_standard(&img, "amd64");
    assert_eq!(img.manifest_digest.as_ref().unwrap().to_string(), m.digest);
    assert_eq!(img.layers.len(), 2);
    for l in &img.layers {
        assert_eq!(l.compression, Compression::Gzip);
        assert_eq!(l.offset, 0);
        assert_eq!(std::fs::metadata(&l.blob).unwrap().len(), l.size);
        assert!(l.blob.starts_with(t.path().join("blobs/sha256")));
        assert_eq!(sha256(&std::fs::read(&l.blob).unwrap()), l.digest);
    }
    // The only image is also found without a name.
    let again = fetch(&format!("oci:{}", t.path().display())).unwrap();
    assert_eq!(
        again,
        FetchedImage {
            reference: again.reference.clone(),
            ..img
        }
    );
}

#[test]
fn oci_layout_multi_platform() {
    let t = tempfile::tempdir().unwrap();
    let (_, arm, amd) = multi_platform_layout(t.path());
    let img = fetch(&oci(t.path(), "multi")).unwrap();
    assert_eq!(
        img.manifest_digest.as_ref().unwrap().to_string(),
        amd.digest
    );
    check_standard(&img, "amd64");
    let mut o = opts();
    o.platform = Platform::parse("linux/arm64").unwrap();
    let img = resolve_and_fetch(&oci(t.path(), "multi"), &o).unwrap();
    assert_eq!(img.manifest_digest.unwrap().to_string(), arm.digest);
    assert_eq!(img.config.architecture, "arm64");
}

#[test]
fn docker_archive_from_skopeo_matches_oci_layout() {
    let t = tempfile::tempdir().unwrap();
    standard_layout(t.path());
    let archive = t.path().join("img.tar");
    let out = std::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--quiet"])
        .arg(oci(t.path(), "v1"))
        .arg(format!("docker-archive:{}:hyper/app:v1", archive.display()))
        .output()
        .expect("run skopeo (install the skopeo package)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_oci = fetch(&oci(t.path(), "v1")).unwrap();
    for r in [
        format!("docker-archive:{}", archive.display()),
        format!("docker-archive:{}:hyper/app:v1", archive.display()),
    ] {
        let from_archive = fetch(&r).unwrap();
        check_standard(&from_archive, "amd64");
        assert_eq!(from_archive.config, from_oci.config);
        assert_eq!(from_archive.manifest_digest, None);
        for l in &from_archive.layers {
            assert_eq!(l.compression, Compression::None);
            assert_eq!(
                l.digest, l.diff_id,
                "docker-archive layers are uncompressed"
            );
            assert_eq!(l.blob, archive);
            assert!(l.offset > 0 && l.offset % 512 == 0);
            let bytes = std::fs::read(&archive).unwrap();
            let range = &bytes[l.offset as usize..(l.offset + l.size) as usize];
            assert_eq!(sha256(range), l.diff_id);
        }
    }
    let e = fetch(&format!("docker-archive:{}:other:v9", archive.display())).unwrap_err();
    assert!(
        matches!(
            e,
            SourceError::DockerArchive(DockerArchiveError::NoRef { .. })
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------- hostile OCI layouts

fn expect_oci(r: &str, check: impl Fn(&OciLayoutError) -> bool) -> String {
    match fetch(r) {
        Err(SourceError::OciLayout(e)) => {
            assert!(check(&e), "unexpected error: {e:?}");
            eprintln!("error (as expected): {e}");
            e.to_string()
        }
        other => panic!("expected an OCI layout error, got {other:?}"),
    }
}

#[test]
fn hostile_bad_layout_version() {
    let t = tempfile::tempdir().unwrap();
    standard_layout(t.path());
    std::fs::write(
        t.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    let msg = expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::Version(_))
    });
    assert!(msg.contains("2.0.0"));
    std::fs::remove_file(t.path().join("oci-layout")).unwrap();
    expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::NotLayout(_))
    });
}

#[test]
fn hostile_malformed_index_json() {
    let t = tempfile::tempdir().unwrap();
    standard_layout(t.path());
    std::fs::write(
        t.path().join("index.json"),
        b"{\"schemaVersion\":2,\"manifests\":[",
    )
    .unwrap();
    expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::Manifest(ManifestError::Json { .. }))
    });
}

#[test]
fn hostile_digest_with_path_traversal() {
    let t = tempfile::tempdir().unwrap();
    standard_layout(t.path());
    for bad in [
        "sha256:../../../../etc/passwd",
        "sha256:aaaa/../../bbbb",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    ] {
        write_index(
            t.path(),
            vec![json!({"mediaType": OCI_MANIFEST, "digest": bad, "size": 10,
                "annotations": {"org.opencontainers.image.ref.name": "v1"}})],
        );
        let msg = expect_oci(&oci(t.path(), "v1"), |e| {
            matches!(e, OciLayoutError::Manifest(ManifestError::Json { .. }))
        });
        assert!(msg.contains("invalid digest"), "{msg}");
    }
}

#[test]
fn hostile_tampered_and_truncated_layer() {
    let t = tempfile::tempdir().unwrap();
    let m = standard_layout(t.path());
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(t.path().join("blobs/sha256").join(m.hex())).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let path = t.path().join("blobs/sha256").join(&layer[7..]);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 5] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    let msg = expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::Verify(DigestError::Mismatch { .. }))
    });
    assert!(msg.contains(&layer), "{msg}");
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    let msg = expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::Verify(DigestError::SizeMismatch { .. }))
    });
    assert!(msg.contains(&layer), "{msg}");
    std::fs::remove_file(&path).unwrap();
    expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::MissingBlob(_))
    });
}

#[test]
fn hostile_tampered_config_and_manifest() {
    let t = tempfile::tempdir().unwrap();
    let m = standard_layout(t.path());
    let mpath = t.path().join("blobs/sha256").join(m.hex());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    let cpath = t.path().join("blobs/sha256").join(&config[7..]);
    let good = std::fs::read(&cpath).unwrap();
    std::fs::write(
        &cpath,
        String::from_utf8(good.clone())
            .unwrap()
            .replace("SIGINT", "SIGKIL"),
    )
    .unwrap();
    let msg = expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::Verify(DigestError::Mismatch { .. }))
    });
    assert!(msg.contains(&config), "{msg}");
    std::fs::write(&cpath, &good).unwrap();
    let mut mb = std::fs::read(&mpath).unwrap();
    mb[0] = b' ';
    std::fs::write(&mpath, &mb).unwrap();
    let msg = expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::Verify(DigestError::Mismatch { .. }))
    });
    assert!(msg.contains(&m.digest), "{msg}");
}

fn layout_with_layer(dir: &Path, layer: serde_json::Value, arch: &str) {
    let diff = sha256(b"x");
    let config = serde_json::to_vec(&config_json(arch, &[diff])).unwrap();
    let cd = put_blob(dir, OCI_CONFIG, &config);
    let m = write_manifest(dir, &cd.json(), vec![layer]);
    write_index(dir, vec![named(&m, "v1")]);
}

#[test]
fn hostile_layer_urls_foreign_and_unknown_types() {
    let t = tempfile::tempdir().unwrap();
    let blob = put_blob(t.path(), LAYER_TAR, &tar(&[Entry::File("a", b"a")]));
    let mut with_urls = blob.json();
    with_urls["urls"] = json!(["http://169.254.169.254/latest/meta-data"]);
    layout_with_layer(t.path(), with_urls, "amd64");
    let msg = expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::Manifest(ManifestError::LayerUrls { .. }))
    });
    assert!(msg.contains(&blob.digest), "{msg}");

    let mut foreign = blob.json();
    foreign["mediaType"] = json!("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip");
    foreign["urls"] = json!(["https://example.invalid/layer"]);
    layout_with_layer(t.path(), foreign, "amd64");
    expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(
            e,
            OciLayoutError::Manifest(ManifestError::ForeignLayer { .. })
        )
    });

    let mut unknown = blob.json();
    unknown["mediaType"] = json!("application/x-shellscript");
    layout_with_layer(t.path(), unknown, "amd64");
    let msg = expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(
            e,
            OciLayoutError::Manifest(ManifestError::LayerMediaType { .. })
        )
    });
    assert!(msg.contains("application/x-shellscript"), "{msg}");
}

#[test]
fn hostile_wrong_config_platform() {
    let t = tempfile::tempdir().unwrap();
    let layer = tar(&[Entry::File("a", b"a")]);
    let m = write_image(
        t.path(),
        &ImageSpec {
            arch: "arm64".into(),
            layers: vec![layer],
            gzip: false,
        },
    );
    write_index(t.path(), vec![named(&m, "v1")]);
    let msg = expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::Config(ConfigError::Platform { .. }))
    });
    assert!(
        msg.contains("linux/arm64") && msg.contains("wanted linux/amd64"),
        "{msg}"
    );
}

#[test]
fn hostile_index_without_amd64() {
    let t = tempfile::tempdir().unwrap();
    let arm = write_image(
        t.path(),
        &ImageSpec {
            arch: "arm64".into(),
            layers: standard_layers("arm64"),
            gzip: true,
        },
    );
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [with_platform(&arm, "arm64")]});
    let id = put_blob(t.path(), OCI_INDEX, &serde_json::to_vec(&idx).unwrap());
    write_index(t.path(), vec![named(&id, "multi")]);
    let msg = expect_oci(&oci(t.path(), "multi"), |e| {
        matches!(
            e,
            OciLayoutError::Manifest(ManifestError::NoPlatform { .. })
        )
    });
    assert!(
        msg.contains("linux/amd64") && msg.contains("linux/arm64"),
        "{msg}"
    );
}

#[test]
fn hostile_oversize_manifest() {
    let t = tempfile::tempdir().unwrap();
    let big = vec![b' '; 5 << 20];
    let d = put_blob(t.path(), OCI_MANIFEST, &big);
    write_index(t.path(), vec![named(&d, "v1")]);
    let msg = expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::Manifest(ManifestError::TooLarge { .. }))
    });
    assert!(msg.contains("limit"), "{msg}");
}

#[test]
fn hostile_manifest_index_confusion_and_bad_ref() {
    let t = tempfile::tempdir().unwrap();
    let m = standard_layout(t.path());
    // index.json claims the manifest is an index.
    let mut v = named(&m, "v1");
    v["mediaType"] = json!(OCI_INDEX);
    write_index(t.path(), vec![v]);
    expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(e, OciLayoutError::Manifest(ManifestError::Confusion { .. }))
    });
    write_index(t.path(), vec![named(&m, "v1")]);
    let msg = expect_oci(&oci(t.path(), "nope"), |e| {
        matches!(e, OciLayoutError::NoRef { .. })
    });
    assert!(msg.contains("v1"), "{msg}");
}

#[test]
fn hostile_layer_count_differs_from_diff_ids() {
    let t = tempfile::tempdir().unwrap();
    let blob = put_blob(t.path(), LAYER_TAR, &tar(&[Entry::File("a", b"a")]));
    let config = serde_json::to_vec(&config_json("amd64", &[])).unwrap();
    let cd = put_blob(t.path(), OCI_CONFIG, &config);
    let m = write_manifest(t.path(), &cd.json(), vec![blob.json()]);
    write_index(t.path(), vec![named(&m, "v1")]);
    expect_oci(&oci(t.path(), "v1"), |e| {
        matches!(
            e,
            OciLayoutError::Manifest(ManifestError::LayerCount { .. })
        )
    });
}

// ---------------------------------------------------------------- hostile docker archives

fn archive(dir: &Path, members: &[(&str, &[u8], u8, &str)]) -> String {
    let p = dir.join("a.tar");
    std::fs::write(&p, tar_raw(members)).unwrap();
    format!("docker-archive:{}", p.display())
}

fn expect_archive(r: &str, check: impl Fn(&DockerArchiveError) -> bool) -> String {
    match fetch(r) {
        Err(SourceError::DockerArchive(e)) => {
            assert!(check(&e), "unexpected error: {e:?}");
            eprintln!("error (as expected): {e}");
            e.to_string()
        }
        other => panic!("expected a docker archive error, got {other:?}"),
    }
}

fn archive_parts() -> (Vec<u8>, Vec<u8>) {
    let layer = tar(&[Entry::File("hello", b"hi\n")]);
    let config = serde_json::to_vec(&config_json("amd64", &[sha256(&layer)])).unwrap();
    (layer, config)
}

#[test]
fn docker_archive_legacy_and_symlinked_layouts() {
    let t = tempfile::tempdir().unwrap();
    let (layer, config) = archive_parts();
    let lhex = &sha256(&layer)[7..];
    let mj = r#"[{"Config":"cfg.json","RepoTags":["a:b"],"Layers":["abc/layer.tar"]}]"#;
    let r = archive(
        t.path(),
        &[
            ("cfg.json", &config, b'0', ""),
            ("abc/layer.tar", &layer, b'0', ""),
            ("manifest.json", mj.as_bytes(), b'0', ""),
        ],
    );
    let img = fetch(&r).unwrap();
    assert_eq!(img.layers[0].diff_id, sha256(&layer));
    // Newer docker save: blobs/sha256 files, legacy paths as symlinks.
    let blob_path = format!("blobs/sha256/{lhex}");
    let mj = r#"[{"Config":"cfg.json","RepoTags":null,"Layers":["abc/layer.tar"]}]"#;
    let r = archive(
        t.path(),
        &[
            ("cfg.json", &config, b'0', ""),
            (&blob_path, &layer, b'0', ""),
            ("abc/layer.tar", b"", b'2', &format!("../{blob_path}")),
            ("manifest.json", mj.as_bytes(), b'0', ""),
        ],
    );
    let img2 = fetch(&r).unwrap();
    assert_eq!(img2.layers[0].diff_id, img.layers[0].diff_id);
    assert_eq!(img2.config, img.config);
}

#[test]
fn hostile_docker_archive_paths() {
    let t = tempfile::tempdir().unwrap();
    let (layer, config) = archive_parts();
    for (layer_path, extra_name, extra_link, want) in [
        ("../../etc/passwd", "", "", "outside"),
        ("/etc/passwd", "", "", "outside"),
        ("x/../../layer.tar", "", "", "outside"),
        ("missing.tar", "", "", "missing"),
        ("evil.tar", "evil.tar", "../../../etc/shadow", "outside"),
        ("abs.tar", "abs.tar", "/etc/shadow", "outside"),
    ] {
        let mj = format!(r#"[{{"Config":"cfg.json","Layers":["{layer_path}"]}}]"#);
        let mut members: Vec<(&str, &[u8], u8, &str)> = vec![
            ("cfg.json", &config, b'0', ""),
            ("l.tar", &layer, b'0', ""),
            ("manifest.json", mj.as_bytes(), b'0', ""),
        ];
        if !extra_name.is_empty() {
            members.push((extra_name, b"", b'2', extra_link));
        }
        let r = archive(t.path(), &members);
        let msg = expect_archive(&r, |e| match want {
            "outside" => matches!(e, DockerArchiveError::Outside(_)),
            _ => matches!(e, DockerArchiveError::Missing(_)),
        });
        assert!(
            msg.contains(want) || msg.contains("leaves"),
            "{layer_path}: {msg}"
        );
    }
    // Config path outside too.
    let mj = r#"[{"Config":"../cfg.json","Layers":["l.tar"]}]"#;
    let r = archive(
        t.path(),
        &[
            ("l.tar", &layer, b'0', ""),
            ("manifest.json", mj.as_bytes(), b'0', ""),
        ],
    );
    expect_archive(&r, |e| matches!(e, DockerArchiveError::Outside(_)));
}

#[test]
fn hostile_docker_archive_contents() {
    let t = tempfile::tempdir().unwrap();
    let (layer, config) = archive_parts();
    // Layer bytes that do not match the config's diff_id.
    let other = tar(&[Entry::File("hello", b"HI\n")]);
    let mj = r#"[{"Config":"cfg.json","Layers":["l.tar"]}]"#;
    let r = archive(
        t.path(),
        &[
            ("cfg.json", &config, b'0', ""),
            ("l.tar", &other, b'0', ""),
            ("manifest.json", mj.as_bytes(), b'0', ""),
        ],
    );
    let msg = expect_archive(&r, |e| matches!(e, DockerArchiveError::DiffId { .. }));
    assert!(msg.contains(&sha256(&layer)), "{msg}");
    // No manifest.json.
    let r = archive(t.path(), &[("cfg.json", &config, b'0', "")]);
    expect_archive(&r, |e| matches!(e, DockerArchiveError::NoManifest));
    // Malformed manifest.json.
    let r = archive(t.path(), &[("manifest.json", b"{not json", b'0', "")]);
    expect_archive(&r, |e| matches!(e, DockerArchiveError::ManifestJson(_)));
    // Truncated archive.
    let full = tar_raw(&[
        ("manifest.json", mj.as_bytes(), b'0', ""),
        ("l.tar", &layer, b'0', ""),
    ]);
    let p = t.path().join("trunc.tar");
    std::fs::write(&p, &full[..700]).unwrap();
    expect_archive(&format!("docker-archive:{}", p.display()), |e| {
        matches!(e, DockerArchiveError::Tar { .. })
    });
    // Config for the wrong architecture.
    let arm = serde_json::to_vec(&config_json("arm64", &[sha256(&layer)])).unwrap();
    let r = archive(
        t.path(),
        &[
            ("cfg.json", &arm, b'0', ""),
            ("l.tar", &layer, b'0', ""),
            ("manifest.json", mj.as_bytes(), b'0', ""),
        ],
    );
    expect_archive(&r, |e| {
        matches!(e, DockerArchiveError::Config(ConfigError::Platform { .. }))
    });
}

#[test]
fn umoci_image_from_fixture_script() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    let layout = t.path().join("layout");
    let archive = t.path().join("img.tar");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sources-make-image.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&root)
        .arg(&layout)
        .arg("hello")
        .arg("--archive")
        .arg(&archive)
        .args(["--", "/bin/hello", "world"])
        .output()
        .expect("run sources-make-image.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = fetch(&oci(&layout, "hello")).unwrap();
    let b = fetch(&format!("docker-archive:{}", archive.display())).unwrap();
    assert_eq!(a.config.run_spec().entrypoint, ["/bin/hello", "world"]);
    assert_eq!(a.config, b.config);
    assert_eq!(a.layers.len(), 1);
    assert_eq!(a.layers[0].diff_id, b.layers[0].diff_id);
}
