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

/// The kernel command-line word by which a launcher asks init to keep at most `N` cost units
/// ([`frame_cost`]) of output frames unacknowledged: `hyperpod.stdio_window=N`. The launcher
/// then acknowledges what it has written out with `C <cost>` control lines
/// ([`super::HostLine::Credit`]). Without the word init sends as fast as the device takes it.
///
/// The QEMU engine needs it: QEMU's `virtconsole` writes each transmit buffer to its chardev
/// once and drops what the chardev does not take (QEMU 7.2 `hw/char/virtio-console.c`,
/// `flush_buf`: consoles are never throttled), so a launcher that falls behind its guest (a
/// slow reader of its stdout) would lose bytes in the middle of frames. With the window, the
/// bytes in flight always fit in the socket between QEMU and the launcher.
pub const WINDOW_ARG: &str = "hyperpod.stdio_window=";
/// The window the QEMU engine asks for. Each QEMU write is one socket buffer whose kernel
/// accounting is its bytes plus an overhead; a full window of the smallest frames (≤ 64 of
/// them) or of the largest (≤ 2 of init's 32 KiB reads, in the console's 4 KiB pieces) is
/// charged well under 200 KiB, the default `SO_SNDBUF` of a UNIX socket (`wmem_default`).
pub const QEMU_WINDOW: u32 = 64 * 1024;
/// Smallest window init accepts: room for a frame of some size.
pub const MIN_WINDOW: u32 = 4 * 1024;
/// What one frame costs beyond its bytes in the window's accounting: a bound on the transport's
/// per-write overhead, so many small frames are charged for the buffers they occupy.
pub const FRAME_OVERHEAD: usize = 1024;

/// The window cost of a frame carrying `len` payload bytes.
pub const fn frame_cost(len: usize) -> usize {
    HEADER_LEN + len + FRAME_OVERHEAD
}

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
    /// Window cost of everything fed so far ([`frame_cost`] per complete header plus payload).
    cost: u64,
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
                    self.cost += frame_cost(0) as u64;
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
                    self.cost += take as u64;
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

    /// The window cost ([`frame_cost`]) of the stream fed so far: what the sender counted for
    /// the same bytes once it sent them.
    pub fn cost(&self) -> u64 {
        self.cost
    }
}

/// The receiver's side of the window: the cost taken and how much of it was credited back.
#[derive(Clone, Debug, Default)]
pub struct Credits {
    credited: u64,
}

impl Credits {
    /// The credit to send now for a stream whose cost taken so far is `taken`, or `None` while
    /// less than a quarter of `window` is owed (a sender that waits for credit has a whole
    /// window out, so it is always owed at least that much).
    pub fn due(&mut self, taken: u64, window: u32) -> Option<u32> {
        let owed = taken.saturating_sub(self.credited);
        if owed == 0 || owed < u64::from(window / 4) {
            return None;
        }
        let c = owed.min(u64::from(u32::MAX)) as u32;
        self.credited += u64::from(c);
        Some(c)
    }
}

/// The sender's side of the window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    size: usize,
    /// Cost sent and not yet credited.
    out: usize,
}

impl Window {
    pub fn new(size: u32) -> Window {
        Window {
            size: size as usize,
            out: 0,
        }
    }

    /// The largest payload that may be sent now (0: wait for credit), at most `max`.
    pub fn room(&self, max: usize) -> usize {
        self.size
            .saturating_sub(self.out)
            .saturating_sub(frame_cost(0))
            .min(max)
    }

    /// Records a frame of `len` payload bytes sent.
    pub fn sent(&mut self, len: usize) {
        self.out += frame_cost(len);
    }

