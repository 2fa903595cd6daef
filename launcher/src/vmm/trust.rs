//! The verified-digest cache: the kernel and initramfs sections are hashed (sha256) and checked
//! against the manifest the first time a given pod file is launched; later launches of the
//! same, unchanged file skip the hash. "Unchanged" is the file's identity and change stamps as
//! the kernel reports them for the open descriptor: (device, inode, size, mtime_ns, ctime_ns).
//! Any write to the file moves its ctime, which user space cannot set back. See
//! `docs/launcher.md` for the trust model.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Identity and change stamps of an open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    /// The stamp of an open file (fstat: the descriptor, not a path that could be swapped).
    pub fn of(file: &File) -> std::io::Result<FileStamp> {
        let m = file.metadata()?;
        Ok(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }

    /// The cache key: the stamp plus the manifest's digest (which records the sections').
    pub fn key(&self, manifest_sha256: &str) -> String {
        format!(
            "v1 dev={} ino={} size={} mtime_ns={} ctime_ns={} manifest={}",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns, manifest_sha256
        )
    }
}

/// `$XDG_CACHE_HOME/hyperpod/verified`, else `$HOME/.cache/hyperpod/verified`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("hyperpod").join("verified"))
}

/// A directory of "this key was verified" records.
pub struct VerifiedCache {
    dir: PathBuf,
}

impl VerifiedCache {
    pub fn new(dir: PathBuf) -> VerifiedCache {
        VerifiedCache { dir }
    }

    fn entry(&self, key: &str) -> PathBuf {
        self.dir.join(hex::encode(Sha256::digest(key.as_bytes())))
    }

    /// Whether `key` was recorded as verified. The record holds the key itself, so a hash
    /// collision of file names cannot vouch for another file.
    pub fn contains(&self, key: &str) -> bool {
        fs::read(self.entry(key)).is_ok_and(|b| b == key.as_bytes())
    }

    /// Records `key` as verified (temp file + rename). Failing to record only costs a rehash
    /// next time, so errors are returned for the caller to ignore or report.
    pub fn insert(&self, key: &str) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.entry(key);
        let mut tmp = tempfile_in(&self.dir)?;
        tmp.1.write_all(key.as_bytes())?;
        tmp.1.sync_all()?;
        fs::rename(&tmp.0, &path)
    }
}

/// A new file in `dir` with a name no other writer uses (for temp file + rename).
pub(crate) fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, File)> {
    for n in 0..100u32 {
        let p = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temp file name"))
}

/// Lowercase hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_keyed_by_stamp_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VerifiedCache::new(dir.path().join("verified"));
        let f = tempfile::NamedTempFile::new().unwrap();
        let stamp = FileStamp::of(f.as_file()).unwrap();
        let key = stamp.key("abc");
        assert!(!cache.contains(&key));
        cache.insert(&key).unwrap();
        assert!(cache.contains(&key));
        assert!(!cache.contains(&stamp.key("abd")));
        // Any write moves mtime/ctime (and size): the old record no longer matches.
        std::thread::sleep(std::time::Duration::from_millis(10));
        f.as_file().write_all(b"x").unwrap();
        let after = FileStamp::of(f.as_file()).unwrap();
        assert_ne!(after, stamp);
        assert!(!cache.contains(&after.key("abc")));
        // A record whose content is not its key is ignored.
        fs::write(cache.entry(&after.key("abc")), b"forged").unwrap();
        assert!(!cache.contains(&after.key("abc")));
    }
}
