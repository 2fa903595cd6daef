//! On-disk inode records (256 bytes, 32 extra bytes: nanoseconds, creation time, checksum
//! high half) and their checksum.

use super::csum;

/// Inode flag: uses an extent tree.
pub(crate) const FL_EXTENTS: u32 = 0x0008_0000;
/// Inode flag: hashed directory.
pub(crate) const FL_INDEX: u32 = 0x0000_1000;

pub(crate) const S_IFIFO: u16 = 0o010000;
pub(crate) const S_IFCHR: u16 = 0o020000;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const S_IFBLK: u16 = 0o060000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFLNK: u16 = 0o120000;

/// Everything an inode record says.
#[derive(Clone, Debug)]
pub(crate) struct Inode<'a> {
    /// Type and permission bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    /// Blocks held (data, extent tree, xattr block), in filesystem blocks.
    pub fs_blocks: u64,
    pub flags: u32,
    pub i_block: [u8; 60],
    pub xattr_block: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Attribute area after the extra fields (starts with the magic), or empty.
    pub xattrs: &'a [u8],
}

/// Oldest and newest second representable with ext4's 34-bit extended timestamps.
const MIN_TIME: i64 = -(1 << 31);
const MAX_TIME: i64 = (1 << 34) + (1 << 31) - 1;

/// (seconds field, extra field) for a time; out-of-range times are clamped to the limits.
pub(crate) fn encode_time(secs: i64, nsec: u32) -> (u32, u32) {
    let t = secs.clamp(MIN_TIME, MAX_TIME);
    let lo = t as i32;
    let epoch = (((t - i64::from(lo)) >> 32) & 3) as u32;
    (lo as u32, (nsec.min(999_999_999) << 2) | epoch)
}

/// Device number in `i_block`: old 16-bit form when it fits, else the new 32-bit form.
pub(crate) fn device_block(major: u32, minor: u32) -> [u8; 60] {
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        b[0..4].copy_from_slice(&((major << 8) | minor).to_le_bytes());
    } else {
        let new = (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12);
        b[4..8].copy_from_slice(&new.to_le_bytes());
    }
    b
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The 256-byte record, checksummed with the inode's `seed`.
pub(crate) fn encode(i: &Inode<'_>, seed: u32) -> [u8; 256] {
    let mut b = [0u8; 256];
    let (t, extra) = encode_time(i.mtime, i.mtime_nsec);
    let sectors = i.fs_blocks * 8;
    put16(&mut b, 0x00, i.mode);
    put16(&mut b, 0x02, i.uid as u16);
    put32(&mut b, 0x04, i.size as u32);
    put32(&mut b, 0x08, t); // atime
    put32(&mut b, 0x0C, t); // ctime
    put32(&mut b, 0x10, t); // mtime
    put16(&mut b, 0x18, i.gid as u16);
    put16(&mut b, 0x1A, i.links);
    put32(&mut b, 0x1C, sectors as u32);
    put32(&mut b, 0x20, i.flags);
    b[0x28..0x64].copy_from_slice(&i.i_block);
    put32(&mut b, 0x68, i.xattr_block as u32);
    put32(&mut b, 0x6C, (i.size >> 32) as u32);
    put16(&mut b, 0x74, (sectors >> 32) as u16);
    put16(&mut b, 0x76, (i.xattr_block >> 32) as u16);
    put16(&mut b, 0x78, (i.uid >> 16) as u16);
    put16(&mut b, 0x7A, (i.gid >> 16) as u16);
    put16(&mut b, 0x80, 32); // i_extra_isize
    put32(&mut b, 0x84, extra); // ctime_extra
    put32(&mut b, 0x88, extra); // mtime_extra
    put32(&mut b, 0x8C, extra); // atime_extra
    put32(&mut b, 0x90, t); // crtime
    put32(&mut b, 0x94, extra);
    b[0xA0..0xA0 + i.xattrs.len()].copy_from_slice(i.xattrs);
    let c = csum::crc(seed, &b);
    put16(&mut b, 0x7C, c as u16);
    put16(&mut b, 0x82, (c >> 16) as u16);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_use_the_epoch_bits() {
        assert_eq!(encode_time(0, 5), (0, 20));
        assert_eq!(encode_time(-1, 0), (u32::MAX, 0));
        // 2040 is past 2038: low word wraps, epoch 1.
        let t = 2_208_988_800i64;
        let (lo, extra) = encode_time(t, 0);
        assert_eq!(extra & 3, 1);
        assert_eq!(i64::from(lo as i32) + (1 << 32), t);
        assert_eq!(encode_time(i64::MAX, 0), encode_time(MAX_TIME, 0));
    }

    #[test]
    fn devices_pick_the_right_encoding() {
        assert_eq!(&device_block(1, 3)[..4], &0x0103u32.to_le_bytes());
        let b = device_block(259, 0x12345);
        assert_eq!(&b[..4], &[0; 4]);
        let v = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        assert_eq!(v, 0x45 | (259 << 8) | (0x12300 << 12));
    }
}
