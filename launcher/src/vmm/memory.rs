//! Guest RAM: its regions (split around the 32-bit MMIO hole) and the e820 map describing them;
//! file pages mapped copy-on-write into it ([`map_file`]).

use std::fs::File;
use std::os::fd::AsRawFd;

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout;

/// Smallest guest memory accepted, in MiB.
pub const MIN_MEMORY_MIB: u32 = 8;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("guest memory of {0} MiB is below the minimum of {MIN_MEMORY_MIB} MiB")]
    TooSmall(u32),
    #[error("cannot map {0} MiB of guest memory")]
    Map(u32, #[source] vm_memory::mmap::FromRangesError),
    #[error("cannot map file pages at guest address {0:#x}")]
    MapFile(u64, #[source] std::io::Error),
}

/// The host page size file mappings are aligned to.
pub const PAGE_SIZE: u64 = 4096;

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

/// Maps `len` bytes of `file` from `file_offset` over guest memory at `addr`, private and
/// copy-on-write: the guest reads the file's page-cache pages and a guest write copies the page,
/// as if the bytes had been copied in, but nothing is read or copied now. `addr`, `file_offset`
/// and `len` must be page-aligned and the range inside one RAM region, else nothing is mapped and
/// `Ok(false)` says the caller should copy instead.
///
/// The file must not shrink while the VM runs (the guest would fault on the missing pages, as a
/// process does on a truncated mapped executable); the launcher maps only pods that no other user
/// can write (`source::PodImage::backing`).
pub fn map_file(
    mem: &GuestMemoryMmap,
    addr: u64,
    file: &File,
    file_offset: u64,
    len: u64,
) -> Result<bool, MemoryError> {
    if len == 0 || (addr | file_offset | len) % PAGE_SIZE != 0 {
        return Ok(false);
    }
    let Some(region) = mem.find_region(GuestAddress(addr)) else {
        return Ok(false);
    };
    let start = region.start_addr().0;
    let in_region = addr - start;
    if in_region
        .checked_add(len)
        .is_none_or(|end| end > region.len())
    {
        return Ok(false);
    }
    let (Ok(off), Ok(size)) = (libc::off_t::try_from(file_offset), usize::try_from(len)) else {
        return Ok(false);
    };
    // SAFETY: `region.as_ptr()` is the start of the region's live mapping of `region.len()`
    // bytes, and `in_region + len` is within it (checked above).
    let host = unsafe { region.as_ptr().add(in_region as usize) };
    // SAFETY: MAP_FIXED replaces exactly `size` bytes of the guest-memory mapping that `mem` owns
    // (checked above to lie inside one region) with a private mapping of the file; no Rust
    // reference into guest memory exists (vm-memory accesses it through raw pointers), and the
    // region's own munmap on drop removes this mapping with the rest.
    let got = unsafe {
        libc::mmap(
            host.cast(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            file.as_raw_fd(),
            off,
        )
    };
    if got == libc::MAP_FAILED {
        return Err(MemoryError::MapFile(addr, std::io::Error::last_os_error()));
    }
    Ok(true)
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

    #[test]
    fn file_pages_appear_in_guest_memory_copy_on_write() {
        use std::io::Write;
        use vm_memory::Bytes;
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i % 253) as u8).collect();
        f.write_all(&data).unwrap();
        let mem = create_guest_memory(16).unwrap();
        // Misaligned requests are declined, not half-done.
        assert!(!map_file(&mem, 0x20_0100, &f, 0, PAGE_SIZE).unwrap());
        assert!(!map_file(&mem, 0x20_0000, &f, 0x100, PAGE_SIZE).unwrap());
        assert!(!map_file(&mem, (16 << 20) - PAGE_SIZE, &f, 0, 2 * PAGE_SIZE).unwrap());
        assert!(map_file(&mem, 0x20_0000, &f, PAGE_SIZE, 2 * PAGE_SIZE).unwrap());
        let mut got = vec![0u8; 2 * PAGE_SIZE as usize];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(got, data[PAGE_SIZE as usize..]);
        // A write lands in guest memory only; the file keeps its bytes.
        mem.write_slice(b"guest", GuestAddress(0x20_0000)).unwrap();
        let mut back = [0u8; 5];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut back, PAGE_SIZE).unwrap();
        assert_eq!(&back[..], &data[PAGE_SIZE as usize..PAGE_SIZE as usize + 5]);
        // Memory around the mapping is untouched zero.
        let mut edge = [1u8; 8];
        mem.read_slice(&mut edge, GuestAddress(0x20_0000 + 2 * PAGE_SIZE))
            .unwrap();
        assert_eq!(edge, [0; 8]);
    }
}
