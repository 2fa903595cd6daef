//! passt (Debian package `passt`) as the launch's network backend: started in the foreground as
//! the launcher's child on one end of a socketpair (`--fd`), with the guest's addressing and the
//! published ports on its command line; ended (killed and reaped) when the [`Passt`] is dropped,
//! so that the launcher never exits before its passt has released the published ports (the next
//! launch publishing them would find them taken). The end goes through a pidfd, opened right
//! after the spawn: a signal to it and a `waitid` on it are what the KVM engine's main thread,
//! under its seccomp filter by then, may do (sandbox.rs lists both, with their arguments).
//!
//! It quits by itself once the other end of its socket is closed (`--one-off`): when the launcher
//! is killed, its end and QEMU's (QEMU dies with the launcher) close and passt exits, even though
//! passt started as root has dropped to `nobody` and so lost `PR_SET_PDEATHSIG`. Readiness: passt
//! writes its pid file (in a private directory) after it has bound the published ports, so the
//! launcher waits for that file — or for passt's exit, whose stderr then says why.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    DNS_IPV4, GATEWAY_IPV4, GATEWAY_IPV6, GUEST_IPV4, GUEST_IPV6, NetError, PREFIX_IPV4, Published,
};
use crate::publish::Proto;

/// The passt binary looked up on `PATH`.
pub const PASST_BINARY: &str = "passt";
/// How long passt may take to bind its ports and write its pid file.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Who passt runs as when the launcher is root: passt refuses to stay root and would pick
/// `nobody` itself; saying so lets the launcher give that user its private directory.
pub const RUNAS_WHEN_ROOT: (u32, u32) = (65534, 65534);
/// Bytes of passt's stderr kept for an error message.
const STDERR_TAIL: usize = 4096;

/// Finds `passt` in the `PATH` value `path_var`.
pub fn find(path_var: Option<&OsStr>) -> Result<PathBuf, NetError> {
    use std::os::unix::fs::PermissionsExt;
    let path_var = path_var.ok_or(NetError::PasstNotFound)?;
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(PASST_BINARY))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or(NetError::PasstNotFound)
}

/// passt's `-t`/`-u` value for one published port: `[ADDR/]HOST_PORT:GUEST_PORT`.
fn forward_spec(p: &Published) -> String {
    match p.host_ip {
        Some(ip) => format!("{ip}/{}:{}", p.host_port, p.guest_port),
        None => format!("{}:{}", p.host_port, p.guest_port),
    }
}

/// passt's arguments (without the binary): foreground, quiet, one client on descriptor `fd`,
/// the guest's addressing, no DHCP (init configures the interface), the published ports. Pure.
pub fn passt_args(
    published: &[Published],
    fd: i32,
    pid_file: &Path,
    runas: Option<(u32, u32)>,
    mtu: u32,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: String| a.push(s.into());
    for s in ["--foreground", "--quiet", "--one-off"] {
        push(s.into());
    }
    if let Some((uid, gid)) = runas {
        push("--runas".into());
        push(format!("{uid}:{gid}"));
    }
    push("--fd".into());
    push(fd.to_string());
    a.push("--pid".into());
    a.push(pid_file.as_os_str().to_owned());
    let mut push = |s: String| a.push(s.into());
    for (opt, val) in [
        ("--address", GUEST_IPV4.to_string()),
        ("--netmask", PREFIX_IPV4.to_string()),
        ("--gateway", GATEWAY_IPV4.to_string()),
        ("--address", GUEST_IPV6.to_string()),
        ("--gateway", GATEWAY_IPV6.to_string()),
        ("--mtu", mtu.to_string()),
        ("--dns-forward", DNS_IPV4.to_string()),
    ] {
        push(opt.into());
        push(val);
    }
    for s in ["--no-dhcp", "--no-dhcpv6", "--no-ra"] {
        push(s.into());
    }
    // passt's default is to forward no port; each published port is one -t/-u option.
    for p in published {
        push(
            match p.proto {
                Proto::Tcp => "-t",
                Proto::Udp => "-u",
            }
            .into(),
        );
        push(forward_spec(p));
    }
    a
}

