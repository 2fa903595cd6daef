//! `hyperbuild push` and `pull`: a pod in a registry as an OCI artifact (`crate::artifact`,
//! `docs/pod-format.md`), through the same references, credentials, plain-HTTP rules and blob
//! cache as image pulls (`registry`).
//!
//! Push checks every section against the manifest, hashes the whole file, uploads each entry as
//! a blob (streamed from the file; blobs the registry has are skipped) and then the manifest.
//! Pull fetches the manifest (checked against the reference's digest or the registry's claim),
//! checks it is a pod, fetches each blob into the cache through a size + sha256 check, checks
//! the pod manifest names exactly those blobs, and writes the pod from them into a temp file
//! beside the output, comparing the whole file with the artifact's sha256 before renaming it
//! into place: the result is byte-identical to what was pushed, or nothing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use oci_client::RegistryOperation;
use oci_client::errors::OciDistributionError;

use super::cache::{BlobCache, CacheError};
use super::digest::Digest;
use super::manifest::{Descriptor, OCI_MANIFEST};
use super::reference::{ImageReference, ReferenceError, RegistryReference};
use super::registry::{Puller, RegistryError, Top, connect, request_err};
use super::source::FetchOptions;
use crate::artifact::{self, ArtifactError, Entry};

/// Why a push or pull failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{0}: pods are pushed to and pulled from registries only (REGISTRY/REPO:TAG)")]
    NotRegistry(String),
    #[error("{0}: push needs a tag, not a digest")]
    PushDigest(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{path}: {source}")]
    Pod {
        path: PathBuf,
        #[source]
        source: pod::PodError,
    },
    #[error("pulled pod manifest {digest}: {reason}")]
    PodManifest { digest: Digest, reason: String },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: pod::SealError,
    },
}

/// What a push stored.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// `REGISTRY/REPO:TAG@sha256:...`
    pub reference: String,
    pub manifest_digest: Digest,
    pub uploaded: usize,
    pub skipped: usize,
}

/// What a pull wrote.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub reference: String,
    pub manifest_digest: Digest,
    pub pod_sha256: String,
    pub bytes: u64,
}

fn registry_reference(input: &str) -> Result<RegistryReference, TransferError> {
    match ImageReference::parse(input)? {
        ImageReference::Registry(r) => Ok(r),
        _ => Err(TransferError::NotRegistry(input.to_string())),
    }
}

fn cache_for(opts: &FetchOptions) -> Result<BlobCache, CacheError> {
    let root = match &opts.cache_root {
        Some(p) => p.clone(),
        None => BlobCache::default_root()?,
    };
    BlobCache::open(&root)
}

