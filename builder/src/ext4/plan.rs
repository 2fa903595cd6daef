//! Inode numbering, validation, seeds, and the metadata blocks known before any content is
//! read (directories, slow symlinks, xattr blocks).

use super::Target;
use super::dir::{self, Entry};
use super::extent::{self, ExtentList};
use super::inode::{self, FL_EXTENTS, FL_INDEX};
use super::layout::{Alloc, BS, INODE_SIZE, MAX_BPG, MIN_BPG, gdt_blocks};
use super::{Ext4Error, Ext4Options, csum, show, xattr};
use crate::tree::{NodeId, NodeKind, ROOT, Tree};
use sha2::{Digest, Sha256};

/// Inode of the root directory.
pub(crate) const ROOT_INO: u32 = 2;
/// First non-reserved inode (and `lost+found` when the writer adds it).
pub(crate) const FIRST_INO: u32 = 11;
const MAX_LINKS: u32 = 65000;

/// What the writer knows about one inode.
#[derive(Clone, Debug)]
pub(crate) struct Rec {
    /// The tree node, or `None` for a `lost+found` the writer added.
    pub node: Option<NodeId>,
    pub mode: u16,
    pub links: u16,
    pub size: u64,
    pub flags: u32,
    pub i_block: [u8; 60],
    pub fs_blocks: u64,
    pub xattr_block: u64,
    /// In-inode attribute area, or empty.
    pub xattrs: Vec<u8>,
}

impl Default for Rec {
    fn default() -> Self {
        Rec {
            node: None,
            mode: 0,
            links: 0,
            size: 0,
            flags: 0,
            i_block: [0; 60],
            fs_blocks: 0,
            xattr_block: 0,
            xattrs: Vec::new(),
        }
    }
}

pub(crate) struct Plan {
    /// Inode number of every node (0: unreachable).
    pub ino_of: Vec<u32>,
    /// Records by inode number (reserved inodes are `None`).
    pub recs: Vec<Option<Rec>>,
    walk: Vec<(Vec<u8>, NodeId)>,
    walk_index: Vec<usize>,
    /// Parent directory inode of every directory node.
    parent: Vec<u32>,
    pub alloc: Alloc,
    pub gdt_reserved: u64,
    pub uuid: [u8; 16],
    pub hash_seed: [u32; 4],
    pub fs_seed: u32,
    /// Superblock times: the newest mtime in the tree.
    pub time: u32,
    /// Whether the writer adds `/lost+found` as inode 11.
    pub lost_found: bool,
    pub last_ino: u32,
    pub data_blocks: u64,
}

fn mode_bits(kind: &NodeKind) -> u16 {
    match kind {
        NodeKind::Dir(_) => inode::S_IFDIR,
        NodeKind::File { .. } => inode::S_IFREG,
        NodeKind::Symlink(_) => inode::S_IFLNK,
        NodeKind::CharDevice { .. } => inode::S_IFCHR,
        NodeKind::BlockDevice { .. } => inode::S_IFBLK,
        NodeKind::Fifo => inode::S_IFIFO,
    }
}

fn file_type(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::Dir(_) => dir::FT_DIR,
        NodeKind::File { .. } => dir::FT_REG,
        NodeKind::Symlink(_) => dir::FT_SYMLINK,
        NodeKind::CharDevice { .. } => dir::FT_CHR,
        NodeKind::BlockDevice { .. } => dir::FT_BLK,
        NodeKind::Fifo => dir::FT_FIFO,
    }
}

/// SHA-256 over everything the image records except file bytes.
fn tree_digest(tree: &Tree, walk: &[(Vec<u8>, NodeId)], ino_of: &[u32]) -> [u8; 32] {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for (_, id) in walk {
        let node = &tree.nodes[*id];
        h.update(ino_of[*id].to_le_bytes());
        h.update(mode_bits(&node.kind).to_le_bytes());
        match &node.kind {
            NodeKind::Dir(entries) => {
                for (name, child) in entries {
                    field(&mut h, name);
                    h.update(ino_of[*child].to_le_bytes());
                }
            }
            NodeKind::File { size, .. } => h.update(size.to_le_bytes()),
            NodeKind::Symlink(t) => field(&mut h, t),
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                h.update(major.to_le_bytes());
                h.update(minor.to_le_bytes());
            }
            NodeKind::Fifo => {}
        }
        let m = &node.meta;
        for v in [
            u64::from(m.mode),
            u64::from(m.uid),
            u64::from(m.gid),
            m.mtime as u64,
        ] {
            h.update(v.to_le_bytes());
        }
        h.update(m.mtime_nsec.to_le_bytes());
        for (k, v) in &m.xattrs {
            field(&mut h, k);
            field(&mut h, v);
        }
    }
    h.finalize().into()
}

