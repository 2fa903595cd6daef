//! The host side of a pod's network: which network a launch gets (`--network`, `-p`, `-P`),
//! the host ports it publishes, and the backend that carries the guest's Ethernet frames —
//! [`passt`], a rootless userspace network stack started and ended here.
//!
//! The guest's addressing is fixed and told to both ends: passt is started with it (`-a`, `-n`,
//! `-g`, `-m`, `--dns-forward`) and init configures the interface with it
//! ([`guest_config`], passed in the overrides archive as `pod::spec::NetworkConfig`). It is
//! QEMU user networking's plan, so it does not depend on the host's own addresses and never
//! collides with them: the guest is 10.0.2.15/24 and `fd00:0:0:2::15/64`, the gateway
//! 10.0.2.2 / `fd00:0:0:2::2` is the host (passt maps connections to it to the host's loopback),
//! and DNS queries to 10.0.2.3 go to the host's first resolver.
//!
//! An engine gets a [`HostNetwork`]: one end of a connected stream socket speaking the
//! QEMU stream protocol (a 4-byte big-endian length, then an Ethernet frame), the guest's MAC
//! and what init is told. The backend lives as long as the `HostNetwork`.

pub mod passt;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

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

/// The link's MTU on `engine`, told to passt and to init alike.
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

/// Binds `ip:port` (all addresses when `ip` is `None`) for `proto`; returns the socket, which
/// holds the port while open, and the port bound.
fn bind(ip: Option<IpAddr>, port: u16, proto: Proto) -> io::Result<(OwnedFd, u16)> {
    // Docker's default binding is every address; 0.0.0.0 conflicts with any IPv4 listener on
    // the port, and with a dual-stack one on [::].
    let addr = SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port);
    Ok(match proto {
        Proto::Tcp => {
            let l = TcpListener::bind(addr)?;
            let port = l.local_addr()?.port();
            (l.into(), port)
        }
        Proto::Udp => {
            let s = UdpSocket::bind(addr)?;
            let port = s.local_addr()?.port();
            (s.into(), port)
        }
    })
}

/// Host ports checked free (or chosen) and held; dropping it lets the backend bind them.
pub struct Reservation {
    pub published: Vec<Published>,
    held: Vec<OwnedFd>,
}

impl Reservation {
    /// Releases the ports, just before the backend binds them.
    pub fn release(&mut self) {
        self.held.clear();
    }
}

/// Checks each requested host port is free and picks the free ports for `Any` and `Range`
/// requests, holding them all. A port in use, or one this user may not bind, is refused.
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
            let p = mapped(port);
            move |e: io::Error| match e.kind() {
                io::ErrorKind::AddrInUse => NetError::InUse(p),
                _ => NetError::Bind(p, e),
            }
        };
        let (held, port) = match q.host_port {
            HostPort::Any => bind(q.host_ip, 0, q.proto).map_err(taken(0))?,
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

/// A running network for one launch: the engine's end of the frame stream, the guest's MAC and
/// what init is told. Dropping it ends the backend.
pub struct HostNetwork {
    /// The engine's end: QEMU stream protocol frames to and from the backend.
    pub stream: UnixStream,
    pub mac: [u8; 6],
    pub guest: NetworkConfig,
    pub published: Vec<Published>,
    backend: passt::Passt,
}

impl HostNetwork {
    /// Ends the launch's hold on the network without tearing passt down from this thread
    /// ([`passt::Passt::leave_to_exit`]): for the KVM engine, after its run.
    pub fn leave_to_exit(self) {
        self.backend.leave_to_exit();
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
    /// The engine's end: QEMU stream protocol frames to and from the backend.
    pub stream: UnixStream,
    pub mac: [u8; 6],
    pub guest: NetworkConfig,
    pub published: Vec<Published>,
    requests: Vec<PortRequest>,
    /// The launch asked for a network (`--network`, `-p`, `-P`): a backend failure is then an
    /// error, not a notice.
    pub asked: bool,
    quiet: bool,
    backend: passt::Starting,
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
    if mode(cfg)? == NetworkMode::None {
        return Ok(None);
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
        stream: ours,
        mac: GUEST_MAC,
        guest: guest_config(mtu(engine)),
        published: ports.published,
        requests,
        asked,
        quiet: cfg.quiet,
        backend,
    }))
}

impl PendingNetwork {
    /// Waits until the backend is ready and checks every published port is held by it, then
    /// prints each port whose host side the launcher chose (unless `quiet`). `None`: the
    /// backend failed on a launch that asked for nothing network-related, which then runs
    /// without a network (with a notice), as Docker runs a container on an offline host (e.g.
    /// passt's "External interface not usable" on a host with no routable interface).
    pub fn ready(self) -> Result<Option<HostNetwork>, NetError> {
        let backend = match self.backend.wait_ready() {
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
        if !self.quiet {
            for (q, p) in self.requests.iter().zip(&self.published) {
                if q.host_port != HostPort::Fixed(p.host_port) {
                    eprintln!("hyperlaunch: published {p}");
                }
            }
        }
        Ok(Some(HostNetwork {
            stream: self.stream,
            mac: self.mac,
            guest: self.guest,
            published: self.published,
            backend,
        }))
    }
}

#[cfg(test)]
mod tests;
