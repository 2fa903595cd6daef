//! The ELF `vmlinux` as the loader needs it, parsed from bytes into typed values (pure, bounded,
//! fuzzable): the loadable segments (where each goes, which bytes of the image fill it) and the
//! PVH entry note. [`super::boot`] then copies or maps each segment into guest memory.
//!
//! The checks and choices are linux-loader's (`Elf::load`): little-endian ELF64 with 56-byte
//! program headers after the ELF header, an entry point at or above high memory, `PT_LOAD`
//! segments with file bytes placed at `p_paddr` (up to `p_memsz`, the rest zero), and the PVH
//! entry from a `Xen` note of type `XEN_ELFNOTE_PHYS32_ENTRY` (its first 4 descriptor bytes).

use thiserror::Error;

/// `XEN_ELFNOTE_PHYS32_ENTRY`.
const PVH_NOTE_TYPE: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
/// More program headers than any kernel has (vmlinux has 5); bounds the work on hostile input.
const MAX_PHDRS: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not a little-endian 64-bit ELF file")]
    NotElf64,
    #[error("program headers are not 56-byte entries inside the file")]
    ProgramHeaders,
    #[error("{0} program headers, more than {MAX_PHDRS}")]
    TooManyProgramHeaders(usize),
    #[error("entry point {0:#x} is below high memory")]
    EntryBelowHighMemory(u64),
    #[error("segment {0}: file bytes outside the file, or addresses overflow")]
    Segment(usize),
    #[error("segment {0} starts at {1:#x}, below high memory")]
    SegmentBelowHighMemory(usize, u64),
    #[error("note segment {0} is malformed")]
    Note(usize),
    #[error("no loadable segment")]
    NothingToLoad,
}

/// One `PT_LOAD` segment with file bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address of its first byte.
    pub paddr: u64,
    /// Offset of its bytes in the image.
    pub offset: u64,
    /// Bytes taken from the image.
    pub filesz: u64,
    /// Bytes it occupies in memory (the rest after `filesz` is zero).
    pub memsz: u64,
}

/// What loading a vmlinux needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfKernel {
    /// `e_entry`: the 64-bit entry point (physical for a vmlinux).
    pub entry: u64,
    /// The PVH entry point, when the image has the note.
    pub pvh_entry: Option<u64>,
    pub segments: Vec<Segment>,
    /// First byte after the highest segment (`p_paddr + p_memsz`).
    pub end: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// The bytes `[offset, offset + len)` of `image`, if they are all inside it.
fn range(image: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    image.get(start..end)
}

/// The PVH entry of a note segment's bytes, if it holds the note.
fn pvh_note(notes: &[u8]) -> Result<Option<u64>, ()> {
    let mut at = 0usize;
    while at < notes.len() {
        let hdr = notes.get(at..at + 12).ok_or(())?;
        let (namesz, descsz, kind) = (u32_at(hdr, 0), u32_at(hdr, 4), u32_at(hdr, 8));
        let name_at = at + 12;
        let name_len = (namesz as usize).next_multiple_of(4);
        let desc_at = name_at.checked_add(name_len).ok_or(())?;
        let desc_len = (descsz as usize).next_multiple_of(4);
        let name = notes.get(name_at..name_at + namesz as usize).ok_or(())?;
        let desc = notes.get(desc_at..desc_at + descsz as usize).ok_or(())?;
        if kind == PVH_NOTE_TYPE && name == b"Xen\0" {
            if desc.len() < 4 {
                return Err(());
            }
            return Ok(Some(u64::from(u32_at(desc, 0))));
        }
        at = desc_at.checked_add(desc_len).ok_or(())?;
    }
    Ok(None)
}

