//! Arbitrary bytes as one or two uncompressed layers applied to a tree: errors are fine,
//! panics are not, and a tree that results is well formed.
#![no_main]

use builder::image::flatten::apply_tar;
use builder::tree::{Meta, NodeKind, Tree, valid_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: where to split the input into two layers (in 512-byte blocks).
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (usize::from(split) * 512).min(rest.len());
    let mut tree = Tree::new(Meta::with_mode(0o755));
    for (i, layer) in [&rest[..at], &rest[at..]].into_iter().enumerate() {
        if apply_tar(&mut tree, i, "sha256:fuzz", layer).is_err() {
            return;
        }
    }
    for (_, id) in tree.walk() {
        if let NodeKind::Dir(entries) = &tree.nodes[id].kind {
            assert!(entries.keys().all(|n| valid_name(n)));
        }
        assert!(tree.nodes[id].meta.mode <= 0o7777);
    }
    tree.link_counts();
});
