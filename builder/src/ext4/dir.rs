//! Directory blocks: linear (one block) or hashed (`dir_index` htree, one or two index
//! levels), every leaf with a checksummed tail, every index block with a checksummed dx tail.

use super::csum;
use super::hash::dx_hash;
use super::layout::BS;

const BSU: usize = BS as usize;
/// Room for entries in a leaf: the last 12 bytes hold the checksum tail.
const LEAF_ROOM: usize = BSU - 12;
/// `dx_root_info.hash_version`: half-MD4 (unsigned via the superblock flag).
const HASH_HALF_MD4: u8 = 1;
/// Index entries in the root block: (4096 - 32) / 8, minus one slot for the dx tail.
const ROOT_LIMIT: usize = (BSU - 32) / 8 - 1;
/// Index entries in an interior node: (4096 - 8) / 8, minus the tail slot.
const NODE_LIMIT: usize = (BSU - 8) / 8 - 1;

/// `file_type` values of directory entries.
pub(crate) const FT_REG: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_CHR: u8 = 3;
pub(crate) const FT_BLK: u8 = 4;
pub(crate) const FT_FIFO: u8 = 5;
pub(crate) const FT_SYMLINK: u8 = 7;

/// One entry to store.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<'a> {
    pub name: &'a [u8],
    pub ino: u32,
    pub ftype: u8,
}

/// The blocks of one directory, in logical order.
pub(crate) struct DirBlocks {
    pub data: Vec<u8>,
    pub indexed: bool,
}

/// A directory that would need more than two index levels (`largedir`).
#[derive(Debug)]
pub(crate) struct TooLarge;

fn rec_len(name_len: usize) -> usize {
    (8 + name_len).div_ceil(4) * 4
}

fn put_entry(buf: &mut [u8], ino: u32, rec: usize, name: &[u8], ftype: u8) {
    buf[0..4].copy_from_slice(&ino.to_le_bytes());
    buf[4..6].copy_from_slice(&(rec as u16).to_le_bytes());
    buf[6] = name.len() as u8;
    buf[7] = ftype;
    buf[8..8 + name.len()].copy_from_slice(name);
}

/// Packs entries into leaf blocks, each ending in a checksum tail.
struct Packer {
    data: Vec<u8>,
    /// Offset of the current block in `data`.
    block: usize,
    /// Used bytes in the current block.
    used: usize,
    /// Offset (in block) of the last entry, whose rec_len absorbs the free space.
    last: Option<usize>,
}

impl Packer {
    fn new() -> Self {
        Packer {
            data: vec![0; BSU],
            block: 0,
            used: 0,
            last: None,
        }
    }

    fn fits(&self, name_len: usize) -> bool {
        self.used + rec_len(name_len) <= LEAF_ROOM
    }

    fn add(&mut self, ino: u32, name: &[u8], ftype: u8) {
        let rec = rec_len(name.len());
        let at = self.block + self.used;
        put_entry(&mut self.data[at..at + rec], ino, rec, name, ftype);
        self.last = Some(self.used);
        self.used += rec;
    }

    /// Closes the current block (extending its last entry, writing the tail).
    fn finish_block(&mut self) {
        let b = self.block;
        match self.last {
            Some(off) => {
                let rec = (LEAF_ROOM - off) as u16;
                self.data[b + off + 4..b + off + 6].copy_from_slice(&rec.to_le_bytes());
            }
            None => put_entry(&mut self.data[b..b + 8], 0, LEAF_ROOM, b"", 0),
        }
        let tail = b + LEAF_ROOM;
        self.data[tail + 4..tail + 6].copy_from_slice(&12u16.to_le_bytes());
        self.data[tail + 7] = 0xDE;
    }

    fn new_block(&mut self) {
        self.finish_block();
        self.block = self.data.len();
        self.data.resize(self.block + BSU, 0);
        self.used = 0;
        self.last = None;
    }
}

fn leaf_csum(block: &mut [u8], seed: u32) {
    let c = csum::crc(seed, &block[..LEAF_ROOM]);
    block[BSU - 4..].copy_from_slice(&c.to_le_bytes());
}

/// Writes count/limit + entries at `count_off` and the dx tail checksum.
fn dx_fill(block: &mut [u8], count_off: usize, limit: usize, entries: &[(u32, u32)], seed: u32) {
    let count = entries.len();
    block[count_off..count_off + 2].copy_from_slice(&(limit as u16).to_le_bytes());
    block[count_off + 2..count_off + 4].copy_from_slice(&(count as u16).to_le_bytes());
    for (i, &(hash, lblk)) in entries.iter().enumerate() {
        let at = count_off + 8 * i;
        if i > 0 {
            block[at..at + 4].copy_from_slice(&hash.to_le_bytes());
        }
        block[at + 4..at + 8].copy_from_slice(&lblk.to_le_bytes());
    }
    let tail = count_off + 8 * limit;
    let mut c = csum::crc(seed, &block[..count_off + 8 * count]);
    c = csum::crc(c, &block[tail..tail + 4]);
    c = csum::crc(c, &[0; 4]);
    block[tail + 4..tail + 8].copy_from_slice(&c.to_le_bytes());
}

