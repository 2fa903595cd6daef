//! Pulling an image from a registry into the blob cache: oci-client for the token exchange and
//! blob streams, `registry_http` for manifests (so their size cap applies before the body is
//! read).
//!
//! oci-client is async; a current-thread tokio runtime lives inside [`fetch`] only. Every blob
//! is streamed into the cache through a size + sha256 check against its descriptor; manifests
//! pulled by digest are checked against it, a tag's manifest is named by the digest of its
//! bytes (and must match the digest the registry claims). Descriptor `urls` are never followed.
//! Plain HTTP is used only for loopback registries and ones listed with `--insecure-registry`.
//! With `--offline` nothing leaves the machine: the tag index and the cache must hold
//! everything.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::cache::{BlobCache, CacheError, Lookup};
use super::config::{ConfigError, ImageConfig};
use super::digest::{Digest, DigestError};
use super::manifest::{self, Descriptor, Manifest, ManifestError};
use super::progress::Progress;
use super::reference::RegistryReference;
use super::registry_http::{HttpAuth, ManifestFetcher};
use super::source::{FetchOptions, FetchedImage, assemble};

pub use super::auth::{AuthError, Credentials, resolve_credentials};

const MAX_DEPTH: usize = 4;

/// Why a registry pull failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry}: authentication required or refused (use --creds or --authfile)")]
    Unauthorized { registry: String },
    #[error("registry {registry}: {reason}")]
    Request { registry: String, reason: String },
    #[error("registry {registry}: {what} not found")]
    NotFound { registry: String, what: String },
    #[error("registry {registry}: manifest {what}: content does not match its digest: {detail}")]
    ManifestDigest {
        registry: String,
        what: String,
        detail: String,
    },
    #[error("registry {0}: indexes nested deeper than 4")]
    TooDeep(String),
    #[error("registry: cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Verify(#[from] DigestError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Pulls `r` (or, offline, finds it in the cache) and returns its verified layers.
pub fn fetch(
    r: &RegistryReference,
    canonical: String,
    cache: &BlobCache,
    opts: &FetchOptions,
) -> Result<FetchedImage, RegistryError> {
    if opts.offline {
        let mut p = Puller::offline(r, cache, opts.quiet);
        return run_pull(&mut p, canonical, opts, None);
    }
    let conn = connect(r, opts)?;
    conn.rt.block_on(async {
        let manifests = conn.authorize(r, RegistryOperation::Pull).await?;
        let mut p = Puller::online(
            r,
            cache,
            &conn.client,
            &conn.reference,
            &manifests,
            opts.quiet,
        );
        let top = p.top_manifest_online().await?;
        run_pull_async(&mut p, canonical, opts, Some(top)).await
    })
}

/// A client for one repository: credentials resolved, plain HTTP only where allowed.
pub(crate) struct Conn {
    pub rt: tokio::runtime::Runtime,
    pub client: Client,
    pub auth: RegistryAuth,
    pub reference: Reference,
    pub plain_http: bool,
}

/// Makes ring rustls' crypto provider for this process, before any HTTPS client is built (the
/// workspace builds rustls without its default provider, aws-lc-rs; see Cargo.toml). A second
/// call, or a provider installed first by whoever embeds this crate, keeps the one installed.
pub(crate) fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sets up a client for `r` with the options' credentials and insecure-registry rules.
/// Pushes go up in one PUT per blob (monolithic), streamed from the file.
pub(crate) fn connect(r: &RegistryReference, opts: &FetchOptions) -> Result<Conn, RegistryError> {
    tls_provider();
    let creds = resolve_credentials(&r.registry, opts.creds.as_deref(), opts.authfile.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)?;
    let plain_http = plain_http_allowed(r, &opts.insecure_registries);
    let config = ClientConfig {
        protocol: if plain_http {
            ClientProtocol::HttpsExcept(vec![r.registry.clone()])
        } else {
            ClientProtocol::Https
        },
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(60)),
        use_monolithic_push: true,
        ..ClientConfig::default()
    };
    let client = Client::try_from(config).map_err(|e| request_err(&r.registry, e))?;
    let auth = match creds {
        Some(c) => RegistryAuth::Basic(c.username, c.password),
        None => RegistryAuth::Anonymous,
    };
    let reference = match &r.digest {
        Some(d) => Reference::with_digest(r.registry.clone(), r.repository.clone(), d.to_string()),
        None => Reference::with_tag(
            r.registry.clone(),
            r.repository.clone(),
            r.tag.clone().unwrap_or_else(|| "latest".into()),
        ),
    };
    Ok(Conn {
        rt,
        client,
        auth,
        reference,
        plain_http,
    })
}

