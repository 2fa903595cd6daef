//! Streaming one file's bytes into freshly allocated blocks; all-zero blocks become holes.

use super::Target;
use super::extent::ExtentList;
use super::layout::{Alloc, BS};
use std::io::{self, Read};

const BSU: usize = BS as usize;
static ZERO: [u8; BSU] = [0; BSU];

/// Why a file could not be copied.
#[derive(Debug)]
pub(crate) enum CopyProblem {
    /// The reader ended after this many bytes.
    Short(u64),
    /// The reader had more than the expected size.
    Long,
    Read(io::Error),
    Write(io::Error),
}

/// Reads exactly `size` bytes from `reader`, writing every non-zero block at the allocator's
/// cursor. `buf` is the reusable chunk buffer (a multiple of the block size).
pub(crate) fn copy_file(
    reader: &mut dyn Read,
    size: u64,
    out: Target<'_>,
    alloc: &mut Alloc,
    buf: &mut [u8],
) -> Result<ExtentList, CopyProblem> {
    let mut extents = ExtentList::default();
    let mut total = 0u64;
    while total < size {
        let want = (size - total).min(buf.len() as u64) as usize;
        let got = fill(reader, &mut buf[..want]).map_err(CopyProblem::Read)?;
        if got < want {
            return Err(CopyProblem::Short(total + got as u64));
        }
        let blocks = want.div_ceil(BSU);
        buf[want..blocks * BSU].fill(0);
        let first_logical = total / BS;
        // Pending write: (disk block, first buffer block, block count).
        let mut pending: Option<(u64, usize, usize)> = None;
        for i in 0..blocks {
            if buf[i * BSU..(i + 1) * BSU] == ZERO {
                continue;
            }
            let b = alloc.block();
            extents.push((first_logical + i as u64) as u32, b, 1);
            match &mut pending {
                Some((disk, first, n)) if *disk + *n as u64 == b && *first + *n == i => *n += 1,
                _ => {
                    if let Some(p) = pending.take() {
                        flush(out, buf, p)?;
                    }
                    pending = Some((b, i, 1));
                }
            }
        }
        if let Some(p) = pending {
            flush(out, buf, p)?;
        }
        total += want as u64;
    }
    let mut probe = [0u8; 1];
    if fill(reader, &mut probe).map_err(CopyProblem::Read)? != 0 {
        return Err(CopyProblem::Long);
    }
    Ok(extents)
}

fn flush(
    out: Target<'_>,
    buf: &[u8],
    (disk, first, n): (u64, usize, usize),
) -> Result<(), CopyProblem> {
    out.write_all_at(&buf[first * BSU..(first + n) * BSU], disk * BS)
        .map_err(CopyProblem::Write)
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
