//! The stdio console: a single-port virtio console (device ID 3, `VIRTIO_F_VERSION_1` only: no
//! `MULTIPORT`, `SIZE` or `EMERG_WRITE`), which Linux names `/dev/hvc0`. Queue 0 (receiveq)
//! carries host → guest bytes ([`VirtioConsole::push_rx`]), queue 1 (transmitq) guest → host
//! bytes (to the owner's [`ConsoleSink`]). Chains are checked by
//! [`console_chain::parse_chain`] before any data moves; host memory stays bounded whatever the
//! guest does (one 64 KiB bounce buffer; bytes the guest has no buffers for stay with the owner).

use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::console_chain::{self, Chain, ChainError, Direction, RawDesc};
use super::virtio_mmio::{F_VERSION_1, VirtioDevice, VirtioMmio, VirtioMmioError};

/// virtio device ID of a console.
pub const DEVICE_ID_CONSOLE: u32 = 3;
/// Largest queue the console offers (both queues).
pub const QUEUE_MAX: u16 = console_chain::MAX_DESCRIPTORS;
/// The receiveq (host → guest).
pub const RX_QUEUE: usize = 0;
/// The transmitq (guest → host).
pub const TX_QUEUE: usize = 1;
/// Guest → host data moves through a bounce buffer of this many bytes: the sink sees the
/// stream in pieces of at most this size.
pub const BOUNCE_MAX: usize = 64 << 10;

/// Where the guest's transmitted bytes go: called with consecutive pieces of the byte stream
/// (piece boundaries mean nothing), on the vCPU thread that kicked the queue. A sink that blocks
/// blocks that vCPU.
pub type ConsoleSink = Box<dyn FnMut(&[u8]) + Send>;

/// Why the console could not be set up.
#[derive(Debug, Error)]
pub enum VirtioConsoleError {
    #[error(transparent)]
    Transport(#[from] VirtioMmioError),
    #[error("cannot create the receive-ready eventfd")]
    EventFd(#[source] std::io::Error),
}

/// The virtio-mmio console device.
pub struct VirtioConsole(VirtioMmio<Console>);

/// The console behind the transport.
struct Console {
    sink: ConsoleSink,
    rx_ready: EventFd,
    /// Guest RAM as `(start, length)` ranges, for the chain checks.
    ram: Vec<(u64, u64)>,
    bounce: Vec<u8>,
    /// Chains refused since the device was created (for tests and diagnostics).
    refused: u64,
}

/// Reads descriptor `i` of the table at `table` (the virtio-net device reads its chains with it
/// too).
pub(crate) fn read_desc(mem: &GuestMemoryMmap, table: u64, i: u16) -> Option<RawDesc> {
    let mut b = [0u8; 16];
    let at = table.checked_add(u64::from(i) * 16)?;
    mem.read_slice(&mut b, GuestAddress(at)).ok()?;
    Some(RawDesc::from_bytes(&b))
}

/// Parses the chain at `head` of `queue` for direction `dir`.
fn parse(
    mem: &GuestMemoryMmap,
    queue: &Queue,
    ram: &[(u64, u64)],
    head: u16,
    dir: Direction,
) -> Result<Chain, ChainError> {
    let table = queue.desc_table();
    console_chain::parse_chain(head, queue.size(), dir, ram, |i| read_desc(mem, table, i))
}

impl VirtioConsole {
    /// A console whose guest → host bytes go to `sink`, reaching guest memory `mem`.
    pub fn new(
        sink: ConsoleSink,
        mem: GuestMemoryMmap,
    ) -> Result<VirtioConsole, VirtioConsoleError> {
        let ram = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        let console = Console {
            sink,
            rx_ready: EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioConsoleError::EventFd)?,
            ram,
            bounce: vec![0; BOUNCE_MAX],
            refused: 0,
        };
        Ok(VirtioConsole(VirtioMmio::new(console, mem)?))
    }

    /// The eventfd to register as this device's irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        self.0.irq_evt()
    }

