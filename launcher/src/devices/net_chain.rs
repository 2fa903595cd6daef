//! virtio-net descriptor chains parsed into typed values before any frame moves. The chain is
//! walked by the generic, bounded walker of [`console_chain::parse_chain`] (indexes, loops,
//! direction, indirect descriptors, emptiness, address overflow, RAM ranges); this module adds
//! what a network chain must be: a 12-byte `struct virtio_net_hdr_v1` first (the device offers
//! `VIRTIO_F_VERSION_1`, no checksum or segmentation offloads, no mergeable receive buffers), then
//! on the transmitq one Ethernet frame of 14 to [`MAX_FRAME_LEN`] bytes, on the receiveq room for
//! at least the header and an Ethernet header. [`parse_tx`] and [`parse_rx`] are pure functions
//! of the descriptor table, the queue size, the guest's RAM ranges and (for the header) a
//! reader of guest bytes, safe to fuzz.

use thiserror::Error;

use super::console_chain::{self, Buf, ChainError, Direction, RawDesc};

/// Length of `struct virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers), which starts every chain of both queues.
pub const HDR_LEN: u32 = 12;
/// An Ethernet header: destination, source, EtherType.
pub const ETH_HLEN: u32 = 14;
/// The MTU the device announces (`VIRTIO_NET_F_MTU`): without offloads and mergeable buffers,
/// Linux then posts receive buffers of header + 1518 bytes.
pub const MTU: u16 = 1500;
/// Largest frame carried either way: Ethernet header, one VLAN tag, [`MTU`] bytes of payload
/// (Linux's `GOOD_PACKET_LEN`; no frame check sequence).
pub const MAX_FRAME_LEN: u32 = ETH_HLEN + 4 + MTU as u32;
/// `VIRTIO_NET_HDR_GSO_NONE`: the only segmentation type without offloads.
pub const GSO_NONE: u8 = 0;

/// `struct virtio_net_hdr_v1`, decoded (little-endian).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl NetHeader {
    pub fn from_bytes(b: &[u8; HDR_LEN as usize]) -> NetHeader {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN as usize] {
        let mut b = [0u8; HDR_LEN as usize];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// The header the device writes before each received frame: no flags, no segmentation,
    /// the frame in one buffer.
    pub fn received() -> NetHeader {
        NetHeader {
            num_buffers: 1,
            ..NetHeader::default()
        }
    }
}

/// A well-formed transmit chain: its header and where the frame's bytes are, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxFrame {
    pub header: NetHeader,
    /// The frame's bytes: the chain's buffers with the header's 12 bytes cut off the front.
    pub segments: Vec<Buf>,
    /// The frame's length ([`ETH_HLEN`] to [`MAX_FRAME_LEN`]).
    pub len: u32,
}

/// A well-formed receive chain: where the device may write, header first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxBuffer {
    pub bufs: Vec<Buf>,
    /// Frame bytes that fit after the header (at least [`ETH_HLEN`]).
    pub capacity: u64,
}

/// Why a chain is refused. A refused chain is returned to the guest with used length 0 (when its
/// head is a valid index) and moves no data.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetChainError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("chain of {0} bytes is shorter than the {HDR_LEN}-byte virtio-net header")]
    ShortHeader(u64),
    #[error("transmit chain holds a header and no frame")]
    EmptyFrame,
    #[error("transmitted frame of {0} bytes is shorter than an Ethernet header")]
    FrameTooShort(u64),
    #[error("transmitted frame of {0} bytes is longer than {MAX_FRAME_LEN}")]
    FrameTooLong(u64),
    #[error("the virtio-net header cannot be read")]
    HeaderUnreadable,
    #[error("header asks for an offload that was not negotiated (flags {0:#x}, gso type {1})")]
    Offload(u8, u8),
    #[error("receive chain of {0} bytes cannot hold the header and an Ethernet header")]
    RxTooSmall(u64),
}

