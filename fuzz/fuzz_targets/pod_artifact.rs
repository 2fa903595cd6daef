//! Arbitrary bytes as a pulled artifact manifest (`hyperbuild pull`): errors are fine, panics
//! are not, and what parses is a pod's layer list (at least the four required entries).
#![no_main]

use builder::artifact;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = artifact::parse("fuzz", data) {
        assert!(a.layers.len() >= 4 && a.layers.len() <= artifact::ENTRIES.len());
        assert!(pod::manifest::is_sha256_hex(&a.pod_sha256));
    }
});
