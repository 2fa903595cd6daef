//! virtio-console descriptor chains parsed into typed values before any data moves. The chain is
//! walked from its head through a descriptor lookup (`desc(index)`, the guest's descriptor
//! table as read so far); [`parse_chain`] is a pure function of that table, the queue size, the
//! direction and the guest's RAM ranges, safe to fuzz.

use thiserror::Error;

/// Longest descriptor chain accepted (also the largest queue the console offers).
pub const MAX_DESCRIPTORS: u16 = 256;
/// Most bytes one chain may describe. Linux's console sends at most a page per chain; the
/// bound only refuses absurd chains (data never sits in host memory beyond a bounce buffer).
pub const MAX_CHAIN_BYTES: u64 = 4 << 20;

/// `VIRTQ_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT` (never negotiated by this device).
pub const F_INDIRECT: u16 = 4;

/// One descriptor as the guest wrote it in its table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl RawDesc {
    /// Decodes `struct virtq_desc` (16 bytes, little-endian).
    pub fn from_bytes(b: &[u8; 16]) -> RawDesc {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[..8]);
        RawDesc {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// Which way a queue's buffers go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// receiveq: host → guest; every buffer must be device-writable.
    Receive,
    /// transmitq: guest → host; every buffer must be device-readable.
    Transmit,
}

/// One buffer of a well-formed chain: inside one RAM range, never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
}

/// A well-formed chain: its buffers in order and their total length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub bufs: Vec<Buf>,
    pub total: u64,
}

/// Why a chain is refused. A refused chain is returned to the guest with used length 0 (when its
/// head is a valid index) and moves no data.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor index {0} is outside the queue (size {1})")]
    IndexOutOfRange(u16, u16),
    #[error("descriptor {0} cannot be read from the descriptor table")]
    Unreadable(u16),
    #[error("chain is longer than {0} descriptors (a loop)")]
    TooManyDescriptors(u16),
    #[error("descriptor {0} is indirect (not negotiated)")]
    Indirect(u16),
    #[error("descriptor {0} has the wrong direction for the queue")]
    Direction(u16),
    #[error("descriptor {0} is empty")]
    Empty(u16),
    #[error("descriptor {0} runs past the end of the address space")]
    AddressOverflow(u16),
    #[error("descriptor {0} is not inside guest RAM")]
    OutsideRam(u16),
    #[error("chain describes more than {MAX_CHAIN_BYTES} bytes")]
    TooLong,
}

/// Whether `[addr, addr + len)` (no overflow: checked by the caller) lies inside one of the
/// `(start, length)` ranges of `ram`.
fn in_ram(ram: &[(u64, u64)], addr: u64, len: u64) -> bool {
    ram.iter().any(|&(start, size)| {
        addr >= start && start.checked_add(size).is_some_and(|end| addr + len <= end)
    })
}

