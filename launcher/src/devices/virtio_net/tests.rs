//! The network device over a socketpair: the test is the guest driver (rings in guest memory)
//! and the backend (the socket's other end).

use super::*;
use crate::devices::console_chain::{F_NEXT, F_WRITE};
use crate::devices::virtio_mmio::tests::{bring_up, r, w};
use crate::devices::virtio_mmio::{INT_USED_RING, reg};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

const RXQ: u64 = 0x1_0000;
const TXQ: u64 = 0x2_0000;
const SIZE: u16 = 16;

/// A device over 1 MiB of guest memory and the backend's end of its socket.
fn net() -> (VirtioNet, GuestMemoryMmap, UnixStream) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = NetBackend {
        link: NetLink::Stream(ours),
        mac: DEFAULT_MAC,
    };
    (VirtioNet::new(backend, mem.clone()).unwrap(), mem, theirs)
}

fn live(dev: &mut VirtioNet) {
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

/// A frame of `len` bytes: a broadcast Ethernet header, then a pattern from `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&DEFAULT_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend((14..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f.truncate(len);
    f
}

/// Puts header + frame at `at` in guest memory as one transmit buffer in descriptor `i`.
fn put_tx(mem: &GuestMemoryMmap, tx: &Driver, i: u16, at: u64, f: &[u8]) {
    mem.write_slice(&[0u8; 12], GuestAddress(at)).unwrap();
    mem.write_slice(f, GuestAddress(at + 12)).unwrap();
    tx.desc(mem, i, at, 12 + f.len() as u32, 0, 0);
}

/// Reads `n` length-prefixed frames from the backend's end.
fn read_frames(peer: &mut UnixStream, n: usize) -> Vec<Vec<u8>> {
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (0..n)
        .map(|_| {
            let mut p = [0u8; 4];
            peer.read_exact(&mut p).unwrap();
            let mut f = vec![0u8; u32::from_be_bytes(p) as usize];
            peer.read_exact(&mut f).unwrap();
            f
        })
        .collect()
}

