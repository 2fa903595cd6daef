//! The guest's filesystems: the early mounts, the root (read-only image + overlay) and the
//! switch out of the initramfs.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, symlink};

use thiserror::Error;

use crate::cvt;

/// One mount: what, where, which filesystem, flags, options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mount<'a> {
    pub source: &'a str,
    pub target: &'a str,
    pub fstype: &'a str,
    pub flags: libc::c_ulong,
    pub data: &'a str,
}

const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

/// The early mounts, in order (a target under another target comes after it).
pub const EARLY: &[Mount<'static>] = &[
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
    },
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: "",
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "newinstance,gid=5,mode=0620,ptmxmode=0666",
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "mqueue",
        target: "/dev/mqueue",
        fstype: "mqueue",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: "",
    },
];
// No tmpfs on /tmp or /run: Docker mounts neither, so what the image ships there (Debian's
// /run/lock, files in /tmp) stays visible and writes go to the writable layer (the overlay's
// upper).

/// The image's ext4 mount options. `nombcache`: no cache of extended-attribute blocks, which
/// serves only to share such blocks between files as they are written, and this mount is
/// read-only (creating its hash table and shrinker took 0.03 ms of init's, docs/BENCHMARKS.md).
const LOWER_OPTIONS: &str = "nombcache";

/// The root image's block device.
pub const ROOT_DEV: &str = "/dev/vda";
/// Where the pieces of the new root are mounted inside the initramfs: the image, read-only,
pub const LOWER: &str = "/mnt/lower";
/// the writable layer,
const RW: &str = "/mnt/rw";
/// the overlay's upper and work directories on it,
pub const UPPER: &str = "/mnt/rw/upper";
const WORK: &str = "/mnt/rw/work";
/// and the overlay, which becomes `/`.
const NEW_ROOT: &str = "/mnt/root";

/// `/dev` symlinks programs expect (Docker creates the same). devtmpfs has a `ptmx` node of
/// its own, which opens the initial devpts instance rather than ours: it is replaced.
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

#[derive(Debug, Error)]
pub enum MountError {
    #[error("mount {fstype} {source_} on {target}")]
    Mount {
        fstype: String,
        source_: String,
        target: String,
        source: io::Error,
    },
    #[error("move mount {from} to {to}")]
    Move {
        from: String,
        to: String,
        source: io::Error,
    },
    #[error("create {path}")]
    Create { path: String, source: io::Error },
    #[error("{0} exists and is not a directory")]
    NotDir(String),
    #[error("switch root to {path}")]
    SwitchRoot { path: String, source: io::Error },
}

/// The mounts directly under `/`: moving them moves the nested ones too.
pub fn top_level<'t>(table: &'t [Mount<'t>]) -> impl Iterator<Item = &'t Mount<'t>> {
    table
        .iter()
        .filter(|m| m.target.rfind('/') == Some(0) && m.target.len() > 1)
}

fn cstring(s: &str) -> CString {
    // Every string here is a constant path or a checked device path: no NUL.
    CString::new(s).unwrap_or_default()
}

/// `mount(2)`.
fn mount(m: &Mount<'_>) -> Result<(), MountError> {
    let (source, target, fstype, data) = (
        cstring(m.source),
        cstring(m.target),
        cstring(m.fstype),
        cstring(m.data),
    );
    let data_ptr = if m.data.is_empty() {
        std::ptr::null()
    } else {
        data.as_ptr().cast()
    };
    // SAFETY: all pointers are NUL-terminated strings alive for the call (or null for data).
    cvt(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            m.flags,
            data_ptr,
        )
    })
    .map(|_| ())
    .map_err(|source| MountError::Mount {
        fstype: m.fstype.into(),
        source_: m.source.into(),
        target: m.target.into(),
        source,
    })
}

/// Moves the mount at `from` to `to`.
fn move_mount(from: &str, to: &str) -> Result<(), MountError> {
    let (f, t) = (cstring(from), cstring(to));
    // SAFETY: both are NUL-terminated paths alive for the call; MS_MOVE ignores type and data.
    cvt(unsafe {
        libc::mount(
            f.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    })
    .map(|_| ())
    .map_err(|source| MountError::Move {
        from: from.into(),
        to: to.into(),
        source,
    })
}

/// Creates directory `path` (and its parents) unless it is already a directory.
fn ensure_dir(path: &str, mode: u32) -> Result<(), MountError> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(MountError::NotDir(path.into())),
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|source| MountError::Create {
                path: path.into(),
                source,
            }),
    }
}

