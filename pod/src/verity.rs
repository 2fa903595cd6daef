//! The rootfs's dm-verity hash tree (`rootfs.verity`, `docs/pod-format.md`): format 1 as the
//! kernel's dm-verity and `veritysetup` read it — sha256, 4 KiB data and hash blocks, the salt
//! hashed before each block, no superblock, the top level first and level 0 (the hashes of the
//! data blocks) last.
//!
//! The guest sees the rootfs and its tree as one disk (the rootfs section through the end of
//! the verity section, [`crate::Pod::rootfs_disk`]), so the tree starts [`hash_start_block`]
//! blocks after the data, and the kernel sets the verity device up from the
//! `dm-mod.create=` of [`kernel_args`], which the manifest's `kernel_cmdline` ends with.

use sha2::{Digest, Sha256};

use crate::manifest::Verity;
use crate::tarfmt;

/// Data and hash block size.
pub const BLOCK: u64 = 4096;
/// sha256 digests per hash block.
const PER_BLOCK: u64 = BLOCK / 32;
/// The device-mapper name of the verified rootfs; the guest's init mounts [`ROOT_DEVICE`].
pub const DM_NAME: &str = "hyperpod-root";
/// The device node of the first (and only) device-mapper device in the guest.
pub const ROOT_DEVICE: &str = "/dev/dm-0";
/// The kernel command-line word that tells init to mount [`ROOT_DEVICE`].
pub const ROOT_ARG: &str = "hyperpod.root=/dev/dm-0";

/// The salt of a rootfs: sha256 of a fixed label, the image manifest digest and the rootfs size,
/// so the same inputs give the same pod and different images get different salts.
pub fn salt(image_manifest_digest: &str, rootfs_size: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"hyperpod rootfs.verity salt v1\0");
    h.update(image_manifest_digest.as_bytes());
    h.update(b"\0");
    h.update(rootfs_size.to_le_bytes());
    h.finalize().into()
}

/// Blocks of each level, level 0 (over the data) first, exactly as dm-verity counts them:
/// the smallest number of levels whose top level is one block.
pub fn levels(data_blocks: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(PER_BLOCK);
        out.push(n);
    }
    out
}

/// Bytes of the tree for `data_blocks` data blocks.
pub fn tree_size(data_blocks: u64) -> u64 {
    levels(data_blocks).iter().sum::<u64>() * BLOCK
}

/// Where the tree starts on the guest's disk, in 4 KiB blocks: after the data and the tar
/// headers of the `rootfs.verity` entry (the rootfs ends 4 KiB-aligned, so those headers are
/// one 4 KiB block).
pub fn hash_start_block(data_blocks: u64) -> u64 {
    let headers = (tarfmt::pax_blocks_at(0) + 2) * tarfmt::BLOCK;
    data_blocks + headers / BLOCK
}

