//! The stdio frame decoder (`pod::protocol::stdio::Decoder`: the guest's untrusted output as the
//! launcher reads it) on arbitrary bytes cut into arbitrary pieces: it must never panic, must
//! hand out exactly the payloads a plain reading of the stream finds, in order, and its window
//! cost must be what a sender of those frames counted. Then the window's credits: a sender
//! that sends only within its room and a receiver that credits with `Credits::due` never put
//! more than the window in flight, and a full window is always owed a credit.
//!
//! Input: byte 0 picks the piece size (1 to 256), byte 1 the window (`MIN_WINDOW` and up); the
//! rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pod::protocol::stdio::{Credits, Decoder, HEADER_LEN, MIN_WINDOW, Piece, Window, frame_cost};

fuzz_target!(|data: &[u8]| {
    let [step, w, stream @ ..] = data else {
        return;
    };
    let step = usize::from(*step) + 1;
    let mut d = Decoder::default();
    let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
    for piece in stream.chunks(step) {
        d.feed(piece, |p| match p {
            Piece::Data(k, bytes) => match got.last_mut() {
                Some((lk, v)) if *lk == k as u8 && !v.is_empty() => v.extend_from_slice(bytes),
                _ => got.push((k as u8, bytes.to_vec())),
            },
            Piece::StdinEof => got.push((4, Vec::new())),
            Piece::Unknown(k) => got.push((k, Vec::new())),
        });
    }
    // The plain reading: headers, payloads, and the cost of every complete header plus the
    // payload bytes seen.
    let mut want: Vec<(u8, Vec<u8>)> = Vec::new();
    let (mut at, mut cost) = (0usize, 0u64);
    while let Some(h) = stream.get(at..at + HEADER_LEN) {
        let (kind, len) = (h[0], usize::from(u16::from_le_bytes([h[1], h[2]])));
        cost += frame_cost(0) as u64;
        let body = &stream[at + HEADER_LEN..(at + HEADER_LEN + len).min(stream.len())];
        cost += body.len() as u64;
        match kind {
            1..=3 if !body.is_empty() => match want.last_mut() {
                Some((lk, v)) if *lk == kind && !v.is_empty() => v.extend_from_slice(body),
                _ => want.push((kind, body.to_vec())),
            },
            1..=3 => {}
            _ => want.push((kind, Vec::new())),
        }
        at += HEADER_LEN + len;
    }
    assert_eq!(got, want);
    assert_eq!(d.cost(), cost);
    assert_eq!(d.at_boundary(), at == stream.len());

    // The window, driven by the same bytes: each byte a frame size to send, or (odd) a read.
    let window = MIN_WINDOW + u32::from(*w) * 1024;
    let mut win = Window::new(window);
    let mut credits = Credits::default();
    let (mut sent, mut taken) = (0u64, 0u64);
    for &b in stream {
        if b & 1 == 0 {
            let n = win.room(usize::from(b) * 64 + 1);
            if n > 0 {
                win.sent(n);
                sent += frame_cost(n) as u64;
            }
        } else {
            taken = sent.min(taken + u64::from(b) * 97);
        }
        assert!(
            sent - taken <= u64::from(window),
            "more than the window in flight"
        );
        if let Some(c) = credits.due(taken, window) {
            win.credit(c);
        }
    }
    // Everything arrives: a sender out of room is owed a credit that gives it room.
    if win.room(usize::MAX) == 0 {
        let c = credits
            .due(sent, window)
            .expect("a full window is owed a credit");
        win.credit(c);
        assert!(win.room(usize::MAX) > 0);
    }
});
