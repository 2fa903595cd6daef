//! Manifest GETs with a size cap. oci-client buffers a whole manifest response before anyone
//! can look at it; here the `Content-Length` is checked before the body is read, and the body
//! is read in chunks and abandoned as soon as it passes
//! [`MAX_MANIFEST_BYTES`](super::manifest::MAX_MANIFEST_BYTES). Credentials come
//! from oci-client's token exchange (bearer) or the user's basic credentials.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::ACCEPT;

use super::manifest::{self, MANIFEST_TYPES};
use super::registry::RegistryError;

/// How requests are authenticated.
pub(crate) enum HttpAuth {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

/// Fetches manifests of one repository.
pub(crate) struct ManifestFetcher {
    http: reqwest::Client,
    base: String,
    registry: String,
    auth: HttpAuth,
}

/// A manifest's bytes and the digest the registry claims for them, if it sent one.
pub(crate) struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub claimed_digest: Option<String>,
}

impl ManifestFetcher {
    /// `scheme` is `http` or `https`; `host` the resolved registry host (`registry-1.docker.io`
    /// for Docker Hub); `registry` the name used in errors.
    pub fn new(
        scheme: &str,
        host: &str,
        repository: &str,
        registry: &str,
        auth: HttpAuth,
    ) -> Result<ManifestFetcher, RegistryError> {
        super::registry::tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| RegistryError::Request {
                registry: registry.to_string(),
                reason: e.to_string(),
            })?;
        Ok(ManifestFetcher {
            http,
            base: format!("{scheme}://{host}/v2/{repository}/manifests"),
            registry: registry.to_string(),
            auth,
        })
    }

    fn request(&self, method: reqwest::Method, name: &str) -> reqwest::RequestBuilder {
        let url = format!("{}/{name}", self.base);
        let req = self
            .http
            .request(method, &url)
            .header(ACCEPT, MANIFEST_TYPES.join(", "));
        match &self.auth {
            HttpAuth::Anonymous => req,
            HttpAuth::Basic(u, p) => req.basic_auth(u, Some(p)),
            HttpAuth::Bearer(t) => req.bearer_auth(t),
        }
    }

    /// The digest a HEAD of the manifest reports (`Docker-Content-Digest`), if any; `None` on
    /// any failure (the caller then GETs, which reports errors properly).
    pub async fn head_digest(&self, name: &str) -> Option<String> {
        let resp = self
            .request(reqwest::Method::HEAD, name)
            .send()
            .await
            .ok()?;
        if resp.status() != StatusCode::OK {
            return None;
        }
        let v = resp.headers().get("docker-content-digest")?;
        v.to_str().ok().map(str::to_string)
    }

    /// GETs the manifest named by a tag or a digest (already validated by the parsers).
    pub async fn get(&self, name: &str, what: &str) -> Result<FetchedManifest, RegistryError> {
        let req = self.request(reqwest::Method::GET, name);
        let request_err = |e: reqwest::Error| RegistryError::Request {
            registry: self.registry.clone(),
            reason: format!("manifest {what}: {}", super::registry::chain(&e)),
        };
        let mut resp = req.send().await.map_err(request_err)?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::Unauthorized {
                    registry: self.registry.clone(),
                });
            }
            StatusCode::NOT_FOUND => {
                return Err(RegistryError::NotFound {
                    registry: self.registry.clone(),
                    what: format!("manifest {what}"),
                });
            }
            s => {
                return Err(RegistryError::Request {
                    registry: self.registry.clone(),
                    reason: format!("manifest {what}: http status {s}"),
                });
            }
        }
        if let Some(len) = resp.content_length() {
            manifest::check_size(what, len)?;
        }
        let claimed_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(request_err)? {
            // Stops reading once past the cap.
            manifest::check_size(what, (bytes.len() + chunk.len()) as u64)?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(FetchedManifest {
            bytes,
            claimed_digest,
        })
    }
}
