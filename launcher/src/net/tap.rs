//! The TAP backend (`--network tap[:NAME]`, needs `CAP_NET_ADMIN`): the launcher creates a
//! non-persistent TAP device through `/dev/net/tun` (`IFF_TAP | IFF_NO_PI`, no vnet header),
//! gives its host side the first address of a small link network ([`LinkNet`], a /30 chosen per
//! launch from [`POOL`] that no host route overlaps) and brings it up; the guest gets the
//! second address, the host side as its gateway and the MTU through the overrides archive, as
//! with passt. Published ports are forwarded by the launcher itself (`net::forward`).
//!
//! Nothing needs cleaning after the launcher ends, however it ends: the device is not
//! persistent, so it vanishes with the last descriptor (the launcher's, and QEMU's copy under
//! the QEMU engine), and with it its address and route. No NAT or firewall rule is installed:
//! the pod reaches the host (and anything the host routes for it, given the user's own
//! forwarding and NAT), not the outside world by itself.
//!
//! The interface ioctls (`TUNSETIFF`, `SIOCSIF*`) are made with `libc`: rustix has no
//! wrappers for them.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use pod::spec::{InterfaceAddress, NetworkConfig};

use super::NetError;

/// The pool the link network is taken from: 10.254.0.0/16, as 16 384 /30 networks.
pub const POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 254, 0, 0), 16);
/// The link network's prefix length: a /30, the host and the guest.
pub const LINK_PREFIX: u8 = 30;
/// The device name asked of the kernel when `--network tap` names none (`%d`: the kernel's
/// first free number).
pub const DEFAULT_NAME: &str = "hyperpod%d";
/// The TAP link's MTU on both engines: Ethernet's, as the KVM engine's device carries it.
pub const TAP_MTU: u32 = 1500;
/// `IFNAMSIZ`: an interface name is at most 15 bytes.
const IFNAMSIZ: usize = 16;

/// One launch's link network: host side, guest side, prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkNet {
    pub host: Ipv4Addr,
    pub guest: Ipv4Addr,
    pub prefix: u8,
}

impl LinkNet {
    /// The `index`th /30 of the pool.
    pub fn nth(index: u32) -> LinkNet {
        let base = u32::from(POOL.0) + (index % pool_size()) * 4;
        LinkNet {
            host: Ipv4Addr::from(base + 1),
            guest: Ipv4Addr::from(base + 2),
            prefix: LINK_PREFIX,
        }
    }

    fn network(&self) -> u32 {
        u32::from(self.host) & mask(self.prefix)
    }
}

fn pool_size() -> u32 {
    1 << (LINK_PREFIX - POOL.1)
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// The IPv4 routes of `/proc/net/route` as `(network, mask)`, default routes left out (they
/// overlap everything and are what a more specific link route is for). Pure.
pub fn parse_routes(text: &str) -> Vec<(u32, u32)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...; addresses are
            // hexadecimal in host (little-endian) byte order.
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let m = u32::from_str_radix(f.get(7)?, 16).ok()?;
            let dst = u32::from_be_bytes(dst.to_le_bytes());
            let m = u32::from_be_bytes(m.to_le_bytes());
            (m != 0).then_some((dst & m, m))
        })
        .collect()
}

/// The first /30 of the pool from index `start` on that overlaps none of `routes`. Pure.
pub fn choose_link(routes: &[(u32, u32)], start: u32) -> Option<LinkNet> {
    (0..pool_size())
        .map(|i| LinkNet::nth(start.wrapping_add(i)))
        .find(|l| {
            let (net, m) = (l.network(), mask(l.prefix));
            routes.iter().all(|&(rnet, rm)| {
                let common = m & rm;
                net & common != rnet & common
            })
        })
}

/// The name servers of a `resolv.conf` the guest can reach over the link: IPv4 and not
/// loopback (a host's local stub resolver, e.g. 127.0.0.53, is not the guest's). Pure.
pub fn resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|v| v.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .map(IpAddr::V4)
        .collect()
}

/// The guest's network over `link`: its address, the host side as gateway, `dns`.
pub fn guest_config(link: &LinkNet, dns: Vec<IpAddr>) -> NetworkConfig {
    NetworkConfig {
        mtu: TAP_MTU,
        ipv4: Some(InterfaceAddress {
            address: link.guest.into(),
            prefix: link.prefix,
            gateway: link.host.into(),
        }),
        ipv6: None,
        dns,
        search: Vec::new(),
    }
}

/// Checks a `--network tap:NAME` name as Linux does (`dev_valid_name`): 1 to 15 bytes, not `.`
/// or `..`, no `/`, `:` or white space. Pure.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

/// An `ifreq` naming `name` (at most 15 bytes), the rest zero.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes().take(IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    req
}

fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes); a sockaddr_in is a valid
    // bit pattern for it.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// A created TAP device: its descriptor (non-blocking) and the name the kernel gave it.
pub struct Tap {
    pub fd: OwnedFd,
    pub name: String,
}

/// Creates the TAP device (`name` or [`DEFAULT_NAME`]). Without `CAP_NET_ADMIN` the kernel
/// refuses (`EPERM`), reported as [`NetError::TapPermission`].
pub fn create(name: Option<&str>) -> Result<Tap, NetError> {
    let path = c"/dev/net/tun";
    // SAFETY: a valid NUL-terminated path; the descriptor is owned right below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            // Not for this user (the device is often root's only): the same lack.
            Some(libc::EPERM | libc::EACCES) => NetError::TapPermission,
            _ => NetError::Tap("open /dev/net/tun", e),
        });
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(name.unwrap_or(DEFAULT_NAME));
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq, which lives for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => NetError::TapPermission,
            _ => NetError::Tap("TUNSETIFF", e),
        });
    }
    Ok(Tap {
        name: ifreq_name(&req),
        fd,
    })
}

