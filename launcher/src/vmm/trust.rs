//! The verified-digest cache: the kernel and initramfs sections are hashed (sha256) and checked
//! against the manifest the first time a given pod file is launched; later launches of the
//! same, unchanged file skip the hash. "Unchanged" is the file's identity and change stamps as
//! the kernel reports them for the open descriptor: (device, inode, size, mtime_ns, ctime_ns).
//! Any write to the file moves its ctime, which user space cannot set back. A record is named
//! after the file's identity and holds the stamps and the manifest's bytes, compared whole: a
//! warm launch hashes nothing (the first sha256 of a process costs ~20 µs of CPU-feature
//! detection here). See `docs/launcher.md` for the trust model.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Format of a record's first line.
const RECORD_VERSION: &str = "v2";

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
        Ok(FileStamp::from_metadata(&file.metadata()?))
    }

    /// The stamp in `m`, the metadata of an open file.
    pub fn from_metadata(m: &fs::Metadata) -> FileStamp {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    /// The record vouching for a file with this stamp and `manifest` (its bytes as stored,
    /// which record every section's digest): the stamp line, then the manifest.
    pub fn record(&self, manifest: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "{RECORD_VERSION} dev={} ino={} size={} mtime_ns={} ctime_ns={}\n",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
        .into_bytes();
        r.extend_from_slice(manifest);
        r
    }

    /// The record's file name: the file's identity (one record per pod file, replaced when the
    /// file changes).
    fn name(&self) -> String {
        format!("{:x}-{:x}", self.dev, self.ino)
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

/// A directory of "this file was verified" records.
pub struct VerifiedCache {
    dir: PathBuf,
}

impl VerifiedCache {
    pub fn new(dir: PathBuf) -> VerifiedCache {
        VerifiedCache { dir }
    }

    fn entry(&self, stamp: &FileStamp) -> PathBuf {
        self.dir.join(stamp.name())
    }

    /// Whether a file with `stamp` and `manifest` was recorded as verified: the record must
    /// equal [`FileStamp::record`] byte for byte.
    pub fn contains(&self, stamp: &FileStamp, manifest: &[u8]) -> bool {
        file_holds(&self.entry(stamp), &stamp.record(manifest))
    }

    /// Records a file with `stamp` and `manifest` as verified (temp file + rename, replacing
    /// the file's previous record). Failing to record only costs a rehash next time, so errors
    /// are returned for the caller to ignore or report.
    pub fn insert(&self, stamp: &FileStamp, manifest: &[u8]) -> std::io::Result<()> {
        create_private_dir(&self.dir)?;
        replace_file(&self.dir, &self.entry(stamp), &stamp.record(manifest), true)
    }
}

/// Creates `dir` and any missing parents with mode 0700 (less the umask): the caches hold
/// what decides whether a launch hashes, so only their owner may write them.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Whether the file at `path` holds exactly `want` (reading at most one byte more).
pub(crate) fn file_holds(path: &Path, want: &[u8]) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut got = Vec::with_capacity(want.len() + 1);
    f.take(want.len() as u64 + 1)
        .read_to_end(&mut got)
        .is_ok_and(|_| got == want)
}

/// Replaces the file at `path`, in the existing directory `dir`, by one holding `bytes`: a
/// temp file beside it (fsynced first when `sync`) renamed over it, removed if anything fails.
/// Readers see the old whole file or the new one.
pub(crate) fn replace_file(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    sync: bool,
) -> std::io::Result<()> {
    let (tmp, mut f) = tempfile_in(dir)?;
    let done = f
        .write_all(bytes)
        .and_then(|_| if sync { f.sync_all() } else { Ok(()) })
        .and_then(|_| fs::rename(&tmp, path));
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    done
}

/// A new file in `dir` with a name no other writer uses (for temp file + rename).
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, File)> {
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
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_are_keyed_by_stamp_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = VerifiedCache::new(dir.path().join("verified"));
        let f = tempfile::NamedTempFile::new().unwrap();
        let stamp = FileStamp::of(f.as_file()).unwrap();
        assert!(!cache.contains(&stamp, b"{\"a\":1}"));
        cache.insert(&stamp, b"{\"a\":1}").unwrap();
        let mode = fs::metadata(&cache.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the cache directory is private: {mode:o}");
        assert!(cache.contains(&stamp, b"{\"a\":1}"));
        // Another manifest, a prefix of it, or more bytes: not vouched for.
        assert!(!cache.contains(&stamp, b"{\"a\":2}"));
        assert!(!cache.contains(&stamp, b"{\"a\":1"));
        assert!(!cache.contains(&stamp, b"{\"a\":1}\n"));
        // Any write moves mtime/ctime (and size): the old record no longer matches.
        std::thread::sleep(std::time::Duration::from_millis(10));
        f.as_file().write_all(b"x").unwrap();
        let after = FileStamp::of(f.as_file()).unwrap();
        assert_ne!(after, stamp);
        assert!(!cache.contains(&after, b"{\"a\":1}"));
        // Recording the changed file replaces the record: one per file.
        cache.insert(&after, b"{\"a\":1}").unwrap();
        assert!(cache.contains(&after, b"{\"a\":1}"));
        assert!(!cache.contains(&stamp, b"{\"a\":1}"));
        assert_eq!(fs::read_dir(&cache.dir).unwrap().count(), 1);
        // A record whose content is not the expected one is ignored.
        fs::write(cache.entry(&after), b"forged").unwrap();
        assert!(!cache.contains(&after, b"{\"a\":1}"));
    }
}
