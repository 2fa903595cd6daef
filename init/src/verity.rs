//! After the app ends: did dm-verity refuse any rootfs block? The kernel's verity target
//! reports `C` (corruption seen) or `V` in its status (`DM_TABLE_STATUS` on
//! `/dev/mapper/control`); on `C` init says so on the console, so a pod whose rootfs does not
//! match its manifest ends with a clear line besides the app's own EIO errors.

use std::os::fd::AsRawFd;

/// The device-mapper name the kernel command line gives the rootfs (`pod::verity::DM_NAME`).
const DM_NAME: &str = pod::verity::DM_NAME;
const CONTROL: &str = "/dev/mapper/control";
/// `struct dm_ioctl` is 312 bytes; the status follows it.
const DM_IOCTL_SIZE: usize = 312;
/// `_IOWR(0xfd, DM_TABLE_STATUS_CMD = 12, struct dm_ioctl)`.
const DM_TABLE_STATUS: libc::c_ulong =
    0xc000_0000 | ((DM_IOCTL_SIZE as libc::c_ulong) << 16) | (0xfd << 8) | 12;
/// `struct dm_target_spec`: sector_start, length, status, next, target_type[16].
const TARGET_SPEC_SIZE: usize = 40;

/// The verity target's status letter from a `DM_TABLE_STATUS` reply buffer (pure).
pub fn status_letter(reply: &[u8]) -> Option<u8> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?))
    };
    let (data_start, target_count) = (u32_at(16)? as usize, u32_at(20)?);
    if target_count != 1 {
        return None;
    }
    let spec = reply.get(data_start..data_start + TARGET_SPEC_SIZE)?;
    if !spec[24..].starts_with(b"verity\0") {
        return None;
    }
    reply.get(data_start + TARGET_SPEC_SIZE).copied()
}

/// Whether the rootfs's verity device saw a corrupted block; `None` if it cannot be asked.
pub fn corruption_seen() -> Option<bool> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // version 4.0.0, data_size, the name.
    buf[0..4].copy_from_slice(&4u32.to_ne_bytes());
    let size = buf.len() as u32;
    buf[12..16].copy_from_slice(&size.to_ne_bytes());
    buf[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes());
    buf[48..48 + DM_NAME.len()].copy_from_slice(DM_NAME.as_bytes());
    // SAFETY: `buf` is a writable dm_ioctl of `data_size` bytes that outlives the call; the
    // kernel writes only within `data_size`.
    let r = unsafe { libc::ioctl(control.as_raw_fd(), DM_TABLE_STATUS, buf.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    status_letter(&buf).map(|c| c == b'C')
}

/// Says on the console when the rootfs failed verification during the run.
pub fn report() {
    if corruption_seen() == Some(true) {
        crate::control::say(
            "rootfs verification failed: dm-verity refused blocks that do not match the pod's \
             manifest (reads of them failed with EIO); the pod file is damaged or was altered",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_letter() {
        let mut reply = vec![0u8; 400];
        reply[16..20].copy_from_slice(&312u32.to_ne_bytes());
        reply[20..24].copy_from_slice(&1u32.to_ne_bytes());
        reply[312 + 24..312 + 31].copy_from_slice(b"verity\0");
        reply[352] = b'C';
        assert_eq!(status_letter(&reply), Some(b'C'));
        reply[352] = b'V';
        assert_eq!(status_letter(&reply), Some(b'V'));
        reply[312 + 24] = b'x';
        assert_eq!(status_letter(&reply), None);
        assert_eq!(status_letter(&reply[..30]), None);
        assert_eq!(DM_TABLE_STATUS, 0xc138_fd0c);
    }
}