    /// Takes a credit from the receiver (more than is out is capped: a confused receiver must
    /// not open the window wider than its size).
    pub fn credit(&mut self, cost: u32) {
        self.out = self.out.saturating_sub(cost as usize);
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
    fn decoder_cost_is_what_the_sender_counted() {
        let mut s = Vec::new();
        let mut sent = 0;
        for (i, len) in [1usize, 0, 32 * 1024, 7, 1000].into_iter().enumerate() {
            let kind = if i % 2 == 0 {
                Kind::Stdout
            } else {
                Kind::Stderr
            };
            encode(kind, &vec![b'x'; len], &mut s);
            sent += frame_cost(len) as u64;
        }
        for step in [1, 2, 3, 4096] {
            let mut d = Decoder::default();
            for chunk in s.chunks(step) {
                d.feed(chunk, |_| {});
                // Never more than was sent, and exactly that at the end.
                assert!(d.cost() <= sent);
            }
            assert_eq!(d.cost(), sent, "step {step}");
        }
    }

    /// The QEMU engine's transport, modelled: a buffer of fixed capacity between the sender
    /// and a receiver that takes bytes only now and then (a slow reader of the launcher's
    /// stdout); what does not fit is lost, as QEMU's virtconsole loses it. With the window and
    /// the credits, nothing is lost and the sender never stalls for good.
    #[test]
    fn the_window_keeps_a_slow_receiver_from_losing_bytes() {
        let window = QEMU_WINDOW;
        // Charged cost the transport can hold: the window itself, no slack.
        let capacity = window as usize;
        let mut w = Window::new(window);
        let mut credits = Credits::default();
        let mut d = Decoder::default();
        let mut transport: std::collections::VecDeque<u8> = Default::default();
        let mut charged = 0usize;
        let (mut sent_payload, mut got_payload) = (0usize, 0usize);
        let mut seed = 7u32;
        let mut rand = |n: u32| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 8) % n
        };
        for round in 0..20_000 {
            // The sender: frames of random sizes (many tiny ones too), as long as there is room.
            let want = if rand(4) == 0 {
                1
            } else {
                rand(40_000) as usize + 1
            };
            let len = w.room(want);
            if len > 0 {
                let mut f = Vec::new();
                encode(Kind::Stdout, &vec![(round % 251) as u8; len], &mut f);
                charged += frame_cost(len);
                assert!(
                    charged <= capacity,
                    "round {round}: the transport would drop"
                );
                transport.extend(f);
                w.sent(len);
                sent_payload += len;
            }
            // The receiver: sometimes takes nothing for a while, else a random amount.
            if rand(3) == 0 {
                continue;
            }
            let take = (rand(70_000) as usize).min(transport.len());
            let bytes: Vec<u8> = transport.drain(..take).collect();
            let before = d.cost();
            d.feed(&bytes, |p| {
                if let Piece::Data(_, data) = p {
                    got_payload += data.len();
                }
            });
            charged -= (d.cost() - before) as usize;
            if let Some(c) = credits.due(d.cost(), window) {
                w.credit(c);
            }
        }
        // The end: the receiver takes the rest.
        let rest: Vec<u8> = transport.drain(..).collect();
        d.feed(&rest, |p| {
            if let Piece::Data(_, data) = p {
                got_payload += data.len();
            }
        });
        assert!(d.at_boundary());
        assert_eq!(got_payload, sent_payload);
        assert!(sent_payload > 100 * 1024 * 1024 / 8, "{sent_payload}");
    }

    #[test]
    fn a_full_window_is_always_owed_a_credit() {
        for window in [MIN_WINDOW, QEMU_WINDOW, 100_000] {
            let mut w = Window::new(window);
            let mut sent = 0u64;
            while w.room(usize::MAX) > 0 {
                let n = w.room(1);
                w.sent(n);
                sent += frame_cost(n) as u64;
            }
            // Everything out has arrived: the receiver owes enough to send a credit.
            let mut credits = Credits::default();
            let c = credits.due(sent, window).expect("a credit is due");
            w.credit(c);
            assert!(w.room(usize::MAX) > 0);
            assert_eq!(credits.due(sent, window), None);
        }
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
