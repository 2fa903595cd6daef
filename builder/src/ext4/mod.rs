//! ext4 image writer: turns a flattened [`Tree`] into a read-only ext4 filesystem image,
//! without root, mounts, `mkfs` or extracting anything on the host.
//!
//! The image uses 4 KiB blocks, extents, `64bit`, `flex_bg`, `sparse_super`, `dir_index`
//! (half-MD4 htrees for directories beyond one block), 256-byte inodes with nanosecond and
//! creation times, extended attributes (in the inode, then one block), `metadata_csum`
//! (CRC32C) and no journal.
//!
//! Layout, in disk order, from one bump allocator ([`layout::Alloc`]):
//! superblock + descriptors, then directory / symlink / attribute blocks (all known from the
//! tree), then file data in the order the [`ContentSource`] streams it (all-zero blocks are
//! left as holes; extent tree blocks right after the data of a file that needs them), then
//! the block bitmaps, inode bitmaps and inode tables of all groups (`flex_bg` allows it),
//! whose count is only known once the data is placed, then `extra_bytes` of free space.
//! Backup superblock areas are skipped over wherever the cursor meets them.
//!
//! Everything is a function of the tree (and the optional seed): iteration follows
//! [`Tree::walk`] and `BTreeMap` order, the UUID and directory hash seed are derived from a
//! SHA-256 of the tree's metadata, and every timestamp comes from the tree.

mod csum;
mod data;
mod dir;
mod extent;
mod groups;
mod hash;
mod inode;
mod layout;
mod plan;
mod superblock;
mod xattr;

use crate::tree::{ContentSource, NodeId, NodeKind, Tree};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Choices for one image.
#[derive(Clone, Debug)]
pub struct Ext4Options {
    /// Free space to leave beyond what the contents need, in bytes (rounded up to blocks).
    pub extra_bytes: u64,
    /// Free inodes to leave beyond what the tree needs.
    pub extra_inodes: u32,
    /// Volume label, at most 16 bytes.
    pub label: String,
    /// Input for the UUID and directory hash seed; `None` derives them from a SHA-256 of the
    /// tree's metadata (names, kinds, sizes, modes, owners, times, xattrs; not file bytes).
    pub seed: Option<Vec<u8>>,
}

