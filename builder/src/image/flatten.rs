//! Applying image layers, bottom first, into one [`Tree`] (metadata only).
//!
//! Semantics (OCI image-spec layer changesets, as umoci applies them):
//! - `.wh.NAME` hides NAME of lower layers only: an entry of the same layer survives whichever
//!   order the tar lists them in. If NAME is a directory the layer also fills, only its lower
//!   contents go.
//! - `DIR/.wh..wh..opq` hides all lower contents of DIR, before or after the layer's own entries
//!   in DIR. Other `.wh..wh.*` names are metadata and ignored. A bare `.wh.` and whiteouts of
//!   the root (`.wh..`) are errors.
//! - Whiteouts never create anything: a whiteout under a missing directory does nothing.
//! - A later entry replaces an earlier one, within a layer too (later wins): directory over
//!   directory keeps the contents and takes the new attributes (xattrs replaced as a whole);
//!   anything else unlinks what was there.
//! - Hardlinks name an existing non-directory (of this or a lower layer, as applied so far).
//! - Paths are normalised lexically (`.`, `..`, repeated `/`); absolute paths and `..` above
//!   the root are errors; symlinks are never followed: a path through a symlink is an error.
//! - Missing parent directories are created (0755, root, time 0).
//! - Bounds: paths and hardlink targets [`MAX_PATH`], symlink targets [`MAX_SYMLINK`], xattr
//!   names and values as Linux allows, uid/gid/device numbers 32 bits, and at most
//!   [`MAX_LAYER_METADATA`] bytes of metadata per layer.
//!
//! File contents: without a spool they stay in the layers and a file node records
//! `Content::Layer { layer, entry }`; with one ([`apply_tar_spooled`]) each regular file's
//! bytes are appended to it as the stream passes and the node records `Content::Spooled`.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use super::Layer;
use super::decompress::{DecompressError, LayerReader, Limits};
use super::spool::{Spool, SpoolError};
use super::tar::{Archive, Header, Kind, TarError};
use crate::tree::{Content, Meta, Node, NodeId, NodeKind, ROOT, Tree, valid_name};

/// Longest path (or hardlink target) accepted, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Longest symlink target accepted, in bytes.
pub const MAX_SYMLINK: usize = 4095;
/// Longest extended attribute name and value (Linux `XATTR_NAME_MAX`, `XATTR_SIZE_MAX`).
pub const MAX_XATTR_NAME: usize = 255;
pub const MAX_XATTR_VALUE: usize = 65536;
/// Most metadata one layer may add to the tree: every entry counts [`ENTRY_COST`] plus its
/// path, link target and xattrs. Real layers use a few MiB; this stops metadata bombs.
pub const MAX_LAYER_METADATA: u64 = 512 << 20;
pub const ENTRY_COST: u64 = 256;

const WH: &[u8] = b".wh.";
const WH_META: &[u8] = b".wh..wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum FlattenError {
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    #[error("layer {layer}: bad tar after {entry} entries")]
    Tar {
        layer: String,
        entry: u64,
        #[source]
        source: TarError,
    },
    #[error("layer {layer}: {path}: absolute path")]
    AbsolutePath { layer: String, path: String },
    #[error("layer {layer}: {path}: climbs out of the root")]
    PathEscape { layer: String, path: String },
    #[error("layer {layer}: {path}: invalid path")]
    InvalidPath { layer: String, path: String },
    #[error("layer {layer}: {path}: parent {parent} is a symlink")]
    SymlinkInPath {
        layer: String,
        path: String,
        parent: String,
    },
    #[error("layer {layer}: {path}: parent {parent} is not a directory")]
    NotADirectory {
        layer: String,
        path: String,
        parent: String,
    },
    #[error("layer {layer}: {path}: bare whiteout")]
    BareWhiteout { layer: String, path: String },
    #[error("layer {layer}: {path}: whiteout of the root")]
    WhiteoutRoot { layer: String, path: String },
    #[error("layer {layer}: {path}: invalid whiteout")]
    InvalidWhiteout { layer: String, path: String },
    #[error("layer {layer}: {path}: the root must stay a directory")]
    RootNotDir { layer: String, path: String },
    #[error("layer {layer}: {path}: hardlink target {target} does not exist")]
    HardlinkMissing {
        layer: String,
        path: String,
        target: String,
    },
    #[error("layer {layer}: {path}: hardlink target {target} is a directory")]
    HardlinkToDir {
        layer: String,
        path: String,
        target: String,
    },
    #[error("layer {layer}: {path}: hardlink target {target} is outside the root")]
    HardlinkOutside {
        layer: String,
        path: String,
        target: String,
    },
    #[error("layer {layer}: {path}: invalid symlink target")]
    BadSymlink { layer: String, path: String },
    #[error("layer {layer}: {path}: unsupported entry type {typeflag:?}")]
    UnsupportedType {
        layer: String,
        path: String,
        typeflag: char,
    },
    #[error("layer {layer}: {path}: extended attribute {name} too large or invalid")]
    BadXattr {
        layer: String,
        path: String,
        name: String,
    },
    #[error("layer {layer}: {path}: layer metadata over the limit of {limit} bytes")]
    MetadataTooLarge {
        layer: String,
        path: String,
        limit: u64,
    },
    #[error("layer {layer}: {path}: spooling its contents")]
    Spool {
        layer: String,
        path: String,
        #[source]
        source: SpoolError,
    },
    #[error("layer {layer}: {path}: {field} {value} out of range")]
    OutOfRange {
        layer: String,
        path: String,
        field: &'static str,
        value: u64,
    },
}