/// Parses `image` as a vmlinux to be loaded at its physical addresses, none below `highmem`.
pub fn parse(image: &[u8], highmem: u64) -> Result<ElfKernel, ElfError> {
    let ehdr = image.get(..EHDR_SIZE).ok_or(ElfError::NotElf64)?;
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    let entry = u64_at(ehdr, 24);
    let phoff = u64_at(ehdr, 32);
    let phentsize = usize::from(u16_at(ehdr, 54));
    let phnum = usize::from(u16_at(ehdr, 56));
    if phentsize != PHDR_SIZE || phoff < EHDR_SIZE as u64 {
        return Err(ElfError::ProgramHeaders);
    }
    if phnum > MAX_PHDRS {
        return Err(ElfError::TooManyProgramHeaders(phnum));
    }
    if entry < highmem {
        return Err(ElfError::EntryBelowHighMemory(entry));
    }
    let phdrs = range(image, phoff, (phnum * PHDR_SIZE) as u64).ok_or(ElfError::ProgramHeaders)?;
    let mut kernel = ElfKernel {
        entry,
        pvh_entry: None,
        segments: Vec::new(),
        end: 0,
    };
    for (i, ph) in phdrs.chunks_exact(PHDR_SIZE).enumerate() {
        let kind = u32_at(ph, 0);
        let (offset, paddr) = (u64_at(ph, 8), u64_at(ph, 24));
        let (filesz, memsz) = (u64_at(ph, 32), u64_at(ph, 40));
        match kind {
            PT_NOTE if kernel.pvh_entry.is_none() => {
                let notes = range(image, offset, filesz).ok_or(ElfError::Note(i))?;
                kernel.pvh_entry = pvh_note(notes).map_err(|()| ElfError::Note(i))?;
            }
            PT_LOAD if filesz > 0 => {
                range(image, offset, filesz).ok_or(ElfError::Segment(i))?;
                if paddr < highmem {
                    return Err(ElfError::SegmentBelowHighMemory(i, paddr));
                }
                let end = paddr
                    .checked_add(memsz.max(filesz))
                    .ok_or(ElfError::Segment(i))?;
                kernel.end = kernel.end.max(end);
                kernel.segments.push(Segment {
                    paddr,
                    offset,
                    filesz,
                    memsz,
                });
            }
            _ => {}
        }
    }
    if kernel.segments.is_empty() {
        return Err(ElfError::NothingToLoad);
    }
    Ok(kernel)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small vmlinux-like ELF: a PVH note, and two loadable segments (the second with bss)
    /// whose file offsets are congruent to their addresses modulo 4 KiB, as in a real vmlinux.
    pub(crate) fn sample_elf() -> Vec<u8> {
        let mut img = vec![0u8; 0x6000];
        img[..4].copy_from_slice(b"\x7fELF");
        img[4] = 2;
        img[5] = 1;
        img[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
        img[32..40].copy_from_slice(&64u64.to_le_bytes());
        img[54..56].copy_from_slice(&56u16.to_le_bytes());
        img[56..58].copy_from_slice(&3u16.to_le_bytes());
        let mut ph = |i: usize, kind: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
            let at = 64 + i * 56;
            img[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            img[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            img[at + 24..at + 32].copy_from_slice(&paddr.to_le_bytes());
            img[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
            img[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
        };
        ph(0, PT_LOAD, 0x1000, 0x100_0000, 0x2800, 0x2800);
        ph(1, PT_NOTE, 0x400, 0, 24, 24);
        ph(2, PT_LOAD, 0x3a00, 0x100_5a00, 0x2600, 0x5000);
        // Note: namesz 4 "Xen\0", descsz 8, type 18, entry 0x1000abc.
        img[0x400..0x40c].copy_from_slice(&[4, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0]);
        img[0x40c..0x410].copy_from_slice(b"Xen\0");
        img[0x410..0x418].copy_from_slice(&0x100_0abcu64.to_le_bytes());
        for (i, b) in img[0x1000..].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        img
    }

    #[test]
    fn segments_entry_and_pvh_note() {
        let k = parse(&sample_elf(), 0x10_0000).unwrap();
        assert_eq!(k.entry, 0x100_0000);
        assert_eq!(k.pvh_entry, Some(0x100_0abc));
        assert_eq!(k.segments.len(), 2);
        assert_eq!(k.segments[1].paddr, 0x100_5a00);
        assert_eq!(k.end, 0x100_aa00);
    }

    #[test]
    fn hostile_images_are_refused() {
        let good = sample_elf();
        assert_eq!(parse(&good[..10], 0), Err(ElfError::NotElf64));
        let mut bad = good.clone();
        bad[5] = 2;
        assert_eq!(parse(&bad, 0), Err(ElfError::NotElf64));
        let mut bad = good.clone();
        bad[54] = 32;
        assert_eq!(parse(&bad, 0), Err(ElfError::ProgramHeaders));
        let mut bad = good.clone();
        bad[56..58].copy_from_slice(&65u16.to_le_bytes());
        assert_eq!(parse(&bad, 0), Err(ElfError::TooManyProgramHeaders(65)));
        assert_eq!(
            parse(&good, 0x200_0000),
            Err(ElfError::EntryBelowHighMemory(0x100_0000))
        );
        // A segment's bytes past the end of the file.
        let mut bad = good.clone();
        bad[64 + 32..64 + 40].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert_eq!(parse(&bad, 0), Err(ElfError::Segment(0)));
        // Address overflow.
        let mut bad = good.clone();
        bad[64 + 24..64 + 32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse(&bad, 0), Err(ElfError::Segment(0)));
        // A note whose name runs past its segment.
        let mut bad = good.clone();
        bad[0x400] = 200;
        assert_eq!(parse(&bad, 0), Err(ElfError::Note(1)));
        // No loadable segment.
        let mut bad = good.clone();
        bad[64] = 0;
        bad[64 + 112] = 0;
        assert_eq!(parse(&bad, 0), Err(ElfError::NothingToLoad));
        // Every prefix and every single-byte change is refused or parsed, never a panic.
        for n in 0..good.len().min(0x500) {
            let _ = parse(&good[..n], 0);
            let mut m = good.clone();
            m[n] ^= 0xff;
            let _ = parse(&m, 0);
        }
    }
}
