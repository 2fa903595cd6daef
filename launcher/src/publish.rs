//! `-p/--publish` and `--network` as typed values. Pure: no sockets, no clocks.
//!
//! `-p` is parsed as `docker run -p` parses it (moby's `nat.ParsePortSpec`):
//! `[HOST_IP:][HOST_PORT:]GUEST_PORT[/PROTO]`, split at the last two colons (so an IPv6 host
//! address may be written bare or in brackets: `[::1]:8080:80`), the protocol after a `/`
//! (`tcp` when absent or empty), port ranges `A-B` on either side (equal lengths, or a host range
//! with a single guest port: the first free host port of the range is taken), an empty or `0`
//! host port meaning "any free port". SCTP, which Docker also takes, is refused: passt forwards
//! TCP and UDP only.

use std::fmt;
use std::net::IpAddr;

use thiserror::Error;

/// Why a `-p` value or an exposed port is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("no guest port")]
    NoGuestPort,
    #[error("invalid IP address {0:?}")]
    BadIp(String),
    #[error("invalid guest port {0:?}")]
    BadGuestPort(String),
    #[error("invalid host port {0:?}")]
    BadHostPort(String),
    #[error("the host and guest port ranges differ in length")]
    RangeLengths,
    #[error("invalid protocol {0:?}: tcp or udp")]
    BadProto(String),
}

/// A transport protocol a port is published for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Which host port a mapping listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPort {
    /// Any free port, chosen at launch.
    Any,
    /// This port.
    Fixed(u16),
    /// The first free port of this inclusive range.
    Range(u16, u16),
}

/// One published port as asked for: host address (all when `None`), host port, guest port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRequest {
    pub host_ip: Option<IpAddr>,
    pub host_port: HostPort,
    pub guest_port: u16,
    pub proto: Proto,
}

/// `--network`: what the guest's network interface is connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// passt, the rootless userspace network stack (the default where the engine has a network
    /// device).
    Passt,
    /// No network interface at all: loopback only.
    None,
    /// A TAP device the launcher creates (named as given, else by the kernel), needs
    /// `CAP_NET_ADMIN` (`net::tap`).
    Tap(Option<String>),
}

/// Parses `--network`'s value. Docker's `bridge` and `default` name the default network, here
/// passt.
pub fn parse_network(v: &str) -> Option<NetworkMode> {
    match v {
        "passt" | "bridge" | "default" => Some(NetworkMode::Passt),
        "none" => Some(NetworkMode::None),
        "tap" => Some(NetworkMode::Tap(None)),
        _ => v
            .strip_prefix("tap:")
            .map(|name| NetworkMode::Tap(Some(name.to_string()))),
    }
}

/// Moby's `splitParts`: `(ip, host port, guest port)` split at the last two colons.
fn split_parts(raw: &str) -> (&str, &str, &str) {
    let parts: Vec<&str> = raw.split(':').collect();
    let n = parts.len();
    match n {
        1 => ("", "", raw),
        2 => ("", parts[0], parts[1]),
        _ => {
            // Everything before the last two colons is the address (IPv6 keeps its colons).
            let guest_at = raw.len() - parts[n - 1].len();
            let host_at = guest_at - 1 - parts[n - 2].len();
            (&raw[..host_at - 1], parts[n - 2], parts[n - 1])
        }
    }
}

/// Moby's `SplitProtoPort`: `(proto, port)`; no `/` or an empty protocol means tcp.
fn split_proto(raw: &str) -> (&str, &str) {
    match raw.split_once('/') {
        _ if raw.is_empty() || raw.starts_with('/') => ("", ""),
        None => ("tcp", raw),
        Some((port, "")) => ("tcp", port),
        Some((port, proto)) => (proto, port),
    }
}

/// `N` or `A-B` (A ≤ B) as an inclusive range of 16-bit ports.
fn port_range(v: &str) -> Option<(u16, u16)> {
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u16>().ok())
            .flatten()
    };
    match v.split_once('-') {
        None => num(v).map(|p| (p, p)),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some((a, b))
        }
    }
}

/// Parses one `-p` value into the mappings it stands for (one per guest port).
pub fn parse_publish(raw: &str) -> Result<Vec<PortRequest>, PublishError> {
    let (ip, host, guest) = split_parts(raw);
    let (proto, guest) = split_proto(guest);
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    let host_ip = match ip {
        "" => None,
        _ => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| PublishError::BadIp(ip.into()))?,
        ),
    };
    if guest.is_empty() {
        return Err(PublishError::NoGuestPort);
    }
    let (g0, g1) = port_range(guest)
        .filter(|&(a, _)| a != 0)
        .ok_or_else(|| PublishError::BadGuestPort(guest.into()))?;
    let hosts = match host {
        "" => None,
        _ => Some(port_range(host).ok_or_else(|| PublishError::BadHostPort(host.into()))?),
    };
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return Err(PublishError::BadProto(proto.into())),
    };
    let one = |host_port, guest_port| PortRequest {
        host_ip,
        host_port,
        guest_port,
        proto,
    };
    Ok(match hosts {
        None | Some((0, 0)) => (g0..=g1).map(|g| one(HostPort::Any, g)).collect(),
        Some((h0, h1)) if h1 - h0 == g1 - g0 => (g0..=g1)
            .zip(h0..=h1)
            .map(|(g, h)| one(HostPort::Fixed(h), g))
            .collect(),
        Some((h0, h1)) if g0 == g1 => vec![one(HostPort::Range(h0, h1), g0)],
        Some(_) => return Err(PublishError::RangeLengths),
    })
}

/// An image's `ExposedPorts` entry (`80/tcp`, `53/udp`, `8000-8002/tcp`) as mappings to any free
/// host port (`-P`).
pub fn parse_exposed(entry: &str) -> Result<Vec<PortRequest>, PublishError> {
    if entry.contains(':') {
        return Err(PublishError::BadGuestPort(entry.into()));
    }
    parse_publish(entry)
}

/// `-P`'s mappings: every exposed port that `explicit` does not already publish (same guest port
/// and protocol), in order, on any free host port.
pub fn publish_all(
    exposed: &[String],
    explicit: &[PortRequest],
) -> Result<Vec<PortRequest>, PublishError> {
    let mut out: Vec<PortRequest> = Vec::new();
    for e in exposed {
        for r in parse_exposed(e)? {
            let taken = |p: &PortRequest| p.guest_port == r.guest_port && p.proto == r.proto;
            if !explicit.iter().any(taken) && !out.iter().any(taken) {
                out.push(r);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
