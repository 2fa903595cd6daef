//! The content-addressed blob cache: `ROOT/blobs/sha256/<hex>`, plus a small tag index
//! `ROOT/refs/<registry>/<repository>/_tags/<tag>` holding the manifest digest a tag last
//! resolved to.
//!
//! `ROOT` is `$HYPERBUILD_CACHE`, else `$XDG_CACHE_HOME/hyperbuild`, else
//! `~/.cache/hyperbuild`. Blobs are written to an unnamed file in the same directory
//! (`pod::atomic`: a killed build leaves nothing), checked (size and sha256), then linked into
//! place, so two builds can fill the cache at once and a reader never sees a partial blob. Every use re-verifies an entry; a corrupt one is deleted.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pod::atomic::PendingFile;

use super::digest::{Digest, DigestError, Verifier, digest_reader};
use super::manifest::MAX_MANIFEST_BYTES;

/// Failures of the blob cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache: no cache directory (set HYPERBUILD_CACHE, XDG_CACHE_HOME or HOME)")]
    NoRoot,
    #[error("cache: {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("offline: {what} is not in the cache")]
    NotCached { what: String },
    #[error("offline: cached {digest} is corrupt and was deleted; fetch it again online")]
    CorruptOffline { digest: Digest },
    #[error(transparent)]
    Verify(#[from] DigestError),
    #[error("cache: ref file {} holds no valid digest", path.display())]
    BadRef { path: PathBuf },
}

/// What a cache lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// Present and verified.
    Hit(PathBuf),
    Missing,
    /// Present but wrong; the entry was deleted.
    Corrupt(DigestError),
}