    /// Signalled (counter incremented) whenever the guest may have posted new receive buffers:
    /// on each receiveq kick and when the driver sets `DRIVER_OK`. A thread holding bytes that
    /// [`push_rx`](Self::push_rx) did not take waits for it (poll for `POLLIN`, then `read` to
    /// clear) and retries. `try_clone` it to wait without the device lock.
    pub fn rx_ready_evt(&self) -> &EventFd {
        &self.0.device().rx_ready
    }

    /// Chains refused (malformed) since the device was created.
    pub fn refused_chains(&self) -> u64 {
        self.0.device().refused
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }

    /// A guest write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data);
    }

    /// Hands `data` to the guest: fills the receive buffers it has posted, in order, marks them
    /// used with the bytes written, raises the interrupt; returns how many bytes of `data` were
    /// taken (0 before `DRIVER_OK`, or when no buffers are posted). A malformed buffer is
    /// returned empty and takes nothing.
    pub fn push_rx(&mut self, data: &[u8]) -> usize {
        if data.is_empty() {
            return 0;
        }
        let Some((dev, queue, mem)) = self.0.live_queue(RX_QUEUE) else {
            return 0;
        };
        let mut taken = 0;
        let mut used = false;
        // At most one pass over the ring per call, however fast the guest refills it.
        for _ in 0..queue.size() {
            if taken == data.len() {
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match parse(mem, queue, &dev.ram, head, Direction::Receive) {
                Ok(c) => fill(mem, &c, &data[taken..]),
                Err(_) => {
                    dev.refused += 1;
                    0
                }
            };
            taken += written;
            // A head outside the queue cannot be returned; the guest loses that entry.
            if queue.add_used(mem, head, written as u32).is_ok() {
                used = true;
            }
        }
        if used {
            self.0.raise_interrupt();
        }
        taken
    }
}

/// Writes the start of `data` into the chain's buffers; returns the bytes written.
fn fill(mem: &GuestMemoryMmap, chain: &Chain, data: &[u8]) -> usize {
    let mut done = 0;
    for b in &chain.bufs {
        let n = (data.len() - done).min(b.len as usize);
        if n == 0
            || mem
                .write_slice(&data[done..done + n], GuestAddress(b.addr))
                .is_err()
        {
            break;
        }
        done += n;
    }
    done
}

impl Console {
    /// Sends one chain's bytes to the sink, a bounce buffer at a time.
    fn transmit(&mut self, mem: &GuestMemoryMmap, chain: &Chain) {
        for b in &chain.bufs {
            let mut off = 0u64;
            while off < u64::from(b.len) {
                let n = (u64::from(b.len) - off).min(BOUNCE_MAX as u64) as usize;
                let piece = &mut self.bounce[..n];
                if mem.read_slice(piece, GuestAddress(b.addr + off)).is_err() {
                    return;
                }
                (self.sink)(piece);
                off += n as u64;
            }
        }
    }
}

impl VirtioDevice for Console {
    fn device_id(&self) -> u32 {
        DEVICE_ID_CONSOLE
    }

