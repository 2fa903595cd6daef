//! Registry credentials: `--creds USER:PASS`, or the `auths` of a Docker-style `config.json`
//! (`--authfile FILE`, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
//! Credential helpers (`credsStore`, `credHelpers`) are not run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("--creds: expected USER:PASS")]
    BadCreds,
    #[error("authfile {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("authfile {}: malformed json: {reason}", path.display())]
    Json { path: PathBuf, reason: String },
    #[error("authfile: entry for {0} has an undecodable auth field")]
    BadEntry(String),
}

/// A user name and password (or token) for basic auth or a token exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// Parses `USER:PASS` (the password may contain `:`).
pub fn parse_creds(s: &str) -> Result<Credentials, AuthError> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }),
        _ => Err(AuthError::BadCreds),
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The registry a config key names: `https://host/v1/` → `host`; Docker Hub's aliases →
/// `docker.io`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        k => k,
    }
}

/// Finds the credentials for `registry` in a Docker `config.json` (pure).
pub fn lookup_auths(
    path: &Path,
    json: &[u8],
    registry: &str,
) -> Result<Option<Credentials>, AuthError> {
    let cfg: DockerConfig = serde_json::from_slice(json).map_err(|e| AuthError::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let Some(entry) = cfg
        .auths
        .iter()
        .find(|(k, _)| key_host(k) == registry)
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    if let Some(a) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64_decode(a).ok_or_else(|| AuthError::BadEntry(registry.to_string()))?;
        let s = String::from_utf8(raw).map_err(|_| AuthError::BadEntry(registry.to_string()))?;
        return parse_creds(&s)
            .map(Some)
            .map_err(|_| AuthError::BadEntry(registry.to_string()));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

/// The credentials to use for `registry`: `--creds`, else the authfile, else none.
pub fn resolve_credentials(
    registry: &str,
    creds: Option<&str>,
    authfile: Option<&Path>,
) -> Result<Option<Credentials>, AuthError> {
    if let Some(c) = creds {
        return parse_creds(c).map(Some);
    }
    let (path, explicit) = match authfile {
        Some(p) => (p.to_path_buf(), true),
        None => {
            let dir = std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
            match dir {
                Some(d) => (d.join("config.json"), false),
                None => return Ok(None),
            }
        }
    };
    match std::fs::read(&path) {
        Ok(bytes) => lookup_auths(&path, &bytes, registry),
        Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuthError::Io { path, source }),
    }
}

/// Standard base64 with optional padding; `None` on any invalid character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn finds_entries() {
        let p = Path::new("c.json");
        let json = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "127.0.0.1:5000":{"username":"u","password":"p:w"},"x.io":{"auth":"!!"}}}"#;
        let hub = lookup_auths(p, json, "docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pass")
        );
        let local = lookup_auths(p, json, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(local.password, "p:w");
        assert_eq!(lookup_auths(p, json, "quay.io").unwrap(), None);
        assert!(matches!(
            lookup_auths(p, json, "x.io"),
            Err(AuthError::BadEntry(_))
        ));
        assert!(matches!(
            lookup_auths(p, b"[", "x"),
            Err(AuthError::Json { .. })
        ));
        assert!(format!("{local:?}").contains("redacted"));
    }

    #[test]
    fn creds_flag() {
        assert_eq!(parse_creds("a:b:c").unwrap().password, "b:c");
        assert!(parse_creds("nocolon").is_err());
        assert!(parse_creds(":p").is_err());
        let c = resolve_credentials("r", Some("u:p"), Some(Path::new("/nonexistent"))).unwrap();
        assert_eq!(c.unwrap().username, "u");
        assert!(matches!(
            resolve_credentials("r", None, Some(Path::new("/nonexistent/x.json"))),
            Err(AuthError::Io { .. })
        ));
    }
}
