//! The launcher's ELF vmlinux parser on arbitrary bytes: it must never panic, and what it accepts
//! must be loadable as it says: every segment's file bytes inside the input, no address overflow,
//! nothing below high memory, and the end past every segment.
#![no_main]

use launcher::vmm::elf::parse;
use libfuzzer_sys::fuzz_target;

const HIGHMEM: u64 = 0x10_0000;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = parse(data, HIGHMEM) {
        assert!(k.entry >= HIGHMEM);
        assert!(!k.segments.is_empty());
        for s in &k.segments {
            let end = s.offset.checked_add(s.filesz).expect("file range fits");
            assert!(end <= data.len() as u64, "segment bytes inside the input");
            assert!(s.paddr >= HIGHMEM);
            assert!(s.paddr + s.filesz.max(s.memsz) <= k.end);
        }
    }
});
