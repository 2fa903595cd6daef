//! Opening a pod: every header is parsed and bounded before anything is allocated, and each
//! section is handed out as an (offset, length) in the file without being read.
//!
//! API used by the launcher and `hyperbuild inspect/verify`:
//! `Pod::open(path)` → `pod.manifest()`, `pod.section(Section::Rootfs)` (a [`SectionLoc`]),
//! `pod.file()`, `pod.read_section(..)`, `pod.verify_section(..)`, `pod.verify()`.
//! [`parse_layout`] is the pure parser over any [`ReadAt`] (fuzzed over `&[u8]`).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError};
use crate::tarfmt::{self, ALIGN, BLOCK, MAGIC, MAX_PAX, PAD, TarError};

/// The version number this reader understands, as written after [`MAGIC`].
pub const FORMAT: &str = "1";

/// The entry name of the optional signature section (a 64-byte Ed25519 signature of the
/// manifest's bytes), the last entry when present.
pub const SIGNATURE_ENTRY: &str = "signature.ed25519";
/// Size of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A payload section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    Kernel,
    Initramfs,
    Rootfs,
    /// `rootfs.verity`, present when the manifest has `verity`.
    Verity,
}

impl Section {
    /// The payload sections every pod has, in file order.
    pub const ALL: [Section; 3] = [Section::Kernel, Section::Initramfs, Section::Rootfs];

