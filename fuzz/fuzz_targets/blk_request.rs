//! The virtio-blk request parser on arbitrary descriptor chains and header bytes: it must never
//! panic, and its verdict must agree with the rules written out independently below.
//!
//! Input: 16 header bytes, then 13-byte descriptors (addr u64 LE, len u32 LE, flags u8 whose
//! bit 0 is "device-writable").
#![no_main]

use launcher::devices::blk_request::{
    Desc, HEADER_LEN, MAX_DESCRIPTORS, RequestError, RequestKind, SECTOR_SIZE, T_FLUSH, T_GET_ID,
    T_IN, T_OUT, parse_header, parse_request,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((h, rest)) = data.split_first_chunk::<{ HEADER_LEN as usize }>() else {
        return;
    };
    let descs: Vec<Desc> = rest
        .chunks_exact(13)
        .map(|c| Desc {
            addr: u64::from_le_bytes(c[0..8].try_into().unwrap()),
            len: u32::from_le_bytes(c[8..12].try_into().unwrap()),
            write_only: c[12] & 1 == 1,
        })
        .collect();
    let got = parse_request(&descs, h);
    let (raw_kind, sector) = parse_header(h);

    // The rules, in the order the parser applies them.
    let n = descs.len();
    if !(2..=MAX_DESCRIPTORS).contains(&n) {
        assert_eq!(got, Err(RequestError::ChainLength(n)));
        return;
    }
    if descs[0].write_only || descs[0].len < HEADER_LEN {
        assert_eq!(got, Err(RequestError::BadHeader));
        return;
    }
    let status = descs[n - 1];
    if !status.write_only || status.len == 0 {
        assert_eq!(got, Err(RequestError::BadStatus));
        return;
    }
    let data = &descs[1..n - 1];
    let data_len: u64 = data.iter().map(|d| u64::from(d.len)).sum();
    let direction = match raw_kind {
        T_IN | T_GET_ID => Some(true),
        T_OUT => Some(false),
        _ => None,
    };
    if direction.is_some_and(|w| data.iter().any(|d| d.write_only != w)) {
        assert_eq!(got, Err(RequestError::DataDirection));
        return;
    }
    if raw_kind == T_IN || raw_kind == T_OUT {
        if data_len % SECTOR_SIZE != 0 {
            assert_eq!(got, Err(RequestError::DataNotSectors(data_len)));
            return;
        }
        if sector.checked_add(data_len / SECTOR_SIZE).is_none() {
            assert_eq!(got, Err(RequestError::SectorOverflow));
            return;
        }
    }
    let r = got.expect("a chain that breaks no rule parses");
    let kind = match raw_kind {
        T_IN => RequestKind::In,
        T_OUT => RequestKind::Out,
        T_FLUSH => RequestKind::Flush,
        T_GET_ID => RequestKind::GetId,
        k => RequestKind::Unsupported(k),
    };
    assert_eq!(r.kind, kind);
    assert_eq!(r.sector, sector);
    assert_eq!(r.data, data);
    assert_eq!(r.data_len, data_len);
    assert_eq!(r.status_addr, status.addr);
});
