//! Putting the guest's first software in memory: kernel (ELF with PVH note or its 64-bit entry,
//! parsed by [`super::elf`]; bzImage via linux-loader), initramfs (+ the overrides archive),
//! command line, and the boot information (PVH `hvm_start_info` + memory map, or Linux
//! `boot_params` + e820).
//!
//! When the kernel and initramfs bytes are known to be a window of a file (a pod), their whole
//! pages are mapped copy-on-write from that file ([`super::memory::map_file`]) instead of
//! copied: nothing is read before the guest runs, and the guest touches only the pages it uses.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, KernelLoader};
use thiserror::Error;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile, VolatileMemoryError,
    VolatileSlice,
};

use super::cpu::EntryMode;
use super::elf::{self, ElfError};
use super::memory::{E820Entry, MemoryError, PAGE_SIZE, e820_map, low_ram_end, map_file};
use crate::layout;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("kernel is neither an ELF vmlinux nor a bzImage")]
    UnknownKernel,
    #[error("cannot load the kernel")]
    Load(#[source] linux_loader::loader::Error),
    #[error("cannot load the ELF kernel")]
    Elf(#[source] ElfError),
    #[error("cannot place the {0} in guest memory")]
    Place(&'static str, #[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Map(#[from] MemoryError),
    #[error(
        "bzImage has no 64-bit entry point (boot protocol {version:#06x}, xloadflags {xloadflags:#x})"
    )]
    NoEntry64 { version: u16, xloadflags: u16 },
    #[error("kernel needs memory up to {end:#x} (its init_size) but guest memory is smaller")]
    KernelWindow { end: u64 },
    #[error("kernel command line is invalid")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the command line")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("kernel command line is {len} bytes, more than the {max} this kernel accepts")]
    CmdlineTooLong { len: usize, max: usize },
    #[error(
        "initramfs of {size} bytes does not fit between the kernel end {kernel_end:#x} and {limit:#x}"
    )]
    InitramfsTooBig {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("cannot write boot information")]
    Memory(#[source] vm_memory::GuestMemoryError),
    #[error("cannot write PVH boot information")]
    Pvh(#[source] linux_loader::configurator::Error),
}

/// `XEN_HVM_START_MAGIC_VALUE`.
const PVH_MAGIC: u32 = 0x336e_c578;
/// Boot protocol version from which the setup header has `cmdline_size`.
const CMDLINE_SIZE_VERSION: u16 = 0x0206;
/// `KERNEL_LOADER_OTHER` in `boot_params.hdr.type_of_loader`.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `boot_params.hdr.boot_flag`.
const BOOT_FLAG: u16 = 0xaa55;
/// Offset of the 64-bit entry point from a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY: u64 = 0x200;
/// `xloadflags` bit: the kernel has the 64-bit entry at [`BZIMAGE_64BIT_ENTRY`].
const XLF_KERNEL_64: u16 = 0x1;
/// The first boot protocol with `xloadflags` (2.12).
const XLOADFLAGS_VERSION: u16 = 0x020c;
/// `boot_params.hdr.kernel_alignment` as the launcher hands it over.
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// A read-only cursor over bytes (the kernel inside the mapped pod), as linux-loader reads it.
pub struct SliceReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> SliceReader<'a> {
    pub fn new(data: &'a [u8]) -> SliceReader<'a> {
        SliceReader { data, pos: 0 }
    }

    fn rest(&self) -> &'a [u8] {
        &self.data[self.pos.min(self.data.len())..]
    }
}

impl Read for SliceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.rest().read(buf)?;
        self.pos += n;
        Ok(n)
    }
}

impl Seek for SliceReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let len = self.data.len() as i128;
        let new = match to {
            SeekFrom::Start(n) => i128::from(n),
            SeekFrom::End(d) => len + i128::from(d),
            SeekFrom::Current(d) => self.pos as i128 + i128::from(d),
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = usize::try_from(new).unwrap_or(usize::MAX);
        Ok(new as u64)
    }
}

impl ReadVolatile for SliceReader<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<'_, B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut rest = self.rest();
        let n = rest.read_volatile(buf)?;
        self.pos += n;
        Ok(n)
    }
}

/// Where and how the kernel starts.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub mode: EntryMode,
    pub entry: u64,
    /// First byte after the kernel image.
    pub end: u64,
    /// The bzImage's setup header (Linux64 from a bzImage only).
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Where some bytes also are: `file` from `offset` on (the kernel or initramfs inside a pod).
#[derive(Clone, Copy, Debug)]
pub struct FileWindow<'a> {
    pub file: &'a File,
    pub offset: u64,
}