/// Printable form of a path from a layer (one line, non-ASCII escaped).
pub fn show(path: &[u8]) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    path.escape_ascii().to_string()
}

/// Why a path was refused by [`normalize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
    Absolute,
    Escape,
    Invalid,
}

/// Splits a layer path into components inside the root: drops `.` and empty components,
/// resolves `..` lexically. Absolute paths, `..` above the root, over-long paths and invalid
/// names are refused. The root is the empty list. Pure.
pub fn normalize(path: &[u8]) -> Result<Vec<&[u8]>, PathProblem> {
    if path.is_empty() || path.len() > MAX_PATH || path.contains(&0) {
        return Err(PathProblem::Invalid);
    }
    if path[0] == b'/' {
        return Err(PathProblem::Absolute);
    }
    let mut out: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop().ok_or(PathProblem::Escape)?;
            }
            c if valid_name(c) => out.push(c),
            _ => return Err(PathProblem::Invalid),
        }
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// Applies every layer, bottom first, into a new tree whose root is 0755 root-owned.
pub fn flatten(layers: &[Layer], limits: &Limits) -> Result<Tree, FlattenError> {
    let mut tree = Tree::new(Meta::with_mode(0o755));
    for (i, layer) in layers.iter().enumerate() {
        apply_layer(&mut tree, i, layer, limits)?;
    }
    Ok(tree)
}

/// Applies layer number `index` on top of `tree`, checking its diff_id.
pub fn apply_layer(
    tree: &mut Tree,
    index: usize,
    layer: &Layer,
    limits: &Limits,
) -> Result<(), FlattenError> {
    let reader = LayerReader::open(layer, limits)?;
    let reader = apply_tar(tree, index, &layer.digest, reader)?;
    reader.finish()?;
    Ok(())
}

/// Applies one uncompressed tar stream as layer number `index` (named `digest` in errors).
/// Returns the reader positioned after the end-of-archive marker.
pub fn apply_tar<R: Read>(
    tree: &mut Tree,
    index: usize,
    digest: &str,
    r: R,
) -> Result<R, FlattenError> {
    apply_tar_with_budget(tree, index, digest, r, MAX_LAYER_METADATA)
}

/// [`apply_tar`] that also appends every regular file's contents to `spool` as they stream
/// past, so the rootfs can be written without reading the layer again.
pub fn apply_tar_spooled<R: Read>(
    tree: &mut Tree,
    index: usize,
    digest: &str,
    r: R,
    spool: &mut Spool,
) -> Result<R, FlattenError> {
    apply(tree, index, digest, r, MAX_LAYER_METADATA, Some(spool))
}

/// [`apply_tar`] with a metadata budget other than [`MAX_LAYER_METADATA`].
pub fn apply_tar_with_budget<R: Read>(
    tree: &mut Tree,
    index: usize,
    digest: &str,
    r: R,
    budget: u64,
) -> Result<R, FlattenError> {
    apply(tree, index, digest, r, budget, None)
}