/// Pushes the pod at `path` to `reference` (a tag).
pub fn push(path: &Path, reference: &str, opts: &FetchOptions) -> Result<Pushed, TransferError> {
    let r = registry_reference(reference)?;
    if r.digest.is_some() {
        return Err(TransferError::PushDigest(reference.to_string()));
    }
    let pod_err = |source| TransferError::Pod {
        path: path.to_path_buf(),
        source,
    };
    let pod = pod::Pod::open(path).map_err(pod_err)?;
    pod.verify().map_err(pod_err)?;
    let (pod_size, pod_sha256) =
        pod::sha256_reader(&mut pod.file().try_clone().map_err(|e| pod_err(e.into()))?)
            .map_err(|e| pod_err(e.into()))?;
    let layout = pod.layout();
    // (entry, where its bytes are in the file)
    let mut entries = vec![(
        Entry {
            media_type: artifact::MANIFEST_TYPE,
            name: "manifest.json",
            size: layout.manifest_loc.len,
            sha256: pod.manifest_sha256(),
        },
        layout.manifest_loc,
    )];
    for s in pod.sections() {
        entries.push((
            Entry {
                media_type: artifact::media_type_of(s.name()),
                name: s.name(),
                size: pod.section(s).len,
                sha256: pod.recorded_sha256(s).to_string(),
            },
            pod.section(s),
        ));
    }
    if let Some((loc, sig)) = &layout.signature {
        entries.push((
            Entry {
                media_type: artifact::SIGNATURE_TYPE,
                name: pod::SIGNATURE_ENTRY,
                size: loc.len,
                sha256: pod::SectionInfo::of_bytes(sig).sha256,
            },
            *loc,
        ));
    }
    let list: Vec<Entry> = entries.iter().map(|(e, _)| e.clone()).collect();
    let manifest = artifact::build(&list, pod_size, &pod_sha256, &pod.manifest().created);
    let manifest_digest = Digest::of_bytes(&manifest);

    let conn = connect(&r, opts)?;
    let registry = r.registry.clone();
    let err = |e: OciDistributionError| TransferError::Registry(request_err(&registry, e));
    let (uploaded, skipped) = conn.rt.block_on(async {
        conn.authorize(&r, RegistryOperation::Push).await?;
        let client = &conn.client;
        let image = &conn.reference;
        let (mut uploaded, mut skipped) = (0, 0);
        let config = artifact::empty_config();
        let mut blobs: Vec<(String, Option<pod::SectionLoc>, u64)> =
            vec![(config.digest.to_string(), None, config.size)];
        for (e, loc) in &entries {
            blobs.push((format!("sha256:{}", e.sha256), Some(*loc), e.size));
        }
        for (digest, loc, size) in blobs {
            if client.blob_exists(image, &digest).await.map_err(err)? {
                skipped += 1;
                continue;
            }
            match loc {
                None => client
                    .push_blob(image, artifact::EMPTY_CONFIG.to_vec(), &digest)
                    .await
                    .map_err(err)?,
                Some(loc) => {
                    let file = pod.file().try_clone().map_err(|e| err(e.into()))?;
                    client
                        .push_blob_stream(image, file_stream(file, loc), &digest, Some(size))
                        .await
                        .map_err(err)?
                }
            };
            uploaded += 1;
        }
        let content_type = reqwest::header::HeaderValue::from_static(OCI_MANIFEST);
        client
            .push_manifest_raw(image, manifest.clone(), content_type)
            .await
            .map_err(err)?;
        Ok::<_, TransferError>((uploaded, skipped))
    })?;
    Ok(Pushed {
        reference: format!("{r}@{manifest_digest}"),
        manifest_digest,
        uploaded,
        skipped,
    })
}

/// The bytes of `loc` in `file` as a stream of 1 MiB chunks.
fn file_stream(
    file: File,
    loc: pod::SectionLoc,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::unfold((file, loc.offset, loc.len), |(file, at, left)| async move {
        if left == 0 {
            return None;
        }
        let n = left.min(1 << 20) as usize;
        let mut buf = vec![0u8; n];
        match file.read_exact_at(&mut buf, at) {
            Ok(()) => Some((
                Ok(bytes::Bytes::from(buf)),
                (file, at + n as u64, left - n as u64),
            )),
            Err(e) => Some((Err(e.into()), (file, at, 0))),
        }
    })
}

/// Pulls the pod at `reference` into `output` (atomically; byte-identical to what was pushed).
pub fn pull(reference: &str, output: &Path, opts: &FetchOptions) -> Result<Pulled, TransferError> {
    let r = registry_reference(reference)?;
    let cache = cache_for(opts)?;
    if opts.offline {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(RegistryError::Runtime)?;
        let p = Puller::offline(&r, &cache, opts.quiet);
        return rt.block_on(pull_with(&p, &r, &cache, output, false));
    }
    let conn = connect(&r, opts)?;
    conn.rt.block_on(async {
        let manifests = conn.authorize(&r, RegistryOperation::Pull).await?;
        let p = Puller::online(
            &r,
            &cache,
            &conn.client,
            &conn.reference,
            &manifests,
            opts.quiet,
        );
        pull_with(&p, &r, &cache, output, true).await
    })
}

