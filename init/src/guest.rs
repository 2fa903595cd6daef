//! Guest setup after the switch to the image: hostname, loopback, `/etc/hosts`,
//! `/etc/resolv.conf`, resource limits.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use pod::spec::NetworkConfig;
use thiserror::Error;

use crate::cvt;

/// Open-files limit given to the app (Docker's default; capped by `fs.nr_open`).
pub const NOFILE: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum GuestError {
    #[error("set hostname {0:?}")]
    Hostname(String, #[source] io::Error),
    #[error("bring up lo")]
    Loopback(#[source] io::Error),
    #[error("write {path}")]
    Write { path: String, source: io::Error },
    #[error("raise the open files limit")]
    Rlimit(#[source] io::Error),
}

/// `/etc/hosts` for a guest named `hostname`: by its network addresses when it has a network
/// (as Docker's), else by 127.0.1.1 (as Debian's without a network).
pub fn hosts_file(hostname: &str, network: Option<&NetworkConfig>) -> String {
    let own = match network.map(|n| crate::net::hosts_lines(n, hostname)) {
        Some(lines) if !lines.is_empty() => lines,
        _ => format!("127.0.1.1\t{hostname}\n"),
    };
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}")
}

/// `/etc/resolv.conf` for a guest without network: no name server.
pub const RESOLV_CONF: &str = "# written by hyperpod-init: this pod has no network\n";

pub fn set_hostname(name: &str) -> Result<(), GuestError> {
    // SAFETY: `name` is valid for `name.len()` bytes; sethostname copies them.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
        .map(|_| ())
        .map_err(|e| GuestError::Hostname(name.into(), e))
}

/// Sets `IFF_UP` on `lo`. A kernel without networking has no `lo`: nothing to do.
pub fn loopback_up() -> Result<(), GuestError> {
    // SAFETY: plain socket(2) call; the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAFNOSUPPORT) => Ok(()),
            _ => Err(GuestError::Loopback(err)),
        };
    }
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming "lo"; SIOCGIFFLAGS fills ifru_flags.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })
        .map_err(GuestError::Loopback)?;
    // SAFETY: SIOCGIFFLAGS just wrote the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: `req` is a valid ifreq with the flags to set.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })
        .map_err(GuestError::Loopback)?;
    Ok(())
}

/// Writes `contents` to `path` (temp file + rename) unless the image has something there
/// (a file, or a symlink even if dangling).
fn write_if_missing(path: &str, contents: &str) -> Result<(), GuestError> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    replace(path, contents)
}

