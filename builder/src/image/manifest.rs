//! Image manifests and indexes (OCI and Docker schema 2) parsed into typed values, layer media
//! types, and platform selection. All parsers here are pure functions of their bytes.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Compression;
use super::config::Platform;
use super::digest::Digest;

/// Largest manifest, index or config accepted, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Media types accepted for a manifest or index.
pub const MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Why a manifest or index was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {what}: {size} bytes is over the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge { what: String, size: u64 },
    #[error("manifest {what}: malformed json: {reason}")]
    Json { what: String, reason: String },
    #[error("manifest {what}: unsupported schemaVersion {version}")]
    SchemaVersion { what: String, version: u64 },
    #[error("manifest {what}: unknown media type {media_type:?}")]
    MediaType { what: String, media_type: String },
    #[error("manifest {what}: declares {media_type} but has {found}")]
    Confusion {
        what: String,
        media_type: String,
        found: &'static str,
    },
    #[error("layer {digest}: foreign or non-distributable layer ({media_type}) is not supported")]
    ForeignLayer { digest: Digest, media_type: String },
    #[error("layer {digest}: descriptor urls are not followed")]
    LayerUrls { digest: Digest },
    #[error("layer {digest}: unknown layer media type {media_type:?}")]
    LayerMediaType { digest: Digest, media_type: String },
    #[error("config {digest}: unknown config media type {media_type:?}")]
    ConfigMediaType { digest: Digest, media_type: String },
    #[error("index {what}: no manifest for {platform} (has: {available})")]
    NoPlatform {
        what: String,
        platform: String,
        available: String,
    },
    #[error("manifest {what}: {count} layers do not match the config's {diff_ids} diff_ids")]
    LayerCount {
        what: String,
        count: usize,
        diff_ids: usize,
    },
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The platform of an index entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DescriptorPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageManifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An image index / manifest list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageIndex {
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: u64,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// Checks a document's size against [`MAX_MANIFEST_BYTES`] before it is read.
pub fn check_size(what: &str, size: u64) -> Result<(), ManifestError> {
    if size > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            what: what.to_string(),
            size,
        });
    }
    Ok(())
}

impl Manifest {
    /// Parses a manifest or index. `what` names it in errors (a digest or a reference);
    /// `declared` is the media type the transport or parent descriptor gave, if any.
    pub fn parse(
        what: &str,
        bytes: &[u8],
        declared: Option<&str>,
    ) -> Result<Manifest, ManifestError> {
        check_size(what, bytes.len() as u64)?;
        let w = || what.to_string();
        let raw: RawManifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json {
            what: w(),
            reason: e.to_string(),
        })?;
        if raw.schema_version != 2 {
            return Err(ManifestError::SchemaVersion {
                what: w(),
                version: raw.schema_version,
            });
        }
        let media_type = match (raw.media_type, declared) {
            (Some(m), _) => m,
            (None, Some(d)) => d.to_string(),
            (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
            (None, None) => OCI_MANIFEST.to_string(),
        };
        let is_index = match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            _ => {
                return Err(ManifestError::MediaType {
                    what: w(),
                    media_type,
                });
            }
        };
        if let Some(d) = declared {
            if d != media_type && MANIFEST_TYPES.contains(&d) {
                let found = if is_index { "an index" } else { "a manifest" };
                return Err(ManifestError::Confusion {
                    what: w(),
                    media_type: d.to_string(),
                    found,
                });
            }
        }
        if is_index {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(ManifestError::Confusion {
                    what: w(),
                    media_type,
                    found: "config or layers",
                });
            }
            let manifests = raw.manifests.ok_or_else(|| ManifestError::Json {
                what: w(),
                reason: "missing field `manifests`".into(),
            })?;
            Ok(Manifest::Index(ImageIndex {
                media_type,
                manifests,
            }))
        } else {
            if raw.manifests.is_some() {
                return Err(ManifestError::Confusion {
                    what: w(),
                    media_type,
                    found: "manifests",
                });
            }
            let missing = |f: &str| ManifestError::Json {
                what: w(),
                reason: format!("missing field `{f}`"),
            };
            let config = raw.config.ok_or_else(|| missing("config"))?;
            let layers = raw.layers.ok_or_else(|| missing("layers"))?;
            Ok(Manifest::Image(ImageManifest {
                media_type,
                config,
                layers,
            }))
        }
    }
}

impl ImageManifest {
    /// Checks the config's media type and every layer's: known types only, no `urls`, no
    /// foreign layers. Returns each layer's compression.
    pub fn check(&self) -> Result<Vec<Compression>, ManifestError> {
        match self.config.media_type.as_str() {
            OCI_CONFIG | DOCKER_CONFIG => {}
            other => {
                return Err(ManifestError::ConfigMediaType {
                    digest: self.config.digest.clone(),
                    media_type: other.to_string(),
                });
            }
        }
        self.layers.iter().map(layer_compression).collect()
    }
}

