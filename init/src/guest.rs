//! Guest setup after the switch to the image: hostname, loopback, `/etc/hosts`,
//! `/etc/resolv.conf`, resource limits.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
/// the image lacks one. All are written in the overlay's upper layer.
pub fn etc_files(hostname: &str, network: Option<&NetworkConfig>) -> Result<(), GuestError> {
    replace("/etc/hosts", &hosts_file(hostname, network))?;
    replace("/etc/hostname", &format!("{hostname}\n"))?;
    match network {
        Some(n) => replace("/etc/resolv.conf", &crate::net::resolv_conf(n)),
        None => write_if_missing("/etc/resolv.conf", RESOLV_CONF),
    }
}

/// Raises `RLIMIT_NOFILE` (soft and hard) to [`NOFILE`], or to `fs.nr_open` if lower.
pub fn raise_nofile() -> Result<(), GuestError> {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(NOFILE);
    let n = NOFILE.min(nr_open) as libc::rlim_t;
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: `lim` is a valid rlimit for the call.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })
        .map(|_| ())
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
}
