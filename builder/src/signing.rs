//! `hyperbuild keygen`, `sign` and `verify --pubkey`: the file side of pod signatures (the
//! format and the checks are `pod::signature`'s).

use std::io::Write;
use std::path::{Path, PathBuf};

use pod::signature::{self, SignatureError};

/// Why keygen, sign or verify failed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: already exists (keygen does not overwrite keys)")]
    Exists(PathBuf),
    #[error("cannot get random bytes for a key: {0}")]
    Random(String),
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error("{path}: {source}")]
    Pod {
        path: PathBuf,
        #[source]
        source: pod::PodError,
    },
    #[error("{path}: {source}")]
    Signature {
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: pod::SealError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SigningError + '_ {
    move |source| SigningError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to a new file `path` with `mode` (temp file + rename; never replaces).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SigningError> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        return Err(SigningError::Exists(path.to_path_buf()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".hyperbuild-key.")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io(path))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            SigningError::Exists(path.to_path_buf())
        } else {
            io(path)(e.error)
        }
    })?;
    Ok(())
}

/// Makes a new Ed25519 key pair: `private` (PKCS#8 PEM, mode 0600) and `public` (SPKI PEM).
pub fn keygen(private: &Path, public: &Path) -> Result<(), SigningError> {
    for p in [private, public] {
        if p.exists() {
            return Err(SigningError::Exists(p.to_path_buf()));
        }
    }
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| SigningError::Random(e.to_string()))?;
    let (private_pem, public_pem) =
        signature::key_pair_pem(&secret).map_err(|source| SigningError::Key {
            path: private.to_path_buf(),
            source,
        })?;
    secret.fill(0);
    write_new(private, private_pem.as_bytes(), 0o600)?;
    write_new(public, public_pem.as_bytes(), 0o644)
}

fn read_key(path: &Path) -> Result<String, SigningError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn open_pod(path: &Path) -> Result<pod::Pod, SigningError> {
    pod::Pod::open(path).map_err(|source| SigningError::Pod {
        path: path.to_path_buf(),
        source,
    })
}

/// Signs the pod at `path` in place (temp file + rename), replacing any earlier signature.
/// Checks every section against the manifest first: a signature vouches for the sections.
pub fn sign(key_path: &Path, path: &Path) -> Result<String, SigningError> {
    let key = signature::signing_key_from_pem(&read_key(key_path)?).map_err(|source| {
        SigningError::Key {
            path: key_path.to_path_buf(),
            source,
        }
    })?;
    let pod = open_pod(path)?;
    pod.verify().map_err(|source| SigningError::Pod {
        path: path.to_path_buf(),
        source,
    })?;
    let sig = signature::sign(&key, &pod.layout().manifest_bytes);
    pod::write_signed(&pod, path, &sig).map_err(|source| SigningError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(format!(
        "signed {} (manifest sha256 {})",
        path.display(),
        pod.manifest_sha256()
    ))
}

/// Checks the pod's signature with `pubkey` and then every section against the manifest.
pub fn verify(pubkey: &Path, path: &Path) -> Result<String, SigningError> {
    let key = signature::verifying_key_from_pem(&read_key(pubkey)?).map_err(|source| {
        SigningError::Key {
            path: pubkey.to_path_buf(),
            source,
        }
    })?;
    let pod = open_pod(path)?;
    signature::verify_pod(&pod, &key).map_err(|source| SigningError::Signature {
        path: path.to_path_buf(),
        source,
    })?;
    pod.verify().map_err(|source| SigningError::Pod {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(format!(
        "{}: signature good ({}), {} sections match the manifest",
        path.display(),
        pubkey.display(),
        pod.sections().len()
    ))
}