fn derive(seed: &[u8], what: &[u8]) -> [u8; 16] {
    let d = Sha256::new()
        .chain_update(b"hyperpod-ext4\0")
        .chain_update(what)
        .chain_update(seed)
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

impl Plan {
    /// Numbers inodes, checks the tree against ext4's limits and derives the seeds.
    pub(crate) fn new(tree: &Tree, opts: &Ext4Options) -> Result<Plan, Ext4Error> {
        let walk = tree.walk();
        let mut walk_index = vec![usize::MAX; tree.nodes.len()];
        for (i, (_, id)) in walk.iter().enumerate() {
            walk_index[*id] = i;
        }
        let lost_found = match tree.lookup(ROOT, b"lost+found") {
            None => true,
            Some(id) if matches!(tree.nodes[id].kind, NodeKind::Dir(_)) => false,
            Some(_) => return Err(Ext4Error::LostFound),
        };
        let mut ino_of = vec![0u32; tree.nodes.len()];
        let mut next = if lost_found { FIRST_INO + 1 } else { FIRST_INO };
        for (_, id) in &walk {
            ino_of[*id] = if *id == ROOT {
                ROOT_INO
            } else {
                next += 1;
                next - 1
            };
        }
        let last_ino = next - 1;
        let mut parent = vec![0u32; tree.nodes.len()];
        parent[ROOT] = ROOT_INO;
        let counts = tree.link_counts();
        let mut estimate: u64 = 64;
        for (path, id) in &walk {
            let node = &tree.nodes[*id];
            match &node.kind {
                NodeKind::Dir(entries) => {
                    for (name, &child) in entries {
                        if matches!(tree.nodes[child].kind, NodeKind::Dir(_)) {
                            if parent[child] != 0 || child == ROOT {
                                let mut p = path.clone();
                                if !p.is_empty() {
                                    p.push(b'/');
                                }
                                p.extend_from_slice(name);
                                return Err(Ext4Error::DirHardlink { path: show(&p) });
                            }
                            parent[child] = ino_of[*id];
                        }
                    }
                    let bytes: u64 = entries.keys().map(|n| (8 + n.len() as u64 + 3) & !3).sum();
                    estimate += 2 + bytes / 2048;
                }
                NodeKind::File { size, .. } => {
                    if *size > (1u64 << 32) * BS {
                        return Err(Ext4Error::FileTooLarge {
                            path: show(path),
                            size: *size,
                        });
                    }
                    if counts[*id] > MAX_LINKS {
                        return Err(Ext4Error::TooManyLinks {
                            path: show(path),
                            count: counts[*id],
                        });
                    }
                    let blocks = size.div_ceil(BS);
                    // Extent tree blocks only exist beyond four extents.
                    estimate += blocks + if blocks > 4 { blocks / 300 + 2 } else { 0 };
                }
                NodeKind::Symlink(t) => {
                    if t.is_empty() || t.len() >= BS as usize {
                        return Err(Ext4Error::SymlinkTarget {
                            path: show(path),
                            len: t.len(),
                        });
                    }
                    estimate += 1;
                }
                _ => {
                    if counts[*id] > MAX_LINKS {
                        return Err(Ext4Error::TooManyLinks {
                            path: show(path),
                            count: counts[*id],
                        });
                    }
                }
            }
            if !node.meta.xattrs.is_empty() {
                estimate += 1;
            }
        }
        let inodes = u64::from(last_ino) + u64::from(opts.extra_inodes);
        estimate += inodes * INODE_SIZE / BS + inodes / 1024 + opts.extra_bytes.div_ceil(BS);
        // A group holds at most 32768 inodes. When the inodes need more groups than the
        // (upper-bound) block estimate fills, shrink the groups so the image does not carry
        // mostly empty 128 MiB groups just to hold inode tables.
        let inode_groups = inodes.div_ceil(MAX_BPG);
        let bpg = if inode_groups > 1 && estimate < inode_groups * MAX_BPG {
            estimate
                .div_ceil(inode_groups)
                .next_multiple_of(8)
                .clamp(MIN_BPG, MAX_BPG)
        } else {
            MAX_BPG
        };
        // Generous bound on the group count: descriptor blocks are reserved for it up front.
        let groups_bound = (estimate * 2).div_ceil(bpg) + inode_groups + 2;
        let gdt_reserved = gdt_blocks(groups_bound);
        let seed_input = match &opts.seed {
            Some(s) => s.clone(),
            None => tree_digest(tree, &walk, &ino_of).to_vec(),
        };
        let mut uuid = derive(&seed_input, b"uuid");
        uuid[6] = (uuid[6] & 0x0f) | 0x40;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        let hs = derive(&seed_input, b"hash-seed");
        let hash_seed =
            std::array::from_fn(|i| u32::from_le_bytes(hs[4 * i..4 * i + 4].try_into().unwrap()));
        let time = tree
            .nodes
            .iter()
            .enumerate()
            .filter(|(id, _)| ino_of[*id] != 0)
            .map(|(_, n)| n.meta.mtime)
            .max()
            .unwrap_or(0);
        Ok(Plan {
            recs: vec![None; last_ino as usize + 1],
            ino_of,
            walk,
            walk_index,
            parent,
            alloc: Alloc::new(gdt_reserved, bpg),
            gdt_reserved,
            fs_seed: csum::fs_seed(&uuid),
            uuid,
            hash_seed,
            time: time.clamp(0, i64::from(u32::MAX)) as u32,
            lost_found,
            last_ino,
            data_blocks: 0,
        })
    }

    /// The first path naming node `id`.
    pub(crate) fn path(&self, id: NodeId) -> &[u8] {
        &self.walk[self.walk_index[id]].0
    }

    fn seed_of(&self, ino: u32) -> u32 {
        csum::inode_seed(self.fs_seed, ino, 0)
    }

    fn rec(&mut self, ino: u32) -> &mut Rec {
        self.recs[ino as usize].get_or_insert_with(Rec::default)
    }

    /// Points inode `ino` at `extents` (already written), building and writing its extent
    /// tree blocks.
    pub(crate) fn set_extents(
        &mut self,
        ino: u32,
        extents: &ExtentList,
        out: Target<'_>,
    ) -> Result<(), Ext4Error> {
        let seed = self.seed_of(ino);
        let (root, blocks) = extent::build(&extents.list, &mut self.alloc, seed);
        for b in &blocks {
            out.write_all_at(&b.data, b.block * BS)
                .map_err(Ext4Error::Write)?;
        }
        let rec = self.rec(ino);
        rec.i_block = root;
        rec.flags |= FL_EXTENTS;
        rec.fs_blocks += extents.blocks() + blocks.len() as u64;
        Ok(())
    }

    /// Allocates and writes `bytes` (whole blocks) as the contents of inode `ino`.
    fn put_blocks(&mut self, ino: u32, bytes: &[u8], out: Target<'_>) -> Result<(), Ext4Error> {
        let n = bytes.len() as u64 / BS;
        let mut extents = ExtentList::default();
        let mut logical = 0u64;
        for (start, len) in self.alloc.runs_of(n) {
            let from = (logical * BS) as usize;
            out.write_all_at(&bytes[from..from + (len * BS) as usize], start * BS)
                .map_err(Ext4Error::Write)?;
            extents.push(logical as u32, start, len as u32);
            logical += len;
        }
        self.set_extents(ino, &extents, out)
    }

    fn put_dir(
        &mut self,
        ino: u32,
        parent: u32,
        entries: &[Entry<'_>],
        path: &[u8],
        out: Target<'_>,
    ) -> Result<(), Ext4Error> {
        let blocks = dir::build(entries, ino, parent, &self.hash_seed, self.seed_of(ino))
            .map_err(|_| Ext4Error::DirTooLarge { path: show(path) })?;
        self.put_blocks(ino, &blocks.data, out)?;
        let rec = self.rec(ino);
        rec.size = blocks.data.len() as u64;
        if blocks.indexed {
            rec.flags |= FL_INDEX;
        }
        Ok(())
    }

    /// Writes every block known from the tree alone, in inode order, and fills the records
    /// of all non-file inodes.
    pub(crate) fn write_metadata_blocks(
        &mut self,
        tree: &Tree,
        out: Target<'_>,
    ) -> Result<(), Ext4Error> {
        let counts = tree.link_counts();
        if self.lost_found {
            let rec = self.rec(FIRST_INO);
            rec.mode = inode::S_IFDIR | 0o700;
            rec.links = 2;
            self.put_dir(FIRST_INO, ROOT_INO, &[], b"lost+found", out)?;
        }
        for w in 0..self.walk.len() {
            let id = self.walk[w].1;
            let ino = self.ino_of[id];
            let node = &tree.nodes[id];
            let mut links = counts[id] + u32::from(id == ROOT && self.lost_found);
            if links > MAX_LINKS {
                links = 1; // dir_nlink: "many"
            }
            let rec = self.rec(ino);
            rec.node = Some(id);
            rec.mode = mode_bits(&node.kind) | (node.meta.mode & 0o7777) as u16;
            rec.links = links as u16;
            let path = self.walk[w].0.clone();
            let placed = xattr::place(&node.meta.xattrs).map_err(|p| {
                let reason = match p {
                    xattr::XattrProblem::Namespace => "namespace ext4 cannot store",
                    xattr::XattrProblem::BadAcl => "malformed POSIX ACL",
                    xattr::XattrProblem::NameTooLong => "name longer than 255 bytes",
                    xattr::XattrProblem::TooLarge => "attributes exceed one block",
                };
                let name = node
                    .meta
                    .xattrs
                    .keys()
                    .find(|k| xattr::encode(k, &node.meta.xattrs[*k]).is_err())
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_else(|| "(all)".into());
                Ext4Error::Xattr {
                    path: show(&path),
                    name,
                    reason,
                }
            })?;
            if !placed.block.is_empty() {
                let b = self.alloc.block();
                let bytes = xattr::block_bytes(&placed.block, b, self.fs_seed);
                out.write_all_at(&bytes, b * BS).map_err(Ext4Error::Write)?;
                let rec = self.rec(ino);
                rec.xattr_block = b;
                rec.fs_blocks += 1;
            }
            self.rec(ino).xattrs = placed.in_inode;
            match &node.kind {
                NodeKind::Dir(children) => {
                    let mut entries: Vec<Entry<'_>> = children
                        .iter()
                        .map(|(name, &child)| Entry {
                            name,
                            ino: self.ino_of[child],
                            ftype: file_type(&tree.nodes[child].kind),
                        })
                        .collect();
                    if id == ROOT && self.lost_found {
                        let at = entries.partition_point(|e| e.name < &b"lost+found"[..]);
                        entries.insert(
                            at,
                            Entry {
                                name: b"lost+found",
                                ino: FIRST_INO,
                                ftype: dir::FT_DIR,
                            },
                        );
                    }
                    let parent = self.parent[id];
                    self.put_dir(ino, parent, &entries, &path, out)?;
                }
                NodeKind::File { size, .. } => self.rec(ino).size = *size,
                NodeKind::Symlink(target) => {
                    self.rec(ino).size = target.len() as u64;
                    if target.len() < 60 {
                        self.rec(ino).i_block[..target.len()].copy_from_slice(target);
                    } else {
                        let mut block = vec![0u8; BS as usize];
                        block[..target.len()].copy_from_slice(target);
                        self.put_blocks(ino, &block, out)?;
                    }
                }
                NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                    self.rec(ino).i_block = inode::device_block(*major, *minor);
                }
                NodeKind::Fifo => {}
            }
        }
        Ok(())
    }
}
