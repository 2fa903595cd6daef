//! Image references, as skopeo writes them:
//!
//! - `NAME[:TAG|@DIGEST]` or `docker://NAME[:TAG|@DIGEST]`: an image in a registry; bare names
//!   get Docker's defaults (`docker.io`, `library/`, `latest`);
//! - `oci:DIR[:REF]`: an OCI image layout directory, optionally one of its named images;
//! - `docker-archive:FILE[:NAME:TAG]`: a tarball written by `docker save`.
//!
//! [`ImageReference::parse`] is a pure function of its input.

use std::fmt;
use std::path::PathBuf;

use super::digest::Digest;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;
/// Transports skopeo knows that hyperbuild does not read.
const OTHER_TRANSPORTS: &[&str] = &[
    "dir",
    "oci-archive",
    "containers-storage",
    "docker-daemon",
    "ostree",
    "sif",
    "tarball",
];

/// Why a reference was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("image reference {0:?}: invalid registry host")]
    Registry(String),
    #[error(
        "image reference {0:?}: invalid repository name (lowercase letters, digits, separators)"
    )]
    Repository(String),
    #[error("image reference {0:?}: invalid tag")]
    Tag(String),
    #[error("image reference {0:?}: invalid digest (only sha256: and 64 lowercase hex)")]
    Digest(String),
    #[error("image reference {0:?}: name longer than 255 characters")]
    TooLong(String),
    #[error("image reference {0:?}: missing path")]
    MissingPath(String),
    #[error("image reference {0:?}: unsupported transport {1:?}")]
    Transport(String, String),
}

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageReference {
    Registry(RegistryReference),
    /// `oci:DIR[:REF]`: `reference` is matched against `org.opencontainers.image.ref.name`.
    OciLayout {
        dir: PathBuf,
        reference: Option<String>,
    },
    /// `docker-archive:FILE[:REF]`: `reference` is matched against `RepoTags`.
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
}

/// An image in a registry, with Docker's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryReference {
    /// Host and optional port (`docker.io`, `127.0.0.1:5000`, `[::1]:5000`).
    pub registry: String,
    /// Repository path (`library/alpine`).
    pub repository: String,
    /// The tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageReference {
    /// Parses a reference in skopeo's syntax (see the module docs).
    pub fn parse(input: &str) -> Result<ImageReference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if let Some(rest) = input.strip_prefix("docker://") {
            return RegistryReference::parse(rest).map(ImageReference::Registry);
        }
        if let Some(rest) = input.strip_prefix("oci:") {
            let (dir, reference) = split_path(input, rest)?;
            return Ok(ImageReference::OciLayout { dir, reference });
        }
        if let Some(rest) = input.strip_prefix("docker-archive:") {
            let (path, reference) = split_path(input, rest)?;
            return Ok(ImageReference::DockerArchive { path, reference });
        }
        // skopeo's other transports are named, not guessed at.
        if let Some((scheme, _)) = input.split_once(':') {
            if OTHER_TRANSPORTS.contains(&scheme) {
                return Err(ReferenceError::Transport(
                    input.to_string(),
                    scheme.to_string(),
                ));
            }
        }
        RegistryReference::parse(input).map(ImageReference::Registry)
    }
}

/// Splits `PATH[:REF]` at the first colon, as skopeo does.
fn split_path(input: &str, rest: &str) -> Result<(PathBuf, Option<String>), ReferenceError> {
    let (path, reference) = match rest.split_once(':') {
        Some((p, r)) => (p, Some(r.to_string()).filter(|r| !r.is_empty())),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(ReferenceError::MissingPath(input.to_string()));
    }
    Ok((PathBuf::from(path), reference))
}

impl RegistryReference {
    /// Parses `[REGISTRY/]REPO[:TAG][@DIGEST]`.
    pub fn parse(input: &str) -> Result<RegistryReference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let err_input = || input.to_string();
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (
                r,
                Some(Digest::parse(d).map_err(|_| ReferenceError::Digest(err_input()))?),
            ),
            None => (input, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if name.len() > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong(err_input()));
        }
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(ReferenceError::Tag(err_input()));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, remainder.to_string())
            }
            _ => (DOCKER_HUB, name.to_string()),
        };
        if !valid_registry(registry) {
            return Err(ReferenceError::Registry(err_input()));
        }
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !valid_repository(&repository) {
            return Err(ReferenceError::Repository(err_input()));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(RegistryReference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// Whether the registry is on this machine (127.0.0.0/8, `::1`, `localhost`), where plain
    /// HTTP is allowed.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }

    /// `REGISTRY/REPO` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// Whether `host[:port]` names a loopback address.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    if host == "localhost" {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

impl fmt::Display for RegistryReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageReference::Registry(r) => write!(f, "docker://{r}"),
            ImageReference::OciLayout { dir, reference } => {
                write!(f, "oci:{}", dir.display())?;
                reference.iter().try_for_each(|r| write!(f, ":{r}"))
            }
            ImageReference::DockerArchive { path, reference } => {
                write!(f, "docker-archive:{}", path.display())?;
                reference.iter().try_for_each(|r| write!(f, ":{r}"))
            }
        }
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => {
                if h.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (
                    None,
                    p.strip_prefix(':').map(Some).unwrap_or(if p.is_empty() {
                        None
                    } else {
                        Some("x")
                    }),
                )
            }
            None => return false,
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(r), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    match host {
        None => true,
        Some(h) => {
            !h.is_empty()
                && h.split('.').all(|c| {
                    let b = c.as_bytes();
                    !b.is_empty()
                        && b[0].is_ascii_alphanumeric()
                        && b[b.len() - 1].is_ascii_alphanumeric()
                        && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
                })
        }
    }
}

