//! Hostile layers, each built here as bytes, each with the error it must give. No panics.

mod flatten_support;

use builder::image::Compression;
use builder::image::decompress::{DecompressError, Limits, sha256_digest};
use builder::image::flatten::{FlattenError, apply_tar, apply_tar_with_budget, flatten};
use builder::image::tar::{MAX_META_SIZE, TarError};
use builder::tree::{Meta, Tree};
use flatten_support::{H, Tar, fix_checksum, gzip, layer, octal, zstd};

fn apply(layers: &[Vec<u8>]) -> Result<Tree, FlattenError> {
    let mut t = Tree::new(Meta::with_mode(0o755));
    for (i, l) in layers.iter().enumerate() {
        apply_tar(&mut t, i, &format!("sha256:layer{i}"), &l[..])?;
    }
    Ok(t)
}

fn one(t: &mut Tar) -> Result<Tree, FlattenError> {
    apply(&[t.finish()])
}

fn tar_err(r: Result<Tree, FlattenError>) -> TarError {
    match r {
        Err(FlattenError::Tar { source, .. }) => source,
        other => panic!("expected a tar error, got {other:?}"),
    }
}

macro_rules! assert_err {
    ($r:expr, $pat:pat) => {{
        let r = $r;
        assert!(matches!(r, Err($pat)), "got {r:?}");
        let msg = r.unwrap_err().to_string();
        assert!(!msg.contains('\n'), "one-line message: {msg}");
        msg
    }};
}

#[test]
fn dotdot_escape() {
    let msg = assert_err!(
        one(Tar::new().file("../etc/passwd", b"x")),
        FlattenError::PathEscape { .. }
    );
    assert!(
        msg.contains("sha256:layer0") && msg.contains("../etc/passwd"),
        "{msg}"
    );
    assert_err!(
        one(Tar::new().file("a/../../x", b"x")),
        FlattenError::PathEscape { .. }
    );
    assert_err!(
        one(Tar::new().dir("./..", 0o755)),
        FlattenError::PathEscape { .. }
    );
}

#[test]
fn absolute_path() {
    assert_err!(
        one(Tar::new().file("/etc/passwd", b"x")),
        FlattenError::AbsolutePath { .. }
    );
}

#[test]
fn symlink_then_file_same_layer() {
    let mut t = Tar::new();
    t.symlink("link", "/etc").file("link/passwd", b"owned");
    assert_err!(one(&mut t), FlattenError::SymlinkInPath { .. });
    let mut t = Tar::new();
    t.symlink("up", "..").file("up/x", b"owned");
    assert_err!(one(&mut t), FlattenError::SymlinkInPath { .. });
}

#[test]
fn symlink_then_file_across_layers() {
    let mut l0 = Tar::new();
    l0.symlink("etc", "/host/etc");
    let mut l1 = Tar::new();
    l1.file("etc/shadow", b"x");
    assert_err!(
        apply(&[l0.finish(), l1.finish()]),
        FlattenError::SymlinkInPath { .. }
    );
}

#[test]
fn whiteout_through_symlink() {
    let mut l0 = Tar::new();
    l0.file("real/x", b"").symlink("link", "real");
    let mut l1 = Tar::new();
    l1.file("link/.wh.x", b"");
    assert_err!(
        apply(&[l0.finish(), l1.finish()]),
        FlattenError::SymlinkInPath { .. }
    );
}

#[test]
fn hardlink_to_missing() {
    assert_err!(
        one(Tar::new().hardlink("a", "nothing")),
        FlattenError::HardlinkMissing { .. }
    );
}

#[test]
fn hardlink_to_directory() {
    let mut t = Tar::new();
    t.dir("d/", 0o755).hardlink("a", "d");
    assert_err!(one(&mut t), FlattenError::HardlinkToDir { .. });
    assert_err!(
        one(Tar::new().hardlink("a", ".")),
        FlattenError::HardlinkToDir { .. }
    );
}

#[test]
fn hardlink_outside() {
    assert_err!(
        one(Tar::new().hardlink("a", "../../etc/shadow")),
        FlattenError::HardlinkOutside { .. }
    );
    assert_err!(
        one(Tar::new().hardlink("a", "/etc/shadow")),
        FlattenError::HardlinkOutside { .. }
    );
}

