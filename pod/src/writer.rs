//! Sealing a pod: sections are streamed (never held in memory), checked against the sizes and
//! digests the manifest records, and the file appears at its path only when complete: it is
//! written to an unnamed file in the target directory ([`crate::atomic::PendingFile`]: nothing
//! is left by a SIGKILL), fsynced and linked into place.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::atomic::{PendingFile, parent_of};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::manifest::{Manifest, ManifestError, Verity};
use crate::reader::{FORMAT, Pod, SIGNATURE_ENTRY, SIGNATURE_LEN, Section};
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
    #[error("{actual} section readers for the manifest's {expected} sections")]
    Sections { expected: usize, actual: usize },
    #[error("{0}")]
    Refused(String),
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

/// Writes the manifest entry (headers, JSON, padding) at the start of a pod; returns the
/// position after it and the tar mtime every entry uses.
fn write_manifest_entry<W: Write>(w: &mut W, manifest: &Manifest) -> Result<(u64, u64), SealError> {
    let json = manifest.to_json()?;
    let mtime = manifest.created_unix().max(0) as u64;
    let mut pos = 0u64;
    write_headers(
        w,
        &mut pos,
        "manifest.json",
        &magic(),
        json.len() as u64,
        mtime,
    )?;
    w.write_all(&json)?;
    pos += json.len() as u64;
    write_padding(w, &mut pos)?;
    Ok((pos, mtime))
}

/// Writes manifest and sections, checking each section's size and digest; then the signature
/// entry, if any, and the end of the archive.
fn write_sections<W: Write>(
    w: &mut W,
    manifest: &Manifest,
    readers: Vec<&mut dyn Read>,
    signature: Option<&[u8; SIGNATURE_LEN]>,
) -> Result<(), SealError> {
    let (mut pos, mtime) = write_manifest_entry(w, manifest)?;
    let entries = payload_entries(manifest);
    if readers.len() != entries.len() {
        return Err(SealError::Sections {
            expected: entries.len(),
            actual: readers.len(),
        });
    }
    for ((entry, info), reader) in entries.into_iter().zip(readers) {
        write_headers(w, &mut pos, entry, PAD, info.size, mtime)?;
        let actual = copy_sized(w, reader, entry, info.size)?;
        if actual != info.sha256 {
            return Err(SealError::Digest {
                entry,
                expected: info.sha256.clone(),
                actual,
            });
        }
        pos += info.size;
        write_padding(w, &mut pos)?;
    }
    write_tail(w, pos, mtime, signature)
}

/// The payload entries of `manifest` in file order: kernel, initramfs, rootfs and, when the
/// manifest has a verity tree, `rootfs.verity`.
fn payload_entries(manifest: &Manifest) -> Vec<(&'static str, &crate::SectionInfo)> {
    let mut entries = manifest.sections().to_vec();
    if let Some(v) = &manifest.sections.verity {
        entries.push((Section::Verity.name(), v));
    }
    entries
}

/// The signature entry (if any) at `pos`, then the two zero blocks that end the archive.
fn write_tail<W: Write>(
    w: &mut W,
    mut pos: u64,
    mtime: u64,
    signature: Option<&[u8; SIGNATURE_LEN]>,
) -> Result<(), SealError> {
    if let Some(sig) = signature {
        write_headers(
            w,
            &mut pos,
            SIGNATURE_ENTRY,
            PAD,
            SIGNATURE_LEN as u64,
            mtime,
        )?;
        w.write_all(sig)?;
        pos += SIGNATURE_LEN as u64;
        write_padding(w, &mut pos)?;
    }
    w.write_all(&[0u8; 2 * BLOCK as usize])?;
    Ok(())
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
    write_sections(w, manifest, vec![kernel, initramfs, rootfs], None)
}

