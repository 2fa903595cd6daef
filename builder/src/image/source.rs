//! The front door of image fetching: [`resolve_and_fetch`] turns a reference into a typed
//! config and a list of verified [`Layer`]s, whatever the source.

use std::path::PathBuf;

use super::cache::{BlobCache, CacheError};
use super::config::{ConfigError, ImageConfig, Platform};
use super::digest::Digest;
use super::docker_archive::{self, DockerArchiveError};
use super::manifest::{Descriptor, ImageManifest, ManifestError};
use super::oci_layout::{OciLayout, OciLayoutError};
use super::reference::{ImageReference, ReferenceError};
use super::registry::{self, RegistryError};
use super::{Compression, Layer};

/// Options of a fetch (the CLI's `--platform`, `--offline`, `--quiet`, `--creds`,
/// `--authfile`, `--insecure-registry`). `Debug` does not print the password.
#[derive(Clone, Default)]
pub struct FetchOptions {
    pub platform: Platform,
    /// Use only the cache (registry references).
    pub offline: bool,
    /// No progress bars.
    pub quiet: bool,
    /// `USER:PASS` for the registry.
    pub creds: Option<String>,
    /// A Docker-style `config.json` with `auths`; default `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`.
    pub authfile: Option<PathBuf>,
    /// `HOST:PORT` registries reached over plain HTTP (loopback ones always are).
    pub insecure_registries: Vec<String>,
    /// Cache root; `None` means [`BlobCache::default_root`].
    pub cache_root: Option<PathBuf>,
}

impl std::fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("platform", &self.platform)
            .field("offline", &self.offline)
            .field("quiet", &self.quiet)
            .field(
                "creds",
                &self
                    .creds
                    .as_deref()
                    .map(|c| format!("{}:<redacted>", c.split(':').next().unwrap_or(""))),
            )
            .field("authfile", &self.authfile)
            .field("insecure_registries", &self.insecure_registries)
            .field("cache_root", &self.cache_root)
            .finish()
    }
}

/// An image ready to be flattened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedImage {
    /// The canonical reference (`docker://docker.io/library/alpine:latest`, `oci:DIR:REF`...).
    pub reference: String,
    /// The platform manifest's digest (`None` for a `docker save` archive, which has none).
    pub manifest_digest: Option<Digest>,
    /// The config blob's digest (the image ID), the same from every source.
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
}

/// Why an image could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    OciLayout(#[from] OciLayoutError),
    #[error(transparent)]
    DockerArchive(#[from] DockerArchiveError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Resolves `reference` and fetches (or verifies in place) its config and layers.
pub fn resolve_and_fetch(
    reference: &str,
    opts: &FetchOptions,
) -> Result<FetchedImage, SourceError> {
    let parsed = ImageReference::parse(reference)?;
    let canonical = parsed.to_string();
    match &parsed {
        ImageReference::OciLayout { dir, reference } => {
            Ok(OciLayout::open(dir)?.fetch(canonical, reference.as_deref(), &opts.platform)?)
        }
        ImageReference::DockerArchive { path, reference } => Ok(docker_archive::fetch(
            path,
            canonical,
            reference.as_deref(),
            &opts.platform,
        )?),
        ImageReference::Registry(r) => {
            let root = match &opts.cache_root {
                Some(p) => p.clone(),
                None => BlobCache::default_root()?,
            };
            let cache = BlobCache::open(&root)?;
            Ok(registry::fetch(r, canonical, &cache, opts)?)
        }
    }
}

/// Errors [`assemble`] can raise, converted into each source's own error type.
pub(crate) trait AssembleError: From<ManifestError> + From<ConfigError> {}
impl<T: From<ManifestError> + From<ConfigError>> AssembleError for T {}

/// Checks the config against the platform and the manifest, and builds the layer list; `blob`
/// returns each layer's verified file and offset.
pub(crate) fn assemble<E: AssembleError>(
    reference: String,
    manifest_digest: Option<Digest>,
    manifest: &ImageManifest,
    compressions: &[Compression],
    config: ImageConfig,
    platform: &Platform,
    mut blob: impl FnMut(&Descriptor) -> Result<(PathBuf, u64), E>,
) -> Result<FetchedImage, E> {
    let config_digest = manifest.config.digest.clone();
    config.check_platform(&config_digest.to_string(), platform)?;
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return Err(ManifestError::LayerCount {
            what: reference,
            count: manifest.layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        }
        .into());
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for ((d, &compression), diff_id) in manifest
        .layers
        .iter()
        .zip(compressions)
        .zip(&config.rootfs.diff_ids)
    {
        let (path, offset) = blob(d)?;
        layers.push(Layer {
            blob: path,
            offset,
            size: d.size,
            digest: d.digest.to_string(),
            media_type: d.media_type.clone(),
            compression,
            diff_id: diff_id.to_string(),
        });
    }
    Ok(FetchedImage {
        reference,
        manifest_digest,
        config_digest,
        config,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let o = FetchOptions {
            creds: Some("me:hunter2".into()),
            ..FetchOptions::default()
        };
        let d = format!("{o:?}");
        assert!(d.contains("me:<redacted>") && !d.contains("hunter2"), "{d}");
    }
}
