//! The `.pod` reader on arbitrary bytes: it must return an error or a layout whose sections lie
//! inside the input, never panic or allocate unbounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(layout) = pod::reader::parse_layout(data) {
        for s in layout.sections {
            assert!(s.offset % 4096 == 0 && s.offset + s.len <= data.len() as u64);
        }
    }
});
