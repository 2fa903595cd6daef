//! Sealing a pod: sections are streamed (never held in memory), checked against the sizes and
//! digests the manifest records, and the file appears at its path only when complete: it is
//! written to a temp file in the target directory, fsynced and renamed into place.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
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

/// Copies `reader` to `w`, checking it yields exactly `expected_size` bytes with sha256
/// `expected_sha`.
fn copy_checked<W: Write>(
    w: &mut W,
    reader: &mut dyn Read,
    entry: &'static str,
    expected_size: u64,
    expected_sha: &str,
) -> Result<u64, SealError> {
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
    let actual = hex::encode(hasher.finalize());
    if actual != expected_sha {
        return Err(SealError::Digest {
            entry,
            expected: expected_sha.to_string(),
            actual,
        });
    }
    Ok(total)
}

/// Writes a whole pod to `w`: manifest, then kernel, initramfs and rootfs streamed from the
/// readers and checked against the manifest. Deterministic: the output depends only on the
/// inputs (tar times are the manifest's creation time, owners are 0).
pub fn write_pod<W: Write>(
    w: &mut W,
    manifest: &Manifest,
    kernel: &mut dyn Read,
    initramfs: &mut dyn Read,
    rootfs: &mut dyn Read,
) -> Result<(), SealError> {
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
    w.write_all(&json)?;
    pos += json.len() as u64;
    write_padding(w, &mut pos)?;
    let readers: [&mut dyn Read; 3] = [kernel, initramfs, rootfs];
    for ((entry, info), reader) in manifest.sections().into_iter().zip(readers) {
        write_headers(w, &mut pos, entry, PAD, info.size, mtime)?;
        pos += copy_checked(w, reader, entry, info.size, &info.sha256)?;
        write_padding(w, &mut pos)?;
    }
    w.write_all(&[0u8; 2 * BLOCK as usize])?;
    Ok(())
}

/// Seals a pod at `path` atomically: a temp file in the same directory, fsync, rename, fsync of
/// the directory. On any error nothing appears at `path` and the temp file is removed.
pub fn seal(
    path: &Path,
    manifest: &Manifest,
    kernel: &mut dyn Read,
    initramfs: &mut dyn Read,
    rootfs: &mut dyn Read,
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
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        write_pod(&mut w, manifest, kernel, initramfs, rootfs)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    set_mode(tmp.as_file())?;
    tmp.persist(path).map_err(|e| SealError::Io(e.error))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn set_mode(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
}