    /// The entry name in the tar.
    pub fn name(self) -> &'static str {
        match self {
            Section::Kernel => "kernel",
            Section::Initramfs => "initramfs",
            Section::Rootfs => "rootfs.ext4",
            Section::Verity => "rootfs.verity",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where an entry's data is in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionLoc {
    pub offset: u64,
    pub len: u64,
}

/// Why a pod was refused.
#[derive(Debug, Error)]
pub enum PodError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a pod: {0}")]
    BadMagic(&'static str),
    #[error("unsupported pod format {0:?} (this build reads {FORMAT})")]
    Version(String),
    #[error("truncated: the file ends inside {0}")]
    Truncated(&'static str),
    #[error("bad tar header for {entry} at offset {offset}: {source}")]
    Header {
        entry: &'static str,
        offset: u64,
        source: TarError,
    },
    #[error("expected entry {expected:?} at offset {offset}, found {found:?}")]
    Entry {
        expected: &'static str,
        found: String,
        offset: u64,
    },
    #[error("{entry}: data at offset {offset} is not 4 KiB aligned")]
    Misaligned { entry: &'static str, offset: u64 },
    #[error(
        "{entry}: {len} bytes at offset {offset} run past the end of the file ({file_len} bytes)"
    )]
    PastEnd {
        entry: &'static str,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    #[error("manifest.json has {0} bytes, more than the 1 MiB limit")]
    ManifestTooLarge(u64),
    #[error("manifest.json: {0}")]
    Manifest(#[from] ManifestError),
    #[error("{entry}: the manifest says {manifest} bytes but the tar entry has {tar}")]
    SizeMismatch {
        entry: &'static str,
        manifest: u64,
        tar: u64,
    },
    #[error("{entry}: sha256 is {actual}, the manifest says {expected}")]
    DigestMismatch {
        entry: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{entry}: {len} bytes is more than the {limit} this caller reads into memory")]
    TooLargeToRead {
        entry: &'static str,
        len: u64,
        limit: u64,
    },
}

/// Positioned reads, so the parser works on files and on byte slices alike.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

/// The parsed structure of a pod.
#[derive(Clone, Debug)]
pub struct Layout {
    pub manifest: Manifest,
    /// The manifest's bytes as stored.
    pub manifest_bytes: Vec<u8>,
    pub manifest_loc: SectionLoc,
    /// Kernel, initramfs, rootfs, in that order.
    pub sections: [SectionLoc; 3],
    /// `rootfs.verity`, when the manifest has `verity`.
    pub verity: Option<SectionLoc>,
    /// The signature entry's data and bytes, when the pod is signed.
    pub signature: Option<(SectionLoc, [u8; SIGNATURE_LEN])>,
    /// Where the signature entry starts, or would start: the end of the payload entries.
    pub payload_end: u64,
    pub file_len: u64,
}

fn read_at<R: ReadAt + ?Sized>(
    r: &R,
    buf: &mut [u8],
    offset: u64,
    what: &'static str,
) -> Result<(), PodError> {
    r.read_exact_at(buf, offset).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => PodError::Truncated(what),
        _ => PodError::Io(e),
    })
}

/// Reads one `PAX header + ustar header` pair at `pos`; returns (comment, data offset, size).
fn read_entry<R: ReadAt + ?Sized>(
    r: &R,
    pos: u64,
    entry: &'static str,
    file_len: u64,
) -> Result<(String, SectionLoc), PodError> {
    let mut block = [0u8; 512];
    read_at(r, &mut block, pos, entry)?;
    let pax_header = tarfmt::decode_header(&block).map_err(|source| {
        if pos == 0 {
            PodError::BadMagic("the file does not start with a tar header")
        } else {
            PodError::Header {
                entry,
                offset: pos,
                source,
            }
        }
    })?;
    if pax_header.typeflag != b'x' {
        return Err(if pos == 0 {
            PodError::BadMagic("the first tar entry is not the pod's PAX header")
        } else {
            PodError::Entry {
                expected: entry,
                found: pax_header.name,
                offset: pos,
            }
        });
    }
    if pax_header.size == 0 || pax_header.size > MAX_PAX {
        return Err(PodError::Header {
            entry,
            offset: pos,
            source: TarError::PaxRecord,
        });
    }
    let mut pax_data = vec![0u8; pax_header.size as usize];
    read_at(r, &mut pax_data, pos + BLOCK, entry)?;
    let pax = tarfmt::decode_pax(&pax_data).map_err(|source| PodError::Header {
        entry,
        offset: pos,
        source,
    })?;
    let header_pos = pos + BLOCK + tarfmt::round_up(pax_header.size, BLOCK);
    read_at(r, &mut block, header_pos, entry)?;
    let header = tarfmt::decode_header(&block).map_err(|source| PodError::Header {
        entry,
        offset: header_pos,
        source,
    })?;
    if header.name != entry || header.typeflag != b'0' {
        return Err(PodError::Entry {
            expected: entry,
            found: header.name,
            offset: header_pos,
        });
    }
    let offset = header_pos + BLOCK;
    if offset % ALIGN != 0 {
        return Err(PodError::Misaligned { entry, offset });
    }
    let len = pax.size.unwrap_or(header.size);
    if offset.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(PodError::PastEnd {
            entry,
            offset,
            len,
            file_len,
        });
    }
    Ok((pax.comment.unwrap_or_default(), SectionLoc { offset, len }))
}

/// Parses a pod's structure: magic, version, the four entries in order, alignment, bounds,
/// the manifest, and that the manifest's sizes match the tar's.
pub fn parse_layout<R: ReadAt + ?Sized>(r: &R) -> Result<Layout, PodError> {
    let file_len = r.size()?;
    if file_len < BLOCK {
        return Err(PodError::BadMagic("the file is shorter than one tar block"));
    }
    let (comment, manifest_loc) = read_entry(r, 0, "manifest.json", file_len)?;
    let version = comment
        .strip_prefix(MAGIC)
        .ok_or(PodError::BadMagic("the first entry has no hyperpod magic"))?
        .split(' ')
        .next()
        .unwrap_or_default();
    if version != FORMAT {
        return Err(PodError::Version(version.chars().take(16).collect()));
    }
    if manifest_loc.len > MAX_MANIFEST_BYTES {
        return Err(PodError::ManifestTooLarge(manifest_loc.len));
    }
    let mut manifest_bytes = vec![0u8; manifest_loc.len as usize];
    read_at(r, &mut manifest_bytes, manifest_loc.offset, "manifest.json")?;
    let manifest = Manifest::from_json(&manifest_bytes)?;

    let mut pos = tarfmt::round_up(manifest_loc.offset + manifest_loc.len, BLOCK);
    let mut sections = [SectionLoc { offset: 0, len: 0 }; 3];
    let entry = |pos: &mut u64, name: &'static str, size: u64| {
        let (comment, loc) = read_entry(r, *pos, name, file_len)?;
        if !comment.starts_with(PAD) {
            return Err(PodError::Header {
                entry: name,
                offset: *pos,
                source: TarError::PaxRecord,
            });
        }
        if loc.len != size {
            return Err(PodError::SizeMismatch {
                entry: name,
                manifest: size,
                tar: loc.len,
            });
        }
        *pos = tarfmt::round_up(loc.offset + loc.len, BLOCK);
        Ok(loc)
    };
    for (section, (_, info)) in Section::ALL.into_iter().zip(manifest.sections()) {
        sections[section.index()] = entry(&mut pos, section.name(), info.size)?;
    }
    let verity = match &manifest.sections.verity {
        Some(info) => Some(entry(&mut pos, Section::Verity.name(), info.size)?),
        None => None,
    };
    let payload_end = pos;
    let mut end = [0u8; 1024];
    read_at(r, &mut end, pos, "the end-of-archive marker")?;
    let mut signature = None;
    if end.iter().any(|&b| b != 0) {
        let loc = entry(&mut pos, SIGNATURE_ENTRY, SIGNATURE_LEN as u64)?;
        let mut sig = [0u8; SIGNATURE_LEN];
        read_at(r, &mut sig, loc.offset, SIGNATURE_ENTRY)?;
        signature = Some((loc, sig));
    }
    let mut end = [0u8; 1024];
    read_at(r, &mut end, pos, "the end-of-archive marker")?;
    if end.iter().any(|&b| b != 0) {
        return Err(PodError::Entry {
            expected: "end of archive",
            found: "more data".into(),
            offset: pos,
        });
    }
    Ok(Layout {
        manifest,
        manifest_bytes,
        manifest_loc,
        sections,
        verity,
        signature,
        payload_end,
        file_len,
    })
}

