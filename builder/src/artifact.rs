//! A pod as an OCI 1.1 artifact (`docs/pod-format.md`, "In a registry"): an image manifest
//! with our `artifactType`, the empty config, and one layer per pod entry in file order —
//! `manifest.json`, `kernel`, `initramfs`, `rootfs.ext4`, `rootfs.verity` (if any), the
//! signature (if any) — each blob being exactly that entry's bytes. Building the manifest and
//! parsing a pulled one are pure functions here; `image::pod_transfer` moves the bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::image::digest::Digest;
use crate::image::manifest::OCI_MANIFEST;

/// The artifact type of a pod.
pub const ARTIFACT_TYPE: &str = "application/vnd.hyperpod.pod.v1";
/// The OCI empty config (`{}`), as OCI 1.1 recommends for artifacts without a config.
pub const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Layer media types, one per pod entry.
pub const MANIFEST_TYPE: &str = "application/vnd.hyperpod.pod.manifest.v1+json";
pub const KERNEL_TYPE: &str = "application/vnd.hyperpod.pod.kernel.v1";
pub const INITRAMFS_TYPE: &str = "application/vnd.hyperpod.pod.initramfs.v1";
pub const ROOTFS_TYPE: &str = "application/vnd.hyperpod.pod.rootfs.v1+ext4";
pub const VERITY_TYPE: &str = "application/vnd.hyperpod.pod.rootfs-verity.v1";
pub const SIGNATURE_TYPE: &str = "application/vnd.hyperpod.pod.signature.v1+ed25519";
/// Annotation keys.
pub const TITLE: &str = "org.opencontainers.image.title";
pub const CREATED: &str = "org.opencontainers.image.created";
/// sha256 (hex) and size of the whole pod file, which a pull must reproduce byte for byte.
pub const POD_SHA256: &str = "io.hyperpod.pod.sha256";
pub const POD_SIZE: &str = "io.hyperpod.pod.size";

/// One pod entry as a layer: its media type and title (the entry name).
pub const ENTRIES: [(&str, &str); 6] = [
    (MANIFEST_TYPE, "manifest.json"),
    (KERNEL_TYPE, "kernel"),
    (INITRAMFS_TYPE, "initramfs"),
    (ROOTFS_TYPE, "rootfs.ext4"),
    (VERITY_TYPE, "rootfs.verity"),
    (SIGNATURE_TYPE, pod::SIGNATURE_ENTRY),
];

/// Why a pulled artifact manifest is not a pod.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact {what}: malformed json: {reason}")]
    Json { what: String, reason: String },
    #[error(
        "artifact {what}: not a pod (mediaType {media_type:?}, artifactType {artifact_type:?})"
    )]
    NotAPod {
        what: String,
        media_type: String,
        artifact_type: String,
    },
    #[error("artifact {what}: {reason}")]
    Layers { what: String, reason: String },
}

/// A descriptor as we write and read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The artifact's image manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactManifest {
    pub schema_version: u32,
    pub media_type: String,
    pub artifact_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// One entry of a pod: its media type, name, size and sha256 hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub media_type: &'static str,
    pub name: &'static str,
    pub size: u64,
    pub sha256: String,
}

/// The pulled, checked layout of a pod artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodArtifact {
    /// The layers, in pod file order.
    pub layers: Vec<Descriptor>,
    pub pod_sha256: String,
    pub pod_size: u64,
}

fn digest_of(hex: &str) -> Digest {
    Digest::parse(&format!("sha256:{hex}")).expect("a validated sha256")
}

/// The empty config's descriptor.
pub fn empty_config() -> Descriptor {
    Descriptor {
        media_type: EMPTY_CONFIG_TYPE.into(),
        digest: Digest::of_bytes(EMPTY_CONFIG),
        size: EMPTY_CONFIG.len() as u64,
        annotations: BTreeMap::new(),
    }
}

/// The artifact manifest's bytes for a pod whose entries are `entries` (in file order), whose
/// whole file has `pod_size` bytes and sha256 `pod_sha256`, created at `created`.
pub fn build(entries: &[Entry], pod_size: u64, pod_sha256: &str, created: &str) -> Vec<u8> {
    let layers = entries
        .iter()
        .map(|e| Descriptor {
            media_type: e.media_type.into(),
            digest: digest_of(&e.sha256),
            size: e.size,
            annotations: [(TITLE.to_string(), e.name.to_string())].into(),
        })
        .collect();
    let m = ArtifactManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST.into(),
        artifact_type: ARTIFACT_TYPE.into(),
        config: empty_config(),
        layers,
        annotations: [
            (CREATED.to_string(), created.to_string()),
            (POD_SHA256.to_string(), pod_sha256.to_string()),
            (POD_SIZE.to_string(), pod_size.to_string()),
        ]
        .into(),
    };
    serde_json::to_vec_pretty(&m).expect("serialisable")
}

