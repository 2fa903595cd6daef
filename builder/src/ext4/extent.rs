//! Extent trees: the in-inode root (`i_block`) and, for more than four extents, index and
//! leaf blocks with checksummed tails.

use super::csum;
use super::layout::{Alloc, BS, MAX_EXTENT_LEN};

const MAGIC: u16 = 0xF30A;
/// Entries in one tree block: (4096 - 12 header - 4 tail) / 12.
const PER_BLOCK: usize = 340;
/// Entries in the in-inode root.
const IN_INODE: usize = 4;

/// One mapped run: `len` blocks of file block `logical` onward live at `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub logical: u32,
    pub start: u64,
    pub len: u32,
}

/// Collects extents as blocks are mapped one after another, merging neighbours.
#[derive(Default, Debug)]
pub(crate) struct ExtentList {
    pub list: Vec<Extent>,
}

impl ExtentList {
    /// Maps `len` blocks from file block `logical` to disk block `start`.
    pub(crate) fn push(&mut self, logical: u32, start: u64, len: u32) {
        let (mut logical, mut start, mut len) = (logical, start, u64::from(len));
        if let Some(last) = self.list.last_mut()
            && last.logical + last.len == logical
            && last.start + u64::from(last.len) == start
        {
            let room = (MAX_EXTENT_LEN - u64::from(last.len)).min(len);
            last.len += room as u32;
            logical += room as u32;
            start += room;
            len -= room;
        }
        while len > 0 {
            let take = len.min(MAX_EXTENT_LEN);
            self.list.push(Extent {
                logical,
                start,
                len: take as u32,
            });
            logical = logical.wrapping_add(take as u32);
            start += take;
            len -= take;
        }
    }

    /// Blocks mapped.
    pub(crate) fn blocks(&self) -> u64 {
        self.list.iter().map(|e| u64::from(e.len)).sum()
    }
}

fn header(buf: &mut [u8], entries: usize, max: usize, depth: u16) {
    buf[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    buf[2..4].copy_from_slice(&(entries as u16).to_le_bytes());
    buf[4..6].copy_from_slice(&(max as u16).to_le_bytes());
    buf[6..8].copy_from_slice(&depth.to_le_bytes());
}

fn leaf_entry(buf: &mut [u8], e: &Extent) {
    buf[0..4].copy_from_slice(&e.logical.to_le_bytes());
    buf[4..6].copy_from_slice(&(e.len as u16).to_le_bytes());
    buf[6..8].copy_from_slice(&((e.start >> 32) as u16).to_le_bytes());
    buf[8..12].copy_from_slice(&(e.start as u32).to_le_bytes());
}

fn index_entry(buf: &mut [u8], logical: u32, block: u64) {
    buf[0..4].copy_from_slice(&logical.to_le_bytes());
    buf[4..8].copy_from_slice(&(block as u32).to_le_bytes());
    buf[8..10].copy_from_slice(&((block >> 32) as u16).to_le_bytes());
    buf[10..12].fill(0);
}

/// A tree block to be written at `block`.
pub(crate) struct TreeBlock {
    pub block: u64,
    pub data: Box<[u8]>,
}

/// Builds the tree for `extents`: returns the 60-byte `i_block` root and the tree blocks
/// (allocated from `alloc`, checksummed with the inode's `seed`) the caller must write.
pub(crate) fn build(
    extents: &[Extent],
    alloc: &mut Alloc,
    seed: u32,
) -> ([u8; 60], Vec<TreeBlock>) {
    let mut root = [0u8; 60];
    if extents.len() <= IN_INODE {
        header(&mut root, extents.len(), IN_INODE, 0);
        for (i, e) in extents.iter().enumerate() {
            leaf_entry(&mut root[12 + 12 * i..24 + 12 * i], e);
        }
        return (root, Vec::new());
    }
    let mut blocks = Vec::new();
    // (first logical block, tree block) of the level being built.
    let mut level: Vec<(u32, u64)> = Vec::new();
    for chunk in extents.chunks(PER_BLOCK) {
        let mut data = vec![0u8; BS as usize].into_boxed_slice();
        header(&mut data, chunk.len(), PER_BLOCK, 0);
        for (i, e) in chunk.iter().enumerate() {
            leaf_entry(&mut data[12 + 12 * i..24 + 12 * i], e);
        }
        let block = alloc.block();
        level.push((chunk[0].logical, block));
        blocks.push(TreeBlock { block, data });
    }
    let mut depth = 1u16;
    while level.len() > IN_INODE {
        let mut next = Vec::new();
        for chunk in level.chunks(PER_BLOCK) {
            let mut data = vec![0u8; BS as usize].into_boxed_slice();
            header(&mut data, chunk.len(), PER_BLOCK, depth);
            for (i, &(logical, child)) in chunk.iter().enumerate() {
                index_entry(&mut data[12 + 12 * i..24 + 12 * i], logical, child);
            }
            let block = alloc.block();
            next.push((chunk[0].0, block));
            blocks.push(TreeBlock { block, data });
        }
        level = next;
        depth += 1;
    }
    header(&mut root, level.len(), IN_INODE, depth);
    for (i, &(logical, child)) in level.iter().enumerate() {
        index_entry(&mut root[12 + 12 * i..24 + 12 * i], logical, child);
    }
    let tail = 12 + 12 * PER_BLOCK;
    for b in &mut blocks {
        let c = csum::crc(seed, &b.data[..tail]);
        b.data[tail..tail + 4].copy_from_slice(&c.to_le_bytes());
    }
    (root, blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_runs_merge_and_split_at_max_len() {
        let mut l = ExtentList::default();
        l.push(0, 100, 10);
        l.push(10, 110, 5);
        l.push(20, 200, 1);
        assert_eq!(l.list.len(), 2);
        assert_eq!(l.list[0].len, 15);
        let mut big = ExtentList::default();
        big.push(0, 1000, 70000);
        let lens: Vec<u32> = big.list.iter().map(|e| e.len).collect();
        assert_eq!(lens, vec![32768, 32768, 4464]);
        assert_eq!(big.blocks(), 70000);
    }

    #[test]
    fn many_extents_make_a_deeper_tree() {
        let exts: Vec<Extent> = (0..2000u32)
            .map(|i| Extent {
                logical: i * 2,
                start: 10_000 + u64::from(i) * 2,
                len: 1,
            })
            .collect();
        let mut a = Alloc::new(1, crate::ext4::layout::MAX_BPG);
        let (root, blocks) = build(&exts, &mut a, 0);
        // 2000 extents: 6 leaves, 6 > 4 index entries: one index block, depth 2.
        assert_eq!(blocks.len(), 7);
        assert_eq!(u16::from_le_bytes([root[6], root[7]]), 2);
        assert_eq!(u16::from_le_bytes([root[2], root[3]]), 1);
    }
}
