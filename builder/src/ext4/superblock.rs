//! Superblock and group descriptor records.

use super::csum;
use super::layout::{DESC_SIZE, INODE_SIZE};

const COMPAT_EXT_ATTR: u32 = 0x0008;
const COMPAT_DIR_INDEX: u32 = 0x0020;
const INCOMPAT_FILETYPE: u32 = 0x0002;
const INCOMPAT_EXTENTS: u32 = 0x0040;
const INCOMPAT_64BIT: u32 = 0x0080;
const INCOMPAT_FLEX_BG: u32 = 0x0200;
const RO_SPARSE_SUPER: u32 = 0x0001;
const RO_LARGE_FILE: u32 = 0x0002;
const RO_DIR_NLINK: u32 = 0x0020;
const RO_EXTRA_ISIZE: u32 = 0x0040;
const RO_METADATA_CSUM: u32 = 0x0400;

/// Group flag: inode table zeroed.
pub(crate) const BG_ITABLE_ZEROED: u16 = 0x0004;

/// Filesystem-wide values the superblock records.
#[derive(Clone, Debug)]
pub(crate) struct Super {
    pub inodes: u32,
    pub blocks: u64,
    pub free_blocks: u64,
    pub free_inodes: u32,
    pub blocks_per_group: u32,
    pub inodes_per_group: u32,
    pub first_ino: u32,
    /// Creation time (the tree's newest mtime). Write and check times stay 0: a tree time
    /// may be in the checking host's future, which e2fsck reports.
    pub time: u32,
    pub uuid: [u8; 16],
    pub label: [u8; 16],
    pub hash_seed: [u32; 4],
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The 1024-byte superblock as stored in group `group`.
pub(crate) fn encode_super(s: &Super, group: u16) -> [u8; 1024] {
    let mut b = [0u8; 1024];
    put32(&mut b, 0x00, s.inodes);
    put32(&mut b, 0x04, s.blocks as u32);
    put32(&mut b, 0x0C, s.free_blocks as u32);
    put32(&mut b, 0x10, s.free_inodes);
    put32(&mut b, 0x14, 0); // first data block
    put32(&mut b, 0x18, 2); // log block size: 1024 << 2
    put32(&mut b, 0x1C, 2); // log cluster size
    put32(&mut b, 0x20, s.blocks_per_group);
    put32(&mut b, 0x24, s.blocks_per_group);
    put32(&mut b, 0x28, s.inodes_per_group);
    put16(&mut b, 0x36, 0xFFFF); // max mount count: -1
    put16(&mut b, 0x38, 0xEF53);
    put16(&mut b, 0x3A, 1); // clean
    put16(&mut b, 0x3C, 1); // errors: continue
    put32(&mut b, 0x4C, 1); // dynamic revision
    put32(&mut b, 0x54, s.first_ino);
    put16(&mut b, 0x58, INODE_SIZE as u16);
    put16(&mut b, 0x5A, group);
    put32(&mut b, 0x5C, COMPAT_EXT_ATTR | COMPAT_DIR_INDEX);
    put32(
        &mut b,
        0x60,
        INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG,
    );
    put32(
        &mut b,
        0x64,
        RO_SPARSE_SUPER | RO_LARGE_FILE | RO_DIR_NLINK | RO_EXTRA_ISIZE | RO_METADATA_CSUM,
    );
    b[0x68..0x78].copy_from_slice(&s.uuid);
    b[0x78..0x88].copy_from_slice(&s.label);
    for (i, w) in s.hash_seed.iter().enumerate() {
        put32(&mut b, 0xEC + 4 * i, *w);
    }
    b[0xFC] = 1; // default hash: half-MD4
    put16(&mut b, 0xFE, DESC_SIZE as u16);
    put32(&mut b, 0x100, 0x000C); // default mount options: user_xattr, acl
    put32(&mut b, 0x108, s.time); // mkfs time
    put32(&mut b, 0x150, (s.blocks >> 32) as u32);
    put32(&mut b, 0x158, (s.free_blocks >> 32) as u32);
    put16(&mut b, 0x15C, 32); // min extra isize
    put16(&mut b, 0x15E, 32); // want extra isize
    put32(&mut b, 0x160, 0x0002); // flags: unsigned directory hash
    b[0x174] = 4; // log groups per flex
    b[0x175] = 1; // checksum type: crc32c
    let c = csum::crc(!0, &b[..0x3FC]);
    put32(&mut b, 0x3FC, c);
    b
}

/// One group's descriptor values.
#[derive(Clone, Debug, Default)]
pub(crate) struct Desc {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub used_dirs: u32,
    pub flags: u16,
    pub itable_unused: u32,
    pub block_bitmap_csum: u32,
    pub inode_bitmap_csum: u32,
}

/// The 64-byte descriptor of group `group`.
pub(crate) fn encode_desc(d: &Desc, group: u32, fs_seed: u32) -> [u8; 64] {
    let mut b = [0u8; 64];
    put32(&mut b, 0x00, d.block_bitmap as u32);
    put32(&mut b, 0x04, d.inode_bitmap as u32);
    put32(&mut b, 0x08, d.inode_table as u32);
    put16(&mut b, 0x0C, d.free_blocks as u16);
    put16(&mut b, 0x0E, d.free_inodes as u16);
    put16(&mut b, 0x10, d.used_dirs as u16);
    put16(&mut b, 0x12, d.flags);
    put16(&mut b, 0x18, d.block_bitmap_csum as u16);
    put16(&mut b, 0x1A, d.inode_bitmap_csum as u16);
    put16(&mut b, 0x1C, d.itable_unused as u16);
    put32(&mut b, 0x20, (d.block_bitmap >> 32) as u32);
    put32(&mut b, 0x24, (d.inode_bitmap >> 32) as u32);
    put32(&mut b, 0x28, (d.inode_table >> 32) as u32);
    put16(&mut b, 0x2C, (d.free_blocks >> 16) as u16);
    put16(&mut b, 0x2E, (d.free_inodes >> 16) as u16);
    put16(&mut b, 0x30, (d.used_dirs >> 16) as u16);
    put16(&mut b, 0x32, (d.itable_unused >> 16) as u16);
    put16(&mut b, 0x38, (d.block_bitmap_csum >> 16) as u16);
    put16(&mut b, 0x3A, (d.inode_bitmap_csum >> 16) as u16);
    let c = csum::crc(csum::crc(fs_seed, &group.to_le_bytes()), &b);
    put16(&mut b, 0x1E, c as u16);
    b
}