/// Seals a pod from all of its parts: one reader per payload section in file order (with
/// `rootfs.verity` when the manifest has a tree) and an optional signature. Atomic and checked
/// like [`seal`]; `hash` (if any) is fed every byte written, so a caller can compare the whole
/// file with a digest it expects before the file is renamed into place (it returns an error
/// to refuse it).
pub fn seal_parts(
    path: &Path,
    manifest: &Manifest,
    readers: Vec<&mut dyn Read>,
    signature: Option<&[u8; SIGNATURE_LEN]>,
    check: impl FnOnce(u64, [u8; 32]) -> Result<(), SealError>,
) -> Result<(), SealError> {
    seal_with(path, |file| {
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            len: 0,
        };
        write_sections(&mut w, manifest, readers, signature)?;
        w.inner.flush()?;
        check(w.len, w.hasher.finalize().into())
    })
}

/// A writer that hashes what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `pod` with `signature` as its signature entry (replacing any) to `path`, atomically:
/// everything before the signature entry is copied unchanged (in the kernel where it can), then
/// the signature entry and the end of the archive.
pub fn write_signed(
    pod: &Pod,
    path: &Path,
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), SealError> {
    let end = pod.layout().payload_end;
    let mtime = pod.manifest().created_unix().max(0) as u64;
    seal_with(path, |file| {
        let mut src = pod.file().try_clone()?;
        src.seek(io::SeekFrom::Start(0))?;
        let mut out = file.try_clone()?;
        let copied = io::copy(&mut (&mut src).take(end), &mut out)?;
        if copied != end {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let mut w = BufWriter::new(out);
        write_tail(&mut w, end, mtime, Some(signature))?;
        w.flush()?;
        Ok(())
    })
}

/// Writes a pod into an unnamed file beside `path` with `fill`, fsyncs it and links it into
/// place. On any error (or a kill) nothing appears at `path` and nothing is left beside it.
fn seal_with(
    path: &Path,
    fill: impl FnOnce(&File) -> Result<(), SealError>,
) -> Result<(), SealError> {
    let tmp = temp_beside(path)?;
    fill(tmp.file())?;
    tmp.file().sync_all()?;
    set_mode(tmp.file())?;
    tmp.persist(path)?;
    File::open(parent_of(path))?.sync_all()?;
    Ok(())
}

/// Seals a pod at `path` atomically, checking every section against the manifest's size and
/// sha256: an unnamed file in the same directory, fsync, link into place, fsync of the
/// directory.
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

/// Where a pod's parts start, as [`write_pod`] lays them out for a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodLayout {
    /// Offset of the manifest's JSON.
    pub manifest: u64,
    /// Offset of each section's tar headers, in file order (kernel, initramfs, rootfs).
    pub headers: [u64; 3],
    /// Offset of each section's data (4 KiB-aligned).
    pub data: [u64; 3],
    /// Offsets of the `rootfs.verity` headers and data, when the manifest has a tree.
    pub verity: Option<(u64, u64)>,
    /// Length of the whole pod (end-of-archive blocks included).
    pub end: u64,
}

/// Bytes of the PAX + ustar headers [`write_headers`] writes at `pos`.
fn headers_len(pos: u64) -> u64 {
    (tarfmt::pax_blocks_at(pos) + 2) * BLOCK
}

/// The layout of the pod [`write_pod`] writes for `manifest` (its JSON length and section
/// sizes decide it).
pub fn layout(manifest: &Manifest) -> Result<PodLayout, SealError> {
    let json_len = manifest.to_json()?.len() as u64;
    let sizes = [
        manifest.sections.kernel.size,
        manifest.sections.initramfs.size,
        manifest.sections.rootfs.size,
    ];
    let manifest_at = headers_len(0);
    let mut pos = tarfmt::round_up(manifest_at + json_len, BLOCK);
    let (mut headers, mut data) = ([0u64; 3], [0u64; 3]);
    for i in 0..3 {
        headers[i] = pos;
        data[i] = pos + headers_len(pos);
        pos = tarfmt::round_up(data[i] + sizes[i], BLOCK);
    }
    let verity = manifest.sections.verity.as_ref().map(|v| {
        let at = (pos, pos + headers_len(pos));
        pos = tarfmt::round_up(at.1 + v.size, BLOCK);
        at
    });
    Ok(PodLayout {
        manifest: manifest_at,
        headers,
        data,
        verity,
        end: pos + 2 * BLOCK,
    })
}

