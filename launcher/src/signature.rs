//! `--require-signature PUB`: refuse a pod that is not signed by the key in `PUB` (an Ed25519
//! SPKI PEM public key) before any engine opens, maps or boots it.
//!
//! Where the key comes from, first found wins (`docs/launcher.md`):
//! 1. `--require-signature PUB` on the command line;
//! 2. the environment variable [`ENV`] (`HYPERLAUNCH_REQUIRE_SIGNATURE=PUB`);
//! 3. the host configuration file [`HOST_CONFIG`], a line `require-signature = PUB`.
//!
//! There is no way to switch the requirement off once one of them sets it: a unit or script that
//! forgets the flag still gets the host's requirement, and one that sets another key still
//! requires a signature. The check reads the pod's headers and manifest (`pod::Pod::open`) and
//! its `signature.ed25519` entry; the sections are checked against the signed manifest by the
//! engines (kernel and initramfs before boot) and by dm-verity as the guest reads the rootfs. A
//! pod without a verity tree has its whole rootfs hashed here, before boot.

use std::path::{Path, PathBuf};

use pod::signature::{self, SignatureError};

/// The environment variable that requires a signature by the key file it names.
pub const ENV: &str = "HYPERLAUNCH_REQUIRE_SIGNATURE";
/// The host configuration file read when neither the flag nor [`ENV`] is set.
pub const HOST_CONFIG: &str = "/etc/hyperpod/hyperlaunch.conf";
/// The key of [`HOST_CONFIG`] that requires a signature.
const CONFIG_KEY: &str = "require-signature";

/// Where the required key was named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    HostConfig(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => write!(f, "--require-signature"),
            Origin::Env => write!(f, "${ENV}"),
            Origin::HostConfig(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a launch was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureCheckError {
    #[error("{path}: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `require-signature = /path/to/key.pub`")]
    ConfigLine { path: PathBuf, line: usize },
    #[error("public key {key} (from {origin}): {reason}")]
    Key {
        key: PathBuf,
        origin: Origin,
        reason: String,
    },
    #[error("{pod}: {source}")]
    Pod {
        pod: PathBuf,
        #[source]
        source: pod::PodError,
    },
    #[error("{pod}: signature required by {origin} ({key}): {source}")]
    Refused {
        pod: PathBuf,
        key: PathBuf,
        origin: Origin,
        #[source]
        source: SignatureError,
    },
}

/// Parses a host configuration file: `#` comments, blank lines, `require-signature = PATH`.
/// Other keys are left for other parts of the launcher (none yet) and ignored.
pub fn parse_config(path: &Path, text: &str) -> Result<Option<PathBuf>, SignatureCheckError> {
    let mut key = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || SignatureCheckError::ConfigLine {
            path: path.to_path_buf(),
            line: i + 1,
        };
        let (k, v) = line.split_once('=').ok_or_else(bad)?;
        if k.trim() == CONFIG_KEY {
            let v = v.trim();
            if v.is_empty() {
                return Err(bad());
            }
            key = Some(PathBuf::from(v));
        }
    }
    Ok(key)
}

/// The required key and where it was named: the flag, else [`ENV`], else `host_config` (a
/// missing file requires nothing).
pub fn required_key(
    flag: Option<&Path>,
    env: Option<std::ffi::OsString>,
    host_config: &Path,
) -> Result<Option<(PathBuf, Origin)>, SignatureCheckError> {
    if let Some(p) = flag {
        return Ok(Some((p.to_path_buf(), Origin::Flag)));
    }
    if let Some(v) = env.filter(|v| !v.is_empty()) {
        return Ok(Some((PathBuf::from(v), Origin::Env)));
    }
    match std::fs::read_to_string(host_config) {
        Ok(text) => Ok(parse_config(host_config, &text)?
            .map(|k| (k, Origin::HostConfig(host_config.to_path_buf())))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SignatureCheckError::Config {
            path: host_config.to_path_buf(),
            source,
        }),
    }
}

/// Checks `pod_path`'s signature against the required key, if any (see the module docs).
pub fn enforce(flag: Option<&Path>, pod_path: &Path) -> Result<(), SignatureCheckError> {
    let Some((key, origin)) = required_key(flag, std::env::var_os(ENV), Path::new(HOST_CONFIG))?
    else {
        return Ok(());
    };
    check(&key, origin, pod_path)
}

/// Checks that `pod_path` is signed by the key in the file `key`.
pub fn check(key: &Path, origin: Origin, pod_path: &Path) -> Result<(), SignatureCheckError> {
    let key_err = |reason: String| SignatureCheckError::Key {
        key: key.to_path_buf(),
        origin: origin.clone(),
        reason,
    };
    let pem = std::fs::read_to_string(key).map_err(|e| key_err(e.to_string()))?;
    let public = signature::verifying_key_from_pem(&pem).map_err(|e| key_err(e.to_string()))?;
    let pod = pod::Pod::open(pod_path).map_err(|source| SignatureCheckError::Pod {
        pod: pod_path.to_path_buf(),
        source,
    })?;
    signature::verify_pod(&pod, &public).map_err(|source| SignatureCheckError::Refused {
        pod: pod_path.to_path_buf(),
        key: key.to_path_buf(),
        origin,
        source,
    })?;
    // Without a verity tree nothing checks the rootfs as the guest reads it: check the signed
    // digest now, so a signature always covers every byte the guest sees.
    if pod.manifest().verity.is_none() {
        pod.verify_section(pod::Section::Rootfs)
            .map_err(|source| SignatureCheckError::Pod {
                pod: pod_path.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_flag_then_env_then_host_config() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("hyperlaunch.conf");
        let none = required_key(None, None, &conf).unwrap();
        assert_eq!(none, None, "a missing host config requires nothing");
        std::fs::write(
            &conf,
            "# host policy\n\nrequire-signature = /etc/keys/ci.pub\n",
        )
        .unwrap();
        assert_eq!(
            required_key(None, None, &conf).unwrap(),
            Some((
                PathBuf::from("/etc/keys/ci.pub"),
                Origin::HostConfig(conf.clone())
            ))
        );
        assert_eq!(
            required_key(None, Some("/env.pub".into()), &conf).unwrap(),
            Some((PathBuf::from("/env.pub"), Origin::Env))
        );
        assert_eq!(
            required_key(Some(Path::new("/flag.pub")), Some("/env.pub".into()), &conf).unwrap(),
            Some((PathBuf::from("/flag.pub"), Origin::Flag))
        );
        // An empty variable does not switch the host's requirement off.
        assert_eq!(
            required_key(None, Some("".into()), &conf)
                .unwrap()
                .map(|k| k.1),
            Some(Origin::HostConfig(conf.clone()))
        );
        std::fs::write(&conf, "require-signature\n").unwrap();
        assert!(matches!(
            required_key(None, None, &conf),
            Err(SignatureCheckError::ConfigLine { line: 1, .. })
        ));
        std::fs::write(&conf, "require-signature = \n").unwrap();
        assert!(required_key(None, None, &conf).is_err());
    }
}