/// Checks the transmit chain at `head` of a queue of `queue_size` entries (`desc(i)` reads
/// descriptor `i`, `None`: unreadable; `ram` the guest's RAM as `(start, length)`): the chain
/// rules of [`console_chain::parse_chain`], a header, a frame of [`ETH_HLEN`] to
/// [`MAX_FRAME_LEN`] bytes, and a header (read through `read(addr, buf)`, false: unreadable)
/// asking for no offload.
pub fn parse_tx(
    head: u16,
    queue_size: u16,
    ram: &[(u64, u64)],
    desc: impl Fn(u16) -> Option<RawDesc>,
    read: impl Fn(u64, &mut [u8]) -> bool,
) -> Result<TxFrame, NetChainError> {
    let chain = console_chain::parse_chain(head, queue_size, Direction::Transmit, ram, desc)?;
    let hdr = u64::from(HDR_LEN);
    if chain.total < hdr {
        return Err(NetChainError::ShortHeader(chain.total));
    }
    let frame = chain.total - hdr;
    if frame == 0 {
        return Err(NetChainError::EmptyFrame);
    }
    if frame < u64::from(ETH_HLEN) {
        return Err(NetChainError::FrameTooShort(frame));
    }
    if frame > u64::from(MAX_FRAME_LEN) {
        return Err(NetChainError::FrameTooLong(frame));
    }
    let (head_bufs, segments) = split_at(&chain.bufs, HDR_LEN);
    let mut bytes = [0u8; HDR_LEN as usize];
    let mut at = 0;
    for b in head_bufs {
        let n = b.len as usize;
        if !read(b.addr, &mut bytes[at..at + n]) {
            return Err(NetChainError::HeaderUnreadable);
        }
        at += n;
    }
    let header = NetHeader::from_bytes(&bytes);
    if header.flags != 0 || header.gso_type != GSO_NONE {
        return Err(NetChainError::Offload(header.flags, header.gso_type));
    }
    Ok(TxFrame {
        header,
        segments,
        len: frame as u32,
    })
}

/// Checks the receive chain at `head`: the chain rules of [`console_chain::parse_chain`] and
/// room for the header and at least an Ethernet header.
pub fn parse_rx(
    head: u16,
    queue_size: u16,
    ram: &[(u64, u64)],
    desc: impl Fn(u16) -> Option<RawDesc>,
) -> Result<RxBuffer, NetChainError> {
    let chain = console_chain::parse_chain(head, queue_size, Direction::Receive, ram, desc)?;
    if chain.total < u64::from(HDR_LEN + ETH_HLEN) {
        return Err(NetChainError::RxTooSmall(chain.total));
    }
    Ok(RxBuffer {
        capacity: chain.total - u64::from(HDR_LEN),
        bufs: chain.bufs,
    })
}