#[test]
fn hardlink_through_symlink() {
    let mut t = Tar::new();
    t.file("real/f", b"")
        .symlink("s", "real")
        .hardlink("a", "s/f");
    assert_err!(one(&mut t), FlattenError::SymlinkInPath { .. });
}

#[test]
fn bare_whiteout() {
    assert_err!(
        one(Tar::new().file(".wh.", b"")),
        FlattenError::BareWhiteout { .. }
    );
    assert_err!(
        one(Tar::new().file("d/.wh.", b"")),
        FlattenError::BareWhiteout { .. }
    );
}

#[test]
fn whiteout_of_root() {
    assert_err!(
        one(Tar::new().file(".wh..", b"")),
        FlattenError::WhiteoutRoot { .. }
    );
    assert_err!(
        one(Tar::new().file("./.wh...", b"")),
        FlattenError::WhiteoutRoot { .. }
    );
    assert_err!(
        one(Tar::new().file("d/.wh..", b"")),
        FlattenError::InvalidWhiteout { .. }
    );
}

#[test]
fn root_replaced_by_file_or_link() {
    assert_err!(
        one(Tar::new().file("./", b"")),
        FlattenError::RootNotDir { .. }
    );
    assert_err!(
        one(Tar::new().symlink(".", "/")),
        FlattenError::RootNotDir { .. }
    );
}

#[test]
fn file_under_a_file() {
    let mut t = Tar::new();
    t.file("f", b"").file("f/child", b"");
    assert_err!(one(&mut t), FlattenError::NotADirectory { .. });
}

#[test]
fn duplicate_entries_later_wins() {
    let mut t = Tar::new();
    t.file("x", b"one")
        .symlink("x", "elsewhere")
        .file("x", b"three");
    let tree = one(&mut t).unwrap();
    let n = &tree.nodes[tree.resolve(b"x").unwrap()];
    assert!(matches!(
        n.kind,
        builder::tree::NodeKind::File { size: 5, .. }
    ));
}

#[test]
fn pax_size_disagrees_with_header() {
    let mut t = Tar::new();
    t.pax(&[(b"size", b"0")]).file("f", &[1u8; 600]);
    assert!(matches!(
        tar_err(one(&mut t)),
        TarError::SizeConflict {
            header: 600,
            pax: 0
        }
    ));
}

#[test]
fn huge_pax_record() {
    // Only the header: the claim alone must be refused, before allocating or reading.
    let mut h = H::new(b"PaxHeaders/f", b'x');
    h.size = (8 << 30) - 1;
    let mut t = Tar::new();
    t.raw(h.block(), b"");
    assert!(matches!(
        tar_err(one(&mut t)),
        TarError::MetaTooLarge { .. }
    ));
    // A record whose length points past its header's data.
    let mut h = H::new(b"PaxHeaders/f", b'x');
    let data = b"999999 path=x\n";
    h.size = data.len() as u64;
    let mut t = Tar::new();
    t.raw(h.block(), data).file("f", b"");
    assert!(matches!(tar_err(one(&mut t)), TarError::Pax(_)));
}

#[test]
fn huge_gnu_longname() {
    let mut h = H::new(b"././@LongLink", b'L');
    h.size = MAX_META_SIZE + 1;
    h.gnu = true;
    let mut t = Tar::new();
    t.raw(h.block(), b"");
    assert!(matches!(
        tar_err(one(&mut t)),
        TarError::MetaTooLarge { .. }
    ));
}

#[test]
fn endless_metadata_chain() {
    let mut t = Tar::new();
    for _ in 0..100 {
        t.pax(&[(b"comment", b"x")]);
    }
    t.file("f", b"");
    assert!(matches!(tar_err(one(&mut t)), TarError::MetaChain));
    let mut t = Tar::new();
    t.pax(&[(b"path", b"x")]);
    assert!(matches!(tar_err(one(&mut t)), TarError::DanglingMeta));
}

#[test]
fn bad_checksum() {
    let mut b = H::new(b"f", b'0').block();
    b[1] = b'!';
    let mut t = Tar::new();
    t.raw(b, b"");
    assert!(matches!(tar_err(one(&mut t)), TarError::Checksum { .. }));
}

