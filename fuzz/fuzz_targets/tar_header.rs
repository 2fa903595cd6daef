//! One 512-byte tar header block: parsing never panics, and what parses folds into a header.
#![no_main]

use builder::image::tar::{BLOCK, build_header, parse_header, parse_number};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut block = [0u8; BLOCK];
    let n = data.len().min(BLOCK);
    block[..n].copy_from_slice(&data[..n]);
    if let Ok(raw) = parse_header(&block) {
        let _ = build_header(raw, &[], None, None);
    }
    let _ = parse_number(data, "fuzz");
});
