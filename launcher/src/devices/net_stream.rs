//! The network backend's stream protocol, as passt and QEMU's `-netdev stream` speak it on a
//! UNIX stream socket: each Ethernet frame is a 4-byte big-endian length, then the frame (no
//! virtio header, no frame check sequence). [`FrameDecoder`] is a pure, bounded decoder of that
//! stream: it holds at most one frame of [`MAX_FRAME_LEN`] bytes and never allocates from a
//! length it read; a frame it cannot carry is skipped byte by byte and reported.

use super::net_chain::{ETH_HLEN, MAX_FRAME_LEN};

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// The length prefix of a frame of `len` bytes.
pub fn prefix(len: u32) -> [u8; PREFIX_LEN] {
    len.to_be_bytes()
}

/// What one step of decoding produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame is ready: [`FrameDecoder::frame`] until the next [`FrameDecoder::feed`].
    Frame,
    /// A frame longer than [`MAX_FRAME_LEN`] (its length) was skipped.
    TooLong(u32),
    /// A frame shorter than an Ethernet header (its length) was skipped.
    TooShort(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the prefix: bytes of it so far.
    Prefix(usize),
    /// Reading a frame of this length: bytes so far.
    Body(u32, u32),
    /// Skipping a frame: bytes still to skip.
    Skip(u32),
    /// A frame of this length is complete.
    Ready(u32),
}

/// Decodes the length-prefixed frame stream.
pub struct FrameDecoder {
    state: State,
    prefix: [u8; PREFIX_LEN],
    buf: Box<[u8]>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder {
            state: State::Prefix(0),
            prefix: [0; PREFIX_LEN],
            buf: vec![0; MAX_FRAME_LEN as usize].into_boxed_slice(),
        }
    }

    /// The frame the last [`feed`](Self::feed) completed, if it did.
    pub fn frame(&self) -> Option<&[u8]> {
        match self.state {
            State::Ready(len) => Some(&self.buf[..len as usize]),
            _ => None,
        }
    }

    /// Whether the stream is between frames (nothing of a frame read yet, or one complete).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Prefix(0) | State::Ready(_))
    }

    /// Consumes bytes of `input` up to the end of the next frame (or skipped frame); returns how
    /// many it consumed and what completed, if anything. A completed frame stays readable
    /// through [`frame`](Self::frame) until the next call.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Decoded>) {
        if let State::Ready(_) = self.state {
            self.state = State::Prefix(0);
        }
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            match self.state {
                State::Prefix(have) => {
                    let n = rest.len().min(PREFIX_LEN - have);
                    self.prefix[have..have + n].copy_from_slice(&rest[..n]);
                    used += n;
                    if have + n < PREFIX_LEN {
                        self.state = State::Prefix(have + n);
                        continue;
                    }
                    let len = u32::from_be_bytes(self.prefix);
                    if !(ETH_HLEN..=MAX_FRAME_LEN).contains(&len) {
                        self.state = State::Skip(len);
                        if len == 0 {
                            self.state = State::Prefix(0);
                            return (used, Some(Decoded::TooShort(0)));
                        }
                        // Reported once its bytes are skipped.
                        self.prefix = len.to_be_bytes();
                    } else {
                        self.state = State::Body(len, 0);
                    }
                }
                State::Body(len, have) => {
                    let n = rest.len().min((len - have) as usize);
                    let at = have as usize;
                    self.buf[at..at + n].copy_from_slice(&rest[..n]);
                    used += n;
                    let have = have + n as u32;
                    if have == len {
                        self.state = State::Ready(len);
                        return (used, Some(Decoded::Frame));
                    }
                    self.state = State::Body(len, have);
                }
                State::Skip(left) => {
                    let n = rest.len().min(left as usize);
                    used += n;
                    let left = left - n as u32;
                    if left == 0 {
                        self.state = State::Prefix(0);
                        let len = u32::from_be_bytes(self.prefix);
                        let what = if len < ETH_HLEN {
                            Decoded::TooShort(len)
                        } else {
                            Decoded::TooLong(len)
                        };
                        return (used, Some(what));
                    }
                    self.state = State::Skip(left);
                }
                State::Ready(_) => unreachable!("reset above"),
            }
        }
        (used, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            v.extend_from_slice(&prefix(f.len() as u32));
            v.extend_from_slice(f);
        }
        v
    }

    /// Decodes `stream` fed in pieces of `step` bytes; returns frames and drops in order.
    fn decode(stream: &[u8], step: usize) -> Vec<Result<Vec<u8>, Decoded>> {
        let mut d = FrameDecoder::new();
        let mut out = Vec::new();
        for piece in stream.chunks(step) {
            let mut rest = piece;
            while !rest.is_empty() {
                let (used, what) = d.feed(rest);
                assert!(used > 0 || what.is_some());
                rest = &rest[used..];
                match what {
                    Some(Decoded::Frame) => out.push(Ok(d.frame().unwrap().to_vec())),
                    Some(other) => out.push(Err(other)),
                    None => assert!(rest.is_empty()),
                }
            }
        }
        assert!(d.at_boundary());
        out
    }

    #[test]
    fn frames_come_out_whole_however_the_stream_is_cut() {
        let a = [0xaa; 60];
        let b: Vec<u8> = (0..MAX_FRAME_LEN).map(|i| i as u8).collect();
        let c = [0xcc; 14];
        let s = framed(&[&a, &b, &c]);
        for step in [1, 3, 4, 5, 64, 1522, s.len()] {
            assert_eq!(
                decode(&s, step),
                vec![Ok(a.to_vec()), Ok(b.clone()), Ok(c.to_vec())],
                "step {step}"
            );
        }
    }

    #[test]
    fn oversized_runt_and_empty_frames_are_skipped_and_reported() {
        let big = vec![0x11; MAX_FRAME_LEN as usize + 1];
        let huge = vec![0x22; 65_550];
        let runt = [0x33; 13];
        let good = [0x44; 64];
        let s = framed(&[&big, &good, &runt, &[], &huge, &good]);
        for step in [1, 7, 4096, s.len()] {
            assert_eq!(
                decode(&s, step),
                vec![
                    Err(Decoded::TooLong(MAX_FRAME_LEN + 1)),
                    Ok(good.to_vec()),
                    Err(Decoded::TooShort(13)),
                    Err(Decoded::TooShort(0)),
                    Err(Decoded::TooLong(65_550)),
                    Ok(good.to_vec()),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn a_giant_length_costs_no_memory_and_keeps_skipping() {
        let mut d = FrameDecoder::new();
        assert_eq!(d.feed(&u32::MAX.to_be_bytes()), (4, None));
        let junk = vec![0u8; 1 << 20];
        for _ in 0..8 {
            assert_eq!(d.feed(&junk), (junk.len(), None));
        }
        assert!(!d.at_boundary());
        assert_eq!(d.buf.len(), MAX_FRAME_LEN as usize);
    }

    #[test]
    fn a_ready_frame_stays_until_the_next_feed() {
        let mut d = FrameDecoder::new();
        let s = framed(&[&[7u8; 20], &[8u8; 20]]);
        let (used, what) = d.feed(&s);
        assert_eq!((used, what), (24, Some(Decoded::Frame)));
        assert_eq!(d.frame(), Some(&[7u8; 20][..]));
        assert_eq!(d.frame(), Some(&[7u8; 20][..]));
        assert_eq!(d.feed(&s[used..]), (24, Some(Decoded::Frame)));
        assert_eq!(d.frame(), Some(&[8u8; 20][..]));
        assert_eq!(d.feed(&[]), (0, None));
        assert_eq!(d.frame(), None);
    }
}