async fn pull_with(
    p: &Puller<'_>,
    r: &RegistryReference,
    cache: &BlobCache,
    output: &Path,
    online: bool,
) -> Result<Pulled, TransferError> {
    let Top { digest, bytes } = p.top_manifest().await?;
    let art = artifact::parse(&digest.to_string(), &bytes)?;
    let descriptor = |d: &artifact::Descriptor| Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        urls: None,
        platform: None,
        annotations: None,
    };
    let bad = |reason: String| TransferError::PodManifest {
        digest: art.layers[0].digest.clone(),
        reason,
    };
    // The pod manifest first: it must name exactly the other blobs.
    let first = &art.layers[0];
    if first.size > pod::manifest::MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "{} bytes, more than the 1 MiB limit",
            first.size
        )));
    }
    let path = p.blob(&descriptor(first), "manifest.json").await?;
    let manifest_bytes = cache.read_small(&path)?;
    let manifest = pod::Manifest::from_json(&manifest_bytes).map_err(|e| bad(e.to_string()))?;
    if manifest.to_json().ok().as_deref() != Some(&manifest_bytes[..]) {
        return Err(bad("not in the canonical form a pod stores".into()));
    }
    let mut expected: Vec<(&str, &pod::SectionInfo)> = manifest.sections().to_vec();
    if let Some(v) = &manifest.sections.verity {
        expected.push((pod::Section::Verity.name(), v));
    }
    let payload = &art.layers[1..];
    let (sections, signature) = match payload.len() - expected.len() {
        0 => (payload, None),
        1 if payload[expected.len()].media_type == artifact::SIGNATURE_TYPE => {
            (&payload[..expected.len()], Some(&payload[expected.len()]))
        }
        _ => {
            return Err(bad(format!(
                "it names {} sections, the artifact has {} blobs after it",
                expected.len(),
                payload.len()
            )));
        }
    };
    for ((name, info), layer) in expected.iter().zip(sections) {
        if layer.media_type != artifact::media_type_of(name)
            || layer.digest.hex() != info.sha256
            || layer.size != info.size
        {
            return Err(bad(format!(
                "{name} is {} bytes with sha256 {}, the artifact's blob is {} ({} bytes)",
                info.size, info.sha256, layer.digest, layer.size
            )));
        }
    }
    let mut files = Vec::new();
    for ((name, _), layer) in expected.iter().zip(sections) {
        let path = p.blob(&descriptor(layer), name).await?;
        files.push(File::open(&path).map_err(|source| CacheError::Io { path, source })?);
    }
    let signature = match signature {
        Some(layer) => {
            if layer.size != pod::SIGNATURE_LEN as u64 {
                return Err(bad(format!(
                    "the signature blob has {} bytes, not 64",
                    layer.size
                )));
            }
            let path = p.blob(&descriptor(layer), "signature").await?;
            let bytes = cache.read_small(&path)?;
            Some(
                <[u8; pod::SIGNATURE_LEN]>::try_from(&bytes[..])
                    .map_err(|_| bad("signature size".into()))?,
            )
        }
        None => None,
    };
    let readers: Vec<&mut dyn std::io::Read> = files
        .iter_mut()
        .map(|f| f as &mut dyn std::io::Read)
        .collect();
    let (want_sha, want_size) = (art.pod_sha256.clone(), art.pod_size);
    pod::seal_parts(
        output,
        &manifest,
        readers,
        signature.as_ref(),
        |len, sha| {
            let sha = hex::encode(sha);
            if len != want_size || sha != want_sha {
                return Err(pod::SealError::Refused(format!(
                    "the pod written from the artifact's blobs is {len} bytes with sha256 {sha}, \
                 the artifact says {want_size} bytes with sha256 {want_sha}"
                )));
            }
            Ok(())
        },
    )
    .map_err(|source| TransferError::Write {
        path: output.to_path_buf(),
        source,
    })?;
    // Verified and written: remember the manifest and the tag, as image pulls do.
    if online {
        cache.insert_bytes(&digest, &bytes)?;
        if let (Some(tag), None) = (&r.tag, &r.digest) {
            cache.set_ref(&r.registry, &r.repository, tag, &digest)?;
        }
    }
    Ok(Pulled {
        reference: r.to_string(),
        manifest_digest: digest,
        pod_sha256: art.pod_sha256,
        bytes: art.pod_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_registry_references() {
        assert!(matches!(
            registry_reference("oci:/tmp/x:tag"),
            Err(TransferError::NotRegistry(_))
        ));
        assert!(registry_reference("127.0.0.1:5000/pods/app:v1").is_ok());
    }
}