impl Conn {
    /// Authenticates for `op` (a bearer token if the registry hands one out) and returns the
    /// manifest fetcher for the repository with the same credentials.
    pub(crate) async fn authorize(
        &self,
        r: &RegistryReference,
        op: RegistryOperation,
    ) -> Result<ManifestFetcher, RegistryError> {
        let token = self
            .client
            .auth(&self.reference, &self.auth, op)
            .await
            .map_err(|e| request_err(&r.registry, e))?;
        let http_auth = match (token, &self.auth) {
            (Some(t), _) => HttpAuth::Bearer(t),
            (None, RegistryAuth::Basic(u, p)) => HttpAuth::Basic(u.clone(), p.clone()),
            (None, _) => HttpAuth::Anonymous,
        };
        ManifestFetcher::new(
            if self.plain_http { "http" } else { "https" },
            self.reference.resolve_registry(),
            &r.repository,
            &r.registry,
            http_auth,
        )
    }
}

/// Maps an oci-client error to ours, naming the registry.
pub(crate) fn request_err(registry: &str, e: OciDistributionError) -> RegistryError {
    match e {
        OciDistributionError::UnauthorizedError { .. } => RegistryError::Unauthorized {
            registry: registry.to_string(),
        },
        OciDistributionError::AuthenticationFailure(_) => RegistryError::Unauthorized {
            registry: registry.to_string(),
        },
        // A 401/403 to a blob request (a push's existence check, say).
        OciDistributionError::RequestError(e)
            if matches!(e.status().map(|s| s.as_u16()), Some(401 | 403)) =>
        {
            RegistryError::Unauthorized {
                registry: registry.to_string(),
            }
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::Unauthorized
                        | oci_client::errors::OciErrorCode::Denied
                )
            }) =>
        {
            RegistryError::Unauthorized {
                registry: registry.to_string(),
            }
        }
        other => RegistryError::Request {
            registry: registry.to_string(),
            reason: chain(&other),
        },
    }
}

/// An error and its causes on one line (reqwest hides "connection refused" in its sources).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

struct Net<'a> {
    client: &'a Client,
    reference: &'a Reference,
    manifests: &'a ManifestFetcher,
}

pub(crate) struct Puller<'a> {
    r: &'a RegistryReference,
    cache: &'a BlobCache,
    net: Option<Net<'a>>,
    progress: Progress,
    quiet: bool,
}

/// The top-level manifest: its digest and bytes.
pub(crate) struct Top {
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

fn run_pull(
    p: &mut Puller<'_>,
    canonical: String,
    opts: &FetchOptions,
    top: Option<Top>,
) -> Result<FetchedImage, RegistryError> {
    // Offline: no I/O awaits anything, so a trivial executor is enough.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(RegistryError::Runtime)?;
    rt.block_on(run_pull_async(p, canonical, opts, top))
}

async fn run_pull_async(
    p: &mut Puller<'_>,
    canonical: String,
    opts: &FetchOptions,
    top: Option<Top>,
) -> Result<FetchedImage, RegistryError> {
    let top = match top {
        Some(t) => t,
        None => p.top_manifest_offline()?,
    };
    let registry = p.r.registry.clone();
    let mut what = top.digest.to_string();
    let mut digest = top.digest.clone();
    let mut doc = Manifest::parse(&what, &top.bytes, None)?;
    let mut children = Vec::new();
    let mut depth = 0;
    let image = loop {
        match doc {
            Manifest::Image(m) => break m,
            Manifest::Index(i) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(RegistryError::TooDeep(registry));
                }
                let d = i.select(&what, &opts.platform)?.clone();
                let bytes = p.child_manifest(&d).await?;
                what = d.digest.to_string();
                digest = d.digest.clone();
                doc = Manifest::parse(&what, &bytes, Some(&d.media_type))?;
                children.push((d.digest, bytes));
            }
        }
    };
    let compressions = image.check()?;
    let config_path = p.blob(&image.config, "config").await?;
    let config_bytes = p.cache.read_small(&config_path)?;
    let config = ImageConfig::parse(&image.config.digest.to_string(), &config_bytes)?;
    config.check_platform(&image.config.digest.to_string(), &opts.platform)?;
    let mut paths = Vec::new();
    for l in &image.layers {
        paths.push(p.blob(l, "layer").await?);
    }
    let mut paths = paths.into_iter();
    let fetched = assemble::<RegistryError>(
        canonical,
        Some(digest),
        &image,
        &compressions,
        config,
        &opts.platform,
        |_| Ok((paths.next().expect("one path per layer"), 0)),
    )?;
    // Everything verified: remember the manifests and the tag for offline builds.
    if p.net.is_some() {
        p.cache.insert_bytes(&top.digest, &top.bytes)?;
        for (d, b) in &children {
            p.cache.insert_bytes(d, b)?;
        }
        if let (Some(tag), None) = (&p.r.tag, &p.r.digest) {
            p.cache
                .set_ref(&p.r.registry, &p.r.repository, tag, &top.digest)?;
        }
    }
    Ok(fetched)
}