fn salted(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Hashes data blocks in order into level 0.
pub struct Level0 {
    salt: [u8; 32],
    hashes: Vec<u8>,
}

impl Level0 {
    pub fn new(salt: [u8; 32], data_blocks: u64) -> Level0 {
        Level0 {
            salt,
            hashes: Vec::with_capacity((data_blocks * 32) as usize),
        }
    }

    /// Hashes `data`, a whole number of 4 KiB blocks.
    pub fn update(&mut self, data: &[u8]) {
        debug_assert_eq!(data.len() as u64 % BLOCK, 0);
        for block in data.chunks(BLOCK as usize) {
            self.hashes.extend_from_slice(&salted(&self.salt, block));
        }
    }

    /// Builds the upper levels; returns the tree's bytes (top level first) and the root hash.
    pub fn finish(self) -> (Vec<u8>, [u8; 32]) {
        let data_blocks = self.hashes.len() as u64 / 32;
        if data_blocks == 1 {
            // No levels: the root hash is the hash of the one data block.
            let root: [u8; 32] = self.hashes[..32].try_into().expect("32 bytes");
            return (Vec::new(), root);
        }
        let mut built: Vec<Vec<u8>> = Vec::new();
        let mut hashes = self.hashes;
        loop {
            // Pack the hashes into zero-padded blocks: this level's bytes.
            let mut level = hashes;
            level.resize(
                crate::tarfmt::round_up(level.len() as u64, BLOCK) as usize,
                0,
            );
            let next: Vec<u8> = level
                .chunks(BLOCK as usize)
                .flat_map(|b| salted(&self.salt, b))
                .collect();
            let top = level.len() as u64 == BLOCK;
            built.push(level);
            if top {
                let root: [u8; 32] = next.try_into().expect("one hash");
                let tree = built.into_iter().rev().flatten().collect();
                return (tree, root);
            }
            hashes = next;
        }
    }
}

/// The tree and root hash of `data` (a whole number of 4 KiB blocks) in one call.
pub fn tree(salt: [u8; 32], data: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let mut l0 = Level0::new(salt, data.len() as u64 / BLOCK);
    l0.update(data);
    l0.finish()
}

/// The kernel command-line words that open the rootfs through dm-verity: a read-only
/// `hyperpod-root` device over `/dev/vda` (data, then the tree after [`hash_start_block`]) and
/// [`ROOT_ARG`] for init. A corrupted block reads as EIO.
pub fn kernel_args(v: &Verity) -> String {
    format!(
        "dm-mod.create=\"{DM_NAME},,,ro,0 {sectors} verity 1 /dev/vda /dev/vda {BLOCK} {BLOCK} \
         {blocks} {start} sha256 {root} {salt}\" {ROOT_ARG}",
        sectors = v.data_blocks * (BLOCK / 512),
        blocks = v.data_blocks,
        start = hash_start_block(v.data_blocks),
        root = v.root_hash,
        salt = v.salt,
    )
}

/// `base` with the verity words appended (replacing any earlier ones).
pub fn with_kernel_args(base: &str, v: &Verity) -> String {
    let base = match base.find("dm-mod.create=") {
        Some(i) => base[..i].trim_end(),
        None => base.trim_end(),
    };
    if base.is_empty() {
        kernel_args(v)
    } else {
        format!("{base} {}", kernel_args(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_match_dm_verity() {
        assert_eq!(levels(1), Vec::<u64>::new());
        assert_eq!(levels(2), vec![1]);
        assert_eq!(levels(128), vec![1]);
        assert_eq!(levels(129), vec![2, 1]);
        assert_eq!(levels(128 * 128), vec![128, 1]);
        assert_eq!(levels(128 * 128 + 1), vec![129, 2, 1]);
        assert_eq!(tree_size(129), 3 * BLOCK);
        assert_eq!(hash_start_block(10), 11);
    }

    #[test]
    fn tree_has_the_levels_top_first() {
        let salt = [7u8; 32];
        let data: Vec<u8> = (0..130 * BLOCK as usize)
            .map(|i| (i / 4096) as u8)
            .collect();
        let (tree, root) = tree(salt, &data);
        assert_eq!(tree.len() as u64, tree_size(130));
        // Level 0 (2 blocks) is last: its first hash is that of data block 0.
        let l0 = &tree[BLOCK as usize..];
        assert_eq!(&l0[..32], &salted(&salt, &data[..4096]));
        // Level 1 (the top block) hashes the level-0 blocks; the root hashes level 1.
        assert_eq!(&tree[..32], &salted(&salt, &l0[..4096]));
        assert_eq!(root, salted(&salt, &tree[..4096]));
        assert!(tree[64..4096].iter().all(|&b| b == 0));
    }

    #[test]
    fn kernel_args_replace_earlier_ones() {
        let v = Verity {
            data_blocks: 3,
            salt: "a".repeat(64),
            root_hash: "b".repeat(64),
        };
        let once = with_kernel_args("quiet", &v);
        assert!(once.starts_with("quiet dm-mod.create=\"hyperpod-root,,,ro,0 24 verity 1 "));
        assert!(once.ends_with(" hyperpod.root=/dev/dm-0"));
        assert_eq!(with_kernel_args(&once, &v), once);
    }
}