/// Walks the chain that starts at descriptor `head` of a queue of `queue_size` entries, where
/// `desc(i)` reads descriptor `i` of the table (`None`: unreadable), and checks every
/// descriptor: index in the queue, at most `min(queue_size, MAX_DESCRIPTORS)` descriptors (a
/// longer chain has a loop), no indirect table, the queue's direction, not empty, no address
/// overflow, inside one of the `ram` ranges, at most [`MAX_CHAIN_BYTES`] in total.
pub fn parse_chain(
    head: u16,
    queue_size: u16,
    dir: Direction,
    ram: &[(u64, u64)],
    desc: impl Fn(u16) -> Option<RawDesc>,
) -> Result<Chain, ChainError> {
    let limit = queue_size.min(MAX_DESCRIPTORS);
    let mut bufs = Vec::new();
    let mut total = 0u64;
    let mut index = head;
    loop {
        if index >= queue_size {
            return Err(ChainError::IndexOutOfRange(index, queue_size));
        }
        if bufs.len() >= usize::from(limit) {
            return Err(ChainError::TooManyDescriptors(limit));
        }
        let d = desc(index).ok_or(ChainError::Unreadable(index))?;
        if d.flags & F_INDIRECT != 0 {
            return Err(ChainError::Indirect(index));
        }
        let writable = d.flags & F_WRITE != 0;
        if writable != (dir == Direction::Receive) {
            return Err(ChainError::Direction(index));
        }
        if d.len == 0 {
            return Err(ChainError::Empty(index));
        }
        let len = u64::from(d.len);
        if d.addr.checked_add(len).is_none() {
            return Err(ChainError::AddressOverflow(index));
        }
        if !in_ram(ram, d.addr, len) {
            return Err(ChainError::OutsideRam(index));
        }
        total += len;
        if total > MAX_CHAIN_BYTES {
            return Err(ChainError::TooLong);
        }
        bufs.push(Buf {
            addr: d.addr,
            len: d.len,
        });
        if d.flags & F_NEXT == 0 {
            return Ok(Chain { bufs, total });
        }
        index = d.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: &[(u64, u64)] = &[(0, 0x10_0000), (0x1_0000_0000, 0x1000)];

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
        RawDesc {
            addr,
            len,
            flags,
            next,
        }
    }

    fn parse(table: &[RawDesc], head: u16, dir: Direction) -> Result<Chain, ChainError> {
        parse_chain(head, table.len() as u16, dir, RAM, |i| {
            table.get(usize::from(i)).copied()
        })
    }

    #[test]
    fn decodes_a_table_entry() {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        b[8..12].copy_from_slice(&4096u32.to_le_bytes());
        b[12..14].copy_from_slice(&3u16.to_le_bytes());
        b[14..].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(
            RawDesc::from_bytes(&b),
            d(0x1122_3344_5566_7788, 4096, F_NEXT | F_WRITE, 9)
        );
    }

    #[test]
    fn parses_chains_in_both_directions() {
        let table = [
            d(0x1000, 10, F_NEXT, 2),
            d(0, 0, 0, 0),
            d(0x1_0000_0000, 0x1000, 0, 0),
            d(0x8000, 64, F_WRITE, 0),
        ];
        let c = parse(&table, 0, Direction::Transmit).unwrap();
        assert_eq!(
            c.bufs,
            vec![
                Buf {
                    addr: 0x1000,
                    len: 10
                },
                Buf {
                    addr: 0x1_0000_0000,
                    len: 0x1000
                }
            ]
        );
        assert_eq!(c.total, 0x1000 + 10);
        let c = parse(&table, 3, Direction::Receive).unwrap();
        assert_eq!(c.total, 64);
    }

    #[test]
    fn refuses_malformed_chains() {
        let t = Direction::Transmit;
        // A loop, and one through a second descriptor.
        assert_eq!(
            parse(&[d(0, 1, F_NEXT, 0)], 0, t),
            Err(ChainError::TooManyDescriptors(1))
        );
        assert_eq!(
            parse(&[d(0, 1, F_NEXT, 1), d(0, 1, F_NEXT, 0)], 1, t),
            Err(ChainError::TooManyDescriptors(2))
        );
        assert_eq!(
            parse(&[d(0, 1, F_NEXT, 7)], 0, t),
            Err(ChainError::IndexOutOfRange(7, 1))
        );
        assert_eq!(
            parse(&[d(0, 1, 0, 0)], 4, t),
            Err(ChainError::IndexOutOfRange(4, 1))
        );
        assert_eq!(
            parse(&[d(0, 16, F_INDIRECT, 0)], 0, t),
            Err(ChainError::Indirect(0))
        );
        assert_eq!(
            parse(&[d(0, 16, F_WRITE, 0)], 0, t),
            Err(ChainError::Direction(0))
        );
        assert_eq!(
            parse(&[d(0, 16, 0, 0)], 0, Direction::Receive),
            Err(ChainError::Direction(0))
        );
        assert_eq!(parse(&[d(0, 0, 0, 0)], 0, t), Err(ChainError::Empty(0)));
        assert_eq!(
            parse(&[d(u64::MAX - 8, 16, 0, 0)], 0, t),
            Err(ChainError::AddressOverflow(0))
        );
        // Past RAM's end, in the hole between the ranges, across a range's end.
        for addr in [0x10_0000, 0xd000_0000, 0xf_fff0, 0x1_0000_0ff0] {
            assert_eq!(
                parse(&[d(addr, 32, 0, 0)], 0, t),
                Err(ChainError::OutsideRam(0)),
                "{addr:#x}"
            );
        }
        let big = (MAX_CHAIN_BYTES / 2) as u32;
        let ram = [(0u64, 4 * MAX_CHAIN_BYTES)];
        let table = [d(0, big, F_NEXT, 1), d(0, big, F_NEXT, 2), d(0, 1, 0, 0)];
        assert_eq!(
            parse_chain(0, 3, t, &ram, |i| table.get(usize::from(i)).copied()),
            Err(ChainError::TooLong)
        );
        assert_eq!(
            parse_chain(0, 2, t, RAM, |_| None),
            Err(ChainError::Unreadable(0))
        );
    }

    #[test]
    fn the_longest_chain_is_the_queue_size() {
        let table: Vec<RawDesc> = (0..8u16)
            .map(|i| {
                d(
                    0x100 * u64::from(i),
                    16,
                    if i < 7 { F_NEXT } else { 0 },
                    i + 1,
                )
            })
            .collect();
        assert_eq!(parse(&table, 0, Direction::Transmit).unwrap().bufs.len(), 8);
        let full: Vec<RawDesc> = (0..MAX_DESCRIPTORS + 4)
            .map(|i| d(0, 1, F_NEXT, i + 1))
            .collect();
        assert_eq!(
            parse_chain(0, u16::MAX, Direction::Transmit, RAM, |i| full
                .get(usize::from(i))
                .copied()),
            Err(ChainError::TooManyDescriptors(MAX_DESCRIPTORS))
        );
    }

    #[test]
    fn never_panics_on_arbitrary_tables() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..5_000 {
            let n = (next() % 9) as u16 + 1;
            let table: Vec<RawDesc> = (0..n)
                .map(|_| {
                    let r = next();
                    d(
                        r % 0x12_0000,
                        (r >> 20) as u32 % 0x2000,
                        (r >> 52) as u16 & 7,
                        (r >> 56) as u16 % 10,
                    )
                })
                .collect();
            let dir = if next() & 1 == 0 {
                Direction::Receive
            } else {
                Direction::Transmit
            };
            if let Ok(c) = parse(&table, (next() % 10) as u16, dir) {
                assert!(!c.bufs.is_empty() && c.bufs.len() <= usize::from(n));
                assert_eq!(
                    c.total,
                    c.bufs.iter().map(|b| u64::from(b.len)).sum::<u64>()
                );
                assert!(c.bufs.iter().all(|b| in_ram(RAM, b.addr, u64::from(b.len))));
            }
        }
    }
}
