//! The guest's network interface ([`NET_INTERFACE`]) configured from what the launcher passes
//! (`pod::spec::NetworkConfig` in the overrides): MTU, IPv4 address and prefix, IPv6 address,
//! up, default routes via the gateways — with the classic `SIOC*` ioctls, static, no DHCP client
//! and no kernel `ip=` autoconfiguration (both wait on the network during boot). Plus the
//! `/etc/resolv.conf` and `/etc/hosts` lines that go with it (pure).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use pod::protocol::NET_INTERFACE;
use pod::spec::{InterfaceAddress, NetworkConfig};
use thiserror::Error;

use crate::cvt;

#[derive(Debug, Error)]
pub enum NetError {
    #[error("{NET_INTERFACE}: {0}")]
    Step(&'static str, #[source] io::Error),
    #[error("{NET_INTERFACE}: the launcher gave an {0} address where {1} was expected")]
    Family(&'static str, &'static str),
}

/// `rtentry` of `<net/route.h>` (`SIOCADDRT` on an AF_INET socket); the libc crate declares it
/// for musl only.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// `in6_rtmsg` of `<linux/ipv6_route.h>` (`SIOCADDRT` on an AF_INET6 socket); the libc crate
/// keeps its fields private.
#[repr(C)]
struct In6RtMsg {
    rtmsg_dst: [u8; 16],
    rtmsg_src: [u8; 16],
    rtmsg_gateway: [u8; 16],
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

fn socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the descriptor is owned right below.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `ifreq` naming the interface, the rest zero.
fn ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(NET_INTERFACE.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    req
}

/// A `sockaddr` holding the IPv4 address `a` (a `sockaddr_in` fits in it exactly).
fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and both are plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The IPv4 netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

fn ioctl<T>(
    sock: &OwnedFd,
    req: libc::c_ulong,
    arg: &mut T,
    step: &'static str,
) -> Result<(), NetError> {
    // SAFETY: `arg` is a valid, initialised value of the type this request reads or writes
    // (ifreq, rtentry, in6_ifreq, in6_rtmsg), alive for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), req, arg as *mut T) })
        .map(|_| ())
        .map_err(|e| NetError::Step(step, e))
}

fn v4(a: IpAddr) -> Result<Ipv4Addr, NetError> {
    match a {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(NetError::Family("IPv6", "IPv4")),
    }
}

fn v6(a: IpAddr) -> Result<Ipv6Addr, NetError> {
    match a {
        IpAddr::V6(a) => Ok(a),
        IpAddr::V4(_) => Err(NetError::Family("IPv4", "IPv6")),
    }
}

/// Turns off what would make the kernel wait or add addresses of its own on the interface:
/// duplicate address detection (an address stays "tentative", unusable, for about a second)
/// and router advertisements/SLAAC. Nothing to do without IPv6.
fn ipv6_sysctls() {
    for knob in ["accept_dad", "accept_ra", "autoconf"] {
        for scope in ["default", NET_INTERFACE] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/{knob}"), "0");
        }
    }
}

fn configure_v4(sock: &OwnedFd, a: &InterfaceAddress) -> Result<(), NetError> {
    let mut req = ifreq();
    req.ifr_ifru.ifru_addr = sockaddr_v4(v4(a.address)?);
    ioctl(sock, libc::SIOCSIFADDR, &mut req, "set the IPv4 address")?;
    let mut req = ifreq();
    req.ifr_ifru.ifru_netmask = sockaddr_v4(netmask(a.prefix));
    ioctl(sock, libc::SIOCSIFNETMASK, &mut req, "set the IPv4 netmask")
}

fn default_route_v4(sock: &OwnedFd, gateway: IpAddr) -> Result<(), NetError> {
    let mut dev = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, src) in dev.iter_mut().zip(NET_INTERFACE.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(v4(gateway)?),
        rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(sock, libc::SIOCADDRT, &mut rt, "add the IPv4 default route")
}

/// Sets the IPv6 address (`route` false) or adds the default route (`route` true); `false` when
/// the kernel has no IPv6.
fn configure_v6(index: libc::c_int, a: &InterfaceAddress, route: bool) -> Result<bool, NetError> {
    let sock = match socket(libc::AF_INET6) {
        Ok(s) => s,
        // A kernel without IPv6 (pods built before it was added): IPv4 only.
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => return Ok(false),
        Err(e) => return Err(NetError::Step("IPv6 socket", e)),
    };
    if !route {
        let mut req = libc::in6_ifreq {
            ifr6_addr: libc::in6_addr {
                s6_addr: v6(a.address)?.octets(),
            },
            ifr6_prefixlen: u32::from(a.prefix),
            ifr6_ifindex: index,
        };
        return ioctl(&sock, libc::SIOCSIFADDR, &mut req, "set the IPv6 address").map(|()| true);
    }
    let mut rt = In6RtMsg {
        rtmsg_dst: [0; 16],
        rtmsg_src: [0; 16],
        rtmsg_gateway: v6(a.gateway)?.octets(),
        rtmsg_type: 0,
        rtmsg_dst_len: 0,
        rtmsg_src_len: 0,
        rtmsg_metric: 1,
        rtmsg_info: 0,
        rtmsg_flags: u32::from(libc::RTF_UP | libc::RTF_GATEWAY),
        rtmsg_ifindex: index,
    };
    ioctl(
        &sock,
        libc::SIOCADDRT,
        &mut rt,
        "add the IPv6 default route",
    )
    .map(|()| true)
}

/// An ICMP echo request (type 8, code 0, identifier and sequence 0, no data) with its checksum.
pub const ECHO_REQUEST: [u8; 8] = [8, 0, 0xf7, 0xff, 0, 0, 0, 0];
/// An ICMPv6 echo request (type 128); the kernel fills in the checksum of ICMPv6 raw sockets.
pub const ECHO_REQUEST_V6: [u8; 8] = [128, 0, 0, 0, 0, 0, 0, 0];

/// Sends one ICMP echo request to the gateway from the interface's address, without waiting
/// for a reply. The backend (passt) learns the guest's MAC address and its addresses from the
/// frames the guest sends — here the ARP request or neighbour solicitation for the gateway and
/// the echo request — and until then cannot deliver a published port's connections to a guest
/// that only listens. (The kernel's own gratuitous ARP, `arp_notify`, was not sent on this
/// path: the interface's transmit counter stayed at 0.)
fn announce(gateway: IpAddr) -> Result<(), NetError> {
    let step = "ping the gateway";
    let (family, proto, packet) = match gateway {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, ECHO_REQUEST),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, ECHO_REQUEST_V6),
    };
    // SAFETY: plain socket(2) call; the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            proto,
        )
    };
    if fd < 0 {
        return Err(NetError::Step(step, io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_storage; it is filled in below for the family.
    let mut to: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match gateway {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr.
            unsafe { *(&mut to as *mut libc::sockaddr_storage).cast() = sockaddr_v4(a) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { *(&mut to as *mut libc::sockaddr_storage).cast() = sin6 };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: the buffer and the address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&to as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(NetError::Step(step, io::Error::last_os_error()));
    }
    Ok(())
}

/// Configures the interface as `cfg` says and brings it up with its default routes.
pub fn configure(cfg: &NetworkConfig) -> Result<(), NetError> {
    let sock = socket(libc::AF_INET).map_err(|e| NetError::Step("socket", e))?;
    let mut req = ifreq();
    ioctl(&sock, libc::SIOCGIFINDEX, &mut req, "find the interface")?;
    // SAFETY: SIOCGIFINDEX just wrote the ifindex member of the union.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    if cfg.ipv6.is_some() {
        ipv6_sysctls();
    }
    let mut req = ifreq();
    req.ifr_ifru.ifru_mtu = cfg.mtu as libc::c_int;
    ioctl(&sock, libc::SIOCSIFMTU, &mut req, "set the MTU")?;
    if let Some(a) = &cfg.ipv4 {
        configure_v4(&sock, a)?;
    }
    let mut req = ifreq();
    ioctl(&sock, libc::SIOCGIFFLAGS, &mut req, "read the flags")?;
    // SAFETY: SIOCGIFFLAGS just wrote the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(&sock, libc::SIOCSIFFLAGS, &mut req, "bring it up")?;
    if let Some(a) = &cfg.ipv4 {
        default_route_v4(&sock, a.gateway)?;
        announce(a.gateway)?;
    }
    // IPv6: the address once the interface is up (the kernel sets up its IPv6 state then),
    // then the route through the gateway on the address's prefix.
    if let Some(a) = &cfg.ipv6 {
        if configure_v6(index, a, false)? {
            configure_v6(index, a, true)?;
            announce(a.gateway)?;
        }
    }
    Ok(())
}

/// `/etc/resolv.conf` for a pod with a network.
pub fn resolv_conf(cfg: &NetworkConfig) -> String {
    let mut out = String::from("# written by hyperpod-init from the launcher's network\n");
    for ns in &cfg.dns {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !cfg.search.is_empty() {
        out.push_str(&format!("search {}\n", cfg.search.join(" ")));
    }
    out
}

/// `/etc/hosts` lines naming the guest by its network addresses, as Docker's hosts file names
/// the container by its address.
pub fn hosts_lines(cfg: &NetworkConfig, hostname: &str) -> String {
    [cfg.ipv4, cfg.ipv6]
        .iter()
        .flatten()
        .map(|a| format!("{}\t{hostname}\n", a.address))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NetworkConfig {
        NetworkConfig {
            mtu: 65520,
            ipv4: Some(InterfaceAddress {
                address: "10.0.2.15".parse().unwrap(),
                prefix: 24,
                gateway: "10.0.2.2".parse().unwrap(),
            }),
            ipv6: Some(InterfaceAddress {
                address: "fd00:0:0:2::15".parse().unwrap(),
                prefix: 64,
                gateway: "fd00:0:0:2::2".parse().unwrap(),
            }),
            dns: vec!["10.0.2.3".parse().unwrap()],
            search: vec!["example.org".into()],
        }
    }

    #[test]
    fn echo_request_checksum_is_valid() {
        // The ones' complement sum of a packet with a valid checksum is 0xffff.
        let sum: u32 = ECHO_REQUEST
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!(folded, 0xffff);
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(20), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(netmask(99), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn etc_files() {
        let c = cfg();
        assert!(resolv_conf(&c).ends_with("nameserver 10.0.2.3\nsearch example.org\n"));
        assert_eq!(
            hosts_lines(&c, "web"),
            "10.0.2.15\tweb\nfd00:0:0:2::15\tweb\n"
        );
    }

    #[test]
    fn the_address_family_is_checked() {
        let e = v4("::1".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("IPv6 address where IPv4"), "{e}");
        assert!(v6("10.0.2.2".parse().unwrap()).is_err());
    }
}