/// The blob cache rooted at one directory.
#[derive(Clone, Debug)]
pub struct BlobCache {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl BlobCache {
    /// The cache root from the environment (see the module docs).
    pub fn default_root() -> Result<PathBuf, CacheError> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(p) = var("HYPERBUILD_CACHE") {
            return Ok(p);
        }
        if let Some(p) = var("XDG_CACHE_HOME") {
            return Ok(p.join("hyperbuild"));
        }
        var("HOME")
            .map(|h| h.join(".cache/hyperbuild"))
            .ok_or(CacheError::NoRoot)
    }

    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<BlobCache, CacheError> {
        let blobs = root.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        Ok(BlobCache {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Looks a blob up and verifies it (size, when known, and sha256). A corrupt entry is
    /// deleted, unless another writer already replaced it.
    pub fn lookup(&self, d: &Digest, size: Option<u64>) -> Result<Lookup, CacheError> {
        let path = self.blob_path(d);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Missing),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let meta = f.metadata().map_err(io_err(&path))?;
        let check = (|| {
            if let Some(s) = size {
                if meta.len() != s {
                    return Err(DigestError::SizeMismatch {
                        digest: d.clone(),
                        expected: s,
                        actual: meta.len(),
                    });
                }
            }
            let (actual, _) = digest_reader(&mut f).map_err(|source| DigestError::Io {
                digest: d.clone(),
                source,
            })?;
            if actual != *d {
                return Err(DigestError::Mismatch {
                    digest: d.clone(),
                    actual,
                });
            }
            Ok(())
        })();
        match check {
            Ok(()) => Ok(Lookup::Hit(path)),
            Err(DigestError::Io { source, .. }) => Err(io_err(&path)(source)),
            Err(e) => {
                // Delete only the file we checked, not one a concurrent build just renamed in.
                if let Ok(now) = fs::symlink_metadata(&path) {
                    if now.ino() == meta.ino() && now.dev() == meta.dev() {
                        let _ = fs::remove_file(&path);
                    }
                }
                Ok(Lookup::Corrupt(e))
            }
        }
    }

    /// Like [`lookup`](Self::lookup), for offline use: a missing or corrupt entry is an error
    /// naming `what`.
    pub fn require(
        &self,
        what: &str,
        d: &Digest,
        size: Option<u64>,
    ) -> Result<PathBuf, CacheError> {
        match self.lookup(d, size)? {
            Lookup::Hit(p) => Ok(p),
            Lookup::Missing => Err(CacheError::NotCached {
                what: format!("{what} {d}"),
            }),
            Lookup::Corrupt(_) => Err(CacheError::CorruptOffline { digest: d.clone() }),
        }
    }

    /// Reads a small verified blob (manifest, index, config; at most the manifest size cap).
    pub fn read_small(&self, path: &Path) -> Result<Vec<u8>, CacheError> {
        let f = File::open(path).map_err(io_err(path))?;
        let mut v = Vec::new();
        f.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut v)
            .map_err(io_err(path))?;
        Ok(v)
    }

    /// Stores bytes already in memory under their digest (verified against `d`).
    pub fn insert_bytes(&self, d: &Digest, bytes: &[u8]) -> Result<PathBuf, CacheError> {
        let mut w = self.writer(d, bytes.len() as u64)?;
        w.write_all(bytes)?;
        w.commit()
    }

    /// A writer for blob `d` of `size` bytes; nothing is visible until [`BlobWriter::commit`]
    /// has verified it.
    pub fn writer(&self, d: &Digest, size: u64) -> Result<BlobWriter, CacheError> {
        let dest = self.blob_path(d);
        let tmp = PendingFile::beside(&dest).map_err(io_err(&dest))?;
        Ok(BlobWriter {
            tmp,
            verifier: Verifier::new(d.clone(), size),
            dest,
        })
    }

    fn ref_path(&self, registry: &str, repository: &str, tag: &str) -> PathBuf {
        // The reference parser admits no `..`, `/` in tags, or empty components. Tags live in
        // `_tags/`, a name no repository component can have (they start with [a-z0-9]), so
        // `a/b:v1` and `a/b/v1:x` do not collide.
        self.root
            .join("refs")
            .join(registry)
            .join(repository)
            .join("_tags")
            .join(tag)
    }

    /// Records that `registry/repository:tag` resolved to manifest `d`.
    pub fn set_ref(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        d: &Digest,
    ) -> Result<(), CacheError> {
        let path = self.ref_path(registry, repository, tag);
        let dir = path.parent().expect("ref path has a parent");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tmp = PendingFile::beside(&path).map_err(io_err(dir))?;
        tmp.file()
            .write_all(format!("{d}\n").as_bytes())
            .map_err(io_err(&path))?;
        tmp.persist(&path).map_err(io_err(&path))?;
        Ok(())
    }

    /// The manifest digest `registry/repository:tag` last resolved to, if recorded.
    pub fn get_ref(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<Digest>, CacheError> {
        let path = self.ref_path(registry, repository, tag);
        match fs::read_to_string(&path) {
            Ok(s) => Digest::parse(s.trim())
                .map(Some)
                .map_err(|_| CacheError::BadRef { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

/// A blob being written into the cache.
pub struct BlobWriter {
    tmp: PendingFile,
    verifier: Verifier,
    dest: PathBuf,
}

impl BlobWriter {
    /// Writes bytes, failing as soon as more than the expected size arrives.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), CacheError> {
        self.verifier.update(buf)?;
        self.tmp.file().write_all(buf).map_err(io_err(&self.dest))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.verifier.seen()
    }

    /// Verifies size and digest, then renames the blob into place. On a mismatch the temporary
    /// file is removed and nothing is cached.
    pub fn commit(self) -> Result<PathBuf, CacheError> {
        self.verifier.finish()?;
        self.tmp.file().sync_all().map_err(io_err(&self.dest))?;
        self.tmp.persist(&self.dest).map_err(io_err(&self.dest))?;
        Ok(self.dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_verify_lookup_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlobCache::open(dir.path()).unwrap();
        let d = Digest::of_bytes(b"blob");
        assert!(matches!(c.lookup(&d, Some(4)).unwrap(), Lookup::Missing));
        let p = c.insert_bytes(&d, b"blob").unwrap();
        assert!(matches!(c.lookup(&d, Some(4)).unwrap(), Lookup::Hit(_)));
        assert!(matches!(c.lookup(&d, None).unwrap(), Lookup::Hit(_)));
        fs::write(&p, b"blub").unwrap();
        assert!(matches!(
            c.lookup(&d, Some(4)).unwrap(),
            Lookup::Corrupt(DigestError::Mismatch { .. })
        ));
        assert!(!p.exists(), "corrupt entry deleted");
        assert!(matches!(
            c.require("layer", &d, Some(4)),
            Err(CacheError::NotCached { .. })
        ));
        fs::write(&p, b"blobby").unwrap();
        assert!(matches!(
            c.require("layer", &d, Some(4)),
            Err(CacheError::CorruptOffline { .. })
        ));
    }

    #[test]
    fn wrong_content_is_never_cached() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlobCache::open(dir.path()).unwrap();
        let d = Digest::of_bytes(b"good");
        assert!(matches!(
            c.insert_bytes(&d, b"evil"),
            Err(CacheError::Verify(DigestError::Mismatch { .. }))
        ));
        let mut w = c.writer(&d, 4).unwrap();
        assert!(w.write_all(b"goodx").is_err());
        drop(w);
        let mut w = c.writer(&d, 4).unwrap();
        w.write_all(b"goo").unwrap();
        assert!(matches!(
            w.commit(),
            Err(CacheError::Verify(DigestError::SizeMismatch { .. }))
        ));
        let left: Vec<_> = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "no temp files or blobs left: {left:?}");
    }

    #[test]
    fn refs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlobCache::open(dir.path()).unwrap();
        let d = Digest::of_bytes(b"m");
        assert_eq!(c.get_ref("127.0.0.1:5000", "a/b", "v1").unwrap(), None);
        c.set_ref("127.0.0.1:5000", "a/b", "v1", &d).unwrap();
        assert_eq!(
            c.get_ref("127.0.0.1:5000", "a/b", "v1").unwrap(),
            Some(d.clone())
        );
        // A repository nested under another's tag name does not collide with it.
        c.set_ref("127.0.0.1:5000", "a/b/v1", "x", &d).unwrap();
        assert_eq!(
            c.get_ref("127.0.0.1:5000", "a/b/v1", "x").unwrap(),
            Some(d.clone())
        );
        assert_eq!(c.get_ref("127.0.0.1:5000", "a/b", "v1").unwrap(), Some(d));
        fs::write(
            dir.path().join("refs/127.0.0.1:5000/a/b/_tags/v1"),
            "sha256:../x",
        )
        .unwrap();
        assert!(matches!(
            c.get_ref("127.0.0.1:5000", "a/b", "v1"),
            Err(CacheError::BadRef { .. })
        ));
    }
}