impl<'a> FileWindow<'a> {
    /// The window moved `by` bytes further into the file.
    fn at(self, by: u64) -> FileWindow<'a> {
        FileWindow {
            file: self.file,
            offset: self.offset + by,
        }
    }
}

/// Puts `bytes` at guest address `addr`: copied, except the whole pages in the middle when
/// `window` says where the bytes are in a file at the same offset within a page, which are
/// mapped from it. Returns how many bytes were mapped.
fn place(
    mem: &GuestMemoryMmap,
    addr: u64,
    bytes: &[u8],
    window: Option<FileWindow<'_>>,
    what: &'static str,
) -> Result<u64, BootError> {
    let copy = |from: usize, to: usize| {
        mem.write_slice(&bytes[from..to], GuestAddress(addr + from as u64))
            .map_err(|e| BootError::Place(what, e))
    };
    let len = bytes.len() as u64;
    let Some(w) = window.filter(|w| w.offset % PAGE_SIZE == addr % PAGE_SIZE) else {
        copy(0, bytes.len())?;
        return Ok(0);
    };
    let head = ((PAGE_SIZE - addr % PAGE_SIZE) % PAGE_SIZE).min(len);
    let middle = (len - head) / PAGE_SIZE * PAGE_SIZE;
    let mapped = middle > 0 && map_file(mem, addr + head, w.file, w.offset + head, middle)?;
    if mapped {
        copy(0, head as usize)?;
        copy((head + middle) as usize, bytes.len())?;
        Ok(middle)
    } else {
        copy(0, bytes.len())?;
        Ok(0)
    }
}

/// Loads `kernel` (ELF vmlinux or bzImage) at 1 MiB. An ELF with a PVH note is entered via PVH
/// when `use_pvh` (the default everywhere but tests of the 64-bit entry), else at its 64-bit
/// entry point. With `window`, the ELF's segments are mapped from that file where they can be.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    window: Option<FileWindow<'_>>,
    use_pvh: bool,
) -> Result<LoadedKernel, BootError> {
    let mut r = SliceReader::new(kernel);
    let highmem = Some(GuestAddress(layout::HIMEM_START));
    if kernel.starts_with(b"\x7fELF") {
        let k = elf::parse(kernel, layout::HIMEM_START).map_err(BootError::Elf)?;
        for s in &k.segments {
            let bytes = &kernel[s.offset as usize..(s.offset + s.filesz) as usize];
            place(
                mem,
                s.paddr,
                bytes,
                window.map(|w| w.at(s.offset)),
                "kernel",
            )?;
        }
        let (mode, entry) = match k.pvh_entry {
            Some(a) if use_pvh => (EntryMode::Pvh, a),
            _ => (EntryMode::Linux64, k.entry),
        };
        Ok(LoadedKernel {
            mode,
            entry,
            end: k.end,
            setup_header: None,
        })
    } else if kernel.len() > 0x206 && &kernel[0x202..0x206] == b"HdrS" {
        let res = BzImage::load(mem, None, &mut r, highmem).map_err(BootError::Load)?;
        let hdr = res.setup_header.unwrap_or_default();
        let (version, xloadflags) = (hdr.version, hdr.xloadflags);
        if version < XLOADFLAGS_VERSION || xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BootError::NoEntry64 {
                version,
                xloadflags,
            });
        }
        // Keep the initramfs out of the memory the kernel uses before it reads the e820 map.
        let window_end = bzimage_window_end(&hdr, res.kernel_load.0);
        if !mem.address_in_range(GuestAddress(window_end.saturating_sub(1))) {
            return Err(BootError::KernelWindow { end: window_end });
        }
        Ok(LoadedKernel {
            mode: EntryMode::Linux64,
            entry: res.kernel_load.0 + BZIMAGE_64BIT_ENTRY,
            end: res.kernel_end.max(window_end),
            setup_header: res.setup_header,
        })
    } else {
        Err(BootError::UnknownKernel)
    }
}

/// End of the memory window a bzImage kernel needs before it reads the memory map: `init_size`
/// bytes from its runtime start (Documentation/arch/x86/boot.rst, "init_size"), computed with
/// the `kernel_alignment` the launcher hands over.
fn bzimage_window_end(hdr: &linux_loader::loader::bootparam::setup_header, load: u64) -> u64 {
    let (pref, init_size) = (hdr.pref_address, u64::from(hdr.init_size));
    let start = if hdr.relocatable_kernel != 0 {
        load.max(pref)
            .checked_next_multiple_of(u64::from(KERNEL_ALIGNMENT))
            .unwrap_or(u64::MAX)
    } else {
        pref
    };
    start.saturating_add(init_size)
}