/// `component(/component)*`, each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_repository(repo: &str) -> bool {
    !repo.is_empty() && repo.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "."
            || sep == "_"
            || sep == "__"
            || (!sep.is_empty() && sep.bytes().all(|x| x == b'-'));
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn reg(s: &str) -> RegistryReference {
        match ImageReference::parse(s).unwrap() {
            ImageReference::Registry(r) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn docker_defaults() {
        let r = reg("alpine");
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(
            reg("docker://alpine:3.20").to_string(),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(reg("user/app").to_string(), "docker.io/user/app:latest");
        assert_eq!(
            reg("index.docker.io/library/busybox:1").to_string(),
            "docker.io/library/busybox:1"
        );
        let r = reg(&format!("alpine@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().to_string(), D);
        let r = reg(&format!("alpine:3@{D}"));
        assert_eq!(r.tag.as_deref(), Some("3"));
        assert!(r.digest.is_some());
    }

    #[test]
    fn registries_and_ports() {
        let r = reg("127.0.0.1:5000/a/b:c");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "a/b")
        );
        assert!(r.is_loopback());
        let r = reg("localhost/x");
        assert_eq!(r.registry, "localhost");
        assert!(r.is_loopback());
        let r = reg("[::1]:5000/x:y");
        assert_eq!(r.registry, "[::1]:5000");
        assert!(r.is_loopback());
        let r = reg("quay.io/org/app:v1.2");
        assert!(!r.is_loopback());
        assert!(!reg("127.example.com:80/x").is_loopback());
        assert!(is_loopback_host("127.3.4.5:9"));
        assert!(!is_loopback_host("10.0.0.1:5000"));
    }

    #[test]
    fn layouts_and_archives() {
        assert_eq!(
            ImageReference::parse("oci:/tmp/lay:v1").unwrap(),
            ImageReference::OciLayout {
                dir: "/tmp/lay".into(),
                reference: Some("v1".into())
            }
        );
        assert_eq!(
            ImageReference::parse("oci:lay").unwrap(),
            ImageReference::OciLayout {
                dir: "lay".into(),
                reference: None
            }
        );
        assert_eq!(
            ImageReference::parse("docker-archive:/x/img.tar:app:1").unwrap(),
            ImageReference::DockerArchive {
                path: "/x/img.tar".into(),
                reference: Some("app:1".into())
            }
        );
        assert_eq!(
            ImageReference::parse("oci:"),
            Err(ReferenceError::MissingPath("oci:".into()))
        );
    }

    #[test]
    fn rejects_bad_references() {
        type Check = fn(&ReferenceError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, ReferenceError::Empty)),
            ("reg.io/Alpine", |e| {
                matches!(e, ReferenceError::Repository(_))
            }),
            ("ALPINE", |e| matches!(e, ReferenceError::Repository(_))),
            ("a//b", |e| matches!(e, ReferenceError::Repository(_))),
            ("a/../b", |e| matches!(e, ReferenceError::Repository(_))),
            ("reg.io/../x", |e| {
                matches!(e, ReferenceError::Repository(_))
            }),
            ("a:..", |e| matches!(e, ReferenceError::Tag(_))),
            ("a:b/c", |e| matches!(e, ReferenceError::Registry(_))),
            ("a:", |e| matches!(e, ReferenceError::Tag(_))),
            ("a@sha256:abc", |e| matches!(e, ReferenceError::Digest(_))),
            ("a@sha256:../../etc", |e| {
                matches!(e, ReferenceError::Digest(_))
            }),
            ("a@md5:00", |e| matches!(e, ReferenceError::Digest(_))),
            ("reg.io:port/x", |e| {
                matches!(e, ReferenceError::Registry(_))
            }),
            ("-bad.io/x", |e| matches!(e, ReferenceError::Registry(_))),
            ("dir:/tmp/x", |e| matches!(e, ReferenceError::Transport(..))),
            ("containers-storage:x", |e| {
                matches!(e, ReferenceError::Transport(..))
            }),
        ];
        for (input, check) in cases {
            let e = ImageReference::parse(input).expect_err(input);
            assert!(check(&e), "{input:?}: {e:?}");
        }
        let long = format!("a/{}", "b".repeat(300));
        assert!(matches!(
            ImageReference::parse(&long),
            Err(ReferenceError::TooLong(_))
        ));
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(matches!(
            ImageReference::parse(&long_tag),
            Err(ReferenceError::Tag(_))
        ));
    }

    #[test]
    fn parse_never_panics_on_odd_bytes() {
        for s in [
            "@", ":", "/", "a@", "[", "[::1", "[::1]x/y", "a/:b", "oci::", "::::",
        ] {
            let _ = ImageReference::parse(s);
        }
    }
}