/// Splits `bufs` after their first `n` bytes (which they hold): the pieces before and after.
pub fn split_at(bufs: &[Buf], n: u32) -> (Vec<Buf>, Vec<Buf>) {
    let (mut front, mut back) = (Vec::new(), Vec::new());
    let mut left = n;
    for b in bufs {
        if left == 0 {
            back.push(*b);
        } else if b.len <= left {
            front.push(*b);
            left -= b.len;
        } else {
            front.push(Buf {
                addr: b.addr,
                len: left,
            });
            back.push(Buf {
                addr: b.addr + u64::from(left),
                len: b.len - left,
            });
            left = 0;
        }
    }
    (front, back)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::console_chain::{F_INDIRECT, F_NEXT, F_WRITE, MAX_DESCRIPTORS};

    const RAM: &[(u64, u64)] = &[(0, 0x10_0000)];

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
        RawDesc {
            addr,
            len,
            flags,
            next,
        }
    }

    /// Guest memory: 1 MiB, header bytes at 0x1000 (flags/gso set from the test).
    fn mem_with_header(h: NetHeader) -> Vec<u8> {
        let mut m = vec![0u8; 0x10_0000];
        m[0x1000..0x100c].copy_from_slice(&h.to_bytes());
        m
    }

    fn tx(table: &[RawDesc], mem: &[u8]) -> Result<TxFrame, NetChainError> {
        parse_tx(
            0,
            table.len() as u16,
            RAM,
            |i| table.get(usize::from(i)).copied(),
            |addr, buf| {
                let a = addr as usize;
                match mem.get(a..a + buf.len()) {
                    Some(s) => {
                        buf.copy_from_slice(s);
                        true
                    }
                    None => false,
                }
            },
        )
    }

    fn rx(table: &[RawDesc]) -> Result<RxBuffer, NetChainError> {
        parse_rx(0, table.len() as u16, RAM, |i| {
            table.get(usize::from(i)).copied()
        })
    }

    #[test]
    fn header_round_trips() {
        let h = NetHeader {
            flags: 1,
            gso_type: 3,
            hdr_len: 0x1234,
            gso_size: 0x5678,
            csum_start: 9,
            csum_offset: 10,
            num_buffers: 1,
        };
        assert_eq!(NetHeader::from_bytes(&h.to_bytes()), h);
        assert_eq!(
            NetHeader::received().to_bytes(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
        assert_eq!(MAX_FRAME_LEN, 1518);
    }

    #[test]
    fn transmit_chains_header_and_frame_in_any_split() {
        let m = mem_with_header(NetHeader::default());
        // One buffer: header and a 60-byte frame.
        let f = tx(&[d(0x1000, 72, 0, 0)], &m).unwrap();
        assert_eq!(f.len, 60);
        assert_eq!(
            f.segments,
            vec![Buf {
                addr: 0x100c,
                len: 60
            }]
        );
        // Linux's usual shape: the header alone, then the frame.
        let f = tx(&[d(0x1000, 12, F_NEXT, 1), d(0x8000, 1514, 0, 0)], &m).unwrap();
        assert_eq!((f.len, f.segments.len()), (1514, 1));
        // The header split across three buffers, the frame starting inside the third.
        let f = tx(
            &[
                d(0x1000, 5, F_NEXT, 1),
                d(0x1005, 5, F_NEXT, 2),
                d(0x100a, 20, 0, 0),
            ],
            &m,
        )
        .unwrap();
        assert_eq!(
            f.segments,
            vec![Buf {
                addr: 0x100c,
                len: 18
            }]
        );
        assert_eq!(f.header, NetHeader::default());
        // The largest frame.
        let f = tx(&[d(0x1000, HDR_LEN + MAX_FRAME_LEN, 0, 0)], &m).unwrap();
        assert_eq!(f.len, MAX_FRAME_LEN);
    }

    #[test]
    fn refuses_malformed_transmit_chains() {
        let m = mem_with_header(NetHeader::default());
        let t = |table: &[RawDesc]| tx(table, &m);
        // The walker's refusals come through.
        assert_eq!(
            t(&[d(0x1000, 72, F_NEXT, 0)]),
            Err(NetChainError::Chain(ChainError::TooManyDescriptors(1)))
        );
        assert_eq!(
            t(&[d(0x1000, 72, F_WRITE, 0)]),
            Err(NetChainError::Chain(ChainError::Direction(0)))
        );
        assert_eq!(
            t(&[d(0x1000, 72, F_INDIRECT, 0)]),
            Err(NetChainError::Chain(ChainError::Indirect(0)))
        );
        assert_eq!(
            t(&[d(0x1000, 12, F_NEXT, 9)]),
            Err(NetChainError::Chain(ChainError::IndexOutOfRange(9, 1)))
        );
        assert_eq!(
            t(&[d(0x1000, 0, 0, 0)]),
            Err(NetChainError::Chain(ChainError::Empty(0)))
        );
        assert_eq!(
            t(&[d(0xff000, 0x2000, 0, 0)]),
            Err(NetChainError::Chain(ChainError::OutsideRam(0)))
        );
        assert_eq!(
            t(&[d(u64::MAX - 4, 72, 0, 0)]),
            Err(NetChainError::Chain(ChainError::AddressOverflow(0)))
        );
        // Too short for the header, a header and no frame, a runt, a giant (in two buffers).
        assert_eq!(
            t(&[d(0x1000, 11, 0, 0)]),
            Err(NetChainError::ShortHeader(11))
        );
        assert_eq!(t(&[d(0x1000, 12, 0, 0)]), Err(NetChainError::EmptyFrame));
        assert_eq!(
            t(&[d(0x1000, 12 + 13, 0, 0)]),
            Err(NetChainError::FrameTooShort(13))
        );
        assert_eq!(
            t(&[d(0x1000, 12, F_NEXT, 1), d(0x2000, MAX_FRAME_LEN + 1, 0, 0)]),
            Err(NetChainError::FrameTooLong(u64::from(MAX_FRAME_LEN) + 1))
        );
        assert_eq!(
            t(&[d(0x1000, 12, F_NEXT, 1), d(0x2000, 60_000, 0, 0)]),
            Err(NetChainError::FrameTooLong(60_000))
        );
        // Offloads that were never offered: checksum, TSO.
        for (flags, gso) in [(1u8, 0u8), (0, 1), (2, 0), (0, 0x80)] {
            let m = mem_with_header(NetHeader {
                flags,
                gso_type: gso,
                ..NetHeader::default()
            });
            assert_eq!(
                tx(&[d(0x1000, 72, 0, 0)], &m),
                Err(NetChainError::Offload(flags, gso))
            );
        }
        // A header the reader cannot read.
        let r = parse_tx(0, 1, RAM, |_| Some(d(0x1000, 72, 0, 0)), |_, _| false);
        assert_eq!(r, Err(NetChainError::HeaderUnreadable));
    }

    #[test]
    fn receive_chains_need_room_for_header_and_ethernet_header() {
        let b = rx(&[
            d(0x1000, 12, F_WRITE | F_NEXT, 1),
            d(0x2000, 1518, F_WRITE, 0),
        ])
        .unwrap();
        assert_eq!(b.capacity, 1518);
        assert_eq!(b.bufs.len(), 2);
        assert_eq!(rx(&[d(0x1000, 26, F_WRITE, 0)]).unwrap().capacity, 14);
        assert_eq!(
            rx(&[d(0x1000, 25, F_WRITE, 0)]),
            Err(NetChainError::RxTooSmall(25))
        );
        assert_eq!(
            rx(&[d(0x1000, 1530, 0, 0)]),
            Err(NetChainError::Chain(ChainError::Direction(0)))
        );
        assert_eq!(
            rx(&[d(0x1000, 100, F_WRITE | F_NEXT, 0)]),
            Err(NetChainError::Chain(ChainError::TooManyDescriptors(1)))
        );
        let full: Vec<RawDesc> = (0..MAX_DESCRIPTORS + 4)
            .map(|i| d(0, 16, F_WRITE | F_NEXT, i + 1))
            .collect();
        assert_eq!(
            parse_rx(0, u16::MAX, RAM, |i| full.get(usize::from(i)).copied()),
            Err(NetChainError::Chain(ChainError::TooManyDescriptors(
                MAX_DESCRIPTORS
            )))
        );
    }

    #[test]
    fn split_at_cuts_inside_and_between_buffers() {
        let b = |addr, len| Buf { addr, len };
        let bufs = [b(0x100, 4), b(0x200, 10), b(0x300, 3)];
        assert_eq!(
            split_at(&bufs, 6),
            (
                vec![b(0x100, 4), b(0x200, 2)],
                vec![b(0x202, 8), b(0x300, 3)]
            )
        );
        assert_eq!(
            split_at(&bufs, 14),
            (vec![b(0x100, 4), b(0x200, 10)], vec![b(0x300, 3)])
        );
        assert_eq!(split_at(&bufs, 0), (vec![], bufs.to_vec()));
    }
}