/// A pod being sealed whose rootfs the caller writes in place, straight into the pod file at
/// its final offset (the builder's ext4 writer does), instead of into a temp file that is then
/// copied. Made by [`begin_seal`]; sealed by [`RootfsSlot::finish`], or dropped (the unnamed
/// file goes with it).
pub struct RootfsSlot {
    tmp: PendingFile,
    path: PathBuf,
    /// The manifest as written so far: placeholder digests, the estimated rootfs size.
    manifest: Manifest,
    layout: PodLayout,
    digests: [String; 2],
}

/// Starts sealing a pod at `path`: writes the manifest (placeholder digests; `manifest`'s
/// kernel and initramfs sizes must be right, its rootfs size is an estimate) and the kernel and
/// initramfs sections, hashing them, into an unnamed file beside `path`. The rootfs goes at
/// [`RootfsSlot::offset`]; the file ends there until [`RootfsSlot::finish`].
pub fn begin_seal(
    path: &Path,
    manifest: &Manifest,
    kernel: &mut dyn Read,
    initramfs: &mut dyn Read,
) -> Result<RootfsSlot, SealError> {
    let tmp = temp_beside(path)?;
    let mut sealed = manifest.clone();
    for s in [
        &mut sealed.sections.kernel,
        &mut sealed.sections.initramfs,
        &mut sealed.sections.rootfs,
    ] {
        s.sha256 = "0".repeat(64);
    }
    if sealed.verity.is_some() {
        // An estimate: only its layout matters until `finish`.
        let size = &mut sealed.sections.rootfs.size;
        *size = tarfmt::round_up((*size).max(1), crate::verity::BLOCK);
        verity_placeholder(&mut sealed)?;
    }
    let layout = layout(&sealed)?;
    let mut w = BufWriter::with_capacity(1 << 20, tmp.file());
    let (mut pos, mtime) = write_manifest_entry(&mut w, &sealed)?;
    let mut section = |entry: &'static str, size: u64, reader: &mut dyn Read| {
        write_headers(&mut w, &mut pos, entry, PAD, size, mtime)?;
        let digest = copy_sized(&mut w, reader, entry, size)?;
        pos += size;
        write_padding(&mut w, &mut pos)?;
        Ok::<_, SealError>(digest)
    };
    let digests = [
        section("kernel", sealed.sections.kernel.size, kernel)?,
        section("initramfs", sealed.sections.initramfs.size, initramfs)?,
    ];
    w.flush()?;
    drop(w);
    debug_assert_eq!(pos, layout.headers[2]);
    // The rootfs headers are written by `finish`, once its size is known.
    tmp.file().set_len(layout.data[2])?;
    Ok(RootfsSlot {
        tmp,
        path: path.to_path_buf(),
        manifest: sealed,
        layout,
        digests,
    })
}

impl RootfsSlot {
    /// The pod file being written.
    pub fn file(&self) -> &File {
        self.tmp.file()
    }

    /// Where the rootfs's first byte goes (4 KiB-aligned).
    pub fn offset(&self) -> u64 {
        self.layout.data[2]
    }

