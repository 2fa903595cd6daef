//! The host side of a pod's network: which network a launch gets (`--network`, `-p`, `-P`),
//! the host ports it publishes, and the backend that carries the guest's Ethernet frames —
//! [`passt`], a rootless userspace network stack started and ended here, or a [`tap`] device
//! (`--network tap`) whose published ports the launcher forwards itself ([`forward`]).
//!
//! The guest's addressing is fixed and told to both ends: passt is started with it (`-a`, `-n`,
//! `-g`, `-m`, `--dns-forward`) and init configures the interface with it
//! ([`guest_config`], passed in the overrides archive as `pod::spec::NetworkConfig`). It is
//! QEMU user networking's plan, so it does not depend on the host's own addresses and never
//! collides with them: the guest is 10.0.2.15/24 and `fd00:0:0:2::15/64`, the gateway
//! 10.0.2.2 / `fd00:0:0:2::2` is the host (passt maps connections to it to the host's loopback),
//! and DNS queries to 10.0.2.3 go to the host's first resolver.
//!
//! With a TAP device the addressing is a /30 link network instead (`tap::LinkNet`), chosen per
//! launch, IPv4 only, the host side as the guest's gateway.
//!
//! An engine gets a [`HostNetwork`]: its [`Link`] (one end of a connected stream socket
//! speaking the QEMU stream protocol — a 4-byte big-endian length, then an Ethernet frame — or
//! the TAP device's descriptor), the guest's MAC and what init is told. The backend lives as
//! long as the `HostNetwork`.

pub mod forward;
pub mod passt;
pub mod tap;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use pod::spec::{InterfaceAddress, NetworkConfig};
use thiserror::Error;

use crate::config::{Engine, LaunchConfig};
use crate::publish::{self, HostPort, NetworkMode, PortRequest, Proto, PublishError};

/// The guest's MAC address (locally administered, unicast).
pub const GUEST_MAC: [u8; 6] = [0x02, 0x68, 0x70, 0x00, 0x00, 0x01];
/// The guest's IPv4 address.
pub const GUEST_IPV4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The IPv4 prefix length of the guest's link.
pub const PREFIX_IPV4: u8 = 24;
/// The IPv4 gateway: the host, as passt maps it.
pub const GATEWAY_IPV4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Where the guest sends DNS queries; passt forwards them to the host's first resolver.
pub const DNS_IPV4: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The guest's IPv6 address (unique local).
pub const GUEST_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 0x15);
/// The IPv6 prefix length of the guest's link.
pub const PREFIX_IPV6: u8 = 64;
/// The IPv6 gateway: the host, as passt maps it.
pub const GATEWAY_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 2);
/// The link's MTU under the QEMU engine: passt's default (the largest 802.3 frame less its
/// header, in 4-byte words), so that bulk TCP moves in few frames. The KVM engine's device has
/// no offloads or mergeable buffers and carries Ethernet's 1500 ([`mtu`]).
pub const MTU_QEMU: u32 = 65520;

/// The passt link's MTU on `engine`, told to passt and to init alike.
pub fn mtu(engine: Engine) -> u32 {
    match engine {
        Engine::Qemu => MTU_QEMU,
        _ => u32::from(crate::devices::net_chain::MTU),
    }
}

