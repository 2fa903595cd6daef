//! The pod as the VMM reads it: the file mapped read-only, kernel and initramfs as slices of that
//! mapping, the rootfs as a window (offset, length) of the file served in place.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use pod::{Manifest, Pod, PodError, Section};
use thiserror::Error;

use super::trust::{self, FileStamp, VerifiedCache};
use crate::devices::virtio_blk::DiskBackend;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("{path}")]
    Open {
        path: String,
        #[source]
        source: PodError,
    },
    #[error("cannot map the pod file")]
    Map(#[source] std::io::Error),
    #[error("cannot stat the pod file")]
    Stat(#[source] std::io::Error),
    #[error("{section}: sha256 is {actual}, the manifest says {expected}")]
    Digest {
        section: &'static str,
        expected: String,
        actual: String,
    },
    #[error("cannot verify the rootfs")]
    Verify(#[source] PodError),
}

/// A read-only, private mapping of a whole file.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and never remapped while shared; `&[u8]` views of it may be
// sent and shared between threads like any immutable slice.
unsafe impl Send for Mapping {}
// SAFETY: see the `Send` impl: nothing mutates through the pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &File, len: usize) -> std::io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only private mapping of `len` bytes of an open file; the kernel
        // picks the address, so no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives. The pod file is
        // expected not to be truncated while a VM runs from it (a truncation would fault,
        // as with any mapped executable); see docs/launcher.md.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping exactly the region `new` mapped; no slice of it outlives `self`.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}

/// How the kernel and initramfs digests were established for this launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Hashed now and matched the manifest (and recorded in the cache, when there is one).
    Hashed,
    /// Hashed now and matched; not recorded, as others can write the pod (or it changed while
    /// it was hashed).
    HashedNotRecorded,
    /// The cache says this exact file (same stamps) was verified before.
    Cached,
}

impl Trust {
    /// One line for `--timing`.
    pub fn note(self) -> &'static str {
        match self {
            Trust::Hashed => "hyperlaunch timing: kernel/initramfs digests: hashed\n",
            Trust::HashedNotRecorded => {
                "hyperlaunch timing: kernel/initramfs digests: hashed, not recorded (pod writable by others, or changed)\n"
            }
            Trust::Cached => "hyperlaunch timing: kernel/initramfs digests: verified record\n",
        }
    }
}

/// Whether the file of `meta` belongs to this process's effective user and is writable by
/// nobody else (no group or other write bit).
fn only_we_can_write(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    meta.uid() == euid && meta.mode() & 0o022 == 0
}

/// An opened pod, ready to boot.
pub struct PodImage {
    pod: Pod,
    map: Mapping,
    pub trust: Trust,
    /// Whether no other user can write the file (see [`PodImage::backing`]).
    ours: bool,
}

impl PodImage {
    /// Opens and maps `path`, and establishes the kernel/initramfs digests (hash or cache hit;
    /// `cache` = `None` always hashes). `verify_rootfs` hashes the rootfs section too.
    pub fn open(
        path: &Path,
        cache: Option<&VerifiedCache>,
        verify_rootfs: bool,
    ) -> Result<PodImage, SourceError> {
        let open_error = |source| SourceError::Open {
            path: path.display().to_string(),
            source,
        };
        // O_NONBLOCK: a FIFO given as the pod is refused below instead of blocking the open
        // (it changes nothing for a regular file).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| open_error(PodError::Io(e)))?;
        // One fstat for the type, size and stamp; the headers are parsed from the mapping (a
        // few page faults instead of a read per tar header).
        let meta = file.metadata().map_err(SourceError::Stat)?;
        if !meta.is_file() {
            let e = std::io::Error::other("not a regular file");
            return Err(open_error(PodError::Io(e)));
        }
        let stamp = FileStamp::from_metadata(&meta);
        let len = usize::try_from(stamp.size)
            .map_err(|_| SourceError::Map(std::io::ErrorKind::FileTooLarge.into()))?;
        let map = Mapping::new(&file, len).map_err(SourceError::Map)?;
        let pod = Pod::from_file_and_bytes(file, map.bytes()).map_err(open_error)?;
        // Records are only read or written for a pod no one else can write: another user's
        // write in flight could otherwise change bytes after the stamps were taken.
        let recordable = only_we_can_write(&meta);
        let mut image = PodImage {
            pod,
            map,
            trust: Trust::Hashed,
            ours: recordable,
        };
        let cache = cache.filter(|_| recordable);
        let manifest = &image.pod.layout().manifest_bytes;
        if cache.is_some_and(|c| c.contains(&stamp, manifest)) {
            image.trust = Trust::Cached;
        } else {
            for s in [Section::Kernel, Section::Initramfs] {
                let actual = trust::sha256_hex(image.section(s));
                let expected = image.pod.recorded_sha256(s);
                if actual != expected {
                    return Err(SourceError::Digest {
                        section: s.name(),
                        expected: expected.to_string(),
                        actual,
                    });
                }
            }
            // Recorded only if the file did not change while it was hashed. Not recording only
            // means hashing again next time.
            let unchanged = FileStamp::of(image.pod.file()).is_ok_and(|now| now == stamp);
            match cache {
                Some(c) if unchanged => {
                    let _ = c.insert(&stamp, &image.pod.layout().manifest_bytes);
                }
                _ if !unchanged || !recordable => image.trust = Trust::HashedNotRecorded,
                _ => {}
            }
        }
        if verify_rootfs {
            image
                .pod
                .verify_section(Section::Rootfs)
                .map_err(SourceError::Verify)?;
        }
        Ok(image)
    }

    pub fn manifest(&self) -> &Manifest {
        self.pod.manifest()
    }

    fn section(&self, s: Section) -> &[u8] {
        let loc = self.pod.section(s);
        &self.map.bytes()[loc.offset as usize..(loc.offset + loc.len) as usize]
    }

    /// The kernel image, in place in the mapping.
    pub fn kernel(&self) -> &[u8] {
        self.section(Section::Kernel)
    }

    /// The initramfs, in place in the mapping.
    pub fn initramfs(&self) -> &[u8] {
        self.section(Section::Initramfs)
    }

    /// Where the kernel and initramfs are in the pod file, so that guest memory can map their
    /// pages instead of copying them; `None` for a pod that another user can write (a write
    /// after the digest check would otherwise reach the guest through the mapping).
    pub fn backing(&self) -> Option<super::FileBacking<'_>> {
        self.ours.then(|| super::FileBacking {
            file: self.pod.file(),
            kernel_offset: self.pod.section(Section::Kernel).offset,
            initramfs_offset: self.pod.section(Section::Initramfs).offset,
        })
    }

    /// The rootfs (with its verity tree, if any) as a read-only disk window of the pod file.
    pub fn rootfs(&self) -> Result<DiskBackend, SourceError> {
        let loc = self.pod.rootfs_disk();
        let file = self.pod.file().try_clone().map_err(SourceError::Stat)?;
        Ok(DiskBackend {
            file: Arc::new(file),
            offset: loc.offset,
            len: loc.len,
            read_only: true,
        })
    }
}