fn apply<R: Read>(
    tree: &mut Tree,
    index: usize,
    digest: &str,
    r: R,
    budget: u64,
    mut spool: Option<&mut Spool>,
) -> Result<R, FlattenError> {
    let mut archive = Archive::new(r);
    let mut ap = Apply {
        tree,
        layer: index,
        digest,
        upper: HashSet::new(),
        metadata: 0,
        budget,
    };
    let mut count = 0u64;
    loop {
        let next = archive
            .next_entry()
            .map_err(|e| tar_error(digest, count, e))?;
        let Some((entry, header)) = next else { break };
        count = entry + 1;
        let file = ap.entry(entry, &header)?;
        if let (Some(spool), Some(node)) = (spool.as_deref_mut(), file) {
            let offset = spool
                .append(&mut archive.data(), header.size)
                .map_err(|e| spool_error(digest, count, &header.path, e))?;
            if let NodeKind::File { content, .. } = &mut ap.tree.nodes[node].kind {
                *content = Content::Spooled { offset };
            }
        }
    }
    Ok(archive.into_inner())
}

/// Maps a spooling error: a read error is the layer's (truncated or corrupt stream).
fn spool_error(digest: &str, entry: u64, path: &[u8], e: SpoolError) -> FlattenError {
    match e {
        SpoolError::Read(io) => match io.downcast::<TarError>() {
            Ok(t) => tar_error(digest, entry, t),
            Err(io) => tar_error(digest, entry, TarError::Io(io)),
        },
        e => FlattenError::Spool {
            layer: digest.to_string(),
            path: show(path),
            source: e,
        },
    }
}

/// Maps a tar error, surfacing a decompression error carried inside an I/O error.
pub fn tar_error(digest: &str, entry: u64, e: TarError) -> FlattenError {
    match e {
        TarError::Io(io) => match DecompressError::from_io(io) {
            Ok(d) => FlattenError::Decompress(d),
            Err(io) => FlattenError::Tar {
                layer: digest.to_string(),
                entry,
                source: TarError::Io(io),
            },
        },
        e => FlattenError::Tar {
            layer: digest.to_string(),
            entry,
            source: e,
        },
    }
}

struct Apply<'a> {
    tree: &'a mut Tree,
    layer: usize,
    digest: &'a str,
    /// Paths this layer has written (entries and their ancestors): whiteouts leave them be.
    upper: HashSet<Vec<u8>>,
    /// Metadata bytes this layer has added so far (see [`MAX_LAYER_METADATA`]).
    metadata: u64,
    budget: u64,
}

enum Parent {
    Dir(NodeId),
    /// A component is missing or not a directory (whiteouts only).
    Absent,
}