#[test]
fn identifies_as_a_network_card_with_mac_and_mtu() {
    let (mut dev, _mem, _peer) = net();
    assert_eq!(r(&mut dev.0, reg::DEVICE_ID), 1);
    assert_eq!(r(&mut dev.0, reg::DEVICE_FEATURES), (F_MAC | F_MTU) as u32);
    w(&mut dev.0, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut dev.0, reg::DEVICE_FEATURES), 1, "VERSION_1");
    for q in 0..2 {
        w(&mut dev.0, reg::QUEUE_SEL, q);
        assert_eq!(r(&mut dev.0, reg::QUEUE_NUM_MAX), u32::from(QUEUE_MAX));
    }
    w(&mut dev.0, reg::QUEUE_SEL, 2);
    assert_eq!(r(&mut dev.0, reg::QUEUE_NUM_MAX), 0, "no control queue");
    let mut mac = [0u8; 6];
    dev.read(0x100, &mut mac);
    assert_eq!(mac, DEFAULT_MAC);
    let mut mtu = [0u8; 2];
    dev.read(0x10a, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1500);
    let mut past = [0xaau8; 4];
    dev.read(0x10c, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn transmitted_frames_reach_the_backend_with_their_length_prefix() {
    let (mut dev, mem, mut peer) = net();
    live(&mut dev);
    let mut tx = Driver::new(TXQ);
    let (a, b) = (frame(60, 1), frame(1518, 2));
    put_tx(&mem, &tx, 0, 0x4_0000, &a);
    // Linux's shape: the header in its own descriptor, the frame in two more.
    mem.write_slice(&[0u8; 12], GuestAddress(0x5_0000)).unwrap();
    mem.write_slice(&b[..100], GuestAddress(0x6_0000)).unwrap();
    mem.write_slice(&b[100..], GuestAddress(0x7_0000)).unwrap();
    tx.desc(&mem, 3, 0x5_0000, 12, F_NEXT, 7);
    tx.desc(&mem, 7, 0x6_0000, 100, F_NEXT, 9);
    tx.desc(&mem, 9, 0x7_0000, 1418, 0, 0);
    tx.offer(&mem, &[0, 3]);
    w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
    assert_eq!(tx.take_used(&mem), vec![(0, 0), (3, 0)]);
    assert_eq!(r(&mut dev.0, reg::INTERRUPT_STATUS), INT_USED_RING);
    assert_eq!(read_frames(&mut peer, 2), vec![a, b]);
    let c = dev.counters();
    assert_eq!((c.tx_frames, c.tx_bytes, c.tx_refused), (2, 60 + 1518, 0));
}

#[test]
fn malformed_transmit_chains_send_nothing_and_come_back_empty() {
    let (mut dev, mem, mut peer) = net();
    live(&mut dev);
    let mut tx = Driver::new(TXQ);
    let good = frame(64, 9);
    put_tx(&mem, &tx, 0, 0x4_0000, &frame(1519, 0)); // oversized
    put_tx(&mem, &tx, 1, 0x4_1000, &[]); // header only
    tx.desc(&mem, 2, 0x4_2000, 20, F_WRITE, 0); // device-writable
    tx.desc(&mem, 3, 0x4_3000, 80, F_NEXT, 3); // a loop
    tx.desc(&mem, 4, 0xff_fff0, 80, 0, 0); // past RAM
    // Checksum offload asked for, never offered.
    put_tx(&mem, &tx, 5, 0x4_5000, &frame(60, 0));
    mem.write_obj(1u8, GuestAddress(0x4_5000)).unwrap();
    put_tx(&mem, &tx, 6, 0x4_6000, &good);
    tx.offer(&mem, &[0, 1, 2, 3, 4, 5, 999, 6]);
    w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
    let used = tx.take_used(&mem);
    assert_eq!(
        used,
        vec![(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0)]
    );
    assert_eq!(read_frames(&mut peer, 1), vec![good]);
    peer.set_nonblocking(true).unwrap();
    assert!(peer.read(&mut [0u8; 1]).is_err(), "nothing else was sent");
    // The head outside the queue is refused too, and never returned.
    assert_eq!(dev.counters().tx_refused, 7);
    assert_eq!(dev.counters().tx_frames, 1);
}

#[test]
fn received_frames_fill_posted_buffers_header_first() {
    let (mut dev, mem, _peer) = net();
    let f = frame(1518, 3);
    assert_eq!(dev.push_rx(&f), RxOutcome::NoBuffer, "before DRIVER_OK");
    live(&mut dev);
    assert_eq!(dev.push_rx(&f), RxOutcome::NoBuffer, "none posted");
    let mut rx = Driver::new(RXQ);
    // One buffer of 1530 bytes (Linux's), then the header apart from the frame.
    rx.desc(&mem, 0, 0x4_0000, 1530, F_WRITE, 0);
    rx.desc(&mem, 1, 0x5_0000, 12, F_WRITE | F_NEXT, 2);
    rx.desc(&mem, 2, 0x6_0000, 2000, F_WRITE, 0);
    rx.offer(&mem, &[0, 1]);
    assert_eq!(dev.push_rx(&f), RxOutcome::Delivered);
    let small = frame(42, 4);
    assert_eq!(dev.push_rx(&small), RxOutcome::Delivered);
    assert_eq!(dev.push_rx(&small), RxOutcome::NoBuffer);
    assert_eq!(rx.take_used(&mem), vec![(0, 12 + 1518), (1, 12 + 42)]);
    assert_eq!(dev.irq_evt().read().unwrap(), 2);
    let mut got = vec![0u8; 1530];
    mem.read_slice(&mut got, GuestAddress(0x4_0000)).unwrap();
    assert_eq!(got[..12], NetHeader::received().to_bytes());
    assert_eq!(got[12..], f[..]);
    let mut hdr = [0u8; 12];
    mem.read_slice(&mut hdr, GuestAddress(0x5_0000)).unwrap();
    assert_eq!(hdr[10], 1, "num_buffers");
    let mut got = vec![0u8; 42];
    mem.read_slice(&mut got, GuestAddress(0x6_0000)).unwrap();
    assert_eq!(got, small);
    let c = dev.counters();
    assert_eq!((c.rx_frames, c.rx_bytes), (2, 1518 + 42));
}

#[test]
fn malformed_and_small_receive_buffers_move_no_frame() {
    let (mut dev, mem, _peer) = net();
    live(&mut dev);
    let mut rx = Driver::new(RXQ);
    rx.desc(&mem, 0, 0x4_0000, 1530, 0, 0); // readable
    rx.desc(&mem, 1, 0x4_1000, 25, F_WRITE, 0); // smaller than header + Ethernet header
    rx.desc(&mem, 2, 0x4_2000, 100, F_WRITE | F_NEXT, 2); // a loop
    rx.desc(&mem, 3, 0x4_3000, 12 + 60, F_WRITE, 0); // good, but small
    rx.desc(&mem, 4, 0x4_4000, 1530, F_WRITE, 0);
    rx.offer(&mem, &[0, 1, 2, 3, 4]);
    // Three refused, then the frame does not fit the fourth: dropped, buffer returned empty.
    assert_eq!(dev.push_rx(&frame(100, 0)), RxOutcome::Dropped);
    assert_eq!(rx.take_used(&mem), vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
    let mut b = [0u8; 64];
    mem.read_slice(&mut b, GuestAddress(0x4_3000)).unwrap();
    assert_eq!(b, [0u8; 64], "nothing written into the small buffer");
    assert_eq!(dev.push_rx(&frame(60, 1)), RxOutcome::Delivered);
    assert_eq!(rx.take_used(&mem), vec![(4, 72)]);
    let c = dev.counters();
    assert_eq!((c.rx_refused, c.rx_no_room, c.rx_frames), (3, 1, 1));
}

/// Sets a socket's send buffer to `bytes` (the kernel doubles it, and has a minimum).
fn small_send_buffer(s: &impl AsRawFd, bytes: libc::c_int) {
    // SAFETY: a valid descriptor and a pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn a_stalled_backend_holds_back_the_transmitq_not_memory() {
    let (mut dev, mem, mut peer) = net();
    small_send_buffer(&dev.0.device().socket, 4096);
    live(&mut dev);
    let mut tx = Driver::new(TXQ);
    let frames: Vec<Vec<u8>> = (0..SIZE).map(|i| frame(1500, i as u8)).collect();
    for (i, f) in frames.iter().enumerate() {
        put_tx(&mem, &tx, i as u16, 0x4_0000 + 0x1000 * i as u64, f);
    }
    let heads: Vec<u16> = (0..SIZE).collect();
    tx.offer(&mem, &heads);
    w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
    let first = tx.take_used(&mem).len();
    assert!(first < usize::from(SIZE), "the socket took every frame");
    assert!(dev.tx_waiting());
    assert_eq!(dev.counters().tx_stalls, 1);
    assert!(dev.0.device().out.capacity() <= PREFIX_LEN + MAX_FRAME_LEN as usize);
    // Kicks while the socket is full take nothing more.
    for _ in 0..100 {
        w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
    }
    assert!(tx.take_used(&mem).is_empty());
    // The backend reads; the device resumes where it stopped, the stream stays in step.
    let mut got = Vec::new();
    while got.len() < frames.len() {
        dev.retry_tx();
        got.extend(read_frames(&mut peer, 1));
    }
    assert_eq!(got, frames);
    assert_eq!(tx.take_used(&mem).len(), usize::from(SIZE) - first);
    assert!(!dev.tx_waiting());
}

#[test]
fn a_closed_backend_drops_transmitted_frames_and_the_guest_goes_on() {
    let (mut dev, mem, peer) = net();
    drop(peer);
    live(&mut dev);
    let mut tx = Driver::new(TXQ);
    put_tx(&mem, &tx, 0, 0x4_0000, &frame(60, 0));
    put_tx(&mem, &tx, 1, 0x4_1000, &frame(60, 1));
    tx.offer(&mem, &[0, 1]);
    w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
    assert_eq!(tx.take_used(&mem), vec![(0, 0), (1, 0)]);
    let c = dev.counters();
    assert_eq!((c.tx_frames, c.tx_dropped), (0, 2));
    assert!(!dev.tx_waiting());
}

/// The device behind a mutex, as the backend thread reaches it in tests.
impl NetAccess for Mutex<VirtioNet> {
    fn with_net<R>(&self, f: impl FnOnce(&mut VirtioNet) -> R) -> Option<R> {
        Some(f(&mut self.lock().unwrap()))
    }
}

#[test]
fn the_backend_thread_delivers_frames_skips_bad_lengths_and_waits_for_buffers() {
    let (mut dev, mem, mut peer) = net();
    live(&mut dev);
    let io = dev.io().unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (dev.clone(), stop.clone());
    let thread = std::thread::spawn(move || serve(io, &s, &*d));
    // Six frames: good, oversized (skipped), runt (skipped), good, good, good.
    let frames = [
        frame(60, 1),
        vec![0x55; 65_550],
        vec![0x66; 10],
        frame(1518, 2),
        frame(100, 3),
        frame(200, 4),
    ];
    for f in &frames {
        peer.write_all(&net_stream::prefix(f.len() as u32)).unwrap();
        peer.write_all(f).unwrap();
    }
    let mut rx = Driver::new(RXQ);
    for i in 0..2u16 {
        rx.desc(&mem, i, 0x4_0000 + 0x1000 * u64::from(i), 1530, F_WRITE, 0);
    }
    let wait = |want: u64| {
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        while dev.lock().unwrap().counters().rx_frames < want {
            assert!(
                std::time::Instant::now() < give_up,
                "{want} frames not delivered"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Two buffers: two frames go in, the third waits for the guest.
    rx.offer(&mem, &[0, 1]);
    w(
        &mut dev.lock().unwrap().0,
        reg::QUEUE_NOTIFY,
        RX_QUEUE as u32,
    );
    wait(2);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(dev.lock().unwrap().counters().rx_frames, 2);
    assert_eq!(rx.take_used(&mem), vec![(0, 72), (1, 12 + 1518)]);
    let mut got = vec![0u8; 1518];
    mem.read_slice(&mut got, GuestAddress(0x4_100c)).unwrap();
    assert_eq!(got, frames[3]);
    // The guest reposts both: the rest arrive.
    rx.offer(&mem, &[0, 1]);
    w(
        &mut dev.lock().unwrap().0,
        reg::QUEUE_NOTIFY,
        RX_QUEUE as u32,
    );
    wait(4);
    assert_eq!(rx.take_used(&mem), vec![(0, 112), (1, 212)]);
    let c = dev.lock().unwrap().counters();
    assert_eq!((c.rx_frames, c.rx_bad_length, c.rx_no_room), (4, 2, 0));
    stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
}

#[test]
fn the_backend_thread_finishes_frames_the_socket_held_back() {
    let (mut dev, mem, mut peer) = net();
    small_send_buffer(&dev.0.device().socket, 4096);
    live(&mut dev);
    let io = dev.io().unwrap();
    let mut tx = Driver::new(TXQ);
    let frames: Vec<Vec<u8>> = (0..SIZE).map(|i| frame(1400, i as u8)).collect();
    for (i, f) in frames.iter().enumerate() {
        put_tx(&mem, &tx, i as u16, 0x4_0000 + 0x1000 * i as u64, f);
    }
    let heads: Vec<u16> = (0..SIZE).collect();
    tx.offer(&mem, &heads);
    w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
    assert!(dev.tx_waiting());
    let dev = Arc::new(Mutex::new(dev));
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (dev.clone(), stop.clone());
    let thread = std::thread::spawn(move || serve(io, &s, &*d));
    // Reading is all the backend does: the thread sends the rest when the socket drains.
    assert_eq!(read_frames(&mut peer, frames.len()), frames);
    stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    assert_eq!(tx.take_used(&mem).len(), usize::from(SIZE));
    assert_eq!(dev.lock().unwrap().counters().tx_frames, u64::from(SIZE));
}

#[test]
fn the_backend_thread_delivers_what_came_before_the_backend_closed_and_then_idles() {
    let (mut dev, mem, mut peer) = net();
    live(&mut dev);
    let io = dev.io().unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (dev.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("net-eof-test".into())
        .spawn(move || serve(io, &s, &*d))
        .unwrap();
    let (a, b) = (frame(60, 1), frame(70, 2));
    for f in [&a, &b] {
        peer.write_all(&net_stream::prefix(f.len() as u32)).unwrap();
        peer.write_all(f).unwrap();
    }
    // Half a frame, then the backend is gone.
    peer.write_all(&net_stream::prefix(100)).unwrap();
    peer.write_all(&[1; 10]).unwrap();
    drop(peer);
    let mut rx = Driver::new(RXQ);
    for i in 0..3u16 {
        rx.desc(&mem, i, 0x4_0000 + 0x1000 * u64::from(i), 1530, F_WRITE, 0);
    }
    rx.offer(&mem, &[0, 1, 2]);
    w(
        &mut dev.lock().unwrap().0,
        reg::QUEUE_NOTIFY,
        RX_QUEUE as u32,
    );
    let give_up = std::time::Instant::now() + Duration::from_secs(5);
    while dev.lock().unwrap().counters().rx_frames < 2 {
        assert!(std::time::Instant::now() < give_up);
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = cpu_ticks("net-eof-test");
    std::thread::sleep(Duration::from_millis(500));
    let idle = cpu_ticks("net-eof-test") - before;
    assert!(
        idle <= 5,
        "{idle} ticks of CPU in 500 ms after the backend closed"
    );
    assert_eq!(rx.take_used(&mem), vec![(0, 72), (1, 82)]);
    // Transmitting to a closed backend drops the frame; the thread still answers the stop.
    let mut tx = Driver::new(TXQ);
    put_tx(&mem, &tx, 0, 0x5_0000, &frame(60, 3));
    tx.offer(&mem, &[0]);
    w(
        &mut dev.lock().unwrap().0,
        reg::QUEUE_NOTIFY,
        TX_QUEUE as u32,
    );
    assert_eq!(tx.take_used(&mem), vec![(0, 0)]);
    assert_eq!(dev.lock().unwrap().counters().tx_dropped, 1);
    let asked = std::time::Instant::now();
    stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    assert!(asked.elapsed() < Duration::from_millis(500));
}

/// User + system CPU time, in clock ticks, of this process's thread named `name`.
fn cpu_ticks(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        if std::fs::read_to_string(dir.join("comm")).unwrap().trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    panic!("no thread {name}");
}

#[test]
fn a_reset_while_a_frame_waits_for_the_socket_keeps_the_stream_in_step() {
    let (mut dev, mem, mut peer) = net();
    small_send_buffer(&dev.0.device().socket, 4096);
    live(&mut dev);
    let mut tx = Driver::new(TXQ);
    let frames: Vec<Vec<u8>> = (0..SIZE).map(|i| frame(1500, i as u8)).collect();
    for (i, f) in frames.iter().enumerate() {
        put_tx(&mem, &tx, i as u16, 0x4_0000 + 0x1000 * i as u64, f);
    }
    let heads: Vec<u16> = (0..SIZE).collect();
    tx.offer(&mem, &heads);
    w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
    let taken = tx.take_used(&mem).len();
    assert!(dev.tx_waiting());
    // The driver resets the device with part of a frame still unsent.
    w(&mut dev.0, reg::STATUS, 0);
    let mut got = Vec::new();
    while got.len() < taken {
        dev.retry_tx();
        got.extend(read_frames(&mut peer, 1));
    }
    assert_eq!(got, frames[..taken], "the waiting frame was finished whole");
    assert!(!dev.tx_waiting());
    // Set up again: the next frame follows on a clean frame boundary.
    mem.write_slice(&[0u8; 0x3000], GuestAddress(TXQ + 0x1000))
        .unwrap();
    let mut tx = Driver::new(TXQ);
    live(&mut dev);
    let next = frame(99, 0x77);
    put_tx(&mem, &tx, 0, 0x6_0000, &next);
    tx.offer(&mem, &[0]);
    w(&mut dev.0, reg::QUEUE_NOTIFY, TX_QUEUE as u32);
    assert_eq!(tx.take_used(&mem), vec![(0, 0)]);
    assert_eq!(read_frames(&mut peer, 1), vec![next]);
}