/// Why the launch's network could not be set up (the launcher exits with 125 before the guest
/// starts).
#[derive(Debug, Error)]
pub enum NetError {
    #[error("-p/-P need a network, and --network none has none")]
    PublishWithoutNetwork,
    #[error("the image's exposed port: {0}")]
    Exposed(#[source] PublishError),
    #[error("port {0} is already in use")]
    InUse(Published),
    #[error("port {0}: {1}")]
    Bind(Published, #[source] io::Error),
    #[error("no free host port in {0}-{1}/{2}")]
    RangeFull(u16, u16, Proto),
    #[error("passt not found on PATH: apt-get install passt, or --network none")]
    PasstNotFound,
    #[error("socketpair for the network")]
    Socket(#[source] io::Error),
    #[error("private directory for passt")]
    TempDir(#[source] io::Error),
    #[error("start passt")]
    Spawn(#[source] io::Error),
    #[error("passt failed: {0}")]
    PasstFailed(String),
    #[error("passt did not start within {0} s")]
    PasstTimeout(u64),
    #[error("port {0}: passt did not bind it")]
    NotForwarded(Published),
    #[error("--network tap needs CAP_NET_ADMIN (run as root, or use the default passt network)")]
    TapPermission,
    #[error("--network tap:{0}: not a valid interface name (1-15 bytes, no '/', ':' or spaces)")]
    TapName(String),
    #[error("TAP device: {0}")]
    Tap(&'static str, #[source] io::Error),
    #[error("TAP device: every /30 of 10.254.0.0/16 overlaps a host route")]
    TapNoLink,
    #[error("port forwarder")]
    Forward(#[source] io::Error),
}

/// One published port as it is on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The host address it listens on; `None`: all of them (IPv4 and IPv6).
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
    pub proto: Proto,
}

impl fmt::Display for Published {
    /// As `docker port` prints a mapping: `80/tcp -> 0.0.0.0:8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = SocketAddr::new(
            self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            self.host_port,
        );
        write!(f, "{}/{} -> {addr}", self.guest_port, self.proto)
    }
}

/// The guest's network as init configures it (see the module comment), with MTU `mtu`.
pub fn guest_config(mtu: u32) -> NetworkConfig {
    NetworkConfig {
        mtu,
        ipv4: Some(InterfaceAddress {
            address: GUEST_IPV4.into(),
            prefix: PREFIX_IPV4,
            gateway: GATEWAY_IPV4.into(),
        }),
        ipv6: Some(InterfaceAddress {
            address: GUEST_IPV6.into(),
            prefix: PREFIX_IPV6,
            gateway: GATEWAY_IPV6.into(),
        }),
        dns: vec![DNS_IPV4.into()],
        search: Vec::new(),
    }
}

/// The MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// The network a launch gets: `--network` if given, else passt — both engines have a network
/// device (QEMU's `virtio-net-device`, the KVM engine's `devices::virtio_net`) and, as with
/// Docker, a launch has a network unless told otherwise. Refuses `-p`/`-P` without a network.
pub fn mode(cfg: &LaunchConfig) -> Result<NetworkMode, NetError> {
    let publishes = !cfg.publish.is_empty() || cfg.publish_all;
    let mode = cfg.network.clone().unwrap_or(NetworkMode::Passt);
    match mode {
        NetworkMode::None if publishes => Err(NetError::PublishWithoutNetwork),
        m => Ok(m),
    }
}

/// Binds one socket on `addr` for `proto` (a TCP one listening), as `std` does (close-on-exec,
/// `SO_REUSEADDR` for TCP) and, for IPv6, `IPV6_V6ONLY`: `[::]` then means IPv6 alone, beside
/// a socket of its own on 0.0.0.0, as Docker publishes a port.
fn bind_one(addr: SocketAddr, proto: Proto) -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let kind = match proto {
        Proto::Tcp => SocketType::STREAM,
        Proto::Udp => SocketType::DGRAM,
    };
    let fd = rustix::net::socket_with(family, kind, SocketFlags::CLOEXEC, None)?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, true)?;
    }
    if proto == Proto::Tcp {
        sockopt::set_socket_reuseaddr(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    if proto == Proto::Tcp {
        rustix::net::listen(&fd, 128)?;
    }
    Ok(fd)
}

/// The port `fd` is bound to.
fn bound_port(fd: &OwnedFd) -> io::Result<u16> {
    let addr = rustix::net::getsockname(fd)?;
    SocketAddr::try_from(addr)
        .map(|a| a.port())
        .map_err(|_| io::Error::other("not an IP socket"))
}

/// Why a host port could not be bound: the address that failed, and the error.
type BindFailure = (SocketAddr, io::Error);

/// Binds `ip:port` for `proto` (port 0: one the kernel picks); returns the sockets, which hold
/// the port while open, and the port bound. `ip` `None` is every address of both families, as
/// with Docker: 0.0.0.0 and `[::]` (IPv6 alone), the latter left out on a host without IPv6.
fn bind(ip: Option<IpAddr>, port: u16, proto: Proto) -> Result<(Vec<OwnedFd>, u16), BindFailure> {
    let v4 = SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port);
    let first = bind_one(v4, proto).map_err(|e| (v4, e))?;
    let port = bound_port(&first).map_err(|e| (v4, e))?;
    if ip.is_some() {
        return Ok((vec![first], port));
    }
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    match bind_one(v6, proto) {
        Ok(second) => Ok((vec![first, second], port)),
        // No IPv6 on this host (not built in, or no address to bind): IPv4 alone.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            Ok((vec![first], port))
        }
        Err(e) => Err((v6, e)),
    }
}

/// Host ports checked free (or chosen) and held; dropping it lets the backend bind them.
pub struct Reservation {
    pub published: Vec<Published>,
    /// Each published port's sockets (two for a port without an address: 0.0.0.0 and [::]).
    held: Vec<Vec<OwnedFd>>,
}

impl Reservation {
    /// Releases the ports, just before the backend binds them.
    pub fn release(&mut self) {
        self.held.clear();
    }

