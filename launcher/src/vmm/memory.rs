//! Guest RAM: its regions (split around the 32-bit MMIO hole) and the e820 map describing them.

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout;

/// Smallest guest memory accepted, in MiB.
pub const MIN_MEMORY_MIB: u32 = 8;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("guest memory of {0} MiB is below the minimum of {MIN_MEMORY_MIB} MiB")]
    TooSmall(u32),
    #[error("cannot map {0} MiB of guest memory")]
    Map(u32, #[source] vm_memory::mmap::FromRangesError),
}

/// Kind of an e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// RAM regions for `bytes` of memory: up to the MMIO hole, and the rest above 4 GiB.
pub fn ram_regions(bytes: u64) -> Vec<(u64, u64)> {
    if bytes <= layout::MMIO_HOLE_START {
        vec![(0, bytes)]
    } else {
        vec![
            (0, layout::MMIO_HOLE_START),
            (layout::MMIO_HOLE_END, bytes - layout::MMIO_HOLE_START),
        ]
    }
}

/// The e820 map the guest sees for `bytes` of RAM.
pub fn e820_map(bytes: u64) -> Vec<E820Entry> {
    let ram = |addr, size| E820Entry {
        addr,
        size,
        kind: E820Kind::Ram,
    };
    let mut v = vec![
        ram(0, layout::MPTABLE_CONFIG),
        E820Entry {
            addr: layout::MPTABLE_CONFIG,
            size: layout::LOW_RAM_END - layout::MPTABLE_CONFIG,
            kind: E820Kind::Reserved,
        },
    ];
    for (start, size) in ram_regions(bytes) {
        let end = start + size;
        let start = start.max(layout::HIMEM_START);
        if end > start {
            v.push(ram(start, end - start));
        }
    }
    v
}

/// End (exclusive) of the RAM below the MMIO hole.
pub fn low_ram_end(bytes: u64) -> u64 {
    bytes.min(layout::MMIO_HOLE_START)
}

/// Maps `mib` MiB of anonymous guest memory.
pub fn create_guest_memory(mib: u32) -> Result<GuestMemoryMmap, MemoryError> {
    if mib < MIN_MEMORY_MIB {
        return Err(MemoryError::TooSmall(mib));
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_regions(u64::from(mib) << 20)
        .into_iter()
        .map(|(a, s)| (GuestAddress(a), s as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Map(mib, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region_with_a_legacy_hole() {
        let m = e820_map(128 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].addr, 0);
        assert_eq!(m[1].kind, E820Kind::Reserved);
        assert_eq!(m[2].addr, layout::HIMEM_START);
        assert_eq!(m[2].addr + m[2].size, 128 << 20);
        assert!(m.len() <= layout::MAX_E820_ENTRIES);
    }

    #[test]
    fn big_memory_skips_the_mmio_hole() {
        let bytes = 5u64 << 30;
        let r = ram_regions(bytes);
        assert_eq!(r[1].0, layout::MMIO_HOLE_END);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), bytes);
        let m = e820_map(bytes);
        assert_eq!(m.last().unwrap().addr, layout::MMIO_HOLE_END);
        assert_eq!(low_ram_end(bytes), layout::MMIO_HOLE_START);
        assert!(create_guest_memory(4).is_err());
    }
}
