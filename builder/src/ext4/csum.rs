//! CRC32C as ext4's `metadata_csum` uses it: raw (no pre/post inversion), seeded.

/// CRC32C of `data` continuing from the raw state `seed` (the kernel's `ext4_chksum`).
pub(crate) fn crc(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// The filesystem-wide checksum seed: CRC32C of the UUID.
pub(crate) fn fs_seed(uuid: &[u8; 16]) -> u32 {
    crc(!0, uuid)
}

/// Per-inode seed used by inode, extent-block and directory-block checksums.
pub(crate) fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    crc(crc(fs_seed, &ino.to_le_bytes()), &generation.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_crc_matches_the_standard_check_value() {
        // Standard CRC-32C of "123456789" is 0xE3069283 (init and final xor !0).
        assert_eq!(!crc(!0, b"123456789"), 0xE306_9283);
        // Continuing a raw state equals hashing the concatenation.
        let whole = crc(7, b"hello world");
        assert_eq!(crc(crc(7, b"hello "), b"world"), whole);
    }
}
