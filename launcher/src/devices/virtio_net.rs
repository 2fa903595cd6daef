//! The network device: a virtio-net device (ID 1) behind a virtio-mmio window, offering
//! `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC` and `VIRTIO_NET_F_MTU` (1500) only — no checksum or
//! segmentation offloads, no mergeable receive buffers, one queue pair, no control queue. Queue 0
//! (receiveq) carries host → guest frames, queue 1 (transmitq) guest → host frames. Every chain
//! is checked by [`net_chain`] before a byte moves.
//!
//! The backend ([`NetLink`]) is either a connected UNIX stream socket speaking passt's (and
//! QEMU's `-netdev stream`) protocol ([`net_stream`]: 4-byte big-endian length, frame), or a TAP
//! device's descriptor (opened without `IFF_VNET_HDR` and with `IFF_NO_PI`): one Ethernet frame
//! per `read`/`write`, so the device drops the virtio-net header of transmitted frames and
//! writes a zeroed one before received frames, as for the stream (no offloads are offered).
//! Stream I/O is `send`/`recv`, TAP I/O `write`/`read`. Host memory stays bounded whatever the
//! guest or the backend does:
//! - transmit (on the vCPU thread that kicks, or on the backend thread once the socket drains):
//!   the frame is copied into one bounce buffer and sent without blocking; what the socket does
//!   not take waits in that buffer (one frame at most) and the transmitq is not served until it
//!   is gone, so a stalled backend stalls the guest's transmitq (backpressure), never memory.
//!   A backend that has closed makes transmitted frames count as dropped.
//! - receive ([`serve`] on the backend thread): frames are decoded from the socket one at a
//!   time (a length over [`MAX_FRAME_LEN`] is skipped and counted, nothing allocated from it);
//!   a frame waits (one frame at most) until the guest posts a receive buffer, and meanwhile the
//!   socket is not read (backpressure to the backend, as QEMU does). A frame longer than the
//!   guest's buffer is dropped and counted.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::console_chain::Buf;
use super::net_chain::{self, HDR_LEN, MAX_FRAME_LEN, MTU, NetHeader, RxBuffer, TxFrame};
use super::net_stream::{self, Decoded, FrameDecoder, PREFIX_LEN};
use super::virtio_console::read_desc;
use super::virtio_mmio::{F_VERSION_1, VirtioDevice, VirtioMmio, VirtioMmioError};