/// A private directory (mode 0700) for passt's pid file, removed on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    /// A new directory, owned by `owner` (uid, gid) when given.
    fn new(owner: Option<(u32, u32)>) -> std::io::Result<PrivateDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let pid = std::process::id();
        let mut tries = 0u32;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = base.join(format!("hyperpod-net-{pid}-{nanos:08x}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let dir = PrivateDir(dir);
                    if let Some((uid, gid)) = owner {
                        std::os::unix::fs::chown(&dir.0, Some(uid), Some(gid))?;
                    }
                    return Ok(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running passt; killed and reaped on drop.
pub struct Passt {
    /// For `try_wait` while it starts; its end goes through `pidfd`.
    child: Child,
    /// A pidfd of the child (`pidfd_open`): killed and reaped through it.
    pidfd: OwnedFd,
    /// Its stderr: an unlinked file, so that no pipe can fill and block it and no thread of
    /// ours has to drain one (the KVM engine's threads all run under seccomp filters).
    log: File,
}

/// A passt started but maybe not ready yet ([`Starting::wait_ready`]): the launcher builds the
/// VM meanwhile. Killed and reaped on drop, like a [`Passt`].
pub struct Starting {
    passt: Passt,
    /// Its private directory, holding the pid file that says it is ready.
    dir: PrivateDir,
    pid_file: PathBuf,
    started: Instant,
}

/// How often the launcher looks for passt's pid file while it waits.
const READY_POLL: Duration = Duration::from_micros(200);

impl Passt {
    /// Starts `binary` on `theirs` (one end of the guest's frame stream) forwarding
    /// `published`, and waits until it has bound the ports.
    pub fn start(
        binary: &Path,
        published: &[Published],
        theirs: UnixStream,
        mtu: u32,
    ) -> Result<Passt, NetError> {
        Passt::spawn(binary, published, theirs, mtu)?.wait_ready()
    }

    /// Starts `binary` on `theirs` forwarding `published`, without waiting for it.
    pub fn spawn(
        binary: &Path,
        published: &[Published],
        theirs: UnixStream,
        mtu: u32,
    ) -> Result<Starting, NetError> {
        // SAFETY: geteuid has no preconditions.
        let runas = (unsafe { libc::geteuid() } == 0).then_some(RUNAS_WHEN_ROOT);
        let dir = PrivateDir::new(runas).map_err(NetError::TempDir)?;
        let pid_file = dir.0.join("passt.pid");
        let log_path = dir.0.join("passt.err");
        let log = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&log_path)
            .map_err(NetError::TempDir)?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(binary);
        cmd.args(passt_args(published, fd, &pid_file, runas, mtu))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone().map_err(NetError::TempDir)?);
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (fcntl, setpgid, prctl, pthread_sigmask) on plain integers.
        unsafe {
            cmd.pre_exec(move || {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Its own process group (a terminal's Ctrl-C is the launcher's to forward), and
                // dead with the launcher while it keeps our credentials.
                if libc::setpgid(0, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                crate::stdio::unblock_signals();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(NetError::Spawn)?;
        // passt has its end now.
        drop(theirs);
        // Nothing reaps the child but this module, so its pid still names it here.
        let pidfd = match rustix::process::pidfd_open(
            rustix::process::Pid::from_child(&child),
            rustix::process::PidfdFlags::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NetError::Spawn(e.into()));
            }
        };
        Ok(Starting {
            passt: Passt { child, pidfd, log },
            dir,
            pid_file,
            started: Instant::now(),
        })
    }

    /// What passt said before it exited with `status`: its last meaningful stderr line.
    fn failure(&mut self, status: std::process::ExitStatus) -> String {
        let mut text = Vec::new();
        let len = self.log.metadata().map(|m| m.len()).unwrap_or(0);
        if self
            .log
            .seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL as u64)))
            .is_ok()
        {
            let _ = (&self.log).take(STDERR_TAIL as u64).read_to_end(&mut text);
        }
        let text = String::from_utf8_lossy(&text);
        // It reports to syslog too, and says so on stderr when there is none.
        let said = text
            .lines()
            .map(str::trim)
            .rfind(|l| {
                !l.is_empty() && !l.starts_with("Failed to send") && !l.starts_with("Don't run as")
            })
            .map(str::to_string);
        said.unwrap_or_else(|| format!("exited with {status}"))
    }
}

