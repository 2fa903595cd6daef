//! Content digests: the validated `sha256:<64 lowercase hex>` type, and size + sha256 checks of
//! byte streams and file ranges.
//!
//! A [`Digest`] is checked when it is parsed, so its hex part is safe to use as a file name.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Failures of digest parsing and content verification.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256: and 64 lowercase hex digits")]
    Invalid(String),
    #[error("blob {digest}: size {actual} does not match the descriptor's {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest}: content hashes to {actual}")]
    Mismatch { digest: Digest, actual: Digest },
    #[error("blob {digest}: read failed")]
    Io {
        digest: Digest,
        #[source]
        source: io::Error,
    },
}

/// A `sha256:` digest with exactly 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; anything else (other algorithms, upper case, `/`,
    /// `..`, wrong length) is rejected.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| DigestError::Invalid(s.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Invalid(s.to_string()));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(h: Sha256) -> Digest {
        Digest {
            hex: hex::encode(h.finalize()),
        }
    }

    /// The 64 hex digits (safe as a file name).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Checks that `bytes` has this digest and `size` bytes.
    pub fn verify_bytes(&self, size: u64, bytes: &[u8]) -> Result<(), DigestError> {
        if bytes.len() as u64 != size {
            return Err(DigestError::SizeMismatch {
                digest: self.clone(),
                expected: size,
                actual: bytes.len() as u64,
            });
        }
        let actual = Digest::of_bytes(bytes);
        if actual != *self {
            return Err(DigestError::Mismatch {
                digest: self.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Checks `len` bytes of `path` starting at `offset`: the file must hold at least that many,
    /// and they must hash to this digest. `len` must equal `size` (the descriptor's size).
    pub fn verify_file_range(
        &self,
        path: &Path,
        offset: u64,
        size: u64,
    ) -> Result<(), DigestError> {
        let io_err = |source| DigestError::Io {
            digest: self.clone(),
            source,
        };
        let mut f = File::open(path).map_err(io_err)?;
        let file_len = f.metadata().map_err(io_err)?.len();
        let available = file_len.saturating_sub(offset);
        if offset == 0 && file_len != size || available < size {
            return Err(DigestError::SizeMismatch {
                digest: self.clone(),
                expected: size,
                actual: if offset == 0 { file_len } else { available },
            });
        }
        f.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        let mut v = Verifier::new(self.clone(), size);
        io::copy(&mut (&mut f).take(size), &mut v).map_err(io_err)?;
        v.finish()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts what passes through it and refuses to take more than the
/// expected size; [`Verifier::finish`] checks size and digest.
pub struct Verifier {
    expected: Digest,
    size: u64,
    seen: u64,
    hasher: Sha256,
}

impl Verifier {
    pub fn new(expected: Digest, size: u64) -> Self {
        Verifier {
            expected,
            size,
            seen: 0,
            hasher: Sha256::new(),
        }
    }

    /// Bytes seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Feeds `buf`; fails once more than the expected size has been seen.
    pub fn update(&mut self, buf: &[u8]) -> Result<(), DigestError> {
        self.seen += buf.len() as u64;
        if self.seen > self.size {
            return Err(DigestError::SizeMismatch {
                digest: self.expected.clone(),
                expected: self.size,
                actual: self.seen,
            });
        }
        self.hasher.update(buf);
        Ok(())
    }

    /// Checks the total size and the digest.
    pub fn finish(self) -> Result<(), DigestError> {
        if self.seen != self.size {
            return Err(DigestError::SizeMismatch {
                digest: self.expected,
                expected: self.size,
                actual: self.seen,
            });
        }
        let actual = Digest::from_hasher(self.hasher);
        if actual != self.expected {
            return Err(DigestError::Mismatch {
                digest: self.expected,
                actual,
            });
        }
        Ok(())
    }
}

impl Write for Verifier {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Computes the digest and size of a whole reader.
pub fn digest_reader(mut r: impl Read) -> io::Result<(Digest, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((Digest::from_hasher(h), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_only_canonical_sha256() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Digest::of_bytes(b""), d);
        for bad in [
            "",
            "sha256:",
            "sha512:e3b0",
            &EMPTY.to_uppercase(),
            &EMPTY.replace("sha256:", "sha256:/"),
            "sha256:../../../../etc/passwd",
            &format!("{}0", EMPTY),
            &EMPTY[..EMPTY.len() - 1],
            &EMPTY.replace('e', "E"),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8/.",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn verifier_checks_size_and_hash() {
        let d = Digest::of_bytes(b"hello");
        assert!(d.verify_bytes(5, b"hello").is_ok());
        assert!(matches!(
            d.verify_bytes(4, b"hello"),
            Err(DigestError::SizeMismatch { .. })
        ));
        assert!(matches!(
            d.verify_bytes(5, b"hellO"),
            Err(DigestError::Mismatch { .. })
        ));
        let mut v = Verifier::new(d.clone(), 5);
        assert!(v.update(b"hel").is_ok());
        assert!(v.update(b"lo!").is_err());
        let mut v = Verifier::new(d, 5);
        v.update(b"hel").unwrap();
        assert!(matches!(
            v.finish(),
            Err(DigestError::SizeMismatch { actual: 3, .. })
        ));
    }

    #[test]
    fn verifies_file_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"xxhelloyy").unwrap();
        let d = Digest::of_bytes(b"hello");
        d.verify_file_range(&p, 2, 5).unwrap();
        assert!(d.verify_file_range(&p, 3, 5).is_err());
        assert!(d.verify_file_range(&p, 6, 5).is_err());
        assert!(d.verify_file_range(&p, 0, 5).is_err());
    }
}