/// Builds the command line: the pod's, then each device's entry.
pub fn build_cmdline(base: &str, entries: &[String]) -> Result<Cmdline, BootError> {
    let mut c = Cmdline::new(layout::CMDLINE_MAX).map_err(BootError::Cmdline)?;
    if !base.trim().is_empty() {
        c.insert_str(base).map_err(BootError::Cmdline)?;
    }
    for e in entries {
        c.insert_str(e).map_err(BootError::Cmdline)?;
    }
    Ok(c)
}

/// Where the initramfs goes: page-aligned, as high as allowed below the end of low RAM.
pub fn initramfs_addr(mem_bytes: u64, size: u64, kernel_end: u64) -> Result<u64, BootError> {
    let limit = low_ram_end(mem_bytes).min(layout::INITRAMFS_MAX_END);
    let err = BootError::InitramfsTooBig {
        size,
        kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or(err)? & !0xfff;
    if addr < kernel_end {
        return Err(BootError::InitramfsTooBig {
            size,
            kernel_end,
            limit,
        });
    }
    Ok(addr)
}

/// Writes the initramfs parts back to back (each later part 4-byte aligned, as Linux wants
/// concatenated archives) and returns (address, total length). With `window` (where the first
/// part is in a file), that part's whole pages are mapped from the file.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel_end: u64,
    parts: &[&[u8]],
    window: Option<FileWindow<'_>>,
) -> Result<(u64, u64), BootError> {
    let mut total = 0u64;
    for p in parts {
        total = total.next_multiple_of(4) + p.len() as u64;
    }
    let addr = initramfs_addr(mem_bytes, total, kernel_end)?;
    let mut at = 0u64;
    for (i, p) in parts.iter().enumerate() {
        at = at.next_multiple_of(4);
        let w = if i == 0 { window } else { None };
        place(mem, addr + at, p, w, "initramfs")?;
        at += p.len() as u64;
    }
    Ok((addr, total))
}

/// Everything the boot information describes.
pub struct BootInfo<'a> {
    pub mem_bytes: u64,
    pub cmdline: &'a Cmdline,
    pub initramfs: Option<(u64, u64)>,
    pub kernel: &'a LoadedKernel,
}

/// Writes the command line and the protocol's boot information.
pub fn write_boot_info(mem: &GuestMemoryMmap, info: &BootInfo<'_>) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(layout::CMDLINE), info.cmdline)
        .map_err(BootError::WriteCmdline)?;
    let cmdline_len = info
        .cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();
    // Checked before anything is written for the kernel: a longer line would be cut by the
    // guest, and the device entries (at its end) with it.
    let max = cmdline_max(info.kernel.setup_header.as_ref());
    if cmdline_len > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline_len,
            max,
        });
    }
    let map = e820_map(info.mem_bytes);
    match info.kernel.mode {
        EntryMode::Pvh => write_pvh(mem, info, &map),
        EntryMode::Linux64 => {
            let bp = linux_boot_params(info, &map);
            mem.write_obj(bp, GuestAddress(layout::ZERO_PAGE))
                .map_err(BootError::Memory)
        }
    }
}

/// x86 Linux's `COMMAND_LINE_SIZE` (2048, with the NUL): what a kernel without a setup header
/// to say otherwise (an ELF vmlinux, entered via PVH or its 64-bit entry) keeps of the line.
const X86_COMMAND_LINE_SIZE: usize = 2048;

/// The longest command line (without its NUL) the kernel takes: a bzImage says so in
/// `cmdline_size` (protocol 2.06+; 255 before), an ELF vmlinux keeps x86 Linux's
/// `COMMAND_LINE_SIZE`.
fn cmdline_max(hdr: Option<&linux_loader::loader::bootparam::setup_header>) -> usize {
    match hdr {
        Some(h) if h.version >= CMDLINE_SIZE_VERSION => h.cmdline_size as usize,
        Some(_) => 255,
        None => X86_COMMAND_LINE_SIZE - 1,
    }
}

fn write_pvh(
    mem: &GuestMemoryMmap,
    info: &BootInfo<'_>,
    map: &[E820Entry],
) -> Result<(), BootError> {
    let mut start = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE,
        memmap_paddr: layout::PVH_MEMMAP,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = info.initramfs {
        start.nr_modules = 1;
        start.modlist_paddr = layout::PVH_MODLIST;
        let module = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(layout::PVH_MODLIST))
            .map_err(BootError::Memory)?;
    }
    let entries: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let mut params = BootParams::new(&start, GuestAddress(layout::PVH_START_INFO));
    params.set_sections(&entries, GuestAddress(layout::PVH_MEMMAP));
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::Pvh)
}