impl Default for Ext4Options {
    fn default() -> Self {
        Ext4Options {
            extra_bytes: 16 << 20,
            extra_inodes: 256,
            label: String::new(),
            seed: None,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Summary {
    /// Image size in bytes (`blocks` × 4096).
    pub size_bytes: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    /// Blocks holding file contents (holes excluded).
    pub data_blocks: u64,
    pub inodes: u32,
    pub free_inodes: u32,
    pub groups: u32,
    pub uuid: [u8; 16],
}

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("writing image")]
    Write(#[source] io::Error),
    #[error("content source failed")]
    Source(#[source] io::Error),
    #[error("{path}: reading content")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: content is {got} bytes, expected {expected}")]
    ShortContent {
        path: String,
        expected: u64,
        got: u64,
    },
    #[error("{path}: content is longer than {expected} bytes")]
    LongContent { path: String, expected: u64 },
    #[error("{path}: content never streamed")]
    NotStreamed { path: String },
    #[error("{path}: content streamed twice")]
    StreamedTwice { path: String },
    #[error("node {0}: streamed but not a reachable regular file")]
    NotAFile(NodeId),
    #[error("{path}: directory linked more than once")]
    DirHardlink { path: String },
    #[error("{path}: {count} links (ext4 allows 65000)")]
    TooManyLinks { path: String, count: u32 },
    #[error("{path}: xattr {name}: {reason}")]
    Xattr {
        path: String,
        name: String,
        reason: &'static str,
    },
    #[error("{path}: symlink target of {len} bytes (1 to 4095 allowed)")]
    SymlinkTarget { path: String, len: usize },
    #[error("{path}: directory too large for a two-level index")]
    DirTooLarge { path: String },
    #[error("{path}: {size} bytes exceeds the 16 TiB file limit")]
    FileTooLarge { path: String, size: u64 },
    #[error("label longer than 16 bytes")]
    Label,
    #[error("/lost+found exists and is not a directory")]
    LostFound,
    #[error("filesystem layout exceeds ext4 limits ({0})")]
    Layout(&'static str),
}

/// Renders a tree path for messages.
fn show(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// Where an image is written: a file, from byte `base` on (0 for a file of its own; the rootfs
/// section's offset when the image goes straight into a pod).
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    file: &'a File,
    base: u64,
}

impl Target<'_> {
    /// Writes `buf` at image offset `at`.
    fn write_all_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        self.file.write_all_at(buf, self.base + at)
    }

    /// Makes the image `len` bytes long (the file ends there).
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(self.base + len)
    }
}

/// Writes `tree` as an ext4 image into `out` (a fresh file; it is truncated first), reading
/// file contents from `source`.
pub fn write_image(
    tree: &Tree,
    source: &mut dyn ContentSource,
    out: &File,
    opts: &Ext4Options,
) -> Result<Ext4Summary, Ext4Error> {
    write_image_at(tree, source, out, 0, opts)
}

/// [`write_image`] into `out` from byte `base` on: the file is cut at `base` first (what lies
/// before is kept) and ends with the image. Holes (all-zero blocks) are never written, so they
/// read as zeros only because everything after `base` starts out unwritten.
pub fn write_image_at(
    tree: &Tree,
    source: &mut dyn ContentSource,
    out: &File,
    base: u64,
    opts: &Ext4Options,
) -> Result<Ext4Summary, Ext4Error> {
    if opts.label.len() > 16 {
        return Err(Ext4Error::Label);
    }
    let out = Target { file: out, base };
    out.set_len(0).map_err(Ext4Error::Write)?;
    let mut plan = plan::Plan::new(tree, opts)?;
    plan.write_metadata_blocks(tree, out)?;
    stream_contents(tree, source, out, &mut plan)?;
    groups::finish(tree, &plan, out, opts)
}

/// Streams every regular file through [`data::copy_file`] and records its extent tree.
fn stream_contents(
    tree: &Tree,
    source: &mut dyn ContentSource,
    out: Target<'_>,
    plan: &mut plan::Plan,
) -> Result<(), Ext4Error> {
    let mut failure: Option<Ext4Error> = None;
    let mut buf = vec![0u8; 4 << 20];
    let mut seen = vec![false; tree.nodes.len()];
    let result = source.stream(tree, &mut |id, reader| {
        let r = copy_one(tree, plan, out, &mut buf, &mut seen, id, reader);
        r.map_err(|e| {
            failure = Some(e);
            io::Error::other("ext4 writer stopped")
        })
    });
    if let Some(e) = failure {
        return Err(e);
    }
    result.map_err(Ext4Error::Source)?;
    for (id, node) in tree.nodes.iter().enumerate() {
        if plan.ino_of[id] != 0 && matches!(node.kind, NodeKind::File { .. }) && !seen[id] {
            return Err(Ext4Error::NotStreamed {
                path: show(plan.path(id)),
            });
        }
    }
    Ok(())
}

fn copy_one(
    tree: &Tree,
    plan: &mut plan::Plan,
    out: Target<'_>,
    buf: &mut [u8],
    seen: &mut [bool],
    id: NodeId,
    reader: &mut dyn io::Read,
) -> Result<(), Ext4Error> {
    let size = match tree.nodes.get(id).map(|n| &n.kind) {
        Some(NodeKind::File { size, .. }) if plan.ino_of[id] != 0 => *size,
        _ => return Err(Ext4Error::NotAFile(id)),
    };
    let path = show(plan.path(id));
    if std::mem::replace(&mut seen[id], true) {
        return Err(Ext4Error::StreamedTwice { path: path.clone() });
    }
    let extents = match data::copy_file(reader, size, out, &mut plan.alloc, buf) {
        Ok(e) => e,
        Err(data::CopyProblem::Short(got)) => {
            return Err(Ext4Error::ShortContent {
                path: path.clone(),
                expected: size,
                got,
            });
        }
        Err(data::CopyProblem::Long) => {
            return Err(Ext4Error::LongContent {
                path: path.clone(),
                expected: size,
            });
        }
        Err(data::CopyProblem::Read(source)) => {
            return Err(Ext4Error::Read {
                path: path.clone(),
                source,
            });
        }
        Err(data::CopyProblem::Write(e)) => return Err(Ext4Error::Write(e)),
    };
    plan.data_blocks += extents.blocks();
    plan.set_extents(plan.ino_of[id], &extents, out)
}