    /// Seals the pod with a rootfs of `size` bytes at [`offset`](Self::offset): hashes it, moves
    /// the sections if the real size changed the manifest's length enough to shift them
    /// (rare: the digit count of the size changed and crossed a block), writes the headers, the
    /// final manifest and the end of the archive, fsyncs and links into place. The bytes equal
    /// those [`seal`] writes for the returned manifest.
    pub fn finish(mut self, size: u64) -> Result<Manifest, SealError> {
        let file = self.tmp.file();
        self.manifest.sections.rootfs.size = size;
        let salt = verity_placeholder(&mut self.manifest)?;
        let old = self.layout;
        let new = layout(&self.manifest)?;
        if new.data[0] != old.data[0] {
            // Every section moves by the same multiple of 4 KiB; their headers with them.
            let len = old.data[2] + size - old.data[0];
            move_region(file, old.data[0], new.data[0], len)?;
        }
        // Write the data back to disk while it is hashed (and its verity tree built, in the
        // same read); the fsync below then only has the headers and the manifest left to write.
        let (synced, hashed) = std::thread::scope(|s| {
            let sync = s.spawn(|| file.sync_data());
            let sha = hash_region(file, new.data[2], size, salt);
            (sync.join(), sha)
        });
        synced.map_err(|_| io::Error::other("fsync thread panicked"))??;
        let (rootfs_sha, tree) = hashed?;
        let [kernel_sha, initramfs_sha] = std::mem::take(&mut self.digests);
        self.manifest.sections.kernel.sha256 = kernel_sha;
        self.manifest.sections.initramfs.sha256 = initramfs_sha;
        self.manifest.sections.rootfs.sha256 = rootfs_sha;
        let mtime = self.manifest.created_unix().max(0) as u64;
        let mut end = new.data[2] + size;
        if let (Some((tree, root)), Some((headers_at, data_at))) = (tree, new.verity) {
            let v = self.manifest.verity.as_mut().expect("set above");
            v.root_hash = hex::encode(root);
            self.manifest.kernel_cmdline =
                crate::verity::with_kernel_args(&self.manifest.kernel_cmdline, v);
            self.manifest.sections.verity = Some(crate::SectionInfo::of_bytes(&tree));
            // Zero padding after the rootfs, the verity headers, the tree.
            let mut bytes = vec![0u8; (headers_at - end) as usize];
            let mut pos = headers_at;
            let len = tree.len() as u64;
            write_headers(
                &mut bytes,
                &mut pos,
                Section::Verity.name(),
                PAD,
                len,
                mtime,
            )?;
            debug_assert_eq!(pos, data_at);
            bytes.extend_from_slice(&tree);
            file.write_all_at(&bytes, end)?;
            end = data_at + len;
        }
        // Manifest and kernel headers: everything before the kernel's data.
        let mut head = Vec::with_capacity(new.data[0] as usize);
        let (mut pos, mtime) = write_manifest_entry(&mut head, &self.manifest)?;
        let kernel_size = self.manifest.sections.kernel.size;
        write_headers(&mut head, &mut pos, "kernel", PAD, kernel_size, mtime)?;
        debug_assert_eq!(pos, new.data[0]);
        file.write_all_at(&head, 0)?;
        // The rootfs headers, now that its size is known.
        let mut rootfs_head = Vec::new();
        let mut pos = new.headers[2];
        write_headers(&mut rootfs_head, &mut pos, "rootfs.ext4", PAD, size, mtime)?;
        file.write_all_at(&rootfs_head, new.headers[2])?;
        // Padding after the last section and the end-of-archive blocks.
        let tail = new.end - end;
        file.write_all_at(&vec![0u8; tail as usize], end)?;
        file.set_len(new.end)?;
        file.sync_all()?;
        set_mode(file)?;
        self.tmp.persist(&self.path)?;
        File::open(parent_of(&self.path))?.sync_all()?;
        Ok(self.manifest)
    }
}