    /// The held sockets with their protocol and guest port, for the launcher's own forwarder.
    pub fn into_sockets(self) -> Vec<(OwnedFd, Proto, u16)> {
        self.held
            .into_iter()
            .zip(self.published)
            .flat_map(|(fds, p)| fds.into_iter().map(move |fd| (fd, p.proto, p.guest_port)))
            .collect()
    }
}

/// How many times a port the kernel picked on IPv4 is tried again when IPv6 has it taken.
const ANY_PORT_TRIES: usize = 16;

/// Checks each requested host port is free and picks the free ports for `Any` and `Range`
/// requests, holding them all. A port in use (on any of its addresses), or one this user may
/// not bind, is refused, naming the address that failed.
pub fn reserve(requests: &[PortRequest]) -> Result<Reservation, NetError> {
    let mut r = Reservation {
        published: Vec::new(),
        held: Vec::new(),
    };
    for q in requests {
        let mapped = |host_port| Published {
            host_ip: q.host_ip,
            host_port,
            guest_port: q.guest_port,
            proto: q.proto,
        };
        let taken = |port| {
            move |(at, e): BindFailure| {
                // Named with the address that failed ([::] when only IPv6 has it taken).
                let p = Published {
                    host_ip: Some(at.ip()).filter(|_| q.host_ip.is_some() || at.is_ipv6()),
                    ..mapped(port)
                };
                match e.kind() {
                    io::ErrorKind::AddrInUse => NetError::InUse(p),
                    _ => NetError::Bind(p, e),
                }
            }
        };
        let (held, port) = match q.host_port {
            HostPort::Any => {
                // The kernel picks a port free on IPv4; IPv6 may have that one taken.
                let mut tries = 0;
                loop {
                    match bind(q.host_ip, 0, q.proto) {
                        Err((_, e))
                            if e.kind() == io::ErrorKind::AddrInUse && tries < ANY_PORT_TRIES =>
                        {
                            tries += 1
                        }
                        other => break other.map_err(taken(0))?,
                    }
                }
            }
            HostPort::Fixed(p) => bind(q.host_ip, p, q.proto).map_err(taken(p))?,
            HostPort::Range(a, b) => (a..=b)
                .find_map(|p| bind(q.host_ip, p, q.proto).ok())
                .ok_or(NetError::RangeFull(a, b, q.proto))?,
        };
        r.held.push(held);
        r.published.push(mapped(port));
    }
    Ok(r)
}

/// The launch's published ports: `-p`'s, then with `-P` the image's exposed ports that `-p`
/// does not publish.
pub fn requests(cfg: &LaunchConfig, exposed: &[String]) -> Result<Vec<PortRequest>, NetError> {
    let mut all = cfg.publish.clone();
    if cfg.publish_all {
        all.extend(publish::publish_all(exposed, &cfg.publish).map_err(NetError::Exposed)?);
    }
    Ok(all)
}

/// The engine's end of the guest's link.
pub enum Link {
    /// QEMU stream protocol frames to and from passt.
    Stream(UnixStream),
    /// A TAP device: one frame per read/write.
    Tap(OwnedFd),
}

impl Link {
    pub fn raw_fd(&self) -> RawFd {
        match self {
            Link::Stream(s) => s.as_raw_fd(),
            Link::Tap(fd) => fd.as_raw_fd(),
        }
    }

    /// A duplicate for the KVM engine's device.
    pub fn device_link(&self) -> io::Result<crate::devices::virtio_net::NetLink> {
        use crate::devices::virtio_net::NetLink;
        Ok(match self {
            Link::Stream(s) => NetLink::Stream(s.try_clone()?),
            Link::Tap(fd) => NetLink::Tap(fd.try_clone()?),
        })
    }

