//! Published ports over the TAP backend, forwarded in userspace by the launcher (as
//! `docker-proxy` does): one thread, one `poll` loop over the host sockets the launcher bound
//! when it checked the ports ([`super::reserve`]), the accepted TCP connections and their
//! connections to the guest, and one connected UDP socket per UDP client. A port published
//! without an address has two host sockets, 0.0.0.0 and `[::]` (IPv6 alone), as with Docker;
//! either family's clients reach the guest over IPv4 (the TAP link's only family), and a UDP
//! reply goes back from the socket the client wrote to.
//!
//! Nothing is left behind: the listeners and connections are the launcher's descriptors and go
//! with its process. Memory is bounded: [`MAX_TCP`] connections of two [`BUF`]-byte buffers,
//! [`MAX_UDP_PEERS`] UDP clients (idle ones dropped after [`UDP_IDLE`]); a connection over the
//! cap is closed at once, a datagram from a client over the cap dropped.
//!
//! The loop does not allocate: every buffer and list is allocated at its full size before it
//! starts (the connections' buffers as one zeroed mapping, whose pages become resident only as
//! they are used). Under the KVM engine's seccomp filter this matters: glibc, returning memory
//! of a thread's arena, opens `/proc/sys/vm/overcommit_memory` the first time, which the
//! filter forbids (found by `kvm_the_tap_port_forwarder_runs_under_its_seccomp_filter`).
//!
//! System calls once running (the KVM engine's `forward` seccomp list): `poll`, `accept4`,
//! `socket`, `connect`, `getsockopt` (a connection's result), `recvfrom`, `sendto`,
//! `shutdown`, `close`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, Shutdown, SocketAddrAny, SocketFlags, SocketType,
};

use crate::publish::Proto;

/// Bytes buffered per direction of a TCP connection.
pub const BUF: usize = 32 << 10;
/// TCP connections forwarded at once.
pub const MAX_TCP: usize = 256;
/// UDP clients tracked at once.
pub const MAX_UDP_PEERS: usize = 256;
/// A UDP client with no datagram either way for this long is forgotten.
pub const UDP_IDLE: Duration = Duration::from_secs(60);
/// How often the loop looks at the stop flag when nothing happens.
const POLL_MS: libc::c_int = 100;
/// The largest UDP datagram.
const DATAGRAM: usize = 65536;

/// One published port: the host socket (a listening TCP socket, or a bound UDP socket) and the
/// guest's side.
struct Port {
    fd: OwnedFd,
    proto: Proto,
    guest: SocketAddrV4,
}

/// One direction of a TCP connection; its buffer is `BUF` bytes of the slab at `at`.
struct Pipe {
    at: usize,
    start: usize,
    end: usize,
    /// The source has ended.
    eof: bool,
    /// The end has been passed on (`shutdown(SHUT_WR)` of the destination).
    shut: bool,
}

impl Pipe {
    fn new(at: usize) -> Pipe {
        Pipe {
            at,
            start: 0,
            end: 0,
            eof: false,
            shut: false,
        }
    }

    fn wants_read(&self) -> bool {
        !self.eof && self.end < BUF
    }

    fn wants_write(&self) -> bool {
        self.start < self.end
    }