/// For a manifest with `verity`: sets its parameters, the `rootfs.verity` section size and the
/// kernel arguments for the manifest's rootfs size, with a zero root hash and digest of the same
/// length (filled in once hashed); returns the salt.
fn verity_placeholder(m: &mut Manifest) -> Result<Option<[u8; 32]>, SealError> {
    if m.verity.is_none() {
        return Ok(None);
    }
    let size = m.sections.rootfs.size;
    if size % crate::verity::BLOCK != 0 || size == 0 {
        return Err(SealError::Refused(format!(
            "rootfs.ext4: {size} bytes is not a whole number of 4 KiB verity blocks"
        )));
    }
    let salt = crate::verity::salt(&m.source.manifest_digest, size);
    let v = Verity {
        data_blocks: size / crate::verity::BLOCK,
        salt: hex::encode(salt),
        root_hash: "0".repeat(64),
    };
    m.sections.verity = Some(crate::SectionInfo {
        size: crate::verity::tree_size(v.data_blocks),
        sha256: "0".repeat(64),
    });
    m.kernel_cmdline = crate::verity::with_kernel_args(&m.kernel_cmdline, &v);
    m.verity = Some(v);
    Ok(Some(salt))
}

fn magic() -> String {
    format!("{MAGIC}{FORMAT}")
}

/// A verity tree and its root hash.
type Tree = (Vec<u8>, [u8; 32]);

/// SHA-256 of `len` bytes of `file` at `offset`, as lowercase hex; with a salt, the verity
/// tree of those bytes too, built in the same read (its hashing on a second thread).
fn hash_region(
    file: &File,
    offset: u64,
    len: u64,
    verity_salt: Option<[u8; 32]>,
) -> io::Result<(String, Option<Tree>)> {
    const CHUNK: usize = 1 << 20;
    let mut hasher = Sha256::new();
    let Some(salt) = verity_salt else {
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], offset + done)?;
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        return Ok((hex::encode(hasher.finalize()), None));
    };
    let mut level0 = crate::verity::Level0::new(salt, len / crate::verity::BLOCK);
    std::thread::scope(|s| {
        // Chunks go to the tree thread and come back for reuse; two buffers in flight.
        let (to_tree, tree_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let (back, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        back.send(vec![0u8; CHUNK]).expect("room");
        back.send(vec![0u8; CHUNK]).expect("room");
        let worker = s.spawn(move || {
            for buf in tree_rx {
                level0.update(&buf);
                if back.send(buf).is_err() {
                    break;
                }
            }
            level0.finish()
        });
        let mut done = 0u64;
        let read = (|| {
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                let mut buf = free
                    .recv()
                    .map_err(|_| io::Error::other("tree thread ended"))?;
                buf.truncate(n);
                buf.resize(n, 0);
                file.read_exact_at(&mut buf, offset + done)?;
                hasher.update(&buf);
                done += n as u64;
                to_tree
                    .send(buf)
                    .map_err(|_| io::Error::other("tree thread ended"))?;
            }
            Ok::<_, io::Error>(())
        })();
        drop(to_tree);
        let tree = worker
            .join()
            .map_err(|_| io::Error::other("verity thread panicked"))?;
        read?;
        Ok((hex::encode(hasher.finalize()), Some(tree)))
    })
}

/// Moves `len` bytes of `file` from `from` to `to` (the ranges may overlap).
fn move_region(file: &File, from: u64, to: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 4 << 20];
    let chunk = buf.len() as u64;
    let mut copy = |at: u64, n: u64| -> io::Result<()> {
        let b = &mut buf[..n as usize];
        file.read_exact_at(b, from + at)?;
        file.write_all_at(b, to + at)
    };
    if to > from {
        // Back to front, so nothing is overwritten before it is read.
        let mut end = len;
        while end > 0 {
            let n = end.min(chunk);
            copy(end - n, n)?;
            end -= n;
        }
    } else {
        let mut at = 0;
        while at < len {
            let n = (len - at).min(chunk);
            copy(at, n)?;
            at += n;
        }
    }
    Ok(())
}

/// An unnamed file beside `path`.
fn temp_beside(path: &Path) -> Result<PendingFile, SealError> {
    if path.file_name().is_none() {
        return Err(SealError::Path(path.to_path_buf()));
    }
    Ok(PendingFile::beside(path)?)
}

fn set_mode(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
}
