//! The app's stdio stream on [`super::STDIO_DEV`]: frames of `[kind: u8][len: u16 LE][len
//! bytes]`, both ways. The guest sends [`Kind::Stdout`] and [`Kind::Stderr`]; the launcher sends
//! [`Kind::Stdin`] and, once its stdin reached end of file, one empty [`Kind::StdinEof`].
//!
//! One stream keeps stdout and stderr in the order init read them, and end of file travels in
//! band, after every byte before it. The decoder is pure and bounded: it never buffers more than
//! a 3-byte header, handing payload bytes out as they arrive.

/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 3;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Guest → host: bytes the app wrote to its stdout.
    Stdout = 1,
    /// Guest → host: bytes the app wrote to its stderr.
    Stderr = 2,
    /// Host → guest: bytes for the app's stdin.
    Stdin = 3,
    /// Host → guest: the app's stdin has ended (empty payload).
    StdinEof = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::Stdin,
            4 => Kind::StdinEof,
            _ => return None,
        })
    }
}

/// The header of a frame of `kind` carrying `len` bytes (`len` ≤ [`MAX_PAYLOAD`]).
pub fn header(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    debug_assert!(len <= MAX_PAYLOAD);
    let l = (len.min(MAX_PAYLOAD) as u16).to_le_bytes();
    [kind as u8, l[0], l[1]]
}

/// Appends `data` to `out` as frames of `kind` (as many as its length needs; one empty frame for
/// empty data).
pub fn encode(kind: Kind, data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        out.extend_from_slice(&header(kind, 0));
        return;
    }
    for chunk in data.chunks(MAX_PAYLOAD) {
        out.extend_from_slice(&header(kind, chunk.len()));
        out.extend_from_slice(chunk);
    }
}

/// A piece of the decoded stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Payload bytes of a frame of this kind (a frame's payload may come in several pieces).
    Data(Kind, &'a [u8]),
    /// A complete [`Kind::StdinEof`] frame.
    StdinEof,
    /// A frame of an unknown kind began (its payload is skipped).
    Unknown(u8),
}

/// Decodes a frame stream fed in arbitrary pieces.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    head: [u8; HEADER_LEN],
    head_len: usize,
    /// The current frame's kind (`None` for an unknown one) and payload bytes still to come.
    current: Option<(Option<Kind>, usize)>,
}

impl Decoder {
    /// Feeds `input`, calling `out` for each piece in order.
    pub fn feed<'a>(&mut self, mut input: &'a [u8], mut out: impl FnMut(Piece<'a>)) {
        while !input.is_empty() {
            match self.current {
                None => {
                    let take = (HEADER_LEN - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + take].copy_from_slice(&input[..take]);
                    self.head_len += take;
                    input = &input[take..];
                    if self.head_len < HEADER_LEN {
                        return;
                    }
                    self.head_len = 0;
                    let kind = Kind::from_u8(self.head[0]);
                    let len = usize::from(u16::from_le_bytes([self.head[1], self.head[2]]));
                    match kind {
                        None => out(Piece::Unknown(self.head[0])),
                        Some(Kind::StdinEof) => out(Piece::StdinEof),
                        Some(_) => {}
                    }
                    if len > 0 {
                        self.current = Some((kind, len));
                    }
                }
                Some((kind, remaining)) => {
                    let take = remaining.min(input.len());
                    let (data, rest) = input.split_at(take);
                    input = rest;
                    if let Some(k) = kind.filter(|k| *k != Kind::StdinEof) {
                        out(Piece::Data(k, data));
                    }
                    self.current = (remaining > take).then_some((kind, remaining - take));
                }
            }
        }
    }

    /// Whether the stream stopped between frames (not inside a header or a payload).
    pub fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.current.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8], step: usize) -> Vec<(u8, Vec<u8>)> {
        let mut d = Decoder::default();
        let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            d.feed(chunk, |p| match p {
                Piece::Data(k, data) => match got.last_mut() {
                    Some((lk, v)) if *lk == k as u8 => v.extend_from_slice(data),
                    _ => got.push((k as u8, data.to_vec())),
                },
                Piece::StdinEof => got.push((Kind::StdinEof as u8, Vec::new())),
                Piece::Unknown(k) => got.push((k, Vec::new())),
            });
        }
        assert!(d.at_boundary());
        got
    }

    #[test]
    fn round_trips_in_any_split() {
        let mut s = Vec::new();
        encode(Kind::Stdout, b"out\n", &mut s);
        encode(Kind::Stderr, b"err\n", &mut s);
        encode(Kind::Stdout, b"", &mut s);
        encode(Kind::StdinEof, b"", &mut s);
        let want = vec![
            (1, b"out\n".to_vec()),
            (2, b"err\n".to_vec()),
            (4, Vec::new()),
        ];
        for step in [1, 2, 3, 5, 100] {
            assert_eq!(decode_all(&s, step), want, "step {step}");
        }
    }

    #[test]
    fn large_data_is_split_into_bounded_frames() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut s = Vec::new();
        encode(Kind::Stdin, &data, &mut s);
        assert_eq!(s.len(), data.len() + 4 * HEADER_LEN);
        assert_eq!(decode_all(&s, 4096), vec![(3, data)]);
    }

    #[test]
    fn unknown_kinds_are_reported_and_skipped() {
        let mut s = vec![9, 2, 0, b'x', b'y'];
        encode(Kind::Stderr, b"ok", &mut s);
        // An end-of-file frame with a payload: the payload is dropped.
        s.extend_from_slice(&[4, 1, 0, b'z']);
        assert_eq!(
            decode_all(&s, 1),
            vec![(9, Vec::new()), (2, b"ok".to_vec()), (4, Vec::new())]
        );
        assert_eq!(header(Kind::Stdout, 0x1234), [1, 0x34, 0x12]);
    }
}
