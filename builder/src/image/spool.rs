//! The spool: file contents set aside while the layers are flattened, so each layer is
//! decompressed once.
//!
//! Flattening reads every layer's whole stream anyway (to parse it and check its diff_id);
//! with a [`Spool`] it also appends each regular file's bytes to one unnamed temp file, each
//! file starting 4 KiB-aligned, all-zero blocks left as holes. The file node then records
//! `Content::Spooled { offset }`, and the rootfs writer streams contents back out of the spool
//! ([`Spool`] is a [`ContentSource`]) instead of decompressing every layer a second time.
//!
//! The spool lives next to the output (so on the same filesystem) and is unnamed from the start
//! (`O_TMPFILE`; where a filesystem lacks it, `tempfile` creates and at once unlinks a named
//! file): nothing is left behind, even after a SIGKILL. Files that a later layer replaces or whites out stay in the spool unread.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::tree::{Content, ContentSource, NodeId, NodeKind, Tree};

/// Spool offsets are multiples of this (the rootfs block size).
pub const ALIGN: u64 = 4096;
const BUF: usize = 1 << 20;
static ZERO: [u8; ALIGN as usize] = [0; ALIGN as usize];

/// An append-only store of file contents, read back by offset.
pub struct Spool {
    file: File,
    /// Where the next file starts (aligned); the spool's logical length.
    end: u64,
    buf: Vec<u8>,
}

/// Why spooling one file failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The entry's reader failed (a truncated or corrupt layer: the caller maps it).
    #[error("reading file data")]
    Read(#[source] io::Error),
    #[error("writing the spool")]
    Write(#[source] io::Error),
    #[error("file data ended after {got} of {expected} bytes")]
    Short { expected: u64, got: u64 },
}

impl Spool {
    /// An empty spool in `dir` (an unnamed file: it vanishes with the process).
    pub fn new_in(dir: &Path) -> io::Result<Spool> {
        Ok(Spool {
            file: tempfile::tempfile_in(dir)?,
            end: 0,
            buf: Vec::new(),
        })
    }

    /// Bytes of spool used so far (holes included).
    pub fn len(&self) -> u64 {
        self.end
    }

    pub fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// Appends exactly `size` bytes read from `data`; returns the offset they start at.
    pub fn append(&mut self, data: &mut dyn Read, size: u64) -> Result<u64, SpoolError> {
        let start = self.end;
        if self.buf.is_empty() {
            self.buf = vec![0u8; BUF];
        }
        let mut done = 0u64;
        while done < size {
            let want = (size - done).min(BUF as u64) as usize;
            let mut got = 0;
            while got < want {
                match data.read(&mut self.buf[got..want]) {
                    Ok(0) => {
                        return Err(SpoolError::Short {
                            expected: size,
                            got: done + got as u64,
                        });
                    }
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(SpoolError::Read(e)),
                }
            }
            write_nonzero(&self.file, &self.buf[..want], start + done)?;
            done += want as u64;
        }
        self.end = start + size.div_ceil(ALIGN) * ALIGN;
        Ok(start)
    }

    /// Streams `len` bytes at `offset` (for tests and tools; the rootfs writer uses
    /// [`ContentSource::stream`]).
    pub fn reader(&self, offset: u64, len: u64) -> impl Read + '_ {
        SpoolReader {
            file: &self.file,
            pos: offset,
            left: len,
        }
    }
}

/// Writes the non-zero 4 KiB blocks of `bytes` (which starts block-aligned at `at`), each run
/// of them with one `pwrite`; zero blocks stay holes.
fn write_nonzero(file: &File, bytes: &[u8], at: u64) -> Result<(), SpoolError> {
    let bs = ALIGN as usize;
    let mut run: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let end = (i + bs).min(bytes.len());
        let block = &bytes[i..end];
        let zero = block == &ZERO[..block.len()];
        match (zero, run) {
            (false, None) => run = Some(i),
            (true, Some(s)) => {
                file.write_all_at(&bytes[s..i], at + s as u64)
                    .map_err(SpoolError::Write)?;
                run = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(s) = run {
        file.write_all_at(&bytes[s..], at + s as u64)
            .map_err(SpoolError::Write)?;
    }
    Ok(())
}

/// Positional reads of one spooled file; past the spool's written end (a trailing hole) it
/// reads zeros.
struct SpoolReader<'a> {
    file: &'a File,
    pos: u64,
    left: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = match self.file.read_at(&mut buf[..want], self.pos)? {
            // Beyond the last write: a hole that was never extended into the file.
            0 => {
                buf[..want].fill(0);
                want
            }
            n => n,
        };
        self.pos += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

impl ContentSource for Spool {
    /// In-memory and host-file contents first (tree order), then spooled contents in spool
    /// order, which is the order the layers listed them: one sequential read of the spool.
    fn stream(
        &mut self,
        tree: &Tree,
        sink: &mut dyn FnMut(NodeId, &mut dyn Read) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut spooled: Vec<(u64, NodeId, u64)> = Vec::new();
        for (_, id) in tree.walk() {
            let NodeKind::File { size, content } = &tree.nodes[id].kind else {
                continue;
            };
            match content {
                Content::Inline(bytes) => sink(id, &mut &bytes[..])?,
                Content::HostFile(path) => sink(id, &mut File::open(path)?.take(*size))?,
                Content::Spooled { offset } => {
                    if offset.checked_add(*size).is_none_or(|end| end > self.end) {
                        return Err(io::Error::other(format!(
                            "spooled content at {offset}+{size} is past the spool's end {}",
                            self.end
                        )));
                    }
                    spooled.push((*offset, id, *size));
                }
                Content::Layer { .. } => {
                    return Err(io::Error::other(
                        "layer content was not spooled (flattened without a spool)",
                    ));
                }
            }
        }
        spooled.sort_unstable();
        for (offset, id, size) in spooled {
            sink(id, &mut self.reader(offset, size))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(s: &Spool, offset: u64, len: u64) -> Vec<u8> {
        let mut v = Vec::new();
        s.reader(offset, len).read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn files_round_trip_aligned_with_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new_in(dir.path()).unwrap();
        let a = b"hello".to_vec();
        let mut b = vec![0u8; 3 * BUF + 5000];
        b[BUF + 17] = 9;
        b[3 * BUF + 4999] = 1;
        let zeros = vec![0u8; 2 * BUF + 1];
        let oa = s.append(&mut &a[..], a.len() as u64).unwrap();
        let ob = s.append(&mut &b[..], b.len() as u64).unwrap();
        let oe = s.append(&mut &[][..], 0).unwrap();
        let oz = s.append(&mut &zeros[..], zeros.len() as u64).unwrap();
        assert_eq!((oa, ob), (0, ALIGN));
        assert_eq!(oe % ALIGN, 0);
        assert_eq!(oz, oe, "an empty file takes no space");
        assert_eq!(read_all(&s, oa, 5), a);
        assert_eq!(read_all(&s, ob, b.len() as u64), b);
        assert_eq!(read_all(&s, oz, zeros.len() as u64), zeros);
        // Zero blocks were not written: the trailing all-zero file is beyond the file's end.
        assert!(s.file.metadata().unwrap().len() <= oz);
    }

    #[test]
    fn short_data_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new_in(dir.path()).unwrap();
        let e = s.append(&mut &b"abc"[..], 10).unwrap_err();
        assert!(matches!(
            e,
            SpoolError::Short {
                expected: 10,
                got: 3
            }
        ));
    }
}
