//! Small generated test images: tar layers written here, OCI layouts written from Rust.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A tar entry: a directory, or a regular file with contents.
pub enum Entry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
}

fn header(name: &str, typeflag: u8, size: u64, mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    assert!(name.len() < 100);
    h[..name.len()].copy_from_slice(name.as_bytes());
    let put = |h: &mut [u8; 512], off: usize, len: usize, v: u64| {
        let s = format!("{:0width$o}\0", v, width = len - 1);
        h[off..off + len].copy_from_slice(s.as_bytes());
    };
    put(&mut h, 100, 8, u64::from(mode));
    put(&mut h, 108, 8, 0);
    put(&mut h, 116, 8, 0);
    put(&mut h, 124, 12, size);
    put(&mut h, 136, 12, 1_700_000_000);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// A ustar archive of `entries`.
pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        match e {
            Entry::Dir(n) => out.extend_from_slice(&header(n, b'5', 0, 0o755)),
            Entry::File(n, data) => {
                out.extend_from_slice(&header(n, b'0', data.len() as u64, 0o644));
                out.extend_from_slice(data);
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Like [`tar`] but with raw members (name, bytes, typeflag, linkname) for hostile archives.
pub fn tar_raw(entries: &[(&str, &[u8], u8, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data, t, link) in entries {
        let mut h = header(name, *t, data.len() as u64, 0o644);
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        // Recompute the checksum after adding the link name.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// gzip via the system tool (deterministic with -n).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let t = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    t.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A descriptor as JSON plus its parts.
#[derive(Clone, Debug)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Desc {
    pub fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
    pub fn hex(&self) -> &str {
        &self.digest[7..]
    }
}

/// Writes a blob into `layout/blobs/sha256`.
pub fn put_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> Desc {
    let d = sha256(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&d[7..]), bytes).unwrap();
    Desc {
        media_type: media_type.into(),
        digest: d,
        size: bytes.len() as u64,
    }
}

/// What a generated image is made of.
pub struct ImageSpec {
    pub arch: String,
    pub layers: Vec<Vec<u8>>,
    pub gzip: bool,
}

/// The standard two-layer test image's layers (uncompressed tars).
pub fn standard_layers(tag: &str) -> Vec<Vec<u8>> {
    vec![
        tar(&[
            Entry::Dir("etc/"),
            Entry::File("etc/hello", b"hello from layer one\n"),
            Entry::Dir("bin/"),
            Entry::File("bin/app", b"#!/bin/sh\necho app\n"),
        ]),
        tar(&[
            Entry::Dir("etc/"),
            Entry::File(
                "etc/hello",
                format!("hello from layer two ({tag})\n").as_bytes(),
            ),
            Entry::File("etc/.wh.gone", b""),
        ]),
    ]
}

pub fn config_json(arch: &str, diff_ids: &[String]) -> Value {
    json!({
        "created": "2024-05-06T07:08:09Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--serve", "8080"],
            "Env": ["PATH=/usr/bin:/bin", "GREETING=hi"],
            "WorkingDir": "/srv",
            "User": "1000:1000",
            "StopSignal": "SIGINT",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"org.example.name": "fixture"}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "test"}]
    })
}

/// Writes an image's layers, config and manifest into `layout`; returns the manifest descriptor.
pub fn write_image(layout: &Path, spec: &ImageSpec) -> Desc {
    let diff_ids: Vec<String> = spec.layers.iter().map(|l| sha256(l)).collect();
    let layers: Vec<Value> = spec
        .layers
        .iter()
        .map(|l| {
            if spec.gzip {
                put_blob(layout, LAYER_GZIP, &gzip(l)).json()
            } else {
                put_blob(layout, LAYER_TAR, l).json()
            }
        })
        .collect();
    let config = serde_json::to_vec(&config_json(&spec.arch, &diff_ids)).unwrap();
    let cd = put_blob(layout, OCI_CONFIG, &config);
    write_manifest(layout, &cd.json(), layers)
}

pub fn write_manifest(layout: &Path, config: &Value, layers: Vec<Value>) -> Desc {
    let m =
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers});
    put_blob(layout, OCI_MANIFEST, &serde_json::to_vec(&m).unwrap())
}

/// Writes `oci-layout` and `index.json` listing `entries` (descriptor JSON values).
pub fn write_index(layout: &Path, entries: Vec<Value>) {
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
}

/// A descriptor JSON with a ref name annotation.
pub fn named(d: &Desc, name: &str) -> Value {
    let mut v = d.json();
    v["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    v
}

/// A descriptor JSON with a platform.
pub fn with_platform(d: &Desc, arch: &str) -> Value {
    let mut v = d.json();
    v["platform"] = json!({"os": "linux", "architecture": arch});
    v
}

/// A single-image layout in `dir` (named `v1`), gzip layers; returns the manifest descriptor.
pub fn standard_layout(dir: &Path) -> Desc {
    let m = write_image(
        dir,
        &ImageSpec {
            arch: "amd64".into(),
            layers: standard_layers("amd64"),
            gzip: true,
        },
    );
    write_index(dir, vec![named(&m, "v1")]);
    m
}

/// A layout whose `multi` entry is an index of an arm64 and an amd64 image; returns
/// (index descriptor, arm64 manifest, amd64 manifest).
pub fn multi_platform_layout(dir: &Path) -> (Desc, Desc, Desc) {
    let arm = write_image(
        dir,
        &ImageSpec {
            arch: "arm64".into(),
            layers: standard_layers("arm64"),
            gzip: true,
        },
    );
    let amd = write_image(
        dir,
        &ImageSpec {
            arch: "amd64".into(),
            layers: standard_layers("amd64"),
            gzip: true,
        },
    );
    let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [with_platform(&arm, "arm64"), with_platform(&amd, "amd64")]});
    let id = put_blob(dir, OCI_INDEX, &serde_json::to_vec(&idx).unwrap());
    write_index(dir, vec![named(&id, "multi")]);
    (id, arm, amd)
}

/// A fresh cache directory for a test.
pub fn cache_dir(t: &tempfile::TempDir) -> PathBuf {
    t.path().join("cache")
}
