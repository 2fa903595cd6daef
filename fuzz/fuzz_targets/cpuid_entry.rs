//! The CPUID cache entry parser on arbitrary file contents: it must never panic, an entry it
//! accepts must be for the key asked, and accepted entries re-encode to the same bytes.
//!
//! Input: one byte choosing the key's length (0-63), that many key bytes, then the file.
#![no_main]

use launcher::vmm::cpuid_cache::{encode_entry, parse_entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 64).min(rest.len());
    let (key, file) = rest.split_at(n);
    if let Ok(entries) = parse_entry(file, key) {
        assert_eq!(
            encode_entry(key, &entries),
            file,
            "accepted bytes re-encode identically"
        );
    }
    // A valid entry for this key built from the input's tail parses back to itself.
    let words: Vec<u32> = file
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let table: Vec<kvm_bindings::kvm_cpuid_entry2> = words
        .chunks_exact(10)
        .take(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map(|w| kvm_bindings::kvm_cpuid_entry2 {
            function: w[0],
            index: w[1],
            flags: w[2],
            eax: w[3],
            ebx: w[4],
            ecx: w[5],
            edx: w[6],
            padding: [w[7], w[8], w[9]],
        })
        .collect();
    let encoded = encode_entry(key, &table);
    assert_eq!(parse_entry(&encoded, key).unwrap(), table);
});