    /// Reads from `src`; false on an error (the connection ends).
    fn read(&mut self, src: &OwnedFd, slab: &mut [u8]) -> bool {
        let buf = &mut slab[self.at..self.at + BUF];
        if !self.wants_read() {
            return true;
        }
        match rustix::net::recv(src, &mut buf[self.end..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => self.eof = true,
            Ok((n, _)) => self.end += n,
            Err(Errno::AGAIN | Errno::INTR) => {}
            Err(_) => return false,
        }
        true
    }

    /// Writes to `dst`, then passes the end on once all is written; false on an error.
    fn write(&mut self, dst: &OwnedFd, slab: &[u8]) -> bool {
        let buf = &slab[self.at..self.at + BUF];
        if self.wants_write() {
            let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
            match rustix::net::send(dst, &buf[self.start..self.end], flags) {
                Ok(n) => self.start += n,
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(_) => return false,
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            }
        }
        if self.eof && !self.wants_write() && !self.shut {
            self.shut = true;
            let _ = rustix::net::shutdown(dst, Shutdown::Write);
        }
        true
    }
}

/// A forwarded TCP connection.
struct Conn {
    client: OwnedFd,
    guest: OwnedFd,
    /// The connection to the guest is not established yet.
    connecting: bool,
    /// client → guest.
    up: Pipe,
    /// guest → client.
    down: Pipe,
}

/// A UDP client of a published port: its address and the socket connected to the guest.
struct Peer {
    port: usize,
    client: SocketAddrAny,
    sock: OwnedFd,
    last: Instant,
}

/// What a `pollfd` stands for.
#[derive(Clone, Copy)]
enum Slot {
    Port(usize),
    Client(usize),
    Guest(usize),
    Peer(usize),
}

/// The forwarder of one launch, with all the memory its loop uses.
pub struct Forwarder {
    ports: Vec<Port>,
    conns: Vec<Conn>,
    peers: Vec<Peer>,
    /// The connections' buffers, `BUF` bytes each.
    slab: Box<[u8]>,
    /// Offsets in `slab` of the buffers not in use.
    free: Vec<usize>,
    datagram: Box<[u8]>,
    fds: Vec<libc::pollfd>,
    slots: Vec<Slot>,
    dead: Vec<bool>,
}

impl Forwarder {
    /// Forwards each `(host socket, proto, guest port)` to `guest_ip`. The sockets are the
    /// reservation's (TCP ones listening); they are made non-blocking here.
    pub fn new(
        sockets: Vec<(OwnedFd, Proto, u16)>,
        guest_ip: Ipv4Addr,
    ) -> std::io::Result<Forwarder> {
        let mut ports = Vec::new();
        for (fd, proto, guest_port) in sockets {
            rustix::io::ioctl_fionbio(&fd, true)?;
            ports.push(Port {
                fd,
                proto,
                guest: SocketAddrV4::new(guest_ip, guest_port),
            });
        }
        let polled = ports.len() + 2 * MAX_TCP + MAX_UDP_PEERS;
        Ok(Forwarder {
            ports,
            conns: Vec::with_capacity(MAX_TCP),
            peers: Vec::with_capacity(MAX_UDP_PEERS),
            slab: vec![0; 2 * MAX_TCP * BUF].into_boxed_slice(),
            free: (0..2 * MAX_TCP).rev().map(|i| i * BUF).collect(),
            datagram: vec![0; DATAGRAM].into_boxed_slice(),
            fds: Vec::with_capacity(polled),
            slots: Vec::with_capacity(polled),
            dead: Vec::with_capacity(MAX_TCP),
        })
    }