/// Parses a pulled manifest and checks it is a pod: our artifact type, the empty config, the
/// layers in pod order with our media types (manifest, kernel, initramfs, rootfs, then the
/// optional verity tree and signature), no `urls`, and the whole-file annotations.
pub fn parse(what: &str, bytes: &[u8]) -> Result<PodArtifact, ArtifactError> {
    let m: ArtifactManifest = serde_json::from_slice(bytes).map_err(|e| ArtifactError::Json {
        what: what.to_string(),
        reason: e.to_string(),
    })?;
    if m.media_type != OCI_MANIFEST || m.artifact_type != ARTIFACT_TYPE || m.schema_version != 2 {
        return Err(ArtifactError::NotAPod {
            what: what.to_string(),
            media_type: m.media_type,
            artifact_type: m.artifact_type,
        });
    }
    let bad = |reason: String| ArtifactError::Layers {
        what: what.to_string(),
        reason,
    };
    if m.config.media_type != EMPTY_CONFIG_TYPE || m.config.digest != empty_config().digest {
        return Err(bad(format!(
            "config is {}, not the empty config",
            m.config.media_type
        )));
    }
    // Required entries, then the optional ones in order, each at most once.
    let mut expected = ENTRIES.iter().peekable();
    for (i, layer) in m.layers.iter().enumerate() {
        let found = loop {
            match expected.next() {
                Some(e) if e.0 == layer.media_type => break Some(e),
                // Only verity and the signature may be skipped.
                Some(e) if e.0 == VERITY_TYPE => continue,
                _ => break None,
            }
        };
        let Some((_, name)) = found else {
            return Err(bad(format!(
                "layer {i} has media type {:?} where a pod has no such entry",
                layer.media_type
            )));
        };
        if i < 4 && ENTRIES[i].0 != layer.media_type {
            return Err(bad(format!("layer {i} should be {}", ENTRIES[i].1)));
        }
        if layer.annotations.get(TITLE).is_some_and(|t| t != name) {
            return Err(bad(format!(
                "layer {i} is titled {:?}, not {name:?}",
                layer.annotations[TITLE]
            )));
        }
    }
    if m.layers.len() < 4 {
        return Err(bad(format!(
            "{} layers, a pod has at least 4",
            m.layers.len()
        )));
    }
    let pod_sha256 = m
        .annotations
        .get(POD_SHA256)
        .filter(|s| pod::manifest::is_sha256_hex(s))
        .ok_or_else(|| bad(format!("annotation {POD_SHA256} missing or not a sha256")))?
        .clone();
    let pod_size = m
        .annotations
        .get(POD_SIZE)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad(format!("annotation {POD_SIZE} missing or not a number")))?;
    Ok(PodArtifact {
        layers: m.layers,
        pod_sha256,
        pod_size,
    })
}

/// The media type of an entry name.
pub fn media_type_of(name: &str) -> &'static str {
    ENTRIES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(t, _)| *t)
        .expect("a pod entry name")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(names: &[&'static str]) -> Vec<Entry> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                media_type: media_type_of(n),
                name: n,
                size: 10 + i as u64,
                sha256: format!("{i}").repeat(64),
            })
            .collect()
    }

    #[test]
    fn built_manifests_parse_back() {
        for names in [
            &["manifest.json", "kernel", "initramfs", "rootfs.ext4"][..],
            &[
                "manifest.json",
                "kernel",
                "initramfs",
                "rootfs.ext4",
                "rootfs.verity",
            ],
            &[
                "manifest.json",
                "kernel",
                "initramfs",
                "rootfs.ext4",
                "signature.ed25519",
            ],
            &[
                "manifest.json",
                "kernel",
                "initramfs",
                "rootfs.ext4",
                "rootfs.verity",
                "signature.ed25519",
            ],
        ] {
            let e = entries(names);
            let bytes = build(&e, 12345, &"f".repeat(64), "2024-01-02T03:04:05Z");
            let a = parse("t", &bytes).unwrap();
            assert_eq!(a.layers.len(), names.len());
            assert_eq!(a.pod_size, 12345);
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["artifactType"], ARTIFACT_TYPE);
            assert_eq!(json["config"]["mediaType"], EMPTY_CONFIG_TYPE);
        }
    }

    #[test]
    fn other_manifests_are_refused() {
        let e = entries(&["manifest.json", "kernel", "initramfs", "rootfs.ext4"]);
        let good = String::from_utf8(build(&e, 1, &"f".repeat(64), "x")).unwrap();
        for (from, to) in [
            (ARTIFACT_TYPE, "application/vnd.example"),
            (KERNEL_TYPE, INITRAMFS_TYPE),
            (ROOTFS_TYPE, VERITY_TYPE),
            (POD_SHA256, "io.example"),
            (
                EMPTY_CONFIG_TYPE,
                "application/vnd.oci.image.config.v1+json",
            ),
        ] {
            let bad = good.replacen(from, to, 1);
            assert!(
                parse("t", bad.as_bytes()).is_err(),
                "{from} -> {to} accepted"
            );
        }
        let short = entries(&["manifest.json", "kernel", "initramfs"]);
        assert!(parse("t", &build(&short, 1, &"f".repeat(64), "x")).is_err());
        let twice = entries(&[
            "manifest.json",
            "kernel",
            "initramfs",
            "rootfs.ext4",
            "rootfs.ext4",
        ]);
        assert!(parse("t", &build(&twice, 1, &"f".repeat(64), "x")).is_err());
        assert!(parse("t", b"{").is_err());
    }
}
