//! A compressed layer blob through the decompressing reader with small caps: gzip, zstd or
//! plain (chosen by the first byte), read to the end; never panics, never exceeds the cap.
#![no_main]

use std::io::{Cursor, Read};

use builder::image::Compression;
use builder::image::decompress::{LayerReader, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, blob)) = data.split_first() else {
        return;
    };
    let compression = match sel % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let limits = Limits {
        max_expanded: 4 << 20,
        max_ratio: 100,
        ratio_floor: 1 << 20,
        zstd_window_log_max: 20,
    };
    let size = blob.len() as u64;
    let Ok(mut r) = LayerReader::new(
        Cursor::new(blob.to_vec()),
        size,
        compression,
        "sha256:fuzz",
        "sha256:unknown",
        &limits,
    ) else {
        return;
    };
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        assert!(r.expanded() <= limits.cap_for(size));
    }
});
