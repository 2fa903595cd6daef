//! A fake static x86-64 ELF for tests that need an `init` or a `vmlinux` only for its bytes:
//! the ELF header, one `PT_LOAD` program header and no `PT_INTERP`, which is what hyperbuild
//! checks before packing a binary.

use std::path::Path;

/// Size of the ELF header plus its one program header.
pub const HEADERS: usize = 64 + 56;

/// Writes a `len`-byte (at least [`HEADERS`]) fake static ELF to `path`, the bytes after the
/// headers all `fill` (so two files with different fills differ).
pub fn write_fake_static_elf(path: &Path, len: usize, fill: u8) {
    let mut elf = vec![fill; len.max(HEADERS)];
    elf[..HEADERS].fill(0);
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[18] = 62; // x86-64
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers right after
    elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // program header size
    elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // one program header
    elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    std::fs::write(path, &elf).unwrap();
}
