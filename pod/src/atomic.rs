//! Output files that appear whole or not at all, and leave nothing behind when the process is
//! killed (SIGKILL included) while writing them.
//!
//! [`PendingFile::beside`] opens an *unnamed* file (`O_TMPFILE`) in the output's directory: it
//! has no name until [`PendingFile::persist`] links it in (`linkat` through
//! `/proc/self/fd/N`, or `AT_EMPTY_PATH` where `/proc` is missing), so a kill at any earlier
//! moment leaves nothing: the kernel frees the inode with the last descriptor. When the output
//! path does not exist yet the link *is* the final step (atomic, never partial); when it does,
//! the file is linked under a temp name and renamed over it, which leaves a named temp file only
//! for a kill landing between those two system calls.
//!
//! Where the filesystem has no `O_TMPFILE` (the open fails with `EOPNOTSUPP`, `EISDIR` or
//! `EINVAL`: some network and FUSE filesystems, kernels before 3.11) it falls back to a named
//! temp file `.NAME.XXXXXX.tmp` beside the output, removed on every error and on drop, but left
//! by a SIGKILL.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Mode, OFlags};
use rustix::io::Errno;

/// A file being written that will appear at its path only when [`persist`](Self::persist)ed.
pub struct PendingFile {
    file: File,
    inner: Inner,
}

enum Inner {
    /// `O_TMPFILE`: no name yet.
    Unnamed,
    /// The fallback: a named temp file, removed on drop unless persisted.
    Named(tempfile::TempPath),
}

impl PendingFile {
    /// A new empty file in `path`'s directory (mode 0600 until the caller changes it).
    pub fn beside(path: &Path) -> io::Result<PendingFile> {
        let dir = parent_of(path);
        match rustix::fs::openat(
            CWD,
            dir,
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => Ok(PendingFile {
                file: File::from(fd),
                inner: Inner::Unnamed,
            }),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => {
                let (file, tmp) = temp_name_beside(path)?.into_parts();
                Ok(PendingFile {
                    file,
                    inner: Inner::Named(tmp),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The file being written.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// `true` when the file is unnamed until persisted (no fallback to a named temp file).
    pub fn is_unnamed(&self) -> bool {
        matches!(self.inner, Inner::Unnamed)
    }

    /// Gives the file the name `path` (replacing what is there), atomically. The caller fsyncs
    /// the file before and the directory after, as durability needs.
    pub fn persist(self, path: &Path) -> io::Result<File> {
        match self.inner {
            Inner::Named(tmp) => {
                tmp.persist(path).map_err(|e| e.error)?;
            }
            Inner::Unnamed => match link(&self.file, path) {
                Ok(()) => {}
                Err(Errno::EXIST) => {
                    // Linked under a temp name, then renamed over the old file.
                    let tmp = unique_temp_name(path)?;
                    link(&self.file, &tmp)?;
                    if let Err(e) = std::fs::rename(&tmp, path) {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                }
                Err(e) => return Err(e.into()),
            },
        }
        Ok(self.file)
    }
}

/// Links the unnamed `file` in at `path` (fails with `EEXIST` if the name is taken).
fn link(file: &File, path: &Path) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    match rustix::fs::linkat(CWD, proc_path.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW) {
        // No /proc: AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH but no mount.
        Err(Errno::NOENT) if !Path::new("/proc/self/fd").exists() => {
            rustix::fs::linkat(file.as_fd(), "", CWD, path, AtFlags::EMPTY_PATH)
        }
        r => r,
    }
}

/// A name beside `path` nobody uses now: `.NAME.PID.N.tmp`.
fn unique_temp_name(path: &Path) -> io::Result<PathBuf> {
    let name = file_name(path)?;
    let dir = parent_of(path);
    for n in 0..u32::MAX {
        let candidate = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        if std::fs::symlink_metadata(&candidate).is_err() {
            return Ok(candidate);
        }
    }
    Err(io::Error::other("no free temp name"))
}

/// A named temp file beside `path`: `.NAME.XXXXXX.tmp`.
fn temp_name_beside(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name(path)?))
        .suffix(".tmp")
        .tempfile_in(parent_of(path))
}

fn file_name(path: &Path) -> io::Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name", path.display()),
            )
        })
}

/// The directory `path` is in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn unnamed_until_persisted_then_whole() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.pod");
        let p = PendingFile::beside(&out).unwrap();
        assert!(p.is_unnamed(), "tmpfs and ext4 have O_TMPFILE");
        p.file().write_all(b"first").unwrap();
        assert!(names(dir.path()).is_empty(), "nothing named while writing");
        p.persist(&out).unwrap();
        assert_eq!(names(dir.path()), ["a.pod"]);
        // Over an existing file: replaced, no temp left.
        let p = PendingFile::beside(&out).unwrap();
        p.file().write_all(b"second").unwrap();
        let mut f = p.persist(&out).unwrap();
        assert_eq!(names(dir.path()), ["a.pod"]);
        let mut s = String::new();
        File::open(&out).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "second");
        f.flush().unwrap();
    }

    #[test]
    fn dropped_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = PendingFile::beside(&dir.path().join("x")).unwrap();
        p.file().write_all(&[1; 8192]).unwrap();
        drop(p);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = PendingFile::beside(&dir.path().join("no/such/x"))
            .err()
            .expect("no directory");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