/// Writes `contents` to `path` (temp file + rename), replacing what the image has there: the new
/// file lives in the writable layer.
fn replace(path: &str, contents: &str) -> Result<(), GuestError> {
    let err = |source| GuestError::Write {
        path: path.into(),
        source,
    };
    let p = Path::new(path);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = format!("{path}.hyperpod-tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

/// `/etc/hosts` and `/etc/hostname` naming the guest, always (Docker supplies both over the
/// image's, so the hostname resolves whatever the image ships), and `/etc/resolv.conf`: the
/// network's name servers when there is a network (Docker supplies it too), else ours only when
/// the image lacks one. All are written in the overlay's upper layer, through the overlay.
pub fn etc_files(hostname: &str, network: Option<&NetworkConfig>) -> Result<(), GuestError> {
    replace("/etc/hosts", &hosts_file(hostname, network))?;
    replace("/etc/hostname", &format!("{hostname}\n"))?;
    match network {
        Some(n) => replace("/etc/resolv.conf", &crate::net::resolv_conf(n)),
        None => write_if_missing("/etc/resolv.conf", RESOLV_CONF),
    }
}

/// The same files as [`etc_files`], written straight into `upper`, the overlay's new and empty
/// upper directory, before the overlay over `lower` (the image) is mounted. That spares the
/// overlay's copy-up of `/etc` and a rename over each of the image's files (docs/BENCHMARKS.md:
/// -0.16 ms of init's 1.5). `upper/etc` gets the image's `/etc` owner, mode and extended
/// attributes, as a copy-up would give it. Returns false, having written nothing, when the
/// image's `/etc` is there but not a directory: then [`etc_files`] is the way, after the switch.
pub fn etc_files_in_upper(
    upper: &str,
    lower: &str,
    hostname: &str,
    network: Option<&NetworkConfig>,
) -> Result<bool, GuestError> {
    let (image_etc, etc) = (format!("{lower}/etc"), format!("{upper}/etc"));
    let err = |path: &str| {
        let path = path.to_string();
        move |source| GuestError::Write { path, source }
    };
    match std::fs::symlink_metadata(&image_etc) {
        Ok(md) if md.is_dir() => copy_dir_attributes(&image_etc, &etc, &md).map_err(err("/etc"))?,
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(&etc)
                .map_err(err("/etc"))?;
        }
        Err(e) => return Err(err("/etc")(e)),
    }
    let write = |name: &str, contents: &str| {
        std::fs::write(format!("{etc}/{name}"), contents).map_err(err(&format!("/etc/{name}")))
    };
    write("hosts", &hosts_file(hostname, network))?;
    write("hostname", &format!("{hostname}\n"))?;
    match network {
        Some(n) => write("resolv.conf", &crate::net::resolv_conf(n))?,
        // A file or a symlink, even dangling, in the image is kept.
        None if std::fs::symlink_metadata(format!("{image_etc}/resolv.conf")).is_ok() => {}
        None => write("resolv.conf", RESOLV_CONF)?,
    }
    Ok(true)
}

/// Creates directory `to` with the owner, mode and extended attributes of directory `from`
/// (`md`), as overlayfs's copy-up does (it leaves its own `trusted.overlay.*` out).
fn copy_dir_attributes(from: &str, to: &str, md: &std::fs::Metadata) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(to)?;
    std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))?;
    // After the chown, which clears set-id bits.
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
    let (from_c, to_c) = (cpath(from)?, cpath(to)?);
    // SAFETY: a NUL-terminated path and no buffer: the call returns the list's size.
    let size = unsafe { libc::llistxattr(from_c.as_ptr(), std::ptr::null_mut(), 0) };
    let size = usize::try_from(size).map_err(|_| io::Error::last_os_error())?;
    if size == 0 {
        return Ok(());
    }
    let mut names = vec![0u8; size];
    // SAFETY: `names` is writable for its length; the path is NUL-terminated.
    let len = unsafe { libc::llistxattr(from_c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
    // XATTR_SIZE_MAX: no value is longer.
    let mut value = vec![0u8; 65536];
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if name.starts_with(b"trusted.overlay.") {
            continue;
        }
        let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: NUL-terminated path and name; `value` is writable for its length.
        let n = unsafe {
            libc::lgetxattr(
                from_c.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        // SAFETY: NUL-terminated path and name; `value` holds `n` initialised bytes.
        let set =
            unsafe { libc::lsetxattr(to_c.as_ptr(), name.as_ptr(), value.as_ptr().cast(), n, 0) };
        cvt(set)?;
    }
    Ok(())
}

fn cpath(path: &str) -> io::Result<CString> {
    CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Raises `RLIMIT_NOFILE` (soft and hard) to [`NOFILE`], or to `fs.nr_open` if that is lower
/// (the kernel's default is [`NOFILE`], so `/proc` is read only when the first try fails).
pub fn raise_nofile() -> Result<(), GuestError> {
    let set = |n: u64| {
        let lim = libc::rlimit {
            rlim_cur: n as libc::rlim_t,
            rlim_max: n as libc::rlim_t,
        };
        // SAFETY: `lim` is a valid rlimit for the call.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }).map(|_| ())
    };
    match set(NOFILE) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(NOFILE);
            set(NOFILE.min(nr_open))
        }
        other => other,
    }
    .map_err(GuestError::Rlimit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_names_the_guest() {
        let h = hosts_file("web", None);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("127.0.1.1\tweb\n"));
        let net = NetworkConfig {
            mtu: 1500,
            ipv4: Some(pod::spec::InterfaceAddress {
                address: "10.0.2.15".parse().unwrap(),
                prefix: 24,
                gateway: "10.0.2.2".parse().unwrap(),
            }),
            ipv6: None,
            dns: vec![],
            search: vec![],
        };
        let h = hosts_file("web", Some(&net));
        assert!(h.ends_with("ip6-loopback\n10.0.2.15\tweb\n"), "{h}");
    }

    /// A fresh directory for one test (removed first if a run left it).
    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("hyperpod-init-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("lower")).unwrap();
        std::fs::create_dir_all(d.join("upper")).unwrap();
        d
    }

    fn paths(d: &Path) -> (String, String) {
        let s = |p: &str| d.join(p).to_str().unwrap().to_string();
        (s("upper"), s("lower"))
    }

    #[test]
    fn etc_in_upper_takes_the_image_etc_attributes_and_keeps_its_resolv_conf() {
        let d = scratch("etc-attrs");
        let (upper, lower) = paths(&d);
        let etc = d.join("lower/etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::lchown(&etc, Some(12), Some(34)).unwrap();
        // Dangling, as Debian's pointing into /run: the image's is kept all the same.
        std::os::unix::fs::symlink("/run/resolv.conf", etc.join("resolv.conf")).unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        let etc_c = c(etc.to_str().unwrap());
        for (name, value) in [("user.origin", "image"), ("trusted.overlay.opaque", "y")] {
            // SAFETY: NUL-terminated path and name; `value` is valid for its length.
            let r = unsafe {
                libc::lsetxattr(
                    etc_c.as_ptr(),
                    c(name).as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            assert_eq!(r, 0, "setxattr {name}: {}", io::Error::last_os_error());
        }

        assert!(etc_files_in_upper(&upper, &lower, "web", None).unwrap());
        let up = d.join("upper/etc");
        let md = std::fs::symlink_metadata(&up).unwrap();
        assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o750, 12, 34));
        let names = |p: &Path| {
            let p = c(p.to_str().unwrap());
            let mut buf = vec![0u8; 1024];
            // SAFETY: `buf` is writable for its length; the path is NUL-terminated.
            let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            buf.truncate(usize::try_from(n).unwrap());
            buf
        };
        // The image's own attribute comes along, the overlay's private one does not.
        assert_eq!(names(&up), b"user.origin\0");
        let read = |n: &str| std::fs::read_to_string(up.join(n)).unwrap();
        assert_eq!(read("hosts"), hosts_file("web", None));
        assert_eq!(read("hostname"), "web\n");
        assert!(std::fs::symlink_metadata(up.join("resolv.conf")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn etc_in_upper_without_an_image_etc_and_refused_for_a_non_directory() {
        let d = scratch("etc-none");
        let (upper, lower) = paths(&d);
        assert!(etc_files_in_upper(&upper, &lower, "db", None).unwrap());
        let up = d.join("upper/etc");
        assert_eq!(
            std::fs::symlink_metadata(&up).unwrap().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            std::fs::read_to_string(up.join("resolv.conf")).unwrap(),
            RESOLV_CONF
        );

        let d2 = scratch("etc-file");
        let (upper2, lower2) = paths(&d2);
        std::os::unix::fs::symlink("usr/etc", d2.join("lower/etc")).unwrap();
        assert!(!etc_files_in_upper(&upper2, &lower2, "db", None).unwrap());
        assert_eq!(std::fs::read_dir(d2.join("upper")).unwrap().count(), 0);
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&d2).unwrap();
    }
}
