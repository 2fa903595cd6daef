//! The flattened image tree: what an image's layers add up to, as metadata only.
//!
//! Layers are applied into a [`Tree`] (see `image::flatten`); the rootfs writer (`ext4`) reads it.
//! A node is an inode: hardlinks are several directory entries naming the same [`NodeId`]. File
//! contents are never held here, only where to find them ([`Content`]); a [`ContentSource`]
//! streams them to the writer once the layout is planned, so memory stays bounded by metadata.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

/// Index of a node (an inode) in [`Tree::nodes`]. The root directory is [`ROOT`].
pub type NodeId = usize;

/// The root directory's id.
pub const ROOT: NodeId = 0;

/// Ownership, permissions, time and extended attributes of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`0o7777` at most); no type bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the epoch (may be negative).
    pub mtime: i64,
    /// Nanoseconds part of `mtime` (0..1_000_000_000).
    pub mtime_nsec: u32,
    /// Extended attributes by full name (`user.x`, `security.capability`, `trusted.y`).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Meta {
    /// Metadata with the given mode, owned by root, at time 0, with no xattrs.
    pub fn with_mode(mode: u32) -> Self {
        Meta {
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
        }
    }
}

/// Where a regular file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Bytes held in memory (tests, generated files such as `/etc/hosts`).
    Inline(Arc<[u8]>),
    /// A file on the host, read when the rootfs is written.
    HostFile(PathBuf),
    /// Entry number `entry` (0-based, counting every tar header that yields an entry) of layer
    /// number `layer` (0 = bottom) of the image being built.
    Layer { layer: usize, entry: u64 },
    /// Bytes at `offset` of the build's spool (see `image::spool`), where flattening set
    /// them aside.
    Spooled { offset: u64 },
}

/// What kind of inode a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// Entries by name (one path component, never empty, `.`, `..` or containing `/` or NUL).
    Dir(BTreeMap<Vec<u8>, NodeId>),
    File {
        size: u64,
        content: Content,
    },
    Symlink(Vec<u8>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    pub meta: Meta,
}

/// A whole filesystem tree. Nodes unreachable from [`ROOT`] (after removals) are ignored by
/// every walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// Whether `name` may be a directory entry name.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && name.len() <= 255
        && !name.contains(&b'/')
        && !name.contains(&0)
}

impl Tree {
    /// A tree holding only a root directory with `root_meta`.
    pub fn new(root_meta: Meta) -> Self {
        Tree {
            nodes: vec![Node {
                kind: NodeKind::Dir(BTreeMap::new()),
                meta: root_meta,
            }],
        }
    }

    /// Adds a node that no directory names yet; link it with [`Tree::link`].
    pub fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The entries of directory `dir`, or `None` if it is not a directory.
    pub fn entries(&self, dir: NodeId) -> Option<&BTreeMap<Vec<u8>, NodeId>> {
        match &self.nodes[dir].kind {
            NodeKind::Dir(e) => Some(e),
            _ => None,
        }
    }

    fn entries_mut(&mut self, dir: NodeId) -> Option<&mut BTreeMap<Vec<u8>, NodeId>> {
        match &mut self.nodes[dir].kind {
            NodeKind::Dir(e) => Some(e),
            _ => None,
        }
    }

    /// Names `node` as `name` in directory `dir`, replacing any previous entry of that name.
    /// Returns the replaced node. Panics if `dir` is not a directory or `name` is invalid:
    /// callers validate untrusted names first.
    pub fn link(&mut self, dir: NodeId, name: &[u8], node: NodeId) -> Option<NodeId> {
        assert!(valid_name(name), "invalid entry name");
        self.entries_mut(dir)
            .expect("link into a non-directory")
            .insert(name.to_vec(), node)
    }

    /// Removes entry `name` from `dir`; returns the node it named.
    pub fn unlink(&mut self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.entries_mut(dir)?.remove(name)
    }

    /// Removes every entry of directory `dir`.
    pub fn clear_dir(&mut self, dir: NodeId) {
        if let Some(e) = self.entries_mut(dir) {
            e.clear();
        }
    }