#[test]
fn truncated_tar() {
    let mut t = Tar::new();
    t.file("f", &[9u8; 5000]);
    let mut bytes = t.buf.clone();
    bytes.truncate(2000);
    assert!(matches!(tar_err(apply(&[bytes])), TarError::Truncated(_)));
    let mut bytes = t.buf.clone();
    bytes.truncate(300);
    assert!(matches!(
        tar_err(apply(&[bytes])),
        TarError::Truncated("header")
    ));
}

#[test]
fn non_octal_numbers() {
    let mut b = H::new(b"f", b'0').block();
    b[124..136].copy_from_slice(b"0000000008x\0");
    fix_checksum(&mut b);
    let mut t = Tar::new();
    t.raw(b, b"");
    assert!(matches!(tar_err(one(&mut t)), TarError::Number("size")));
    let mut b = H::new(b"f", b'0').block();
    b[108..116].copy_from_slice(b"-000001\0");
    fix_checksum(&mut b);
    let mut t = Tar::new();
    t.raw(b, b"");
    assert!(matches!(tar_err(one(&mut t)), TarError::Number("uid")));
}

#[test]
fn negative_numbers() {
    // A negative mtime (base-256) is a real time before 1970: kept.
    let mut b = H::new(b"old", b'0').block();
    let mut field = [0xffu8; 12];
    field[4..].copy_from_slice(&(-86400i64).to_be_bytes());
    b[136..148].copy_from_slice(&field);
    fix_checksum(&mut b);
    let mut t = Tar::new();
    t.raw(b, b"");
    let tree = one(&mut t).unwrap();
    assert_eq!(tree.nodes[tree.resolve(b"old").unwrap()].meta.mtime, -86400);
    // A negative size is not.
    let mut b = H::new(b"f", b'0').block();
    b[124..136].copy_from_slice(&field);
    fix_checksum(&mut b);
    let mut t = Tar::new();
    t.raw(b, b"");
    assert!(matches!(tar_err(one(&mut t)), TarError::Number("size")));
}

#[test]
fn ids_out_of_range() {
    let mut t = Tar::new();
    t.pax(&[(b"uid", b"4294967296")]).file("f", b"");
    assert_err!(one(&mut t), FlattenError::OutOfRange { field: "uid", .. });
    let mut h = H::new(b"dev", b'3');
    let mut b = {
        h.devmajor = 1;
        h.block()
    };
    b[329..337].copy_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 0]);
    fix_checksum(&mut b);
    let mut t = Tar::new();
    t.raw(b, b"");
    assert_err!(
        one(&mut t),
        FlattenError::OutOfRange {
            field: "devmajor",
            ..
        }
    );
}

#[test]
fn sparse_files_unsupported() {
    let mut t = Tar::new();
    t.entry(H::new(b"sparse", b'S'), b"");
    assert!(matches!(tar_err(one(&mut t)), TarError::Unsupported(_)));
    let mut t = Tar::new();
    t.pax(&[(b"GNU.sparse.major", b"1")]).file("f", b"");
    assert!(matches!(tar_err(one(&mut t)), TarError::Unsupported(_)));
}

#[test]
fn data_on_header_only_entry() {
    let mut h = H::new(b"s", b'2');
    h.link = b"t".to_vec();
    h.size = 512;
    let mut t = Tar::new();
    t.entry(h, &[0x41; 512]);
    assert!(matches!(
        tar_err(one(&mut t)),
        TarError::DataOnHeaderOnly { .. }
    ));
}

#[test]
fn unknown_type_and_bad_symlinks() {
    let mut t = Tar::new();
    t.entry(H::new(b"weird", b'Z'), b"");
    assert_err!(
        one(&mut t),
        FlattenError::UnsupportedType { typeflag: 'Z', .. }
    );
    assert_err!(
        one(Tar::new().symlink("s", "")),
        FlattenError::BadSymlink { .. }
    );
    let mut t = Tar::new();
    t.pax(&[(b"linkpath", b"a\0b")]).symlink("s", "x");
    assert_err!(one(&mut t), FlattenError::BadSymlink { .. });
}

#[test]
fn invalid_names() {
    let mut t = Tar::new();
    t.pax(&[(b"path", b"a\0/etc/passwd")]).file("x", b"");
    assert_err!(one(&mut t), FlattenError::InvalidPath { .. });
    let long = "n".repeat(256);
    let mut t = Tar::new();
    t.pax(&[(b"path", long.as_bytes())]).file("x", b"");
    assert_err!(one(&mut t), FlattenError::InvalidPath { .. });
    let deep = "a/".repeat(3000);
    let mut t = Tar::new();
    t.pax(&[(b"path", deep.as_bytes())]).file("x", b"");
    assert_err!(one(&mut t), FlattenError::InvalidPath { .. });
}

