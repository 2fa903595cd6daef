//! The stdio console driven through its virtio-mmio registers, with guest memory (both queues'
//! descriptor tables and rings, buffers) taken from the input: walking, parsing and serving the
//! chains on both queues must never panic, the sink must only ever see pieces of at most
//! `BOUNCE_MAX` bytes, and `push_rx` must never claim more bytes than it was given.
//!
//! The first `push_rx` is also checked byte for byte against the receive side's rules replayed
//! on a copy of guest memory (`expected_rx`), whenever no buffer of the chains it may serve
//! lies on the queues' tables and rings (there a write would change what is parsed next): an
//! avail index more than the queue size ahead serves nothing; otherwise the chains are served
//! in ring order while bytes remain, a refused chain (`parse_chain`, fuzzed on its own by
//! `console_chain`) gets used length 0 and takes nothing, a good one the next bytes in its
//! buffers' order, a head outside the queue is consumed without a used element; and nothing
//! else in guest memory changes.
//!
//! Input: byte 0 picks the queue size (a power of two up to 16); the rest is copied into guest
//! memory from 0x1000: receiveq descriptors (0x1000), available ring (0x1100), used ring
//! (0x1200); transmitq descriptors (0x1400), available ring (0x1500), used ring (0x1600); then
//! bytes for buffers.
#![no_main]

use std::sync::{Arc, Mutex};

use launcher::devices::console_chain::{Direction, RawDesc, parse_chain};
use launcher::devices::virtio_console::{BOUNCE_MAX, VirtioConsole};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x1_0000;
/// The receiveq's descriptor table, available and used rings.
const RX_DESC: usize = 0x1000;
const RX_AVAIL: usize = 0x1100;
const RX_USED: usize = 0x1200;
/// Both queues' tables and rings lie in `[0x1000, RINGS_END)`.
const RINGS_END: u64 = 0x1800;

fn rd16(m: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([m[at], m[at + 1]])
}

/// What the first `push_rx(data)` on a fresh receiveq of `size` entries must leave in guest
/// memory `before`, and how many bytes it must take; `None` when a buffer it may write lies on
/// the tables or rings.
fn expected_rx(before: &[u8], size: u16, data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut m = before.to_vec();
    let idx = rd16(&m, RX_AVAIL + 2);
    if idx > size {
        return Some((m, 0));
    }
    let table: Vec<RawDesc> = (0..size)
        .map(|i| {
            let at = RX_DESC + 16 * usize::from(i);
            RawDesc::from_bytes(m[at..at + 16].try_into().unwrap())
        })
        .collect();
    let ram = [(0u64, MEM as u64)];
    let (mut taken, mut used) = (0usize, 0u16);
    for k in 0..idx {
        if taken == data.len() {
            break;
        }
        let head = rd16(&m, RX_AVAIL + 4 + 2 * usize::from(k % size));
        let chain = parse_chain(head, size, Direction::Receive, &ram, |i| {
            table.get(usize::from(i)).copied()
        });
        let mut written = 0usize;
        if let Ok(c) = chain {
            if c.bufs.iter().any(|b| b.addr < RINGS_END) {
                return None;
            }
            for b in &c.bufs {
                let n = (data.len() - taken - written).min(b.len as usize);
                let at = b.addr as usize;
                m[at..at + n].copy_from_slice(&data[taken + written..taken + written + n]);
                written += n;
            }
        }
        taken += written;
        if head < size {
            let at = RX_USED + 4 + 8 * usize::from(used % size);
            m[at..at + 4].copy_from_slice(&u32::from(head).to_le_bytes());
            m[at + 4..at + 8].copy_from_slice(&(written as u32).to_le_bytes());
            used += 1;
            m[RX_USED + 2..RX_USED + 4].copy_from_slice(&used.to_le_bytes());
        }
    }
    Some((m, taken))
}

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
    let mut dev = VirtioConsole::new(sink, mem.clone()).unwrap();
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
    let mut before = vec![0u8; MEM];
    mem.read_slice(&mut before, GuestAddress(0)).unwrap();
    let taken = dev.push_rx(bytes);
    assert!(taken <= bytes.len());
    if let Some((want, want_taken)) = expected_rx(&before, 1 << (size % 5), bytes) {
        assert_eq!(taken, want_taken, "bytes taken");
        let mut after = vec![0u8; MEM];
        mem.read_slice(&mut after, GuestAddress(0)).unwrap();
        if after != want {
            let at = (0..MEM).find(|&i| after[i] != want[i]).unwrap_or(0);
            panic!("guest memory differs at {at:#x}");
        }
    }
    // A second round sees the rings as the first one left them.
    w(&mut dev, 0x050, 1);
    w(&mut dev, 0x050, 0);
    assert!(dev.push_rx(bytes) <= bytes.len());
    // Two transmit kicks, each serving at most 16 chains of at most 16 descriptors, each
    // buffer inside guest memory.
    assert!(*seen.lock().unwrap() <= 2 * 16 * 16 * MEM as u64);
});