impl Apply<'_> {
    fn layer(&self) -> String {
        self.digest.to_string()
    }

    fn meta(&self, h: &Header) -> Result<Meta, FlattenError> {
        let id = |field, v: u64| {
            u32::try_from(v).map_err(|_| FlattenError::OutOfRange {
                layer: self.layer(),
                path: show(&h.path),
                field,
                value: v,
            })
        };
        Ok(Meta {
            mode: (h.mode & 0o7777) as u32,
            uid: id("uid", h.uid)?,
            gid: id("gid", h.gid)?,
            mtime: h.mtime,
            mtime_nsec: h.mtime_nsec,
            xattrs: h.xattrs.clone(),
        })
    }

    fn path_error(&self, path: &[u8], p: PathProblem) -> FlattenError {
        let (layer, path) = (self.layer(), show(path));
        match p {
            PathProblem::Absolute => FlattenError::AbsolutePath { layer, path },
            PathProblem::Escape => FlattenError::PathEscape { layer, path },
            PathProblem::Invalid => FlattenError::InvalidPath { layer, path },
        }
    }

    /// Walks `comps` from the root without following symlinks. With `create`, missing
    /// directories are made (and recorded as written by this layer); without, a missing or
    /// non-directory component gives [`Parent::Absent`].
    fn walk_dirs(
        &mut self,
        path: &[u8],
        comps: &[&[u8]],
        create: bool,
    ) -> Result<Parent, FlattenError> {
        let mut dir = ROOT;
        for (i, name) in comps.iter().enumerate() {
            let next = match self.tree.lookup(dir, name) {
                Some(child) => match &self.tree.nodes[child].kind {
                    NodeKind::Dir(_) => child,
                    NodeKind::Symlink(_) => {
                        return Err(FlattenError::SymlinkInPath {
                            layer: self.layer(),
                            path: show(path),
                            parent: show(&join(&comps[..=i])),
                        });
                    }
                    _ if !create => return Ok(Parent::Absent),
                    _ => {
                        return Err(FlattenError::NotADirectory {
                            layer: self.layer(),
                            path: show(path),
                            parent: show(&join(&comps[..=i])),
                        });
                    }
                },
                None if !create => return Ok(Parent::Absent),
                None => {
                    let d = self.tree.push(Node {
                        kind: NodeKind::Dir(BTreeMap::new()),
                        meta: Meta::with_mode(0o755),
                    });
                    self.tree.link(dir, name, d);
                    d
                }
            };
            if create {
                self.upper.insert(join(&comps[..=i]));
            }
            dir = next;
        }
        Ok(Parent::Dir(dir))
    }

    /// Removes everything under directory `dir` (at `path`) that this layer did not write.
    fn prune(&mut self, path: Vec<u8>, dir: NodeId) {
        let mut stack = vec![(path, dir)];
        while let Some((path, dir)) = stack.pop() {
            let children: Vec<(Vec<u8>, NodeId)> = match self.tree.entries(dir) {
                Some(e) => e.iter().map(|(n, &c)| (n.clone(), c)).collect(),
                None => continue,
            };
            for (name, child) in children {
                let mut child_path = path.clone();
                if !child_path.is_empty() {
                    child_path.push(b'/');
                }
                child_path.extend_from_slice(&name);
                if !self.upper.contains(&child_path) {
                    self.tree.unlink(dir, &name);
                } else if matches!(self.tree.nodes[child].kind, NodeKind::Dir(_)) {
                    stack.push((child_path, child));
                }
            }
        }
    }

    fn whiteout(&mut self, path: &[u8], comps: &[&[u8]]) -> Result<(), FlattenError> {
        let (name, parent) = comps.split_last().expect("non-empty");
        let (layer, shown) = (self.layer(), show(path));
        if *name == WH_OPAQUE {
            if let Parent::Dir(dir) = self.walk_dirs(path, parent, false)? {
                self.prune(join(parent), dir);
            }
            return Ok(());
        }
        if name.starts_with(WH_META) {
            return Ok(());
        }
        let target = &name[WH.len()..];
        match target {
            b"" => return Err(FlattenError::BareWhiteout { layer, path: shown }),
            b"." | b".." if parent.is_empty() => {
                return Err(FlattenError::WhiteoutRoot { layer, path: shown });
            }
            b"." | b".." => return Err(FlattenError::InvalidWhiteout { layer, path: shown }),
            _ => {}
        }
        let Parent::Dir(dir) = self.walk_dirs(path, parent, false)? else {
            return Ok(());
        };
        let Some(child) = self.tree.lookup(dir, target) else {
            return Ok(());
        };
        let mut target_path = join(parent);
        if !target_path.is_empty() {
            target_path.push(b'/');
        }
        target_path.extend_from_slice(target);
        if !self.upper.contains(&target_path) {
            self.tree.unlink(dir, target);
        } else if matches!(self.tree.nodes[child].kind, NodeKind::Dir(_)) {
            self.prune(target_path, child);
        }
        Ok(())
    }

    /// Applies one entry; returns the node it created when that is a regular file (whose
    /// contents are the entry's data).
    fn entry(&mut self, entry: u64, h: &Header) -> Result<Option<NodeId>, FlattenError> {
        let xattr_bytes: usize = h.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.metadata += ENTRY_COST + (h.path.len() + h.link.len() + xattr_bytes) as u64;
        if self.metadata > self.budget {
            return Err(FlattenError::MetadataTooLarge {
                layer: self.layer(),
                path: show(&h.path),
                limit: self.budget,
            });
        }
        if let Some((name, _)) = h
            .xattrs
            .iter()
            .find(|(k, v)| k.len() > MAX_XATTR_NAME || v.len() > MAX_XATTR_VALUE)
        {
            return Err(FlattenError::BadXattr {
                layer: self.layer(),
                path: show(&h.path),
                name: show(&name[..name.len().min(64)]),
            });
        }
        let comps = normalize(&h.path).map_err(|p| self.path_error(&h.path, p))?;
        let Some((name, parent_comps)) = comps.split_last() else {
            // The root itself: only a directory may describe it.
            if h.kind != Kind::Directory {
                return Err(FlattenError::RootNotDir {
                    layer: self.layer(),
                    path: show(&h.path),
                });
            }
            self.tree.nodes[ROOT].meta = self.meta(h)?;
            return Ok(None);
        };
        if name.starts_with(WH) {
            return self.whiteout(&h.path, &comps).map(|()| None);
        }
        let meta = self.meta(h)?;
        let layer = self.layer();
        let kind = match h.kind {
            Kind::HardLink => None,
            Kind::Regular => Some(NodeKind::File {
                size: h.size,
                content: Content::Layer {
                    layer: self.layer,
                    entry,
                },
            }),
            Kind::Directory => Some(NodeKind::Dir(BTreeMap::new())),
            Kind::Symlink => {
                if h.link.is_empty() || h.link.len() > MAX_SYMLINK || h.link.contains(&0) {
                    return Err(FlattenError::BadSymlink {
                        layer,
                        path: show(&h.path),
                    });
                }
                Some(NodeKind::Symlink(h.link.clone()))
            }
            Kind::CharDevice | Kind::BlockDevice => {
                let dev = |field, v: u64| {
                    u32::try_from(v).map_err(|_| FlattenError::OutOfRange {
                        layer: layer.clone(),
                        path: show(&h.path),
                        field,
                        value: v,
                    })
                };
                let (major, minor) = (dev("devmajor", h.devmajor)?, dev("devminor", h.devminor)?);
                Some(if h.kind == Kind::CharDevice {
                    NodeKind::CharDevice { major, minor }
                } else {
                    NodeKind::BlockDevice { major, minor }
                })
            }
            Kind::Fifo => Some(NodeKind::Fifo),
            Kind::Other(t) => {
                return Err(FlattenError::UnsupportedType {
                    layer,
                    path: show(&h.path),
                    typeflag: char::from(t),
                });
            }
        };
        let Parent::Dir(dir) = self.walk_dirs(&h.path, parent_comps, true)? else {
            unreachable!("walk_dirs with create never gives Absent");
        };
        let existing = self.tree.lookup(dir, name);
        let node = match kind {
            None => self.hardlink_target(h)?,
            Some(NodeKind::Dir(_))
                if existing
                    .is_some_and(|old| matches!(self.tree.nodes[old].kind, NodeKind::Dir(_))) =>
            {
                let old = existing.expect("checked");
                self.tree.nodes[old].meta = meta;
                old
            }
            Some(kind) => self.tree.push(Node { kind, meta }),
        };
        if existing != Some(node) {
            self.tree.link(dir, name, node);
        }
        self.upper.insert(join(&comps));
        Ok((h.kind == Kind::Regular).then_some(node))
    }

    fn hardlink_target(&mut self, h: &Header) -> Result<NodeId, FlattenError> {
        let (layer, path, target) = (self.layer(), show(&h.path), show(&h.link));
        let comps = match normalize(&h.link) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                return Err(FlattenError::HardlinkToDir {
                    layer,
                    path,
                    target,
                });
            }
            Err(PathProblem::Invalid) => {
                return Err(FlattenError::HardlinkMissing {
                    layer,
                    path,
                    target,
                });
            }
            Err(_) => {
                return Err(FlattenError::HardlinkOutside {
                    layer,
                    path,
                    target,
                });
            }
        };
        let (name, parent) = comps.split_last().expect("non-empty");
        let found = match self.walk_dirs(&h.link, parent, false)? {
            Parent::Dir(dir) => self.tree.lookup(dir, name),
            Parent::Absent => None,
        };
        match found {
            None => Err(FlattenError::HardlinkMissing {
                layer,
                path,
                target,
            }),
            Some(n) if matches!(self.tree.nodes[n].kind, NodeKind::Dir(_)) => {
                Err(FlattenError::HardlinkToDir {
                    layer,
                    path,
                    target,
                })
            }
            Some(n) => Ok(n),
        }
    }
}