impl<'a> Puller<'a> {
    /// A puller that fetches through `client` (blobs) and `manifests`.
    pub(crate) fn online(
        r: &'a RegistryReference,
        cache: &'a BlobCache,
        client: &'a Client,
        reference: &'a Reference,
        manifests: &'a ManifestFetcher,
        quiet: bool,
    ) -> Puller<'a> {
        Puller {
            r,
            cache,
            net: Some(Net {
                client,
                reference,
                manifests,
            }),
            progress: Progress::new(quiet),
            quiet,
        }
    }

    /// A puller that only reads the cache (`--offline`).
    pub(crate) fn offline(
        r: &'a RegistryReference,
        cache: &'a BlobCache,
        quiet: bool,
    ) -> Puller<'a> {
        Puller {
            r,
            cache,
            net: None,
            progress: Progress::new(quiet),
            quiet,
        }
    }

    /// The top manifest, from the registry or (offline) the cache.
    pub(crate) async fn top_manifest(&self) -> Result<Top, RegistryError> {
        match self.net {
            Some(_) => self.top_manifest_online().await,
            None => self.top_manifest_offline(),
        }
    }

    fn top_manifest_offline(&self) -> Result<Top, RegistryError> {
        let r = self.r;
        let digest = match (&r.digest, &r.tag) {
            (Some(d), _) => d.clone(),
            (None, Some(tag)) => self
                .cache
                .get_ref(&r.registry, &r.repository, tag)?
                .ok_or_else(|| CacheError::NotCached {
                    what: format!("tag {}:{tag}", r.name()),
                })?,
            (None, None) => unreachable!("the parser sets a tag or a digest"),
        };
        let path = self.cache.require("manifest", &digest, None)?;
        let bytes = self.cache.read_small(&path)?;
        Ok(Top { digest, bytes })
    }

    async fn top_manifest_online(&self) -> Result<Top, RegistryError> {
        let net = self.net.as_ref().expect("online");
        let registry = &self.r.registry;
        if self.r.digest.is_none() {
            // A HEAD names the tag's manifest; if it is cached (and still verifies), skip the GET.
            let tag = self.r.tag.as_deref().unwrap_or("latest");
            if let Some(d) = net.manifests.head_digest(tag).await {
                if let Ok(d) = Digest::parse(&d) {
                    if let Lookup::Hit(path) = self.cache.lookup(&d, None)? {
                        let bytes = self.cache.read_small(&path)?;
                        return Ok(Top { digest: d, bytes });
                    }
                }
            }
        }
        let what = self.r.to_string();
        let name = match (&self.r.digest, &self.r.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => unreachable!("the parser sets a tag or a digest"),
        };
        let got = net.manifests.get(&name, &what).await?;
        let bytes = got.bytes;
        let actual = Digest::of_bytes(&bytes);
        let mismatch = |detail: String| RegistryError::ManifestDigest {
            registry: registry.clone(),
            what: what.clone(),
            detail,
        };
        if let Some(d) = &self.r.digest {
            if *d != actual {
                return Err(mismatch(format!("expected {d}, got {actual}")));
            }
        } else if let Some(claimed) = &got.claimed_digest {
            if *claimed != actual.to_string() {
                return Err(mismatch(format!(
                    "the registry says {claimed}, got {actual}"
                )));
            }
        }
        Ok(Top {
            digest: actual,
            bytes: bytes.to_vec(),
        })
    }

    /// A manifest named by an index entry: size capped before the pull, size and digest
    /// checked after.
    async fn child_manifest(&self, d: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        manifest::check_size(&d.digest.to_string(), d.size)?;
        let Some(net) = &self.net else {
            let path = self.cache.require("manifest", &d.digest, Some(d.size))?;
            return Ok(self.cache.read_small(&path)?);
        };
        if let Lookup::Hit(path) = self.cache.lookup(&d.digest, Some(d.size))? {
            return Ok(self.cache.read_small(&path)?);
        }
        let what = d.digest.to_string();
        let bytes = net.manifests.get(&what, &what).await?.bytes;
        d.digest.verify_bytes(d.size, &bytes)?;
        Ok(bytes)
    }

    /// A config or layer blob in the cache, verified; fetched (streamed through the checks)
    /// if missing or corrupt.
    pub(crate) async fn blob(&self, d: &Descriptor, kind: &str) -> Result<PathBuf, RegistryError> {
        if kind == "config" {
            manifest::check_size(&d.digest.to_string(), d.size)?;
        }
        let Some(net) = &self.net else {
            return Ok(self.cache.require(kind, &d.digest, Some(d.size))?);
        };
        match self.cache.lookup(&d.digest, Some(d.size))? {
            Lookup::Hit(p) => return Ok(p),
            Lookup::Missing => {}
            Lookup::Corrupt(e) => {
                if !self.quiet {
                    eprintln!("hyperbuild: cached {kind} was corrupt ({e}); fetching it again");
                }
            }
        }
        let registry = &self.r.registry;
        // Our own descriptor: never hand `urls` to the client (it would follow them).
        let desc = OciDescriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.to_string(),
            size: i64::try_from(d.size).unwrap_or(i64::MAX),
            urls: None,
            annotations: None,
            ..OciDescriptor::default()
        };
        let mut stream = net
            .client
            .pull_blob_stream(net.reference, &desc)
            .await
            .map_err(|e| match e {
                OciDistributionError::ServerError { code: 404, .. } => RegistryError::NotFound {
                    registry: registry.clone(),
                    what: format!("{kind} {}", d.digest),
                },
                OciDistributionError::RegistryError { envelope, .. }
                    if envelope.errors.iter().any(|e| {
                        matches!(
                            e.code,
                            oci_client::errors::OciErrorCode::BlobUnknown
                                | oci_client::errors::OciErrorCode::NotFound
                        )
                    }) =>
                {
                    RegistryError::NotFound {
                        registry: registry.clone(),
                        what: format!("{kind} {}", d.digest),
                    }
                }
                e => request_err(registry, e),
            })?;
        if let Some(len) = stream.content_length {
            if len != d.size {
                return Err(DigestError::SizeMismatch {
                    digest: d.digest.clone(),
                    expected: d.size,
                    actual: len,
                }
                .into());
            }
        }
        let bar = self.progress.blob(&d.digest.hex()[..12], d.size);
        let mut w = self.cache.writer(&d.digest, d.size)?;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    w.write_all(&bytes).map_err(verify_err)?;
                    bar.inc(bytes.len() as u64);
                }
                // The client's own digest check fails at the very end; report ours instead.
                Err(_) if w.written() == d.size => break,
                Err(e) => {
                    bar.abandon();
                    return Err(RegistryError::Request {
                        registry: registry.clone(),
                        reason: format!("{kind} {}: {}", d.digest, chain(&e)),
                    });
                }
            }
        }
        bar.finish();
        w.commit().map_err(verify_err)
    }
}

