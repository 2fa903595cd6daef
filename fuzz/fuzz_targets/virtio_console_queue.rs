//! The stdio console driven through its virtio-mmio registers, with guest memory (both queues'
//! descriptor tables and rings, buffers) taken from the input: walking, parsing and serving the
//! chains on both queues must never panic, the sink must only ever see pieces of at most
//! `BOUNCE_MAX` bytes, and `push_rx` must never claim more bytes than it was given.
//!
//! Input: byte 0 picks the queue size (a power of two up to 16); the rest is copied into guest
//! memory from 0x1000: receiveq descriptors (0x1000), available ring (0x1100), used ring
//! (0x1200); transmitq descriptors (0x1400), available ring (0x1500), used ring (0x1600); then
//! bytes for buffers.
#![no_main]

use std::sync::{Arc, Mutex};

use launcher::devices::virtio_console::{BOUNCE_MAX, VirtioConsole};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x1_0000;

fn w(dev: &mut VirtioConsole, off: u64, v: u32) {
    dev.write(off, &v.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, guest)) = data.split_first() else {
        return;
    };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = guest.len().min(MEM - 0x1000);
    mem.write_slice(&guest[..n], GuestAddress(0x1000)).unwrap();
    let seen = Arc::new(Mutex::new(0u64));
    let s = seen.clone();
    let sink = Box::new(move |b: &[u8]| {
        assert!(b.len() <= BOUNCE_MAX);
        *s.lock().unwrap() += b.len() as u64;
    });
    let mut dev = VirtioConsole::new(sink, mem).unwrap();
    w(&mut dev, 0x070, 1 | 2);
    w(&mut dev, 0x024, 1);
    w(&mut dev, 0x020, 1); // VIRTIO_F_VERSION_1
    w(&mut dev, 0x070, 1 | 2 | 8);
    for (q, base) in [(0u32, 0x1000u32), (1, 0x1400)] {
        w(&mut dev, 0x030, q);
        w(&mut dev, 0x038, 1 << (size % 5));
        w(&mut dev, 0x080, base);
        w(&mut dev, 0x090, base + 0x100);
        w(&mut dev, 0x0a0, base + 0x200);
        w(&mut dev, 0x044, 1);
    }
    w(&mut dev, 0x070, 1 | 2 | 4 | 8);
    w(&mut dev, 0x050, 1);
    let bytes = &guest[..guest.len().min(300)];
    assert!(dev.push_rx(bytes) <= bytes.len());
    // A second round sees the rings as the first one left them.
    w(&mut dev, 0x050, 1);
    w(&mut dev, 0x050, 0);
    assert!(dev.push_rx(bytes) <= bytes.len());
    // Two transmit kicks, each serving at most 16 chains of at most 16 descriptors, each
    // buffer inside guest memory.
    assert!(*seen.lock().unwrap() <= 2 * 16 * 16 * MEM as u64);
});
