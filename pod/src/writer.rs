//! Sealing a pod: sections are streamed (never held in memory), checked against the sizes and
//! digests the manifest records, and the file appears at its path only when complete: it is
//! written to a temp file in the target directory, fsynced and renamed into place.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::manifest::{Manifest, ManifestError};
use crate::reader::FORMAT;
use crate::tarfmt::{self, BLOCK, MAGIC, PAD};

/// Why a pod could not be sealed.
#[derive(Debug, Error)]
pub enum SealError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("{entry}: got {actual} bytes, the manifest says {expected}")]
    Size {
        entry: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error("{entry}: sha256 is {actual}, the manifest says {expected}")]
    Digest {
        entry: &'static str,
        expected: String,
        actual: String,
    },
    #[error("output path {0:?} has no file name")]
    Path(std::path::PathBuf),
}

/// Writes the PAX + ustar headers of one entry at `pos` so its data lands 4 KiB-aligned.
fn write_headers<W: Write>(
    w: &mut W,
    pos: &mut u64,
    name: &str,
    tag: &str,
    size: u64,
    mtime: u64,
) -> io::Result<()> {
    let pax_blocks = tarfmt::pax_blocks_at(*pos);
    let big = (size > tarfmt::MAX_OCTAL_SIZE).then_some(size);
    let pax = tarfmt::encode_pax(tag, big, (pax_blocks * BLOCK) as usize);
    let pax_name = format!("PaxHeaders/{name}");
    w.write_all(&tarfmt::encode_header(
        &pax_name,
        b'x',
        pax.len() as u64,
        mtime,
    ))?;
    w.write_all(&pax)?;
    w.write_all(&tarfmt::encode_header(name, b'0', size, mtime))?;
    *pos += (pax_blocks + 2) * BLOCK;
    Ok(())
}

fn write_padding<W: Write>(w: &mut W, pos: &mut u64) -> io::Result<()> {
    let pad = tarfmt::round_up(*pos, BLOCK) - *pos;
    w.write_all(&[0u8; BLOCK as usize][..pad as usize])?;
    *pos += pad;
    Ok(())
}

/// Copies `reader` to `w`, checking it yields exactly `expected_size` bytes; returns the
/// sha256 of what was copied.
fn copy_sized<W: Write>(
    w: &mut W,
    reader: &mut dyn Read,
    entry: &'static str,
    expected_size: u64,
) -> Result<String, SealError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        total += n as u64;
        if total > expected_size {
            return Err(SealError::Size {
                entry,
                expected: expected_size,
                actual: total,
            });
        }
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
    }
    if total != expected_size {
        return Err(SealError::Size {
            entry,
            expected: expected_size,
            actual: total,
        });
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Whether [`write_sections`] compares each section's digest with the manifest's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Digests {
    Check,
    Compute,
}

/// Writes manifest and sections; returns the manifest's data offset and the sections' digests.
fn write_sections<W: Write>(
    w: &mut W,
    manifest: &Manifest,
    readers: [&mut dyn Read; 3],
    digests: Digests,
) -> Result<(u64, [String; 3]), SealError> {
    let json = manifest.to_json()?;
    let mtime = manifest.created_unix().max(0) as u64;
    let mut pos = 0u64;
    let magic = format!("{MAGIC}{FORMAT}");
    write_headers(
        w,
        &mut pos,
        "manifest.json",
        &magic,
        json.len() as u64,
        mtime,
    )?;
    let manifest_offset = pos;
    w.write_all(&json)?;
    pos += json.len() as u64;
    write_padding(w, &mut pos)?;
    let mut actual: [String; 3] = Default::default();
    for (((entry, info), reader), out) in manifest
        .sections()
        .into_iter()
        .zip(readers)
        .zip(actual.iter_mut())
    {
        write_headers(w, &mut pos, entry, PAD, info.size, mtime)?;
        *out = copy_sized(w, reader, entry, info.size)?;
        if digests == Digests::Check && *out != info.sha256 {
            return Err(SealError::Digest {
                entry,
                expected: info.sha256.clone(),
                actual: out.clone(),
            });
        }
        pos += info.size;
        write_padding(w, &mut pos)?;
    }
    w.write_all(&[0u8; 2 * BLOCK as usize])?;
    Ok((manifest_offset, actual))
}

/// Writes a whole pod to `w`: manifest, then kernel, initramfs and rootfs streamed from the
/// readers and checked against the manifest's sizes and digests. Deterministic: the output
/// depends only on the inputs (tar times are the manifest's creation time, owners are 0).
pub fn write_pod<W: Write>(
    w: &mut W,
    manifest: &Manifest,
    kernel: &mut dyn Read,
    initramfs: &mut dyn Read,
    rootfs: &mut dyn Read,
) -> Result<(), SealError> {
    write_sections(w, manifest, [kernel, initramfs, rootfs], Digests::Check).map(|_| ())
}

/// Writes a pod into a temp file beside `path` with `fill`, fsyncs it and renames it into
/// place. On any error nothing appears at `path` and the temp file is removed.
fn seal_with(
    path: &Path,
    fill: impl FnOnce(&File) -> Result<(), SealError>,
) -> Result<(), SealError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| SealError::Path(path.to_path_buf()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", file_name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    fill(tmp.as_file())?;
    tmp.as_file().sync_all()?;
    set_mode(tmp.as_file())?;
    tmp.persist(path).map_err(|e| SealError::Io(e.error))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Seals a pod at `path` atomically, checking every section against the manifest's size and
/// sha256: a temp file in the same directory, fsync, rename, fsync of the directory.
pub fn seal(
    path: &Path,
    manifest: &Manifest,
    kernel: &mut dyn Read,
    initramfs: &mut dyn Read,
    rootfs: &mut dyn Read,
) -> Result<(), SealError> {
    seal_with(path, |file| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write_pod(&mut w, manifest, kernel, initramfs, rootfs)?;
        w.flush()?;
        Ok(())
    })
}

/// Seals a pod whose section digests are not known yet, reading each section only once: the
/// manifest is written with placeholder digests, each section is hashed while it is copied, and
/// the real digests are then written over the placeholders (the manifest's length cannot change:
/// every digest is 64 hex digits). The manifest's sizes must be right; its digests are ignored.
/// Returns the manifest as sealed. The bytes equal those [`seal`] writes for that manifest.
pub fn seal_computing_digests(
    path: &Path,
    manifest: &Manifest,
    kernel: &mut dyn Read,
    initramfs: &mut dyn Read,
    rootfs: &mut dyn Read,
) -> Result<Manifest, SealError> {
    let mut sealed = manifest.clone();
    for s in [
        &mut sealed.sections.kernel,
        &mut sealed.sections.initramfs,
        &mut sealed.sections.rootfs,
    ] {
        s.sha256 = "0".repeat(64);
    }
    let placeholder_len = sealed.to_json()?.len();
    seal_with(path, |file| {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let (offset, [k, i, r]) = write_sections(
            &mut w,
            &sealed,
            [kernel, initramfs, rootfs],
            Digests::Compute,
        )?;
        w.flush()?;
        drop(w);
        sealed.sections.kernel.sha256 = k;
        sealed.sections.initramfs.sha256 = i;
        sealed.sections.rootfs.sha256 = r;
        let json = sealed.to_json()?;
        assert_eq!(json.len(), placeholder_len, "digests are fixed-length");
        file.write_all_at(&json, offset)?;
        Ok(())
    })?;
    Ok(sealed)
}

fn set_mode(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
}