/// An open pod file.
#[derive(Debug)]
pub struct Pod {
    file: File,
    layout: Layout,
}

impl Pod {
    /// Opens and parses `path`. Reads only headers and the manifest.
    pub fn open(path: &Path) -> Result<Pod, PodError> {
        let file = File::open(path)?;
        let layout = parse_layout(&file)?;
        Ok(Pod { file, layout })
    }

    /// A pod from an open `file` and `bytes`, its whole contents (a mapping of it): the layout
    /// is parsed from `bytes`, without reading the file again.
    pub fn from_file_and_bytes(file: File, bytes: &[u8]) -> Result<Pod, PodError> {
        let layout = parse_layout(bytes)?;
        Ok(Pod { file, layout })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.layout.manifest
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where section `s` is; a pod without a verity tree has an empty `Verity` at offset 0.
    pub fn section(&self, s: Section) -> SectionLoc {
        match s {
            Section::Verity => self
                .layout
                .verity
                .unwrap_or(SectionLoc { offset: 0, len: 0 }),
            _ => self.layout.sections[s.index()],
        }
    }

    /// The payload sections this pod has, in file order.
    pub fn sections(&self) -> Vec<Section> {
        let mut all = Section::ALL.to_vec();
        if self.layout.verity.is_some() {
            all.push(Section::Verity);
        }
        all
    }

    /// What the guest's `/dev/vda` serves: the rootfs, or with a verity tree the rootfs through
    /// the end of `rootfs.verity` (the tree starts [`crate::verity::hash_start_block`] blocks
    /// in).
    pub fn rootfs_disk(&self) -> SectionLoc {
        let rootfs = self.section(Section::Rootfs);
        match self.layout.verity {
            Some(v) => SectionLoc {
                offset: rootfs.offset,
                len: v.offset + v.len - rootfs.offset,
            },
            None => rootfs,
        }
    }

    /// The signature's bytes, when the pod is signed.
    pub fn signature(&self) -> Option<&[u8; SIGNATURE_LEN]> {
        self.layout.signature.as_ref().map(|(_, s)| s)
    }

    /// The manifest's recorded sha256 of `s`.
    pub fn recorded_sha256(&self, s: Section) -> &str {
        match s {
            Section::Verity => self
                .layout
                .manifest
                .sections
                .verity
                .as_ref()
                .map_or("", |i| i.sha256.as_str()),
            _ => &self.layout.manifest.sections()[s.index()].1.sha256,
        }
    }

    /// Reads a whole section into memory, refusing one larger than `limit` bytes.
    pub fn read_section(&self, s: Section, limit: u64) -> Result<Vec<u8>, PodError> {
        let loc = self.section(s);
        if loc.len > limit {
            return Err(PodError::TooLargeToRead {
                entry: s.name(),
                len: loc.len,
                limit,
            });
        }
        let mut buf = vec![0u8; loc.len as usize];
        read_at(&self.file, &mut buf, loc.offset, s.name())?;
        Ok(buf)
    }

    /// Recomputes the sha256 of section `s` and compares it with the manifest's.
    pub fn verify_section(&self, s: Section) -> Result<(), PodError> {
        let loc = self.section(s);
        let mut reader = RangeReader {
            file: &self.file,
            pos: loc.offset,
            end: loc.offset + loc.len,
        };
        let (_, actual) = crate::sha256_reader(&mut reader)?;
        let expected = self.recorded_sha256(s);
        if actual != expected {
            return Err(PodError::DigestMismatch {
                entry: s.name(),
                expected: expected.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// Recomputes every section's digest.
    pub fn verify(&self) -> Result<(), PodError> {
        self.sections()
            .into_iter()
            .try_for_each(|s| self.verify_section(s))
    }

    /// sha256 of the manifest bytes as stored (identifies the whole pod, since the manifest
    /// records every section's digest).
    pub fn manifest_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.layout.manifest_bytes))
    }
}

/// Reads `[pos, end)` of a file without moving any shared cursor.
struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}