/// The Linux zero page for the 64-bit entry.
pub fn linux_boot_params(info: &BootInfo<'_>, map: &[E820Entry]) -> boot_params {
    let mut bp = boot_params::default();
    if let Some(h) = info.kernel.setup_header {
        bp.hdr = h;
    }
    bp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    bp.hdr.boot_flag = BOOT_FLAG;
    bp.hdr.header = HDRS_MAGIC;
    bp.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    bp.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    // `cmdline_size` is the kernel's to state (a bzImage's is kept); without a setup header,
    // x86 Linux's own limit.
    if info.kernel.setup_header.is_none() {
        bp.hdr.cmdline_size = (X86_COMMAND_LINE_SIZE - 1) as u32;
    }
    if let Some((addr, size)) = info.initramfs {
        bp.hdr.ramdisk_image = addr as u32;
        bp.hdr.ramdisk_size = size as u32;
    }
    for (slot, e) in bp.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    bp.e820_entries = map.len().min(bp.e820_table.len()) as u8;
    bp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_goes_high_and_aligned() {
        let a = initramfs_addr(128 << 20, 5000, 0x20_0000).unwrap();
        assert_eq!(a % 4096, 0);
        assert!(a + 5000 <= 128 << 20 && a + 5000 + 4096 > 128 << 20);
        assert!(initramfs_addr(16 << 20, 15 << 20, 0x20_0000).is_err());
        let big = initramfs_addr(8u64 << 30, 4096, 0).unwrap();
        assert_eq!(big, layout::INITRAMFS_MAX_END - 4096);
    }

    #[test]
    fn concatenated_parts_are_4_byte_aligned() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let (addr, len) =
            load_initramfs(&mem, 16 << 20, 0x20_0000, &[b"abcde", b"xyz"], None).unwrap();
        assert_eq!(len, 11);
        let mut got = [0u8; 11];
        mem.read_slice(&mut got, GuestAddress(addr)).unwrap();
        assert_eq!(&got, b"abcde\0\0\0xyz");
    }

    #[test]
    fn mapped_copied_and_linux_loader_kernels_are_the_same_bytes() {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let img = crate::vmm::elf::tests::sample_elf();
        // The image inside a file at a page-aligned offset, as in a pod, with other bytes
        // around it that must not show through (bss, the pages beyond the image).
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[0xee; 8192]).unwrap();
        f.write_all(&img).unwrap();
        f.write_all(&[0xdd; 8192]).unwrap();
        let window = FileWindow {
            file: &f,
            offset: 8192,
        };
        let mem = || GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let (copied, mapped, reference) = (mem(), mem(), mem());
        let a = load_kernel(&copied, &img, None, true).unwrap();
        let b = load_kernel(&mapped, &img, Some(window), true).unwrap();
        let highmem = Some(GuestAddress(layout::HIMEM_START));
        let r =
            linux_loader::loader::Elf::load(&reference, None, &mut SliceReader::new(&img), highmem)
                .unwrap();
        assert_eq!((a.entry, a.end), (b.entry, b.end));
        assert_eq!(a.end, r.kernel_end);
        assert!(matches!(
            r.pvh_boot_cap,
            linux_loader::loader::PvhBootCapability::PvhEntryPresent(e) if e.0 == a.entry
        ));
        let span = (a.end + 0x2000 - 0x100_0000) as usize;
        let read = |m: &GuestMemoryMmap| {
            let mut v = vec![0u8; span];
            m.read_slice(&mut v, GuestAddress(0x100_0000)).unwrap();
            v
        };
        let want = read(&reference);
        assert_eq!(read(&copied), want);
        assert_eq!(read(&mapped), want);
        // The whole pages really are the file's: a change to the file shows through the page
        // the guest has not written yet (the launcher maps only pods no one else can write).
        f.write_all_at(b"FILE", 8192 + 0x1000).unwrap();
        let mut probe = [0u8; 4];
        mapped
            .read_slice(&mut probe, GuestAddress(0x100_0000))
            .unwrap();
        assert_eq!(&probe, b"FILE");
        copied
            .read_slice(&mut probe, GuestAddress(0x100_0000))
            .unwrap();
        assert_ne!(&probe, b"FILE");
        // An initramfs from the same file: whole pages mapped, the tail and the next part copied.
        let part = &img[..0x1800];
        let (addr, len) =
            load_initramfs(&mapped, 32 << 20, b.end, &[part, b"tail"], Some(window)).unwrap();
        let mut got = vec![0u8; len as usize];
        mapped.read_slice(&mut got, GuestAddress(addr)).unwrap();
        assert_eq!(&got[..0x1800], part);
        assert_eq!(&got[0x1800..], b"tail");
    }

    #[test]
    fn garbage_kernels_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        assert!(matches!(
            load_kernel(&mem, b"not a kernel", None, true),
            Err(BootError::UnknownKernel)
        ));
        assert!(matches!(
            load_kernel(&mem, b"\x7fELF\x02\x01\x01", None, true),
            Err(BootError::Elf(_))
        ));
    }

    #[test]
    fn bzimage_window_follows_the_boot_protocol() {
        let mut h = linux_loader::loader::bootparam::setup_header {
            pref_address: 0x100_0000,
            init_size: 0x200_0000,
            ..Default::default()
        };
        assert_eq!(bzimage_window_end(&h, 0x10_0000), 0x300_0000);
        h.relocatable_kernel = 1;
        assert_eq!(bzimage_window_end(&h, 0x10_0000), 0x300_0000);
        assert_eq!(bzimage_window_end(&h, 0x110_0000), 0x400_0000);
        h.pref_address = u64::MAX;
        assert_eq!(bzimage_window_end(&h, 0), u64::MAX);
    }

    #[test]
    fn command_line_and_zero_page() {
        let c = build_cmdline("panic=1 quiet", &["console=ttyS0".into()]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "panic=1 quiet console=ttyS0"
        );
        let k = LoadedKernel {
            mode: EntryMode::Linux64,
            entry: 0x100_0000,
            end: 0x200_0000,
            setup_header: None,
        };
        let info = BootInfo {
            mem_bytes: 128 << 20,
            cmdline: &c,
            initramfs: Some((0x700_0000, 1234)),
            kernel: &k,
        };
        let map = e820_map(128 << 20);
        let bp = linux_boot_params(&info, &map);
        assert_eq!(bp.e820_entries, 3);
        let size = bp.hdr.cmdline_size;
        assert_eq!(size, 2047);
        let image = bp.hdr.ramdisk_image;
        assert_eq!(image, 0x700_0000);
        let magic = bp.hdr.header;
        assert_eq!(magic, HDRS_MAGIC);
        // A bzImage's own cmdline_size is kept, and is the limit.
        let h = linux_loader::loader::bootparam::setup_header {
            version: 0x020f,
            cmdline_size: 2047,
            ..Default::default()
        };
        let bz = LoadedKernel {
            setup_header: Some(h),
            ..k
        };
        let info = BootInfo {
            kernel: &bz,
            ..info
        };
        let size = linux_boot_params(&info, &map).hdr.cmdline_size;
        assert_eq!(size, 2047);
        assert_eq!(cmdline_max(Some(&h)), 2047);
        let old = linux_loader::loader::bootparam::setup_header {
            version: 0x0205,
            ..h
        };
        assert_eq!(cmdline_max(Some(&old)), 255);
        assert_eq!(cmdline_max(None), 2047);
    }

    #[test]
    fn a_command_line_longer_than_the_kernel_takes_is_refused() {
        let mem = crate::vmm::memory::create_guest_memory(64).unwrap();
        let long = "x".repeat(300);
        let c = build_cmdline(&long, &[]).unwrap();
        let h = linux_loader::loader::bootparam::setup_header {
            version: 0x020f,
            cmdline_size: 255,
            ..Default::default()
        };
        let k = LoadedKernel {
            mode: EntryMode::Linux64,
            entry: 0x100_0000,
            end: 0x200_0000,
            setup_header: Some(h),
        };
        let info = BootInfo {
            mem_bytes: 64 << 20,
            cmdline: &c,
            initramfs: None,
            kernel: &k,
        };
        assert!(matches!(
            write_boot_info(&mem, &info),
            Err(BootError::CmdlineTooLong { len: 300, max: 255 })
        ));
        // An ELF vmlinux (PVH or 64-bit entry) keeps 2047 bytes: 2047 pass, 2048 are refused.
        for (len, ok) in [(2047, true), (2048, false)] {
            let c = build_cmdline(&"y".repeat(len), &[]).unwrap();
            for mode in [EntryMode::Pvh, EntryMode::Linux64] {
                let elf = LoadedKernel {
                    mode,
                    setup_header: None,
                    ..k
                };
                let info = BootInfo {
                    kernel: &elf,
                    cmdline: &c,
                    ..info
                };
                assert_eq!(
                    write_boot_info(&mem, &info).is_ok(),
                    ok,
                    "{len} bytes, {mode:?}"
                );
            }
        }
    }
}