/// A socket for the interface ioctls.
fn ioctl_socket() -> Result<OwnedFd, NetError> {
    // SAFETY: plain socket(2) call; the descriptor is owned right below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(NetError::Tap("socket", io::Error::last_os_error()));
    }
    // SAFETY: `s` was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

/// One `SIOC[GS]IF*` request on `s`; `EPERM` is the missing capability.
fn call(s: &OwnedFd, what: &'static str, op: u64, req: &mut libc::ifreq) -> Result<(), NetError> {
    // SAFETY: the SIOC[GS]IF* requests read (and SIOCGIFFLAGS writes) the ifreq, which lives
    // for the call.
    if unsafe { libc::ioctl(s.as_raw_fd(), op as libc::Ioctl, req as *mut libc::ifreq) } < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => NetError::TapPermission,
            _ => NetError::Tap(what, e),
        });
    }
    Ok(())
}

/// Sets `name`'s MTU and brings it up (no address).
pub fn bring_up(name: &str, mtu: u32) -> Result<(), NetError> {
    let s = ioctl_socket()?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    call(&s, "SIOCSIFMTU", libc::SIOCSIFMTU, &mut req)?;
    let mut req = ifreq(name);
    call(&s, "SIOCGIFFLAGS", libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    call(&s, "SIOCSIFFLAGS", libc::SIOCSIFFLAGS, &mut req)
}

/// Gives `name` the host side of `link`, MTU `mtu`, and brings it up.
pub fn configure(name: &str, link: &LinkNet, mtu: u32) -> Result<(), NetError> {
    let s = ioctl_socket()?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr_v4(link.host);
    call(&s, "SIOCSIFADDR", libc::SIOCSIFADDR, &mut req)?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask(link.prefix)));
    call(&s, "SIOCSIFNETMASK", libc::SIOCSIFNETMASK, &mut req)?;
    bring_up(name, mtu)
}

/// Creates and configures the launch's TAP device: the device, a link network no host route
/// overlaps (searched from a start that depends on the launcher's pid, so that concurrent
/// launches seldom try the same one), the host side's address.
pub fn open(name: Option<&str>) -> Result<(Tap, LinkNet), NetError> {
    if let Some(n) = name.filter(|n| !valid_name(n)) {
        return Err(NetError::TapName(n.to_string()));
    }
    let tap = create(name)?;
    let routes = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| NetError::Tap("read /proc/net/route", e))?;
    let link =
        choose_link(&parse_routes(&routes), std::process::id()).ok_or(NetError::TapNoLink)?;
    configure(&tap.name, &link, TAP_MTU)?;
    Ok((tap, link))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
wg0\t0000FE0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
";

    #[test]
    fn routes_are_parsed_in_network_order_without_the_default() {
        let r = parse_routes(ROUTES);
        assert_eq!(
            r,
            [
                (u32::from(Ipv4Addr::new(192, 168, 2, 0)), 0xffff_ff00),
                (u32::from(Ipv4Addr::new(10, 254, 0, 0)), 0xffff_0000)
            ]
        );
    }

    #[test]
    fn the_link_avoids_every_overlapping_route() {
        let l = LinkNet::nth(3);
        assert_eq!(l.host, Ipv4Addr::new(10, 254, 0, 13));
        assert_eq!(l.guest, Ipv4Addr::new(10, 254, 0, 14));
        assert_eq!(choose_link(&[], 3), Some(l));
        // A /30 in use is skipped; so is one inside a wider route.
        let used = [(u32::from(Ipv4Addr::new(10, 254, 0, 12)), mask(30))];
        assert_eq!(
            choose_link(&used, 3).unwrap().host,
            Ipv4Addr::new(10, 254, 0, 17)
        );
        let wide = [(u32::from(Ipv4Addr::new(10, 254, 0, 0)), mask(24))];
        assert_eq!(
            choose_link(&wide, 0).unwrap().host,
            Ipv4Addr::new(10, 254, 1, 1)
        );
        // A route covering the whole pool leaves nothing; the index wraps around the pool.
        assert_eq!(choose_link(&parse_routes(ROUTES), 7), None);
        assert_eq!(LinkNet::nth(pool_size() + 1), LinkNet::nth(1));
    }

    #[test]
    fn resolvers_the_guest_can_reach() {
        let conf = "# x\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\nnameserver 2001:db8::1\nsearch a\n";
        assert_eq!(resolvers(conf), [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]);
    }

    #[test]
    fn names_follow_the_kernels_rules() {
        assert!(valid_name("tap0") && valid_name("hyperpod-15byte"));
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-bytes-xx"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn guest_gets_the_far_side_and_the_host_as_gateway() {
        let l = LinkNet::nth(0);
        let g = guest_config(&l, vec![]);
        let v4 = g.ipv4.unwrap();
        assert_eq!(v4.address, IpAddr::V4(Ipv4Addr::new(10, 254, 0, 2)));
        assert_eq!(v4.gateway, IpAddr::V4(Ipv4Addr::new(10, 254, 0, 1)));
        assert_eq!((v4.prefix, g.mtu), (30, 1500));
        assert!(g.ipv6.is_none());
    }
}
