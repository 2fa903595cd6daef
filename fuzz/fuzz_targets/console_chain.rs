//! The virtio-console chain parser on arbitrary descriptor tables: it must never panic, and its
//! verdict must agree with the rules written out independently below.
//!
//! Input: byte 0 is the queue size (0 to 255), byte 1 the head index, byte 2 bit 0 the
//! direction (1: receiveq); the rest are 16-byte `struct virtq_desc` entries of the table (an
//! index past them is unreadable). Guest RAM is 64 KiB at 0 and 4 KiB at 4 GiB.
#![no_main]

use launcher::devices::console_chain::{
    Buf, ChainError, Direction, F_INDIRECT, F_NEXT, F_WRITE, MAX_CHAIN_BYTES, MAX_DESCRIPTORS,
    RawDesc, parse_chain,
};
use libfuzzer_sys::fuzz_target;

const RAM: &[(u64, u64)] = &[(0, 0x1_0000), (0x1_0000_0000, 0x1000)];

fuzz_target!(|data: &[u8]| {
    let Some((&[size, head, dir], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let (size, head) = (u16::from(size), u16::from(head));
    let dir = if dir & 1 == 1 {
        Direction::Receive
    } else {
        Direction::Transmit
    };
    let table: Vec<RawDesc> = rest
        .chunks_exact(16)
        .map(|c| RawDesc::from_bytes(c.try_into().unwrap()))
        .collect();
    let got = parse_chain(head, size, dir, RAM, |i| table.get(usize::from(i)).copied());

    // The rules, in the order the parser applies them, descriptor by descriptor.
    let mut bufs = Vec::new();
    let mut total = 0u64;
    let mut i = head;
    let want = loop {
        if i >= size {
            break Err(ChainError::IndexOutOfRange(i, size));
        }
        if bufs.len() >= usize::from(size.min(MAX_DESCRIPTORS)) {
            break Err(ChainError::TooManyDescriptors(size.min(MAX_DESCRIPTORS)));
        }
        let Some(d) = table.get(usize::from(i)) else {
            break Err(ChainError::Unreadable(i));
        };
        if d.flags & F_INDIRECT != 0 {
            break Err(ChainError::Indirect(i));
        }
        if (d.flags & F_WRITE != 0) != (dir == Direction::Receive) {
            break Err(ChainError::Direction(i));
        }
        if d.len == 0 {
            break Err(ChainError::Empty(i));
        }
        let Some(end) = d.addr.checked_add(u64::from(d.len)) else {
            break Err(ChainError::AddressOverflow(i));
        };
        if !RAM.iter().any(|&(s, l)| d.addr >= s && end <= s + l) {
            break Err(ChainError::OutsideRam(i));
        }
        total += u64::from(d.len);
        if total > MAX_CHAIN_BYTES {
            break Err(ChainError::TooLong);
        }
        bufs.push(Buf {
            addr: d.addr,
            len: d.len,
        });
        if d.flags & F_NEXT == 0 {
            break Ok((bufs, total));
        }
        i = d.next;
    };
    match (got, want) {
        (Ok(c), Ok((bufs, total))) => {
            assert_eq!(c.bufs, bufs);
            assert_eq!(c.total, total);
        }
        (got, want) => assert_eq!(got.err(), want.err()),
    }
});
