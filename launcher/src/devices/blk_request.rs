//! virtio-blk requests parsed into typed values before anything touches a disk. The descriptor
//! chain arrives as a list of [`Desc`] (already read from guest memory) plus the 16 header bytes;
//! [`parse_request`] is a pure function, safe to fuzz.

use thiserror::Error;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Length of `struct virtio_blk_outhdr`.
pub const HEADER_LEN: u32 = 16;
/// Length of the device ID returned by `VIRTIO_BLK_T_GET_ID`.
pub const ID_LEN: u32 = 20;
/// Longest descriptor chain accepted.
pub const MAX_DESCRIPTORS: usize = 256;

/// `VIRTIO_BLK_T_IN`.
pub const T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`.
pub const T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`.
pub const T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`.
pub const T_GET_ID: u32 = 8;

/// `VIRTIO_BLK_S_OK`.
pub const S_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`.
pub const S_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const S_UNSUPP: u8 = 2;

/// One descriptor of a chain, as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    /// The device may write this buffer (`VIRTQ_DESC_F_WRITE`).
    pub write_only: bool,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    Flush,
    /// Write the device ID string into the data buffer.
    GetId,
    /// A type this device does not implement (answered with `VIRTIO_BLK_S_UNSUPP`).
    Unsupported(u32),
}

/// A well-formed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    /// Data buffers, in order.
    pub data: Vec<Desc>,
    /// Total length of the data buffers.
    pub data_len: u64,
    /// Where the one-byte status goes.
    pub status_addr: u64,
}

/// Why a descriptor chain is not a valid request. Such a chain is returned to the guest unused
/// (a status cannot be written safely).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain has {0} descriptors, need 2 to {MAX_DESCRIPTORS}")]
    ChainLength(usize),
    #[error("request header descriptor is short or device-writable")]
    BadHeader,
    #[error("status descriptor is empty or not device-writable")]
    BadStatus,
    #[error("data descriptor has the wrong direction for the request")]
    DataDirection,
    #[error("data length {0} is not a multiple of the sector size")]
    DataNotSectors(u64),
    #[error("request covers sectors beyond u64")]
    SectorOverflow,
}

/// Decodes `struct virtio_blk_outhdr` (type, reserved, sector; little-endian).
pub fn parse_header(h: &[u8; HEADER_LEN as usize]) -> (u32, u64) {
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let mut sector = [0u8; 8];
    sector.copy_from_slice(&h[8..16]);
    (kind, u64::from_le_bytes(sector))
}

/// Checks a descriptor chain (`descs[0]` is the header, the last is the status byte) and its
/// header bytes, and returns the typed request.
pub fn parse_request(
    descs: &[Desc],
    header: &[u8; HEADER_LEN as usize],
) -> Result<Request, RequestError> {
    if descs.len() < 2 || descs.len() > MAX_DESCRIPTORS {
        return Err(RequestError::ChainLength(descs.len()));
    }
    let head = descs[0];
    if head.write_only || head.len < HEADER_LEN {
        return Err(RequestError::BadHeader);
    }
    let status = descs[descs.len() - 1];
    if !status.write_only || status.len == 0 {
        return Err(RequestError::BadStatus);
    }
    let (raw_kind, sector) = parse_header(header);
    let kind = match raw_kind {
        T_IN => RequestKind::In,
        T_OUT => RequestKind::Out,
        T_FLUSH => RequestKind::Flush,
        T_GET_ID => RequestKind::GetId,
        other => RequestKind::Unsupported(other),
    };
    let data: Vec<Desc> = descs[1..descs.len() - 1].to_vec();
    let data_len: u64 = data.iter().map(|d| u64::from(d.len)).sum();
    let want_write_only = match kind {
        RequestKind::In | RequestKind::GetId => Some(true),
        RequestKind::Out => Some(false),
        RequestKind::Flush | RequestKind::Unsupported(_) => None,
    };
    if let Some(w) = want_write_only {
        if data.iter().any(|d| d.write_only != w) {
            return Err(RequestError::DataDirection);
        }
    }
    if matches!(kind, RequestKind::In | RequestKind::Out) {
        if data_len % SECTOR_SIZE != 0 {
            return Err(RequestError::DataNotSectors(data_len));
        }
        sector
            .checked_add(data_len / SECTOR_SIZE)
            .ok_or(RequestError::SectorOverflow)?;
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status_addr: status.addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(addr: u64, len: u32, write_only: bool) -> Desc {
        Desc {
            addr,
            len,
            write_only,
        }
    }

    fn header(kind: u32, sector: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        h
    }

    #[test]
    fn parses_a_read() {
        let descs = [
            d(0x1000, 16, false),
            d(0x2000, 512, true),
            d(0x3000, 1024, true),
            d(0x4000, 1, true),
        ];
        let r = parse_request(&descs, &header(T_IN, 7)).unwrap();
        assert_eq!(r.kind, RequestKind::In);
        assert_eq!(r.sector, 7);
        assert_eq!(r.data_len, 1536);
        assert_eq!(r.data.len(), 2);
        assert_eq!(r.status_addr, 0x4000);
    }

    #[test]
    fn rejects_malformed_chains() {
        let h = header(T_IN, 0);
        assert_eq!(
            parse_request(&[d(0, 16, false)], &h),
            Err(RequestError::ChainLength(1))
        );
        assert_eq!(
            parse_request(&[d(0, 8, false), d(8, 1, true)], &h),
            Err(RequestError::BadHeader)
        );
        assert_eq!(
            parse_request(&[d(0, 16, true), d(8, 1, true)], &h),
            Err(RequestError::BadHeader)
        );
        assert_eq!(
            parse_request(&[d(0, 16, false), d(8, 1, false)], &h),
            Err(RequestError::BadStatus)
        );
        assert_eq!(
            parse_request(&[d(0, 16, false), d(16, 512, false), d(8, 1, true)], &h),
            Err(RequestError::DataDirection)
        );
        assert_eq!(
            parse_request(
                &[d(0, 16, false), d(16, 512, true), d(8, 1, true)],
                &header(T_OUT, 0)
            ),
            Err(RequestError::DataDirection)
        );
        assert_eq!(
            parse_request(&[d(0, 16, false), d(16, 100, true), d(8, 1, true)], &h),
            Err(RequestError::DataNotSectors(100))
        );
        assert_eq!(
            parse_request(
                &[d(0, 16, false), d(16, 512, true), d(8, 1, true)],
                &header(T_IN, u64::MAX)
            ),
            Err(RequestError::SectorOverflow)
        );
    }

    #[test]
    fn unknown_types_and_flush_parse() {
        let r = parse_request(&[d(0, 16, false), d(8, 1, true)], &header(99, 0)).unwrap();
        assert_eq!(r.kind, RequestKind::Unsupported(99));
        let r = parse_request(&[d(0, 16, false), d(8, 1, true)], &header(T_FLUSH, 3)).unwrap();
        assert_eq!(r.kind, RequestKind::Flush);
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        // A cheap deterministic fuzz: every small chain shape with pseudo-random fields.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 6) as usize;
            let descs: Vec<Desc> = (0..n)
                .map(|i| {
                    d(
                        x.rotate_left(i as u32),
                        (x >> (i * 8)) as u32,
                        (x >> i) & 1 == 1,
                    )
                })
                .collect();
            let h = header((x >> 3) as u32 % 10, x.rotate_right(5));
            if let Ok(r) = parse_request(&descs, &h) {
                assert!(r.data.len() + 2 == descs.len());
            }
        }
    }
}