/// A verification failure while writing a blob is the registry's fault, not the cache's.
fn verify_err(e: CacheError) -> RegistryError {
    match e {
        CacheError::Verify(d) => RegistryError::Verify(d),
        e => RegistryError::Cache(e),
    }
}

/// Whether plain HTTP may be used: loopback registries, and ones named with
/// `--insecure-registry HOST:PORT`.
pub fn plain_http_allowed(r: &RegistryReference, insecure: &[String]) -> bool {
    r.is_loopback() || insecure.contains(&r.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_or_listed() {
        let parse = |s: &str| RegistryReference::parse(s).unwrap();
        let none: Vec<String> = vec![];
        assert!(plain_http_allowed(&parse("127.0.0.1:5000/a"), &none));
        assert!(plain_http_allowed(&parse("127.9.9.9:5000/a"), &none));
        assert!(plain_http_allowed(&parse("localhost:5000/a"), &none));
        assert!(plain_http_allowed(&parse("[::1]:5000/a"), &none));
        assert!(!plain_http_allowed(&parse("10.0.0.1:5000/a"), &none));
        assert!(!plain_http_allowed(&parse("registry.example.com/a"), &none));
        assert!(!plain_http_allowed(&parse("alpine"), &none));
        let listed = vec!["registry.example.com:5000".to_string()];
        assert!(plain_http_allowed(
            &parse("registry.example.com:5000/a"),
            &listed
        ));
        assert!(!plain_http_allowed(
            &parse("registry.example.com/a"),
            &listed
        ));
    }
}
