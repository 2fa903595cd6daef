//! The backend stream decoder (4-byte big-endian length, frame) on arbitrary bytes cut into
//! arbitrary pieces: it must never panic, must consume every byte, and must give back exactly
//! the frames a plain reading of the stream finds (14 to 1518 bytes), reporting every other
//! length as skipped, in order.
//!
//! Input: byte 0 picks the piece size (1 to 256); the rest is the stream.
#![no_main]

use launcher::devices::net_chain::{ETH_HLEN, MAX_FRAME_LEN};
use launcher::devices::net_stream::{Decoded, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step) + 1;
    let mut d = FrameDecoder::new();
    let mut got: Vec<Result<Vec<u8>, Decoded>> = Vec::new();
    for piece in stream.chunks(step) {
        let mut rest = piece;
        while !rest.is_empty() {
            let (used, what) = d.feed(rest);
            assert!(used <= rest.len());
            assert!(used > 0 || what.is_some(), "no progress");
            rest = &rest[used..];
            match what {
                Some(Decoded::Frame) => got.push(Ok(d.frame().unwrap().to_vec())),
                Some(other) => got.push(Err(other)),
                None => assert!(rest.is_empty()),
            }
        }
    }
    // The plain reading.
    let mut want = Vec::new();
    let mut at = 0usize;
    while let Some(p) = stream.get(at..at + 4) {
        let len = u32::from_be_bytes(p.try_into().unwrap());
        let end = at + 4 + len as usize;
        if end > stream.len() {
            break;
        }
        if (ETH_HLEN..=MAX_FRAME_LEN).contains(&len) {
            want.push(Ok(stream[at + 4..end].to_vec()));
        } else if len < ETH_HLEN {
            want.push(Err(Decoded::TooShort(len)));
        } else {
            want.push(Err(Decoded::TooLong(len)));
        }
        at = end;
    }
    assert_eq!(got, want);
    assert_eq!(d.at_boundary(), at == stream.len());
});