/// Step 1: the early mounts, in table order, and the usual `/dev` symlinks.
pub fn early() -> Result<(), MountError> {
    for m in EARLY {
        ensure_dir(m.target, 0o755)?;
        mount(m)?;
    }
    for (target, link) in DEV_LINKS {
        dev_link(target, link)?;
    }
    Ok(())
}

/// Makes `link` a symlink to `target`, replacing whatever devtmpfs put there (the `ptmx` node)
/// unless it already is that symlink.
fn dev_link(target: &str, link: &str) -> Result<(), MountError> {
    let err = |source| MountError::Create {
        path: link.into(),
        source,
    };
    match std::fs::read_link(link) {
        Ok(t) if t.as_os_str() == target => return Ok(()),
        Ok(_) => std::fs::remove_file(link).map_err(err)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // Not a symlink: a device node or a file.
        Err(_) => std::fs::remove_file(link).map_err(err)?,
    }
    symlink(target, link).map_err(err)
}

/// Step 3, first half: mounts the image (`root`, default [`ROOT_DEV`]) read-only at [`LOWER`]
/// and the writable layer at `/mnt/rw`: a tmpfs of `tmpfs_size` (a tmpfs `size=` value), or the
/// ext4 disk `upper` when given. Returns whether the overlay's upper directory ([`UPPER`]) is
/// new and empty (the tmpfs), so that files can be put in it before the overlay exists.
pub fn mount_layers(
    root: Option<&str>,
    upper: Option<&str>,
    tmpfs_size: &str,
) -> Result<bool, MountError> {
    for dir in [LOWER, RW, NEW_ROOT] {
        ensure_dir(dir, 0o755)?;
    }
    mount(&Mount {
        source: root.unwrap_or(ROOT_DEV),
        target: LOWER,
        fstype: "ext4",
        flags: libc::MS_RDONLY,
        data: LOWER_OPTIONS,
    })?;
    match upper {
        Some(dev) => mount(&Mount {
            source: dev,
            target: RW,
            fstype: "ext4",
            flags: 0,
            data: "",
        })?,
        None => mount(&Mount {
            source: "overlay-rw",
            target: RW,
            fstype: "tmpfs",
            flags: 0,
            data: &format!("mode=0755,size={tmpfs_size}"),
        })?,
    }
    ensure_dir(UPPER, 0o755)?;
    ensure_dir(WORK, 0o755)?;
    Ok(upper.is_none())
}

/// Step 3, second half: the overlay of [`UPPER`] on [`LOWER`], the early mounts moved in, and
/// the switch into it. `statfs("/")` then reports the writable layer's size and free space.
pub fn overlay_and_switch() -> Result<(), MountError> {
    mount(&Mount {
        source: "overlay",
        target: NEW_ROOT,
        fstype: "overlay",
        flags: 0,
        data: &format!("lowerdir={LOWER},upperdir={UPPER},workdir={WORK}"),
    })?;
    for m in top_level(EARLY) {
        let to = format!("{NEW_ROOT}{}", m.target);
        ensure_dir(&to, 0o755)?;
        move_mount(m.target, &to)?;
    }
    switch_root(NEW_ROOT)
}

/// Makes `new_root` the root: the initramfs cannot be pivoted away from, so move the new root
/// over `/` and chroot into it (what `switch_root` does).
fn switch_root(new_root: &str) -> Result<(), MountError> {
    let err = |source| MountError::SwitchRoot {
        path: new_root.into(),
        source,
    };
    std::env::set_current_dir(new_root).map_err(err)?;
    move_mount(new_root, "/")?;
    // SAFETY: "." is a NUL-terminated literal; chroot has no memory effects.
    cvt(unsafe { libc::chroot(c".".as_ptr()) }).map_err(err)?;
    std::env::set_current_dir("/").map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_table_is_ordered_and_moves_top_level_mounts() {
        let moved: Vec<&str> = top_level(EARLY).map(|m| m.target).collect();
        assert_eq!(moved, ["/dev", "/proc", "/sys"]);
        assert!(
            !EARLY
                .iter()
                .any(|m| m.target == "/tmp" || m.target == "/run")
        );
        // Every nested target comes after its parent's mount.
        for (i, m) in EARLY.iter().enumerate() {
            let parent = &m.target[..m.target.rfind('/').unwrap()];
            if !parent.is_empty() {
                assert!(
                    EARLY[..i].iter().any(|p| p.target == parent),
                    "{}",
                    m.target
                );
            }
        }
    }
}