/// virtio device ID of a network card.
pub const DEVICE_ID_NET: u32 = 1;
/// Largest queue the device offers (both queues).
pub const QUEUE_MAX: u16 = 256;
/// The receiveq (host → guest).
pub const RX_QUEUE: usize = 0;
/// The transmitq (guest → host).
pub const TX_QUEUE: usize = 1;
/// `VIRTIO_NET_F_MTU`: the configuration's `mtu` is valid.
pub const F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MAC`: the configuration's `mac` is valid.
pub const F_MAC: u64 = 1 << 5;
/// The MAC address the launcher gives the guest unless told otherwise: locally administered,
/// unicast (QEMU's default, which passt learns from the guest's first frame anyway).
pub const DEFAULT_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// Bytes the backend thread reads from the socket at once.
const READ_CHUNK: usize = 64 << 10;
/// How often the backend thread looks at the stop flag when nothing happens.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why the network device could not be set up.
#[derive(Debug, Error)]
pub enum VirtioNetError {
    #[error(transparent)]
    Transport(#[from] VirtioMmioError),
    #[error("cannot create the network wake-up eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot duplicate the network backend socket")]
    Clone(#[source] std::io::Error),
}

/// Where the device's frames go and come from.
#[derive(Debug)]
pub enum NetLink {
    /// A stream socket connected to passt (or anything speaking its protocol).
    Stream(UnixStream),
    /// A TAP device's descriptor (`IFF_TAP | IFF_NO_PI`, non-blocking): one frame per
    /// `read`/`write`.
    Tap(OwnedFd),
}

impl NetLink {
    fn into_fd(self) -> (OwnedFd, bool) {
        match self {
            NetLink::Stream(s) => (s.into(), false),
            NetLink::Tap(fd) => (fd, true),
        }
    }
}

/// The host end of the guest's network and the MAC address to give the guest.
#[derive(Debug)]
pub struct NetBackend {
    pub link: NetLink,
    pub mac: [u8; 6],
}

/// What happened to frames and chains since the device was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames taken from the transmitq and handed to the backend.
    pub tx_frames: u64,
    /// Their bytes (frames only, no prefix).
    pub tx_bytes: u64,
    /// Malformed transmit chains (returned unused).
    pub tx_refused: u64,
    /// Transmitted frames dropped because the backend has closed.
    pub tx_dropped: u64,
    /// Times the backend did not take a whole frame at once (the transmitq waited).
    pub tx_stalls: u64,
    /// Frames written into the guest's receive buffers.
    pub rx_frames: u64,
    /// Their bytes (frames only, no header).
    pub rx_bytes: u64,
    /// Malformed receive chains (returned with length 0).
    pub rx_refused: u64,
    /// Frames from the backend longer than [`MAX_FRAME_LEN`] or shorter than an Ethernet
    /// header, skipped.
    pub rx_bad_length: u64,
    /// Frames longer than the guest's receive buffer, dropped (the buffer returned empty).
    pub rx_no_room: u64,
}

/// What [`VirtioNet::push_rx`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written into a receive buffer.
    Delivered,
    /// No receive buffer posted (or the driver is not up): keep the frame, wait for
    /// [`VirtioNet::io`]'s wake-up, try again.
    NoBuffer,
    /// Dropped: longer than the buffer the guest posted.
    Dropped,
}

/// The virtio-mmio network device.
pub struct VirtioNet(VirtioMmio<Net>);

/// The device behind the transport.
struct Net {
    mac: [u8; 6],
    /// The backend's descriptor: a stream socket, or a TAP device when `tap`.
    socket: OwnedFd,
    tap: bool,
    /// Signalled when the backend thread has work: receive buffers posted (receiveq kick,
    /// `DRIVER_OK`) or a transmitted frame waiting for the socket.
    wake: EventFd,
    /// Guest RAM as `(start, length)` ranges, for the chain checks.
    ram: Vec<(u64, u64)>,
    /// The frame being sent: prefix and frame bytes (at most one frame).
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    out_sent: usize,
    /// The backend closed (or failed): transmitted frames are dropped.
    closed: bool,
    /// The backend thread holds a frame and waits for receive buffers: the next receiveq kick
    /// wakes it (other kicks do not, sparing a wake-up per reposted buffer).
    rx_waiting: bool,
    counters: NetCounters,
}

fn parse_tx(
    mem: &GuestMemoryMmap,
    queue: &Queue,
    ram: &[(u64, u64)],
    head: u16,
) -> Result<TxFrame, net_chain::NetChainError> {
    let table = queue.desc_table();
    net_chain::parse_tx(
        head,
        queue.size(),
        ram,
        |i| read_desc(mem, table, i),
        |addr, buf| mem.read_slice(buf, GuestAddress(addr)).is_ok(),
    )
}

fn parse_rx(
    mem: &GuestMemoryMmap,
    queue: &Queue,
    ram: &[(u64, u64)],
    head: u16,
) -> Result<RxBuffer, net_chain::NetChainError> {
    let table = queue.desc_table();
    net_chain::parse_rx(head, queue.size(), ram, |i| read_desc(mem, table, i))
}

/// `send(2)` without blocking and without SIGPIPE (`write(2)` on a non-blocking TAP device,
/// which takes a whole frame or nothing); `Ok(0)` when the socket is full.
fn send_nonblocking(fd: RawFd, bytes: &[u8], tap: bool) -> std::io::Result<usize> {
    let n = if tap {
        // SAFETY: `bytes` is a valid buffer of `bytes.len()` bytes for the duration of the
        // call.
        unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }
    } else {
        // SAFETY: as above.
        unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        }
    };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(0),
        _ => Err(e),
    }
}

/// `recv(2)` without blocking (`read(2)` of one frame from a non-blocking TAP device):
/// `Ok(None)` when nothing is there, `Ok(Some(0))` at end of stream.
fn recv_nonblocking(fd: RawFd, buf: &mut [u8], tap: bool) -> std::io::Result<Option<usize>> {
    let n = if tap {
        // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for the duration of
        // the call.
        unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
    } else {
        // SAFETY: as above.
        unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) }
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

impl Net {
    /// Sends what is left of the current frame; true when nothing is left.
    fn flush(&mut self) -> bool {
        while self.out_sent < self.out.len() {
            if self.closed {
                self.out_sent = self.out.len();
                break;
            }
            match send_nonblocking(
                self.socket.as_raw_fd(),
                &self.out[self.out_sent..],
                self.tap,
            ) {
                Ok(0) => return false,
                Ok(n) => self.out_sent += n,
                Err(_) => self.closed = true,
            }
        }
        true
    }

    /// Copies the frame into the bounce buffer behind its prefix and starts sending it.
    fn send(&mut self, mem: &GuestMemoryMmap, frame: &TxFrame) {
        if self.closed {
            self.counters.tx_dropped += 1;
            return;
        }
        self.out.clear();
        if !self.tap {
            self.out.extend_from_slice(&net_stream::prefix(frame.len));
        }
        for s in &frame.segments {
            let at = self.out.len();
            self.out.resize(at + s.len as usize, 0);
            if mem
                .read_slice(&mut self.out[at..], GuestAddress(s.addr))
                .is_err()
            {
                // Checked inside RAM by the parser; a failure sends nothing.
                self.out.clear();
                self.out_sent = 0;
                self.counters.tx_refused += 1;
                return;
            }
        }
        self.out_sent = 0;
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += u64::from(frame.len);
        if !self.flush() {
            self.counters.tx_stalls += 1;
        }
        if self.closed {
            self.counters.tx_frames -= 1;
            self.counters.tx_bytes -= u64::from(frame.len);
            self.counters.tx_dropped += 1;
        }
    }

    /// Serves the transmitq: each chain is parsed, its frame sent, the chain returned (length
    /// 0). Stops when the socket holds back part of a frame. Returns whether chains were used.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        // At most one pass over the ring per call; chains added meanwhile come with a kick.
        for _ in 0..queue.size() {
            if !self.flush() {
                // The backend thread waits for the socket, then serves the queue again.
                let _ = self.wake.write(1);
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match parse_tx(mem, queue, &self.ram, head) {
                Ok(f) => self.send(mem, &f),
                Err(_) => self.counters.tx_refused += 1,
            }
            // A head outside the queue cannot be returned; the guest loses that entry.
            if queue.add_used(mem, head, 0).is_ok() {
                used = true;
            }
        }
        if self.out_sent < self.out.len() {
            let _ = self.wake.write(1);
        }
        used
    }
}

/// Writes the received header and `frame` into the buffer's pieces, in order.
fn scatter(mem: &GuestMemoryMmap, bufs: &[Buf], frame: &[u8]) -> bool {
    let header = NetHeader::received().to_bytes();
    let (mut parts, mut at) = ([&header[..], frame], 0usize);
    for b in bufs {
        let mut room = b.len as usize;
        let mut addr = b.addr;
        while room > 0 && at < parts.len() {
            let n = room.min(parts[at].len());
            if mem
                .write_slice(&parts[at][..n], GuestAddress(addr))
                .is_err()
            {
                return false;
            }
            parts[at] = &parts[at][n..];
            if parts[at].is_empty() {
                at += 1;
            }
            room -= n;
            addr += n as u64;
        }
    }
    at == parts.len()
}

/// The backend thread's handles: the backend's descriptor (a TAP device when `tap`) and the
/// wake-up eventfd, duplicated.
pub struct NetIo {
    pub socket: OwnedFd,
    pub tap: bool,
    pub wake: EventFd,
}

impl VirtioNet {
    /// A network device whose frames go to and come from `backend`, reaching guest memory
    /// `mem`.
    pub fn new(backend: NetBackend, mem: GuestMemoryMmap) -> Result<VirtioNet, VirtioNetError> {
        let ram = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        let (socket, tap) = backend.link.into_fd();
        let net = Net {
            mac: backend.mac,
            socket,
            tap,
            wake: EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioNetError::EventFd)?,
            ram,
            out: Vec::with_capacity(PREFIX_LEN + MAX_FRAME_LEN as usize),
            out_sent: 0,
            closed: false,
            rx_waiting: false,
            counters: NetCounters::default(),
        };
        Ok(VirtioNet(VirtioMmio::new(net, mem)?))
    }

    /// The eventfd to register as this device's irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        self.0.irq_evt()
    }

    /// Duplicates the socket and the wake-up eventfd for the backend thread ([`serve`]); call
    /// before that thread's seccomp filter is installed.
    pub fn io(&self) -> Result<NetIo, VirtioNetError> {
        let d = self.0.device();
        Ok(NetIo {
            socket: d.socket.try_clone().map_err(VirtioNetError::Clone)?,
            tap: d.tap,
            wake: d.wake.try_clone().map_err(VirtioNetError::Clone)?,
        })
    }

    pub fn counters(&self) -> NetCounters {
        self.0.device().counters
    }

    /// Whether part of a transmitted frame waits for the socket.
    pub fn tx_waiting(&self) -> bool {
        let d = self.0.device();
        d.out_sent < d.out.len()
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }

    /// A guest write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data);
    }

    /// The socket may take more: finishes the waiting frame and serves the transmitq again.
    pub fn retry_tx(&mut self) {
        match self.0.live_queue(TX_QUEUE) {
            Some((dev, queue, mem)) => {
                if dev.transmit(queue, mem) {
                    self.0.raise_interrupt();
                }
            }
            None => {
                // The driver reset or never set up the queue: the frame still completes, so
                // the stream stays in step.
                self.0.device_mut().flush();
            }
        }
    }

    /// Hands one frame from the backend to the guest: into the next receive buffer, with a
    /// zeroed header (`num_buffers` 1). Malformed buffers on the way are returned empty.
    pub fn push_rx(&mut self, frame: &[u8]) -> RxOutcome {
        let Some((dev, queue, mem)) = self.0.live_queue(RX_QUEUE) else {
            self.0.device_mut().rx_waiting = true;
            return RxOutcome::NoBuffer;
        };
        let mut used = false;
        let mut outcome = RxOutcome::NoBuffer;
        for _ in 0..queue.size() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match parse_rx(mem, queue, &dev.ram, head) {
                Err(_) => {
                    dev.counters.rx_refused += 1;
                    0
                }
                Ok(b) if frame.len() as u64 > b.capacity => {
                    dev.counters.rx_no_room += 1;
                    outcome = RxOutcome::Dropped;
                    0
                }
                Ok(b) => {
                    if scatter(mem, &b.bufs, frame) {
                        dev.counters.rx_frames += 1;
                        dev.counters.rx_bytes += frame.len() as u64;
                        outcome = RxOutcome::Delivered;
                        HDR_LEN + frame.len() as u32
                    } else {
                        dev.counters.rx_refused += 1;
                        0
                    }
                }
            };
            if queue.add_used(mem, head, len).is_ok() {
                used = true;
            }
            if outcome != RxOutcome::NoBuffer {
                break;
            }
        }
        dev.rx_waiting = outcome == RxOutcome::NoBuffer;
        if used {
            self.0.raise_interrupt();
        }
        outcome
    }

    fn count_bad_length(&mut self) {
        self.0.device_mut().counters.rx_bad_length += 1;
    }
}

impl VirtioDevice for Net {
    fn device_id(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_MAC | F_MTU
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX, QUEUE_MAX]
    }

    /// `struct virtio_net_config`: mac, status (0: no `VIRTIO_NET_F_STATUS`), one queue pair,
    /// mtu.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac);
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&MTU.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *b = usize::try_from(at)
                .ok()
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn queue_notify(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        if index == RX_QUEUE {
            // New receive buffers: a waiting frame may now go in.
            if self.rx_waiting {
                let _ = self.wake.write(1);
            }
            return false;
        }
        self.transmit(queue, mem)
    }

    fn activate(&mut self) {
        let _ = self.wake.write(1);
    }
}

/// How the backend thread reaches the device (which lives behind the VM's device lock).
pub trait NetAccess {
    /// Runs `f` on the network device; `None` when there is none.
    fn with_net<R>(&self, f: impl FnOnce(&mut VirtioNet) -> R) -> Option<R>;
}

/// The backend thread: until `stop`, reads frames from the socket into the guest's receive
/// buffers and finishes transmitted frames the socket held back. Returns when `stop` is set
/// (checked at least every 100 ms) or the device is gone. Makes only `poll`, `recvfrom`,
/// `sendto` (a TAP device: `read`, `write`), eventfd `read`/`write` and lock calls.
///
/// A TAP device's frame is read behind room for a stream prefix, which is then filled in, so
/// both links go through the same decoder (and its length checks).
pub fn serve(io: NetIo, stop: &AtomicBool, dev: &impl NetAccess) {
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let (mut pos, mut end) = (0usize, 0usize);
    // A decoded frame waits in the decoder for a receive buffer.
    let mut holding = false;
    let mut eof = false;
    let fd = io.socket.as_raw_fd();
    while !stop.load(Ordering::SeqCst) {
        // Everything read so far, into the guest while it has buffers.
        loop {
            if holding {
                let Some(frame) = decoder.frame() else {
                    holding = false;
                    continue;
                };
                match dev.with_net(|n| n.push_rx(frame)) {
                    None => return,
                    Some(RxOutcome::NoBuffer) => break,
                    Some(_) => holding = false,
                }
            }
            if pos == end {
                break;
            }
            let (used, what) = decoder.feed(&chunk[pos..end]);
            pos += used;
            match what {
                Some(Decoded::Frame) => holding = true,
                Some(Decoded::TooLong(_) | Decoded::TooShort(_))
                    if dev.with_net(VirtioNet::count_bad_length).is_none() =>
                {
                    return;
                }
                _ => {}
            }
        }
        let want_in = !holding && pos == end && !eof;
        let Some(want_out) = dev.with_net(|n| n.tx_waiting()) else {
            return;
        };
        let events =
            if want_in { libc::POLLIN } else { 0 } | if want_out { libc::POLLOUT } else { 0 };
        let mut fds = [
            libc::pollfd {
                // A negative descriptor is skipped: a closed socket would report POLLHUP on
                // every call.
                fd: if events == 0 { -1 } else { fd },
                events,
                revents: 0,
            },
            libc::pollfd {
                fd: io.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = POLL_INTERVAL.as_millis() as libc::c_int;
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n <= 0 {
            continue;
        }
        if fds[1].revents != 0 {
            let _ = io.wake.read();
        }
        if (want_out || fds[1].revents != 0) && dev.with_net(VirtioNet::retry_tx).is_none() {
            return;
        }
        if want_in && fds[0].revents != 0 {
            let into = if io.tap { PREFIX_LEN } else { 0 };
            match recv_nonblocking(fd, &mut chunk[into..], io.tap) {
                Ok(Some(0)) | Err(_) => eof = true,
                Ok(Some(n)) if io.tap => {
                    // n < READ_CHUNK, so it fits the prefix's u32.
                    chunk[..PREFIX_LEN].copy_from_slice(&net_stream::prefix(n as u32));
                    (pos, end) = (0, PREFIX_LEN + n);
                }
                Ok(Some(n)) => (pos, end) = (0, n),
                Ok(None) => {}
            }
        }
    }
}

#[cfg(test)]
#[path = "virtio_net/tests.rs"]
mod tests;