impl Starting {
    /// Waits until passt has set itself up and bound the published ports (its pid file), for
    /// no longer than the rest of [`START_TIMEOUT`] since it was spawned; or says why it
    /// exited.
    pub fn wait_ready(self) -> Result<Passt, NetError> {
        let Starting {
            mut passt,
            dir,
            pid_file,
            started,
        } = self;
        loop {
            if let Some(status) = passt.child.try_wait().map_err(NetError::Spawn)? {
                return Err(NetError::PasstFailed(passt.failure(status)));
            }
            if std::fs::metadata(&pid_file).is_ok_and(|m| m.len() > 0) {
                // Ready: the directory (pid file, the log's name) goes now; passt keeps its
                // descriptors, and nothing is left to clean at the launcher's exit.
                drop(dir);
                return Ok(passt);
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(NetError::PasstTimeout(START_TIMEOUT.as_secs()));
            }
            std::thread::sleep(READY_POLL);
        }
    }
}

impl Passt {
    /// Sends passt its SIGKILL through the pidfd, without waiting (dropping it reaps it).
    pub fn kill(&self) {
        let _ =
            rustix::process::pidfd_send_signal(self.pidfd.as_fd(), rustix::process::Signal::KILL);
    }
}

impl Drop for Passt {
    /// SIGKILL through the pidfd, then `waitid(P_PIDFD)`: back once passt has exited (its
    /// sockets, the published ports, closed) and is reaped. Both fail harmlessly if it exited
    /// and was reaped already (`wait_ready` saw it fail).
    fn drop(&mut self) {
        use rustix::process::{WaitId, WaitIdOptions, waitid};
        self.kill();
        while let Err(rustix::io::Errno::INTR) =
            waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED)
        {}
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn arguments_carry_addressing_and_ports() {
        let published = [
            Published {
                host_ip: None,
                host_port: 8080,
                guest_port: 80,
                proto: Proto::Tcp,
            },
            Published {
                host_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                host_port: 5353,
                guest_port: 53,
                proto: Proto::Udp,
            },
        ];
        let a: Vec<String> = passt_args(&published, 7, Path::new("/run/x/passt.pid"), None, 1500)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = a.join(" ");
        assert!(joined.starts_with("--foreground --quiet --one-off --fd 7 --pid /run/x/passt.pid"));
        assert!(joined.contains("--address 10.0.2.15 --netmask 24 --gateway 10.0.2.2"));
        assert!(joined.contains("--address fd00:0:0:2::15 --gateway fd00:0:0:2::2"));
        assert!(joined.contains("--dns-forward 10.0.2.3"));
        assert!(joined.contains("--mtu 1500"));
        assert!(
            joined.ends_with("-t 8080:80 -u 127.0.0.1/5353:53"),
            "{joined}"
        );
        let root = passt_args(&[], 7, Path::new("/p"), Some(RUNAS_WHEN_ROOT), 65520);
        assert_eq!(root[3..5], ["--runas", "65534:65534"]);
    }

    #[test]
    fn missing_binary_is_named() {
        let dir = std::env::temp_dir();
        let e = find(Some(dir.as_os_str())).unwrap_err();
        assert!(e.to_string().contains("passt not found"), "{e}");
        assert!(find(None).is_err());
    }
}