#[test]
fn oversized_xattrs() {
    let big = vec![b'v'; 65537];
    let mut t = Tar::new();
    t.pax(&[(b"SCHILY.xattr.user.big", &big)]).file("f", b"");
    assert_err!(one(&mut t), FlattenError::BadXattr { .. });
    let name = format!("SCHILY.xattr.user.{}", "n".repeat(300));
    let mut t = Tar::new();
    t.pax(&[(name.as_bytes(), b"v")]).file("f", b"");
    assert_err!(one(&mut t), FlattenError::BadXattr { .. });
}

#[test]
fn metadata_bomb() {
    // Many entries each carrying 60 KiB of xattrs: the layer's metadata budget stops it.
    let value = vec![b'v'; 60 << 10];
    let mut t = Tar::new();
    for i in 0..40 {
        t.pax(&[(b"SCHILY.xattr.user.v", &value)])
            .file(&format!("f{i}"), b"");
    }
    let bytes = t.finish();
    let mut tree = Tree::new(Meta::with_mode(0o755));
    let r = apply_tar_with_budget(&mut tree, 0, "sha256:l", &bytes[..], 1 << 20);
    assert!(matches!(r, Err(FlattenError::MetadataTooLarge { limit, .. }) if limit == 1 << 20));
    let mut tree = Tree::new(Meta::with_mode(0o755));
    assert!(apply_tar(&mut tree, 0, "sha256:l", &bytes[..]).is_ok());
}

