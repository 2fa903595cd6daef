//! Geometry constants, backup-superblock placement and the bump block allocator.
//!
//! Every block is handed out in increasing order by one cursor, skipping the areas at the
//! start of backup groups (superblock + group descriptor copies). The allocator remembers
//! what it handed out as merged runs, from which the block bitmaps are built at the end.

/// Block size in bytes (4 KiB).
pub(crate) const BS: u64 = 4096;
/// Most blocks (and inodes) per group: one bitmap block's worth. Groups have this many
/// blocks unless the tree is inode-heavy (see `plan`).
pub(crate) const MAX_BPG: u64 = 32768;
/// Fewest blocks per group the writer uses: e2fsck wants inodes per group at most
/// 16 × (blocks per group − 4), and a group may hold 32768 inodes.
pub(crate) const MIN_BPG: u64 = 4096;
/// Inode record size.
pub(crate) const INODE_SIZE: u64 = 256;
/// Group descriptor size (`64bit` feature).
pub(crate) const DESC_SIZE: u64 = 64;
/// Descriptors per block.
pub(crate) const DESCS_PER_BLOCK: u64 = BS / DESC_SIZE;
/// Longest run one extent may describe (initialized extent).
pub(crate) const MAX_EXTENT_LEN: u64 = 32768;

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n % base == 0 {
        n /= base;
    }
    n == 1
}

/// Whether group `g` holds a superblock copy (`sparse_super`: 0, 1 and powers of 3, 5, 7).
pub(crate) fn has_super(g: u64) -> bool {
    g <= 1 || is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
}

/// The smallest group above `g` holding a superblock copy.
fn next_super_group(g: u64) -> u64 {
    if g == 0 {
        return 1;
    }
    let mut best = u64::MAX;
    for base in [3u64, 5, 7] {
        let mut p = base;
        while p <= g {
            p = p.saturating_mul(base);
        }
        best = best.min(p);
    }
    best
}

/// Number of descriptor blocks for `groups` groups.
pub(crate) fn gdt_blocks(groups: u64) -> u64 {
    groups.div_ceil(DESCS_PER_BLOCK)
}

/// A bump allocator over the whole (not yet sized) filesystem.
#[derive(Clone, Debug)]
pub(crate) struct Alloc {
    cursor: u64,
    /// Length of each backup area: superblock + reserved descriptor blocks.
    area_len: u64,
    /// Start block of the next backup area at or after the cursor's group.
    next_area: u64,
    /// Blocks per group.
    bpg: u64,
    runs: Vec<(u64, u64)>,
}

impl Alloc {
    /// An allocator for groups of `bpg` blocks whose backup areas hold `gdt_reserved`
    /// descriptor blocks.
    pub(crate) fn new(gdt_reserved: u64, bpg: u64) -> Self {
        let mut a = Alloc {
            cursor: 0,
            area_len: 1 + gdt_reserved,
            next_area: 0,
            bpg,
            runs: Vec::new(),
        };
        a.settle();
        a
    }

    /// Superblock + descriptor blocks at the start of every backup group.
    pub(crate) fn area_len(&self) -> u64 {
        self.area_len
    }

    /// Blocks per group.
    pub(crate) fn bpg(&self) -> u64 {
        self.bpg
    }

    /// The next block that would be handed out.
    pub(crate) fn cursor(&mut self) -> u64 {
        self.settle();
        self.cursor
    }

    /// Runs handed out so far, merged, in increasing order.
    pub(crate) fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    fn settle(&mut self) {
        while self.cursor >= self.next_area {
            if self.cursor < self.next_area + self.area_len {
                self.cursor = self.next_area + self.area_len;
            }
            self.next_area = next_super_group(self.next_area / self.bpg) * self.bpg;
        }
    }

    fn record(&mut self, start: u64, len: u64) {
        if let Some(last) = self.runs.last_mut()
            && last.0 + last.1 == start
        {
            last.1 += len;
            return;
        }
        self.runs.push((start, len));
    }

    /// One block.
    pub(crate) fn block(&mut self) -> u64 {
        self.settle();
        let b = self.cursor;
        self.cursor += 1;
        self.record(b, 1);
        b
    }

    /// `n` contiguous blocks (`n` well below a group), skipping ahead past a backup area
    /// rather than straddling it.
    pub(crate) fn contiguous(&mut self, n: u64) -> u64 {
        loop {
            self.settle();
            if self.cursor + n <= self.next_area {
                break;
            }
            self.cursor = self.next_area;
        }
        let b = self.cursor;
        self.cursor += n;
        self.record(b, n);
        b
    }

    /// `n` blocks as runs, each run within one stretch between backup areas.
    pub(crate) fn runs_of(&mut self, mut n: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        while n > 0 {
            self.settle();
            let take = n.min(self.next_area - self.cursor);
            out.push((self.cursor, take));
            self.record(self.cursor, take);
            self.cursor += take;
            n -= take;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_groups_follow_sparse_super() {
        let groups: Vec<u64> = (0..130).filter(|&g| has_super(g)).collect();
        assert_eq!(groups, vec![0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125]);
        assert_eq!(next_super_group(9), 25);
        assert_eq!(next_super_group(0), 1);
    }

    #[test]
    fn allocator_skips_backup_areas() {
        const BPG: u64 = MAX_BPG;
        let mut a = Alloc::new(2, BPG);
        assert_eq!(a.block(), 3);
        let runs = a.runs_of(BPG);
        assert_eq!(runs, vec![(4, BPG - 4), (BPG + 3, 4)]);
        // A contiguous request that would straddle group 3's area jumps over it.
        let mut b = Alloc::new(1, BPG);
        b.runs_of(3 * BPG - 2 - 10);
        let got = b.contiguous(20);
        assert_eq!(got, 3 * BPG + 2);
    }
}