/// Builds directory `ino` (parent `parent`) holding `entries` (excluding `.` and `..`).
/// `seed` is the directory inode's checksum seed.
pub(crate) fn build(
    entries: &[Entry<'_>],
    ino: u32,
    parent: u32,
    hash_seed: &[u32; 4],
    seed: u32,
) -> Result<DirBlocks, TooLarge> {
    let linear_size = 24 + entries.iter().map(|e| rec_len(e.name.len())).sum::<usize>();
    if linear_size <= LEAF_ROOM {
        let mut p = Packer::new();
        p.add(ino, b".", FT_DIR);
        p.add(parent, b"..", FT_DIR);
        for e in entries {
            p.add(e.ino, e.name, e.ftype);
        }
        p.finish_block();
        leaf_csum(&mut p.data, seed);
        return Ok(DirBlocks {
            data: p.data,
            indexed: false,
        });
    }
    let mut hashed: Vec<(u32, u32, &Entry<'_>)> = entries
        .iter()
        .map(|e| {
            let (h, minor) = dx_hash(e.name, hash_seed);
            (h, minor, e)
        })
        .collect();
    hashed.sort_by(|a, b| (a.0, a.1, a.2.name).cmp(&(b.0, b.1, b.2.name)));
    // Pack leaves; remember each leaf's starting hash (low bit: continues a collision).
    let mut p = Packer::new();
    let mut starts: Vec<u32> = vec![0];
    let mut prev_hash: Option<u32> = None;
    for &(h, _, e) in &hashed {
        if !p.fits(e.name.len()) {
            p.new_block();
            starts.push(if prev_hash == Some(h) { h | 1 } else { h });
        }
        p.add(e.ino, e.name, e.ftype);
        prev_hash = Some(h);
    }
    p.finish_block();
    let leaves = starts.len();
    let (levels, nodes) = if leaves <= ROOT_LIMIT {
        (0u8, 0usize)
    } else {
        let nodes = leaves.div_ceil(NODE_LIMIT);
        if nodes > ROOT_LIMIT {
            return Err(TooLarge);
        }
        (1, nodes)
    };
    let first_leaf = 1 + nodes;
    let mut data = vec![0u8; (first_leaf + leaves) * BSU];
    data[first_leaf * BSU..].copy_from_slice(&p.data);
    for leaf in data[first_leaf * BSU..].chunks_exact_mut(BSU) {
        leaf_csum(leaf, seed);
    }
    let leaf_refs: Vec<(u32, u32)> = starts
        .iter()
        .enumerate()
        .map(|(i, &h)| (h, (first_leaf + i) as u32))
        .collect();
    let root_refs: Vec<(u32, u32)> = if levels == 0 {
        leaf_refs
    } else {
        let mut refs = Vec::new();
        for (n, chunk) in leaf_refs.chunks(NODE_LIMIT).enumerate() {
            let block = &mut data[(1 + n) * BSU..(2 + n) * BSU];
            put_entry(&mut block[..8], 0, BSU, b"", 0);
            dx_fill(block, 8, NODE_LIMIT, chunk, seed);
            refs.push((chunk[0].0, (1 + n) as u32));
        }
        refs
    };
    let root = &mut data[..BSU];
    put_entry(&mut root[..12], ino, 12, b".", FT_DIR);
    put_entry(&mut root[12..24], parent, BSU - 12, b"..", FT_DIR);
    root[24 + 4] = HASH_HALF_MD4;
    root[24 + 5] = 8;
    root[24 + 6] = levels;
    dx_fill(root, 32, ROOT_LIMIT, &root_refs, seed);
    Ok(DirBlocks {
        data,
        indexed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_directory_is_one_linear_block() {
        let e = [Entry {
            name: b"hello",
            ino: 12,
            ftype: FT_REG,
        }];
        let d = build(&e, 2, 2, &[1, 2, 3, 4], 0).unwrap();
        assert!(!d.indexed);
        assert_eq!(d.data.len(), BSU);
        // The last entry's rec_len reaches the tail.
        assert_eq!(
            u16::from_le_bytes([d.data[28], d.data[29]]) as usize,
            LEAF_ROOM - 24
        );
        assert_eq!(d.data[LEAF_ROOM + 7], 0xDE);
    }

    #[test]
    fn big_directories_are_indexed_with_two_levels_when_needed() {
        let names: Vec<Vec<u8>> = (0..150_000)
            .map(|i| format!("entry-{i:08}").into_bytes())
            .collect();
        let e: Vec<Entry<'_>> = names
            .iter()
            .map(|n| Entry {
                name: n,
                ino: 20,
                ftype: FT_REG,
            })
            .collect();
        let d = build(&e, 2, 2, &[1, 2, 3, 4], 0).unwrap();
        assert!(d.indexed);
        assert_eq!(d.data[24 + 6], 1, "two index levels");
        let small = build(&e[..20_000], 2, 2, &[1, 2, 3, 4], 0).unwrap();
        assert_eq!(small.data[24 + 6], 0);
    }
}
