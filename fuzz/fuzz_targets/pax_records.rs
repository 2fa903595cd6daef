//! PAX extended header data: records and times parse or fail cleanly, never panic.
#![no_main]

use builder::image::tar::{BLOCK, build_header, parse_header, parse_pax, parse_pax_time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_pax_time(data);
    if let Ok(records) = parse_pax(data) {
        // Fold the records into an ordinary file header.
        let mut block = [0u8; BLOCK];
        block[..4].copy_from_slice(b"file");
        block[100..108].copy_from_slice(b"0000644\0");
        block[156] = b'0';
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let raw = parse_header(&block).expect("valid block");
        let _ = build_header(raw, &records, None, None);
    }
});