    /// Forwards until `stop` is set (checked at least every 100 ms). Allocates nothing.
    pub fn run(self, stop: &AtomicBool) {
        let Forwarder {
            ports,
            mut conns,
            mut peers,
            mut slab,
            mut free,
            mut datagram,
            mut fds,
            mut slots,
            mut dead,
        } = self;
        while !stop.load(Ordering::SeqCst) {
            fds.clear();
            slots.clear();
            let mut add = |fd: &OwnedFd, events: libc::c_short, slot: Slot| {
                fds.push(libc::pollfd {
                    // Nothing wanted: skipped (a hung-up socket would report POLLHUP on every
                    // call).
                    fd: if events == 0 { -1 } else { fd.as_raw_fd() },
                    events,
                    revents: 0,
                });
                slots.push(slot);
            };
            for (i, p) in ports.iter().enumerate() {
                add(&p.fd, libc::POLLIN, Slot::Port(i));
            }
            for (i, c) in conns.iter().enumerate() {
                let ev = |read: bool, write: bool| {
                    (if read { libc::POLLIN } else { 0 }) | if write { libc::POLLOUT } else { 0 }
                };
                add(
                    &c.client,
                    ev(c.up.wants_read(), c.down.wants_write()),
                    Slot::Client(i),
                );
                let guest_out = c.connecting || c.up.wants_write();
                let guest_in = !c.connecting && c.down.wants_read();
                add(&c.guest, ev(guest_in, guest_out), Slot::Guest(i));
            }
            for (i, p) in peers.iter().enumerate() {
                add(&p.sock, libc::POLLIN, Slot::Peer(i));
            }
            // SAFETY: `fds` is a valid array of `fds.len()` pollfds for the duration of the
            // call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
            dead.clear();
            dead.resize(conns.len(), false);
            if n > 0 {
                for (pfd, slot) in fds.iter().zip(&slots) {
                    if pfd.revents == 0 {
                        continue;
                    }
                    let (out, other) = (
                        pfd.revents & libc::POLLOUT != 0,
                        pfd.revents & !libc::POLLOUT != 0,
                    );
                    match *slot {
                        Slot::Port(i) => match ports[i].proto {
                            Proto::Tcp => accept(&ports[i], &mut conns, &mut free),
                            Proto::Udp => from_client(&ports, i, &mut peers, &mut datagram),
                        },
                        Slot::Client(i) => {
                            let c = &mut conns[i];
                            let ok = (!out || c.down.write(&c.client, &slab))
                                && (!other || c.up.read(&c.client, &mut slab));
                            dead[i] |= !ok;
                        }
                        Slot::Guest(i) => {
                            let c = &mut conns[i];
                            if c.connecting {
                                match rustix::net::sockopt::socket_error(&c.guest) {
                                    Ok(Ok(())) => c.connecting = false,
                                    _ => dead[i] = true,
                                }
                                continue;
                            }
                            let ok = (!out || c.up.write(&c.guest, &slab))
                                && (!other || c.down.read(&c.guest, &mut slab));
                            dead[i] |= !ok;
                        }
                        Slot::Peer(i) => to_client(&ports, &mut peers[i], &mut datagram),
                    }
                }
            }
            // Connections accepted this round (pushed after the polled ones).
            dead.resize(conns.len(), false);
            // Data read this round goes out at once where the other side can take it.
            for (i, c) in conns.iter_mut().enumerate() {
                if !c.connecting && !dead[i] {
                    dead[i] = !c.up.write(&c.guest, &slab) || !c.down.write(&c.client, &slab);
                }
                if c.up.shut && c.down.shut {
                    dead[i] = true;
                }
            }
            let mut i = 0;
            conns.retain(|c| {
                i += 1;
                if dead[i - 1] {
                    free.push(c.up.at);
                    free.push(c.down.at);
                }
                !dead[i - 1]
            });
            let now = Instant::now();
            peers.retain(|p| now.duration_since(p.last) < UDP_IDLE);
        }
    }
}

/// Accepts one connection on `port` and starts connecting to the guest, with two buffers from
/// `free`.
fn accept(port: &Port, conns: &mut Vec<Conn>, free: &mut Vec<usize>) {
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let Ok(client) = rustix::net::accept_with(&port.fd, flags) else {
        return;
    };
    if conns.len() >= MAX_TCP || free.len() < 2 {
        return;
    }
    let Ok(guest) = rustix::net::socket_with(AddressFamily::INET, SocketType::STREAM, flags, None)
    else {
        return;
    };
    let connecting = match rustix::net::connect(&guest, &port.guest) {
        Ok(()) => false,
        Err(Errno::INPROGRESS | Errno::INTR) => true,
        Err(_) => return,
    };
    let (Some(up), Some(down)) = (free.pop(), free.pop()) else {
        return;
    };
    conns.push(Conn {
        client,
        guest,
        connecting,
        up: Pipe::new(up),
        down: Pipe::new(down),
    });
}

/// A datagram from a client of UDP port `i`: to the guest through the client's own socket.
fn from_client(ports: &[Port], i: usize, peers: &mut Vec<Peer>, buf: &mut [u8]) {
    let port = &ports[i];
    let Ok((n, _, Some(client))) = rustix::net::recvfrom(&port.fd, &mut *buf, RecvFlags::DONTWAIT)
    else {
        return;
    };
    let at = match peers.iter().position(|p| p.port == i && p.client == client) {
        Some(at) => at,
        None => {
            if peers.len() >= MAX_UDP_PEERS {
                return;
            }
            let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
            let Ok(sock) =
                rustix::net::socket_with(AddressFamily::INET, SocketType::DGRAM, flags, None)
            else {
                return;
            };
            if rustix::net::connect(&sock, &port.guest).is_err() {
                return;
            }
            peers.push(Peer {
                port: i,
                client,
                sock,
                last: Instant::now(),
            });
            peers.len() - 1
        }
    };
    let p = &mut peers[at];
    p.last = Instant::now();
    let _ = rustix::net::send(&p.sock, &buf[..n], SendFlags::DONTWAIT);
}

/// A datagram from the guest to a client: back from the published port's socket.
fn to_client(ports: &[Port], peer: &mut Peer, buf: &mut [u8]) {
    if let Ok((n, _)) = rustix::net::recv(&peer.sock, &mut *buf, RecvFlags::DONTWAIT) {
        peer.last = Instant::now();
        let port = &ports[peer.port];
        let _ = rustix::net::sendto(
            port.fd.as_fd(),
            &buf[..n],
            SendFlags::DONTWAIT,
            &peer.client,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::sync::Arc;

    use super::*;

    /// A forwarder from a free loopback port to `guest_port` on 127.0.0.1 (the "guest").
    fn forward(proto: Proto, guest_port: u16) -> (u16, Arc<AtomicBool>) {
        forward_from("127.0.0.1:0", proto, guest_port)
    }

    /// A forwarder from a free port on `host` to `guest_port` on 127.0.0.1.
    fn forward_from(host: &str, proto: Proto, guest_port: u16) -> (u16, Arc<AtomicBool>) {
        let (fd, port): (OwnedFd, u16) = match proto {
            Proto::Tcp => {
                let l = TcpListener::bind(host).unwrap();
                let p = l.local_addr().unwrap().port();
                (l.into(), p)
            }
            Proto::Udp => {
                let s = UdpSocket::bind(host).unwrap();
                let p = s.local_addr().unwrap().port();
                (s.into(), p)
            }
        };
        let f = Forwarder::new(vec![(fd, proto, guest_port)], Ipv4Addr::LOCALHOST).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || f.run(&s));
        (port, stop)
    }

    #[test]
    fn tcp_is_forwarded_both_ways_with_half_close() {
        let guest = TcpListener::bind("127.0.0.1:0").unwrap();
        let (port, stop) = forward(Proto::Tcp, guest.local_addr().unwrap().port());
        let server = std::thread::spawn(move || {
            let (mut s, _) = guest.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            // More than a buffer's worth back, after the client's end arrived.
            let reply: Vec<u8> = got.iter().cycle().take(3 * BUF + 7).copied().collect();
            s.write_all(&reply).unwrap();
            got
        });
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&sent).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(server.join().unwrap(), sent);
        assert_eq!(back.len(), 3 * BUF + 7);
        assert_eq!(&back[..1000], &sent[..1000]);
        stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn a_closed_guest_port_closes_the_client() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let guest_port = closed.local_addr().unwrap().port();
        drop(closed);
        let (port, stop) = forward(Proto::Tcp, guest_port);
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        // Refused by the guest: the client sees its connection end, not a hang.
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
        stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn udp_replies_go_back_to_each_client() {
        let guest = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (port, stop) = forward(Proto::Udp, guest.local_addr().unwrap().port());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..2 {
                let (n, from) = guest.recv_from(&mut buf).unwrap();
                let mut reply = b"re:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                guest.send_to(&reply, from).unwrap();
            }
        });
        for name in [&b"one"[..], b"two"] {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.send_to(name, ("127.0.0.1", port)).unwrap();
            let mut buf = [0u8; 64];
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], [b"re:", name].concat());
        }
        stop.store(true, Ordering::SeqCst);
    }

    #[test]
    fn ipv6_clients_reach_the_ipv4_guest_over_tcp_and_udp() {
        if TcpListener::bind("[::1]:0").is_err() {
            hyperpod_tests::skip::skipped(
                "net::forward::tests::ipv6_clients_reach_the_ipv4_guest_over_tcp_and_udp",
                "this host has no IPv6 on lo (cannot bind ::1)",
            );
            return;
        }
        let guest = TcpListener::bind("127.0.0.1:0").unwrap();
        let (port, stop) = forward_from("[::1]:0", Proto::Tcp, guest.local_addr().unwrap().port());
        let server = std::thread::spawn(move || {
            let (mut s, _) = guest.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(b"v4 guest").unwrap();
            got
        });
        let mut c = TcpStream::connect(("::1", port)).unwrap();
        c.write_all(b"from ::1").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(server.join().unwrap(), b"from ::1");
        assert_eq!(back, b"v4 guest");
        stop.store(true, Ordering::SeqCst);

        let guest = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (port, stop) = forward_from("[::1]:0", Proto::Udp, guest.local_addr().unwrap().port());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let (n, from) = guest.recv_from(&mut buf).unwrap();
            guest.send_to(&[b"re:", &buf[..n]].concat(), from).unwrap();
        });
        let c = UdpSocket::bind("[::1]:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"six", ("::1", port)).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"re:six");
        // The reply comes from the published port itself.
        assert_eq!(from.port(), port);
        stop.store(true, Ordering::SeqCst);
    }
}