    pub fn is_tap(&self) -> bool {
        matches!(self, Link::Tap(_))
    }
}

/// What keeps a network's host side alive.
enum Backend {
    Passt(passt::Passt),
    /// The TAP device's name (for messages); the device lives as long as the [`Link`]. The
    /// forwarder, until an engine takes it, and the flag that stops the thread running it.
    Tap {
        forwarder: Option<forward::Forwarder>,
        stop: StopOnDrop,
    },
}

/// A running network for one launch: the engine's end of the link, the guest's MAC and what
/// init is told. Dropping it ends the backend.
pub struct HostNetwork {
    pub link: Link,
    pub mac: [u8; 6],
    pub guest: NetworkConfig,
    pub published: Vec<Published>,
    backend: Backend,
}

impl HostNetwork {
    /// Starts ending the backend without waiting: passt gets its SIGKILL ([`HostNetwork::end`]
    /// reaps it), the TAP forwarder its stop flag. Its exit then overlaps the launcher's own
    /// teardown.
    pub fn stop(&self) {
        match &self.backend {
            Backend::Passt(passt) => passt.kill(),
            Backend::Tap { stop, .. } => stop.0.store(true, Ordering::SeqCst),
        }
    }

    /// Ends the backend now: passt killed and reaped (its published ports free once this
    /// returns), the TAP forwarder told to stop; the link's descriptors closed.
    pub fn end(self) {
        match self.backend {
            Backend::Passt(passt) => drop(passt),
            Backend::Tap { forwarder, stop } => drop((forwarder, stop)),
        }
    }

    /// The TAP backend's port forwarder, for the engine to run on a thread of its own
    /// ([`forward::Forwarder::run`] with the flag, set when this network is dropped); `None`
    /// with passt or when nothing is published.
    pub fn take_forwarder(&mut self) -> Option<(forward::Forwarder, Arc<AtomicBool>)> {
        match &mut self.backend {
            Backend::Tap { forwarder, stop } => forwarder.take().map(|f| (f, stop.0.clone())),
            Backend::Passt(_) => None,
        }
    }