    fn features(&self) -> u64 {
        F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX, QUEUE_MAX]
    }

    /// `struct virtio_console_config`: 0 columns, 0 rows, 1 port, no emergency write (the
    /// driver reads none of it without the features).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
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
            // New receive buffers: the owner's pending bytes may now fit.
            let _ = self.rx_ready.write(1);
            return false;
        }
        let mut used = false;
        // At most one pass over the ring per kick; chains added meanwhile come with a kick.
        for _ in 0..queue.size() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match parse(mem, queue, &self.ram, head, Direction::Transmit) {
                Ok(c) => self.transmit(mem, &c),
                Err(_) => self.refused += 1,
            }
            if queue.add_used(mem, head, 0).is_ok() {
                used = true;
            }
        }
        used
    }

    fn activate(&mut self) {
        let _ = self.rx_ready.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console_chain::{F_NEXT, F_WRITE};
    use crate::devices::virtio_mmio::tests::{bring_up, r, w};
    use crate::devices::virtio_mmio::{INT_USED_RING, reg};
    use std::sync::{Arc, Mutex};

    const RXQ: u64 = 0x1_0000;
    const TXQ: u64 = 0x2_0000;
    const SIZE: u16 = 8;

    /// A console over 1 MiB of guest memory whose sink records every piece.
    fn console() -> (VirtioConsole, GuestMemoryMmap, Arc<Mutex<Vec<Vec<u8>>>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let sink: ConsoleSink = Box::new(move |b| g.lock().unwrap().push(b.to_vec()));
        (VirtioConsole::new(sink, mem.clone()).unwrap(), mem, got)
    }

    fn live(dev: &mut VirtioConsole) {
        bring_up(&mut dev.0, u32::from(SIZE), &[(0, RXQ), (1, TXQ)]);
    }

    /// A guest driver's view of one queue at `base`.
    struct Driver {
        base: u64,
        avail: u16,
        used: u16,
    }

    impl Driver {
        fn new(base: u64) -> Driver {
            Driver {
                base,
                avail: 0,
                used: 0,
            }
        }

        fn desc(&self, mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let at = self.base + 16 * u64::from(i);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }

        /// Offers the chains starting at `heads`.
        fn offer(&mut self, mem: &GuestMemoryMmap, heads: &[u16]) {
            for &h in heads {
                let slot = 4 + 2 * u64::from(self.avail % SIZE);
                mem.write_obj(h, GuestAddress(self.base + 0x1000 + slot))
                    .unwrap();
                self.avail = self.avail.wrapping_add(1);
            }
            mem.write_obj(self.avail, GuestAddress(self.base + 0x1002))
                .unwrap();
        }

        /// The used elements added since the last call, as (head, length).
        fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
            let idx: u16 = mem.read_obj(GuestAddress(self.base + 0x2002)).unwrap();
            let mut v = Vec::new();
            while self.used != idx {
                let at = self.base + 0x2004 + 8 * u64::from(self.used % SIZE);
                let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
                v.push((id, len));
                self.used = self.used.wrapping_add(1);
            }
            v
        }
    }

    #[test]
    fn identifies_as_a_single_port_console() {
        let (mut dev, _mem, _got) = console();
        assert_eq!(r(&mut dev.0, reg::DEVICE_ID), 3);
        assert_eq!(
            r(&mut dev.0, reg::DEVICE_FEATURES),
            0,
            "no MULTIPORT/SIZE/EMERG_WRITE"
        );
        w(&mut dev.0, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut dev.0, reg::DEVICE_FEATURES), 1, "VERSION_1");
        for q in 0..2 {
            w(&mut dev.0, reg::QUEUE_SEL, q);
            assert_eq!(r(&mut dev.0, reg::QUEUE_NUM_MAX), u32::from(QUEUE_MAX));
        }
        w(&mut dev.0, reg::QUEUE_SEL, 2);
        assert_eq!(r(&mut dev.0, reg::QUEUE_NUM_MAX), 0);
        assert_eq!(r(&mut dev.0, 0x104), 1, "max_nr_ports");
        assert_eq!(r(&mut dev.0, 0x100), 0, "cols, rows");
    }

    #[test]
    fn transmitted_chains_reach_the_sink_in_bounded_pieces() {
        let (mut dev, mem, got) = console();
        live(&mut dev);
        let mut tx = Driver::new(TXQ);
        mem.write_slice(b"hello, ", GuestAddress(0x4_0000)).unwrap();
        mem.write_slice(b"world\n", GuestAddress(0x5_0000)).unwrap();
        tx.desc(&mem, 0, 0x4_0000, 7, F_NEXT, 5);
        tx.desc(&mem, 5, 0x5_0000, 6, 0, 0);
        // A chain of 2.5 bounce buffers.
        let big: Vec<u8> = (0..BOUNCE_MAX * 5 / 2).map(|i| (i % 241) as u8).collect();
        mem.write_slice(&big, GuestAddress(0x6_0000)).unwrap();
        tx.desc(&mem, 1, 0x6_0000, big.len() as u32, 0, 0);
        tx.offer(&mem, &[0, 1]);
        w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
        assert_eq!(tx.take_used(&mem), vec![(0, 0), (1, 0)]);
        assert_eq!(r(&mut dev.0, reg::INTERRUPT_STATUS), INT_USED_RING);
        assert_eq!(dev.irq_evt().read().unwrap(), 1);
        let pieces = got.lock().unwrap().clone();
        assert!(pieces.iter().all(|p| p.len() <= BOUNCE_MAX));
        let all: Vec<u8> = pieces.concat();
        assert_eq!(&all[..13], b"hello, world\n");
        assert_eq!(&all[13..], &big[..]);
        assert_eq!(dev.refused_chains(), 0);
    }

    #[test]
    fn push_rx_fills_posted_buffers_and_takes_only_what_fits() {
        let (mut dev, mem, _got) = console();
        assert_eq!(dev.push_rx(b"early"), 0, "before DRIVER_OK");
        assert!(dev.rx_ready_evt().read().is_err(), "nothing signalled yet");
        live(&mut dev);
        assert_eq!(dev.rx_ready_evt().read().unwrap(), 1, "DRIVER_OK signals");
        assert_eq!(dev.push_rx(b"none posted"), 0);
        assert!(
            dev.irq_evt().read().is_err(),
            "no interrupt without used buffers"
        );

        let mut rx = Driver::new(RXQ);
        rx.desc(&mem, 0, 0x4_0000, 4, F_WRITE, 0);
        rx.desc(&mem, 1, 0x4_1000, 2, F_WRITE | F_NEXT, 2);
        rx.desc(&mem, 2, 0x4_2000, 3, F_WRITE, 0);
        rx.offer(&mem, &[0, 1]);
        w(&mut dev.0, reg::QUEUE_NOTIFY, RX_QUEUE as u32);
        assert_eq!(
            dev.rx_ready_evt().read().unwrap(),
            1,
            "receiveq kick signals"
        );
        assert_eq!(dev.push_rx(b"abcdefghijkl"), 9);
        assert_eq!(rx.take_used(&mem), vec![(0, 4), (1, 5)]);
        assert_eq!(dev.irq_evt().read().unwrap(), 1);
        let mut b = [0u8; 4];
        mem.read_slice(&mut b, GuestAddress(0x4_0000)).unwrap();
        assert_eq!(&b, b"abcd");
        mem.read_slice(&mut b[..2], GuestAddress(0x4_1000)).unwrap();
        assert_eq!(&b[..2], b"ef");
        mem.read_slice(&mut b[..3], GuestAddress(0x4_2000)).unwrap();
        assert_eq!(&b[..3], b"ghi");
        // The queue is empty until the guest refills it: nothing more is taken, ever.
        for _ in 0..1000 {
            assert_eq!(dev.push_rx(b"jkl"), 0);
        }
        // A buffer longer than the data: used length is what was written.
        rx.offer(&mem, &[0]);
        assert_eq!(dev.push_rx(b"jk"), 2);
        assert_eq!(rx.take_used(&mem), vec![(0, 2)]);
    }

    #[test]
    fn malformed_chains_move_no_data_and_come_back_empty() {
        let (mut dev, mem, got) = console();
        live(&mut dev);
        // receiveq: a readable buffer, an empty one, one outside RAM, a loop, then a good one.
        let mut rx = Driver::new(RXQ);
        rx.desc(&mem, 0, 0x4_0000, 8, 0, 0);
        rx.desc(&mem, 1, 0x4_0000, 0, F_WRITE, 0);
        rx.desc(&mem, 2, 0xfff_0000, 8, F_WRITE, 0);
        rx.desc(&mem, 3, 0x4_0000, 8, F_WRITE | F_NEXT, 3);
        rx.desc(&mem, 4, 0x4_1000, 8, F_WRITE, 0);
        rx.offer(&mem, &[0, 1, 2, 3, 4]);
        assert_eq!(dev.push_rx(b"data"), 4);
        assert_eq!(
            rx.take_used(&mem),
            vec![(0, 0), (1, 0), (2, 0), (3, 0), (4, 4)]
        );
        assert_eq!(dev.refused_chains(), 4);
        let mut b = [0u8; 8];
        mem.read_slice(&mut b, GuestAddress(0x4_0000)).unwrap();
        assert_eq!(b, [0; 8], "the refused buffers were not written");

        // transmitq: a writable buffer, an overflowing address, an indirect one, a head outside
        // the queue (never returned), then a good one.
        let mut tx = Driver::new(TXQ);
        tx.desc(&mem, 0, 0x4_1000, 4, F_WRITE, 0);
        tx.desc(&mem, 1, u64::MAX - 2, 4, 0, 0);
        tx.desc(&mem, 2, 0x4_1000, 16, console_chain::F_INDIRECT, 0);
        tx.desc(&mem, 3, 0x4_1000, 4, 0, 0);
        tx.offer(&mem, &[0, 1, 2, 999, 3]);
        w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
        assert_eq!(tx.take_used(&mem), vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
        assert_eq!(got.lock().unwrap().concat(), b"data");
        assert_eq!(dev.refused_chains(), 8);

        // An available index far ahead of the ring is refused as a whole.
        mem.write_obj(tx.avail.wrapping_add(100), GuestAddress(TXQ + 0x1002))
            .unwrap();
        w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
        assert!(tx.take_used(&mem).is_empty());
    }

    #[test]
    fn a_receive_index_past_the_queue_size_serves_nothing_until_put_right() {
        let (mut dev, mem, _got) = console();
        live(&mut dev);
        let mut rx = Driver::new(RXQ);
        rx.desc(&mem, 0, 0x4_0000, 1, F_WRITE, 0);
        rx.desc(&mem, 1, 0x4_1000, 8, F_WRITE, 0);
        rx.offer(&mem, &[0, 1]);
        // The index jumps more than the queue size past what the device has taken.
        mem.write_obj(rx.avail.wrapping_add(SIZE + 1), GuestAddress(RXQ + 0x1002))
            .unwrap();
        for _ in 0..100 {
            assert_eq!(dev.push_rx(b"abc"), 0);
        }
        assert!(rx.take_used(&mem).is_empty());
        assert!(dev.irq_evt().read().is_err(), "no interrupt");
        // Put right: the same buffers take the same bytes, once.
        mem.write_obj(rx.avail, GuestAddress(RXQ + 0x1002)).unwrap();
        assert_eq!(dev.push_rx(b"abc"), 3);
        assert_eq!(rx.take_used(&mem), vec![(0, 1), (1, 2)]);
        let mut b = [0u8; 3];
        mem.read_slice(&mut b[..1], GuestAddress(0x4_0000)).unwrap();
        mem.read_slice(&mut b[1..], GuestAddress(0x4_1000)).unwrap();
        assert_eq!(&b, b"abc");
        assert_eq!(dev.refused_chains(), 0);
    }

    #[test]
    fn reset_stops_both_directions_until_set_up_again() {
        let (mut dev, mem, got) = console();
        live(&mut dev);
        w(&mut dev.0, reg::STATUS, 0);
        let mut rx = Driver::new(RXQ);
        rx.desc(&mem, 0, 0x4_0000, 8, F_WRITE, 0);
        rx.offer(&mem, &[0]);
        assert_eq!(dev.push_rx(b"x"), 0);
        let mut tx = Driver::new(TXQ);
        tx.desc(&mem, 0, 0x4_0000, 8, 0, 0);
        tx.offer(&mem, &[0]);
        w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
        assert!(got.lock().unwrap().is_empty());
        // Set up again with the rings as the driver left them (indexes restart at 0).
        for base in [RXQ, TXQ] {
            mem.write_slice(&[0u8; 0x3000], GuestAddress(base + 0x1000))
                .unwrap();
        }
        let (mut rx, mut tx) = (Driver::new(RXQ), Driver::new(TXQ));
        live(&mut dev);
        rx.offer(&mem, &[0]);
        assert_eq!(dev.push_rx(b"x"), 1);
        tx.offer(&mem, &[0]);
        w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
        assert_eq!(got.lock().unwrap().concat(), b"x\0\0\0\0\0\0\0");
    }
}