#[test]
fn end_marker_followed_by_garbage() {
    let mut t = Tar::new();
    t.file("f", b"");
    let mut bytes = t.buf.clone();
    bytes.extend_from_slice(&[0u8; 512]);
    bytes.extend_from_slice(&H::new(b"smuggled", b'0').block());
    assert!(matches!(tar_err(apply(&[bytes])), TarError::BadEnd));
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn media_type_disagrees_with_magic() {
    let d = tmp();
    let tar = Tar::new().file("f", b"x").finish();
    let mut l = layer(d.path(), &tar, Compression::Gzip, &tar);
    let msg = assert_err!(
        flatten(&[l.clone()], &Limits::default()),
        FlattenError::Decompress(DecompressError::MagicMismatch { .. })
    );
    assert!(msg.contains(&l.digest), "{msg}");
    l = layer(d.path(), &gzip(&tar), Compression::Zstd, &tar);
    assert_err!(
        flatten(&[l], &Limits::default()),
        FlattenError::Decompress(DecompressError::MagicMismatch { .. })
    );
    l = layer(d.path(), &zstd(&tar), Compression::None, &tar);
    assert_err!(
        flatten(&[l], &Limits::default()),
        FlattenError::Decompress(DecompressError::MagicMismatch { .. })
    );
}

#[test]
fn gzip_bomb() {
    // 64 MiB of zeros inside one entry gzips to ~64 KiB; the cap is the ratio (100x).
    let mut h = H::new(b"zeros", b'0');
    h.size = 64 << 20;
    let mut tar = h.block().to_vec();
    tar.resize(512 + (64 << 20), 0);
    tar.extend_from_slice(&[0u8; 1024]);
    let blob = gzip(&tar);
    let d = tmp();
    let l = layer(d.path(), &blob, Compression::Gzip, &tar);
    let limits = Limits {
        max_ratio: 100,
        ratio_floor: 1 << 20,
        ..Limits::default()
    };
    assert_err!(
        flatten(std::slice::from_ref(&l), &limits),
        FlattenError::Decompress(DecompressError::TooLarge { .. })
    );
    let total = Limits {
        max_expanded: 8 << 20,
        ..Limits::default()
    };
    assert_err!(
        flatten(std::slice::from_ref(&l), &total),
        FlattenError::Decompress(DecompressError::TooLarge { .. })
    );
    // The default limits let this honest (if compressible) layer through.
    flatten(&[l], &Limits::default()).unwrap();
}

#[test]
fn zstd_bomb_and_window() {
    // zstd packs runs of zeros extremely well: 512 MiB in well under 100 KiB. The default
    // floor (256 MiB) and ratio stop it.
    let mut h = H::new(b"zeros", b'0');
    h.size = 512 << 20;
    let mut enc = ::zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    use std::io::Write;
    enc.write_all(&h.block()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..512 {
        enc.write_all(&chunk).unwrap();
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    let blob = enc.finish().unwrap();
    assert!(blob.len() < 1 << 20, "{}", blob.len());
    let d = tmp();
    let mut l = layer(d.path(), &blob, Compression::Zstd, b"");
    l.diff_id = "sha256:not-checked-cap-comes-first".into();
    assert_err!(
        flatten(&[l], &Limits::default()),
        FlattenError::Decompress(DecompressError::TooLarge { .. })
    );
    // A frame asking for a 1 GiB window.
    let tar = Tar::new().file("f", b"x").finish();
    let mut enc = ::zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(::zstd::zstd_safe::CParameter::WindowLog(30))
        .unwrap();
    enc.write_all(&tar).unwrap();
    let blob = enc.finish().unwrap();
    let l = layer(d.path(), &blob, Compression::Zstd, &tar);
    assert_err!(
        flatten(&[l], &Limits::default()),
        FlattenError::Decompress(DecompressError::ZstdWindow { .. })
    );
}

#[test]
fn truncated_gzip() {
    let tar = Tar::new()
        .file(
            "f",
            &(0..60_000u32)
                .flat_map(|i| i.to_le_bytes())
                .collect::<Vec<_>>(),
        )
        .finish();
    let mut blob = gzip(&tar);
    blob.truncate(blob.len() - 100);
    let d = tmp();
    let l = layer(d.path(), &blob, Compression::Gzip, &tar);
    assert_err!(
        flatten(&[l], &Limits::default()),
        FlattenError::Decompress(DecompressError::Corrupt { .. })
    );
}

#[test]
fn diff_id_mismatch() {
    let tar = Tar::new().file("f", b"x").finish();
    let d = tmp();
    let mut l = layer(d.path(), &gzip(&tar), Compression::Gzip, &tar);
    l.diff_id = sha256_digest(b"something else");
    let msg = assert_err!(
        flatten(&[l.clone()], &Limits::default()),
        FlattenError::Decompress(DecompressError::DiffIdMismatch { .. })
    );
    assert!(
        msg.contains(&l.diff_id) && msg.contains(&sha256_digest(&tar)),
        "{msg}"
    );
    // Bytes after the end marker count in the diff_id too.
    let mut padded = tar.clone();
    padded.extend_from_slice(&[0u8; 8192]);
    let mut l = layer(d.path(), &gzip(&padded), Compression::Gzip, &padded);
    flatten(&[l.clone()], &Limits::default()).unwrap();
    l.diff_id = sha256_digest(&tar);
    assert_err!(
        flatten(&[l], &Limits::default()),
        FlattenError::Decompress(DecompressError::DiffIdMismatch { .. })
    );
}

#[test]
fn mutated_layers_never_panic() {
    let mut base = Tar::new();
    base.dir("d/", 0o755)
        .file("d/f", b"contents")
        .symlink("s", "d/f")
        .hardlink("h", "d/f")
        .pax(&[
            (b"path", b"p/q"),
            (b"SCHILY.xattr.user.x", b"y"),
            (b"mtime", b"1.5"),
        ])
        .file("x", b"data")
        .long_name(b"long/name/here")
        .file("y", b"")
        .file(".wh.gone", b"")
        .file("d/.wh..wh..opq", b"");
    let base = base.finish();
    apply(std::slice::from_ref(&base)).unwrap();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        let mut m = base.clone();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % m.len();
            m[at] = next() as u8;
        }
        // Keep checksums right half the time so mutations reach the deeper parsers.
        if next() % 2 == 0 {
            for blk in m.chunks_exact_mut(512) {
                let b: &mut [u8; 512] = blk.try_into().unwrap();
                if b.iter().any(|&x| x != 0) {
                    fix_checksum(b);
                }
            }
        }
        if next() % 8 == 0 {
            let cut = (next() as usize) % m.len();
            m.truncate(cut);
        }
        match apply(&[m]) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().contains('\n'));
                err += 1;
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok} err {err}");
    let _ = octal;
}