    /// Runs the TAP backend's forwarder on a thread of its own until this network is dropped
    /// (the QEMU engine; the KVM engine runs it under its seccomp filter).
    pub fn spawn_forwarder(&mut self) -> Result<(), NetError> {
        if let Some((f, stop)) = self.take_forwarder() {
            std::thread::Builder::new()
                .name("forward".into())
                .spawn(move || f.run(&stop))
                .map_err(NetError::Forward)?;
        }
        Ok(())
    }
}

/// A flag set when this is dropped: the forwarder thread stops with the network.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Sets up the network for a launch on `engine` with image `exposed` ports and waits until it
/// is ready: [`begin`], then [`PendingNetwork::ready`].
pub fn start(
    cfg: &LaunchConfig,
    engine: Engine,
    exposed: &[String],
) -> Result<Option<HostNetwork>, NetError> {
    match begin(cfg, engine, exposed)? {
        Some(p) => p.ready(),
        None => Ok(None),
    }
}

/// A network whose backend is starting: the guest's side (stream, MAC, addressing) is known
/// already, so the engine builds the VM meanwhile and calls [`PendingNetwork::ready`] just
/// before the guest first runs.
pub struct PendingNetwork {
    /// The engine's end of the link.
    pub link: Link,
    pub mac: [u8; 6],
    pub guest: NetworkConfig,
    pub published: Vec<Published>,
    requests: Vec<PortRequest>,
    /// The launch asked for a network (`--network`, `-p`, `-P`): a backend failure is then an
    /// error, not a notice.
    pub asked: bool,
    quiet: bool,
    backend: Pending,
}

/// A backend being started.
enum Pending {
    Passt(passt::Starting),
    /// Ready from the start: the device is configured, the forwarder holds the ports.
    Tap(Option<forward::Forwarder>),
}

/// Starts the network for a launch on `engine` with image `exposed` ports, without waiting for
/// the backend: `None` for `--network none`.
///
/// Without passt installed, a launch that asked for nothing network-related (no `--network`,
/// `-p` or `-P`) runs without a network, with a notice, as pods did before the network
/// existed; one that asked is refused.
pub fn begin(
    cfg: &LaunchConfig,
    engine: Engine,
    exposed: &[String],
) -> Result<Option<PendingNetwork>, NetError> {
    let tap_name = match mode(cfg)? {
        NetworkMode::None => return Ok(None),
        NetworkMode::Tap(name) => Some(name),
        NetworkMode::Passt => None,
    };
    if let Some(name) = tap_name {
        return begin_tap(cfg, name.as_deref(), exposed).map(Some);
    }
    let asked = cfg.network.is_some() || !cfg.publish.is_empty() || cfg.publish_all;
    let binary = match passt::find(std::env::var_os("PATH").as_deref()) {
        Ok(b) => b,
        Err(NetError::PasstNotFound) if !asked => {
            if !cfg.quiet {
                eprintln!(
                    "hyperlaunch: passt not found, so this pod has no network (apt-get install passt; --network none silences this)"
                );
            }
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let requests = requests(cfg, exposed)?;
    let mut ports = reserve(&requests)?;
    let (ours, theirs) = UnixStream::pair().map_err(NetError::Socket)?;
    ports.release();
    let backend = passt::Passt::spawn(&binary, &ports.published, theirs, mtu(engine))?;
    Ok(Some(PendingNetwork {
        link: Link::Stream(ours),
        mac: GUEST_MAC,
        guest: guest_config(mtu(engine)),
        published: ports.published,
        requests,
        asked,
        quiet: cfg.quiet,
        backend: Pending::Passt(backend),
    }))
}

/// `--network tap[:NAME]`: the ports checked and held (the forwarder keeps them), the device
/// created and configured ([`tap::open`]), the guest's addressing on its link network. The
/// same on both engines (MTU [`tap::TAP_MTU`]).
fn begin_tap(
    cfg: &LaunchConfig,
    name: Option<&str>,
    exposed: &[String],
) -> Result<PendingNetwork, NetError> {
    let requests = requests(cfg, exposed)?;
    let ports = reserve(&requests)?;
    let published = ports.published.clone();
    let (device, link) = tap::open(name)?;
    let dns = std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| tap::resolvers(&t))
        .unwrap_or_default();
    let sockets = ports.into_sockets();
    let forwarder = if sockets.is_empty() {
        None
    } else {
        Some(forward::Forwarder::new(sockets, link.guest).map_err(NetError::Forward)?)
    };
    if !cfg.quiet && cfg.timing {
        eprintln!(
            "hyperlaunch: TAP device {} (host {}/{}, guest {})",
            device.name, link.host, link.prefix, link.guest
        );
    }
    Ok(PendingNetwork {
        link: Link::Tap(device.fd),
        mac: GUEST_MAC,
        guest: tap::guest_config(&link, dns),
        published,
        requests,
        asked: true,
        quiet: cfg.quiet,
        backend: Pending::Tap(forwarder),
    })
}

impl PendingNetwork {
    /// Waits until the backend is ready and checks every published port is held by it, then
    /// prints each port whose host side the launcher chose (unless `quiet`). `None`: the
    /// backend failed on a launch that asked for nothing network-related, which then runs
    /// without a network (with a notice), as Docker runs a container on an offline host (e.g.
    /// passt's "External interface not usable" on a host with no routable interface).
    pub fn ready(self) -> Result<Option<HostNetwork>, NetError> {
        let starting = match self.backend {
            Pending::Passt(s) => s,
            Pending::Tap(forwarder) => {
                report_chosen_ports(self.quiet, &self.requests, &self.published);
                return Ok(Some(HostNetwork {
                    link: self.link,
                    mac: self.mac,
                    guest: self.guest,
                    published: self.published,
                    backend: Backend::Tap {
                        forwarder,
                        stop: StopOnDrop(Arc::default()),
                    },
                }));
            }
        };
        let backend = match starting.wait_ready() {
            Ok(b) => b,
            Err(NetError::PasstFailed(why)) if !self.asked => {
                if !self.quiet {
                    eprintln!(
                        "hyperlaunch: passt failed ({why}), so this pod has no network (--network none silences this)"
                    );
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // passt skips a port it cannot bind without failing (it was taken between the check
        // and its start): each must be held now.
        if let Some(p) = self
            .published
            .iter()
            .find(|p| bind(p.host_ip, p.host_port, p.proto).is_ok())
        {
            return Err(NetError::NotForwarded(*p));
        }
        report_chosen_ports(self.quiet, &self.requests, &self.published);
        Ok(Some(HostNetwork {
            link: self.link,
            mac: self.mac,
            guest: self.guest,
            published: self.published,
            backend: Backend::Passt(backend),
        }))
    }
}

/// Prints each port whose host side the launcher chose (unless `quiet`).
fn report_chosen_ports(quiet: bool, requests: &[PortRequest], published: &[Published]) {
    if !quiet {
        for (q, p) in requests.iter().zip(published) {
            if q.host_port != HostPort::Fixed(p.host_port) {
                eprintln!("hyperlaunch: published {p}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
