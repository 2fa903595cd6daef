//! The source parsers are pure functions of their bytes: mutated inputs must give an error or a
//! value, never a panic, and accepted references must round-trip through their canonical form.

mod sources_support;

use std::io::Cursor;
use std::path::Path;

use builder::image::auth::lookup_auths;
use builder::image::config::ImageConfig;
use builder::image::docker_archive::{index_tar, parse_manifest};
use builder::image::manifest::Manifest;
use builder::image::oci_layout::parse_layout_file;
use builder::image::reference::{ImageReference, RegistryReference};
use sources_support::*;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], alphabet: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = alphabet[rng.below(alphabet.len())];
            }
            1 if !v.is_empty() => {
                let n = rng.below(v.len());
                v.truncate(n);
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, alphabet[rng.below(alphabet.len())]);
            }
            _ if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => {}
        }
    }
    v
}

const ITER: usize = 3000;

#[test]
fn references_never_panic_and_round_trip() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet = b"aZ09:/@._-[]sha256:e3b0c4docker://oci:";
    let seeds: &[&[u8]] = &[
        b"alpine",
        b"docker://127.0.0.1:5000/a/b:v1",
        b"quay.io/org/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        b"[::1]:5000/x:y",
        b"oci:/tmp/lay:ref",
        b"docker-archive:/x.tar:a:b",
    ];
    let mut accepted = 0;
    for i in 0..ITER {
        let bytes = mutate(&mut rng, seeds[i % seeds.len()], alphabet);
        let Ok(s) = String::from_utf8(bytes) else {
            continue;
        };
        if let Ok(ImageReference::Registry(r)) = ImageReference::parse(&s) {
            accepted += 1;
            let again = RegistryReference::parse(&r.to_string())
                .unwrap_or_else(|e| panic!("{s:?} -> {r} does not re-parse: {e}"));
            assert_eq!(again, r, "{s:?}");
        }
    }
    assert!(accepted > 100, "mutations too destructive: {accepted}");
}

#[test]
fn documents_never_panic() {
    let mut rng = Rng(42);
    let alphabet = b"{}[]\":,0123456789abcdefsha256 \n\\layersmanifestsconfig";
    let t = tempfile::tempdir().unwrap();
    let m = standard_layout(t.path());
    let manifest = std::fs::read(t.path().join("blobs/sha256").join(m.hex())).unwrap();
    let index = std::fs::read(t.path().join("index.json")).unwrap();
    let config = serde_json::to_vec(&config_json("amd64", &[sha256(b"x")])).unwrap();
    let archive_manifest = br#"[{"Config":"c.json","RepoTags":["a:b"],"Layers":["l.tar"]}]"#;
    let authfile = br#"{"auths":{"r.io":{"auth":"dTpw"}}}"#;
    for _ in 0..ITER {
        let _ = Manifest::parse("m", &mutate(&mut rng, &manifest, alphabet), None);
        let _ = Manifest::parse("i", &mutate(&mut rng, &index, alphabet), None);
        let _ = ImageConfig::parse("c", &mutate(&mut rng, &config, alphabet));
        let _ = parse_layout_file(&mutate(
            &mut rng,
            br#"{"imageLayoutVersion":"1.0.0"}"#,
            alphabet,
        ));
        let _ = parse_manifest(&mutate(&mut rng, archive_manifest, alphabet));
        let _ = lookup_auths(
            Path::new("a"),
            &mutate(&mut rng, authfile, alphabet),
            "r.io",
        );
    }
}

#[test]
fn tar_index_never_panics() {
    let mut rng = Rng(7);
    let seed = tar_raw(&[
        ("manifest.json", b"[]", b'0', ""),
        ("blobs/sha256/aa", b"data", b'0', ""),
        ("l.tar", b"", b'2', "blobs/sha256/aa"),
    ]);
    let alphabet: Vec<u8> = (0..=255).collect();
    for _ in 0..ITER {
        let mut v = seed.clone();
        // Flip header bytes mostly (sizes, checksums, type flags, names).
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(v.len().min(2048));
            v[i] = alphabet[rng.below(256)];
        }
        if rng.below(4) == 0 {
            let n = rng.below(v.len());
            v.truncate(n);
        }
        let _ = index_tar(Cursor::new(v));
    }
}
