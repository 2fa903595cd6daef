//! Reading an image from an OCI image layout directory (`oci:DIR[:REF]`).
//!
//! Checks the `oci-layout` version, picks the image from `index.json` by its
//! `org.opencontainers.image.ref.name` annotation (or the only one), follows nested indexes to
//! the wanted platform, and verifies every blob (size and sha256) where it lies.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config::{ConfigError, ImageConfig, Platform};
use super::digest::{Digest, DigestError};
use super::manifest::{self, Descriptor, MAX_MANIFEST_BYTES, Manifest, ManifestError};
use super::source::{FetchedImage, assemble};

/// The annotation naming an image in an OCI layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MAX_DEPTH: usize = 4;

/// Why an OCI layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OciLayoutError {
    #[error("oci layout {}: not an OCI layout (no oci-layout file)", .0.display())]
    NotLayout(PathBuf),
    #[error("oci layout {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("oci layout: bad oci-layout file: {0}")]
    LayoutFile(String),
    #[error("oci layout: unsupported imageLayoutVersion {0:?}")]
    Version(String),
    #[error("oci layout: no image named {name:?} (has: {available})")]
    NoRef { name: String, available: String },
    #[error("oci layout: {0} images and no name given; use oci:DIR:NAME")]
    Ambiguous(usize),
    #[error("oci layout: index.json lists no image")]
    Empty,
    #[error("oci layout: blob {0} is missing")]
    MissingBlob(Digest),
    #[error("oci layout: indexes nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("oci layout: {0}")]
    Verify(#[from] DigestError),
    #[error("oci layout: {0}")]
    Manifest(#[from] ManifestError),
    #[error("oci layout: {0}")]
    Config(#[from] ConfigError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutFile {
    image_layout_version: String,
}

/// Parses the `oci-layout` file and checks its version (1.x).
pub fn parse_layout_file(bytes: &[u8]) -> Result<(), OciLayoutError> {
    let f: LayoutFile =
        serde_json::from_slice(bytes).map_err(|e| OciLayoutError::LayoutFile(e.to_string()))?;
    let v = &f.image_layout_version;
    let mut parts = v.split('.');
    let ok = parts.next() == Some("1")
        && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return Err(OciLayoutError::Version(v.clone()));
    }
    Ok(())
}

/// An opened layout directory.
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    pub fn open(dir: &Path) -> Result<OciLayout, OciLayoutError> {
        let layout = dir.join("oci-layout");
        let bytes = match read_capped(&layout) {
            Ok(b) => b,
            Err(OciLayoutError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(OciLayoutError::NotLayout(dir.to_path_buf()));
            }
            Err(e) => return Err(e),
        };
        parse_layout_file(&bytes)?;
        Ok(OciLayout {
            dir: dir.to_path_buf(),
        })
    }

    /// The path of a blob (the digest was validated, so its hex is a plain file name).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    /// Reads a manifest/index/config blob: size checked against the cap before reading, then
    /// size and digest verified.
    fn read_small(&self, desc: &Descriptor) -> Result<Vec<u8>, OciLayoutError> {
        manifest::check_size(&desc.digest.to_string(), desc.size)?;
        let path = self.blob_path(&desc.digest);
        let bytes = match read_capped(&path) {
            Ok(b) => b,
            Err(OciLayoutError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(OciLayoutError::MissingBlob(desc.digest.clone()));
            }
            Err(e) => return Err(e),
        };
        desc.digest.verify_bytes(desc.size, &bytes)?;
        Ok(bytes)
    }

    /// Verifies a layer blob in place and returns its path.
    fn layer(&self, desc: &Descriptor) -> Result<PathBuf, OciLayoutError> {
        let path = self.blob_path(&desc.digest);
        if !path.is_file() {
            return Err(OciLayoutError::MissingBlob(desc.digest.clone()));
        }
        desc.digest.verify_file_range(&path, 0, desc.size)?;
        Ok(path)
    }

    /// Picks the image: by name, or the only entry, or (several entries all with platforms) by
    /// platform.
    fn pick(&self, name: Option<&str>, platform: &Platform) -> Result<Descriptor, OciLayoutError> {
        let index_path = self.dir.join("index.json");
        let bytes = read_capped(&index_path)?;
        let Manifest::Index(index) =
            Manifest::parse("index.json", &bytes, Some(manifest::OCI_INDEX))?
        else {
            unreachable!("parsed with an index media type")
        };
        let name_of = |d: &Descriptor| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .cloned()
        };
        if let Some(name) = name {
            return index
                .manifests
                .iter()
                .find(|d| name_of(d).as_deref() == Some(name))
                .cloned()
                .ok_or_else(|| OciLayoutError::NoRef {
                    name: name.to_string(),
                    available: index
                        .manifests
                        .iter()
                        .filter_map(name_of)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
        }
        match index.manifests.len() {
            0 => Err(OciLayoutError::Empty),
            1 => Ok(index.manifests[0].clone()),
            _ if index.manifests.iter().all(|d| d.platform.is_some()) => {
                Ok(index.select("index.json", platform)?.clone())
            }
            n => Err(OciLayoutError::Ambiguous(n)),
        }
    }

    /// Resolves the image and verifies all of its blobs.
    pub fn fetch(
        &self,
        reference: String,
        name: Option<&str>,
        platform: &Platform,
    ) -> Result<FetchedImage, OciLayoutError> {
        let mut desc = self.pick(name, platform)?;
        let mut depth = 0;
        let image = loop {
            let bytes = self.read_small(&desc)?;
            let what = desc.digest.to_string();
            match Manifest::parse(&what, &bytes, Some(&desc.media_type))? {
                Manifest::Image(m) => break m,
                Manifest::Index(i) => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(OciLayoutError::TooDeep);
                    }
                    desc = i.select(&what, platform)?.clone();
                }
            }
        };
        let compressions = image.check()?;
        let config_bytes = self.read_small(&image.config)?;
        let config = ImageConfig::parse(&image.config.digest.to_string(), &config_bytes)?;
        assemble(
            reference,
            Some(desc.digest.clone()),
            &image,
            &compressions,
            config,
            platform,
            |d| Ok((self.layer(d)?, 0)),
        )
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>, OciLayoutError> {
    let err = |source| OciLayoutError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = File::open(path).map_err(err)?;
    let len = f.metadata().map_err(err)?.len();
    manifest::check_size(&path.display().to_string(), len)?;
    let mut v = Vec::with_capacity(len as usize);
    f.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut v)
        .map_err(err)?;
    manifest::check_size(&path.display().to_string(), v.len() as u64)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_versions() {
        parse_layout_file(br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        parse_layout_file(br#"{"imageLayoutVersion":"1.1.0"}"#).unwrap();
        assert!(matches!(
            parse_layout_file(br#"{"imageLayoutVersion":"2.0.0"}"#),
            Err(OciLayoutError::Version(_))
        ));
        assert!(matches!(
            parse_layout_file(br#"{"imageLayoutVersion":"1..0"}"#),
            Err(OciLayoutError::Version(_))
        ));
        assert!(matches!(
            parse_layout_file(b"{}"),
            Err(OciLayoutError::LayoutFile(_))
        ));
    }
}
