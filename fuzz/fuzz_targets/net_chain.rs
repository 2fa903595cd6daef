//! The virtio-net chain parsers on arbitrary descriptor tables and header bytes: they must never
//! panic, must refuse exactly what the generic chain walker refuses, and what they accept must
//! hold the rules written out below (a frame of 14 to 1518 bytes after a 12-byte header asking
//! for no offload; receive room for a header and an Ethernet header; every piece in guest RAM).
//!
//! Input: byte 0 is the queue size (0 to 255), byte 1 the head index, byte 2 bit 0 the
//! direction (1: receiveq); the rest are 16-byte `struct virtq_desc` entries of the table (an
//! index past them is unreadable). Guest RAM is 64 KiB at 0 and 4 KiB at 4 GiB; a guest byte at
//! address `a` is input byte `a % len` (so the header's bytes come from the input too).
#![no_main]

use launcher::devices::console_chain::{Direction, RawDesc, parse_chain};
use launcher::devices::net_chain::{
    ETH_HLEN, HDR_LEN, MAX_FRAME_LEN, NetChainError, parse_rx, parse_tx,
};
use libfuzzer_sys::fuzz_target;

const RAM: &[(u64, u64)] = &[(0, 0x1_0000), (0x1_0000_0000, 0x1000)];

fn in_ram(addr: u64, len: u32) -> bool {
    RAM.iter()
        .any(|&(s, l)| addr >= s && addr + u64::from(len) <= s + l)
}

fuzz_target!(|data: &[u8]| {
    let Some((&[size, head, dir], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let (size, head) = (u16::from(size), u16::from(head));
    let table: Vec<RawDesc> = rest
        .chunks_exact(16)
        .map(|c| RawDesc::from_bytes(c.try_into().unwrap()))
        .collect();
    let desc = |i: u16| table.get(usize::from(i)).copied();
    let read = |addr: u64, buf: &mut [u8]| {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = data[(addr as usize).wrapping_add(i) % data.len()];
        }
        true
    };
    if dir & 1 == 1 {
        let walked = parse_chain(head, size, Direction::Receive, RAM, desc);
        match (parse_rx(head, size, RAM, desc), walked) {
            (Ok(b), Ok(c)) => {
                assert_eq!(b.bufs, c.bufs);
                assert!(c.total >= u64::from(HDR_LEN + ETH_HLEN));
                assert_eq!(b.capacity, c.total - u64::from(HDR_LEN));
            }
            (Err(NetChainError::Chain(e)), Err(w)) => assert_eq!(e, w),
            (Err(NetChainError::RxTooSmall(n)), Ok(c)) => {
                assert_eq!(n, c.total);
                assert!(n < u64::from(HDR_LEN + ETH_HLEN));
            }
            (got, walked) => panic!("parse_rx {got:?} vs the walker {walked:?}"),
        }
        return;
    }
    let walked = parse_chain(head, size, Direction::Transmit, RAM, desc);
    match (parse_tx(head, size, RAM, desc, read), walked) {
        (Ok(f), Ok(c)) => {
            assert!((ETH_HLEN..=MAX_FRAME_LEN).contains(&f.len));
            assert_eq!(u64::from(f.len) + u64::from(HDR_LEN), c.total);
            assert_eq!(
                f.segments.iter().map(|s| u64::from(s.len)).sum::<u64>(),
                u64::from(f.len)
            );
            assert!(f.segments.iter().all(|s| s.len > 0 && in_ram(s.addr, s.len)));
            assert_eq!((f.header.flags, f.header.gso_type), (0, 0));
        }
        (Err(NetChainError::Chain(e)), Err(w)) => assert_eq!(e, w),
        (Err(e), Ok(c)) => {
            let frame = c.total.checked_sub(u64::from(HDR_LEN));
            match e {
                NetChainError::ShortHeader(n) => assert!(frame.is_none() && n == c.total),
                NetChainError::EmptyFrame => assert_eq!(frame, Some(0)),
                NetChainError::FrameTooShort(n) => {
                    assert!(frame == Some(n) && n > 0 && n < u64::from(ETH_HLEN))
                }
                NetChainError::FrameTooLong(n) => {
                    assert!(frame == Some(n) && n > u64::from(MAX_FRAME_LEN))
                }
                NetChainError::Offload(flags, gso) => assert!(flags != 0 || gso != 0),
                other => panic!("{other:?} for a chain the walker accepts"),
            }
        }
        (got, walked) => panic!("parse_tx {got:?} vs the walker {walked:?}"),
    }
});