/// The compression of a layer from its descriptor; rejects `urls`, foreign and unknown types.
pub fn layer_compression(d: &Descriptor) -> Result<Compression, ManifestError> {
    let mt = d.media_type.as_str();
    if mt.contains("foreign") || mt.contains("nondistributable") {
        return Err(ManifestError::ForeignLayer {
            digest: d.digest.clone(),
            media_type: mt.to_string(),
        });
    }
    if d.urls.as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(ManifestError::LayerUrls {
            digest: d.digest.clone(),
        });
    }
    match mt {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        _ => Err(ManifestError::LayerMediaType {
            digest: d.digest.clone(),
            media_type: mt.to_string(),
        }),
    }
}

impl ImageIndex {
    /// The manifest for `platform`: an exact os/architecture match, preferring the requested
    /// variant (or, with none requested, `v8` for arm64 and no variant otherwise).
    pub fn select(&self, what: &str, platform: &Platform) -> Result<&Descriptor, ManifestError> {
        let candidates: Vec<&Descriptor> = self
            .manifests
            .iter()
            .filter(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
            })
            .collect();
        let wanted = platform.variant.as_deref();
        let pick = candidates
            .iter()
            .find(|d| d.platform.as_ref().and_then(|p| p.variant.as_deref()) == wanted)
            .or_else(|| {
                if wanted.is_none() {
                    candidates.first()
                } else {
                    None
                }
            });
        match pick {
            Some(d) => Ok(d),
            None => Err(ManifestError::NoPlatform {
                what: what.to_string(),
                platform: platform.to_string(),
                available: self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| match &p.variant {
                        Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn manifest_json(layer_type: &str, extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
              "config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":10}},
              "layers":[{{"mediaType":"{layer_type}","digest":"{}","size":20{extra}}}]}}"#,
            d(1),
            d(2)
        )
    }

    #[test]
    fn parses_manifests_and_layer_types() {
        let m = Manifest::parse(
            "m",
            manifest_json("application/vnd.oci.image.layer.v1.tar+gzip", "").as_bytes(),
            None,
        )
        .unwrap();
        let Manifest::Image(m) = m else { panic!() };
        assert_eq!(m.check().unwrap(), vec![Compression::Gzip]);
        let m = Manifest::parse(
            "m",
            manifest_json("application/vnd.oci.image.layer.v1.tar+zstd", "").as_bytes(),
            None,
        )
        .unwrap();
        let Manifest::Image(m) = m else { panic!() };
        assert_eq!(m.check().unwrap(), vec![Compression::Zstd]);
    }

    #[test]
    fn rejects_urls_foreign_unknown() {
        let parse = |lt: &str, extra: &str| {
            let Manifest::Image(m) =
                Manifest::parse("m", manifest_json(lt, extra).as_bytes(), None).unwrap()
            else {
                panic!()
            };
            m.check().unwrap_err()
        };
        assert!(matches!(
            parse(
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                r#","urls":["http://x"]"#
            ),
            ManifestError::ForeignLayer { .. }
        ));
        assert!(matches!(
            parse(
                "application/vnd.oci.image.layer.v1.tar",
                r#","urls":["http://evil/x"]"#
            ),
            ManifestError::LayerUrls { .. }
        ));
        assert!(matches!(
            parse("application/x-unknown", ""),
            ManifestError::LayerMediaType { .. }
        ));
    }

    #[test]
    fn rejects_bad_documents() {
        assert!(matches!(
            Manifest::parse("m", b"{", None),
            Err(ManifestError::Json { .. })
        ));
        assert!(matches!(
            Manifest::parse("m", br#"{"schemaVersion":1}"#, None),
            Err(ManifestError::SchemaVersion { version: 1, .. })
        ));
        assert!(matches!(
            Manifest::parse("m", br#"{"schemaVersion":2,"mediaType":"text/html"}"#, None),
            Err(ManifestError::MediaType { .. })
        ));
        let confused = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[],"layers":[]}}"#
        );
        assert!(matches!(
            Manifest::parse("m", confused.as_bytes(), None),
            Err(ManifestError::Confusion { .. })
        ));
        let idx = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(matches!(
            Manifest::parse("m", idx.as_bytes(), Some(OCI_MANIFEST)),
            Err(ManifestError::Confusion { .. })
        ));
        let big = vec![b' '; (MAX_MANIFEST_BYTES + 1) as usize];
        assert!(matches!(
            Manifest::parse("m", &big, None),
            Err(ManifestError::TooLarge { .. })
        ));
        let bad_digest = r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:../../x","size":1},"layers":[]}"#;
        assert!(matches!(
            Manifest::parse("m", bad_digest.as_bytes(), None),
            Err(ManifestError::Json { .. })
        ));
    }

    #[test]
    fn selects_platforms() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d(3),
            d(4)
        );
        let Manifest::Index(i) = Manifest::parse("i", idx.as_bytes(), None).unwrap() else {
            panic!()
        };
        let amd = i
            .select("i", &Platform::parse("linux/amd64").unwrap())
            .unwrap();
        assert_eq!(amd.digest.to_string(), d(4));
        let arm = i
            .select("i", &Platform::parse("linux/arm64/v8").unwrap())
            .unwrap();
        assert_eq!(arm.digest.to_string(), d(3));
        let e = i
            .select("i", &Platform::parse("linux/s390x").unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("linux/arm64/v8, linux/amd64"), "{e}");
    }
}