    /// The node `name` names in `dir`, if any.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.entries(dir)?.get(name).copied()
    }

    /// Resolves a `/`-separated relative path without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Option<NodeId> {
        path.split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .try_fold(ROOT, |dir, name| self.lookup(dir, name))
    }

    /// Every reachable node once, in a deterministic order (depth first, names in byte order),
    /// with the path of its first occurrence (`b""` for the root).
    pub fn walk(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut seen = vec![false; self.nodes.len()];
        let mut out = Vec::new();
        let mut stack = vec![(Vec::new(), ROOT)];
        while let Some((path, id)) = stack.pop() {
            if std::mem::replace(&mut seen[id], true) {
                continue;
            }
            if let Some(entries) = self.entries(id) {
                for (name, &child) in entries.iter().rev() {
                    let mut p = path.clone();
                    if !p.is_empty() {
                        p.push(b'/');
                    }
                    p.extend_from_slice(name);
                    stack.push((p, child));
                }
            }
            out.push((path, id));
        }
        out
    }

    /// Total size of the reachable regular files (each hardlinked file once), in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.walk()
            .into_iter()
            .map(|(_, id)| match &self.nodes[id].kind {
                NodeKind::File { size, .. } => *size,
                _ => 0,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Link count of every reachable node, as the filesystem must record it: for a directory
    /// 2 + its subdirectories, for anything else the number of entries naming it.
    pub fn link_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.nodes.len()];
        counts[ROOT] = 2;
        for (_, id) in self.walk() {
            if let Some(entries) = self.entries(id) {
                for &child in entries.values() {
                    if matches!(self.nodes[child].kind, NodeKind::Dir(_)) {
                        counts[child] = 2;
                        counts[id] += 1;
                    } else {
                        counts[child] += 1;
                    }
                }
            }
        }
        counts
    }
}

/// Supplies file contents to the rootfs writer once it has planned where they go.
pub trait ContentSource {
    /// Calls `sink(node, reader)` exactly once for every reachable regular file node of `tree`
    /// (any order the source finds cheapest, e.g. layer by layer). The reader yields exactly the
    /// node's `size` bytes.
    fn stream(
        &mut self,
        tree: &Tree,
        sink: &mut dyn FnMut(NodeId, &mut dyn Read) -> io::Result<()>,
    ) -> io::Result<()>;
}

/// Streams [`Content::Inline`] and [`Content::HostFile`] contents; refuses layer contents.
pub struct LocalContent;

impl ContentSource for LocalContent {
    fn stream(
        &mut self,
        tree: &Tree,
        sink: &mut dyn FnMut(NodeId, &mut dyn Read) -> io::Result<()>,
    ) -> io::Result<()> {
        for (_, id) in tree.walk() {
            if let NodeKind::File { size, content } = &tree.nodes[id].kind {
                match content {
                    Content::Inline(bytes) => sink(id, &mut &bytes[..])?,
                    Content::HostFile(path) => {
                        sink(id, &mut std::fs::File::open(path)?.take(*size))?;
                    }
                    Content::Layer { .. } => {
                        return Err(io::Error::other("layer content needs the image's layers"));
                    }
                    Content::Spooled { .. } => {
                        return Err(io::Error::other("spooled content needs the build's spool"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> Node {
        Node {
            kind: NodeKind::File {
                size: bytes.len() as u64,
                content: Content::Inline(bytes.into()),
            },
            meta: Meta::with_mode(0o644),
        }
    }

    #[test]
    fn walk_is_ordered_and_visits_hardlinks_once() {
        let mut t = Tree::new(Meta::with_mode(0o755));
        let d = t.push(Node {
            kind: NodeKind::Dir(BTreeMap::new()),
            meta: Meta::with_mode(0o755),
        });
        t.link(ROOT, b"etc", d);
        let f = t.push(file(b"x"));
        t.link(d, b"b", f);
        t.link(d, b"a", f);
        let walked: Vec<_> = t.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            walked,
            vec![b"".to_vec(), b"etc".to_vec(), b"etc/a".to_vec()]
        );
        let counts = t.link_counts();
        assert_eq!((counts[ROOT], counts[d], counts[f]), (3, 2, 2));
        assert_eq!(t.resolve(b"etc/b"), Some(f));
        assert_eq!(t.resolve(b"/etc/./a"), Some(f));
    }

    #[test]
    fn names_are_validated() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(!valid_name(bad));
        }
        assert!(valid_name(b".wh..wh..opq"));
    }
}
