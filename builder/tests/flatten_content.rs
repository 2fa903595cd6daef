//! Streaming file contents back out: from the layers a tree was flattened from
//! (`LayerContent`), and from the spool a build sets them aside in (`Spool`).

mod flatten_support;

use std::collections::BTreeMap;
use std::io;

use builder::image::Compression;
use builder::image::decompress::{DecompressError, LayerReader, Limits};
use builder::image::flatten::{FlattenError, apply_tar_spooled, flatten};
use builder::image::layer_content::{LayerContent, LayerContentError};
use builder::image::spool::Spool;
use builder::image::tar::TarError;
use builder::tree::{Content, ContentSource, Meta, Node, NodeId, NodeKind, ROOT, Tree};
use flatten_support::{Tar, gzip, layer, zstd};

fn collect(src: &mut dyn ContentSource, tree: &Tree) -> io::Result<BTreeMap<NodeId, Vec<u8>>> {
    let mut out = BTreeMap::new();
    src.stream(tree, &mut |node, r| {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        assert!(out.insert(node, v).is_none(), "node {node} streamed twice");
        Ok(())
    })?;
    Ok(out)
}

/// A gzip layer and a zstd layer over it: files replaced (twice in one layer), a hardlink to a
/// 3 MB file, a mostly-zero 5 MiB file, a whiteout and an empty file. Returns the layers and the
/// big and sparse files' bytes.
fn two_layers(dir: &std::path::Path) -> (Vec<builder::image::Layer>, Vec<u8>, Vec<u8>) {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut sparse = vec![0u8; 5 << 20];
    sparse[(3 << 20) + 7] = 1;
    let l0 = Tar::new()
        .file("a", b"old a")
        .file("big", &big)
        .file("sparse", &sparse)
        .file("gone", b"gone")
        .finish();
    let l1 = Tar::new()
        .file("a", b"first new a")
        .file("a", b"final a")
        .hardlink("big2", "big")
        .file(".wh.gone", b"")
        .file("empty", b"")
        .finish();
    let layers = vec![
        layer(dir, &gzip(&l0), Compression::Gzip, &l0),
        layer(dir, &zstd(&l1), Compression::Zstd, &l1),
    ];
    (layers, big, sparse)
}

#[test]
fn streams_final_contents_once_per_node() {
    let d = tempfile::tempdir().unwrap();
    let (layers, big, _) = two_layers(d.path());
    let mut tree = flatten(&layers, &Limits::default()).unwrap();
    // Generated files live alongside layer contents.
    let inline = tree.push(Node {
        kind: NodeKind::File {
            size: 3,
            content: Content::Inline(b"gen"[..].into()),
        },
        meta: Meta::with_mode(0o644),
    });
    tree.link(ROOT, b"generated", inline);
    let mut src = LayerContent::new(layers, Limits::default());
    let got = collect(&mut src, &tree).unwrap();
    let at = |p: &[u8]| tree.resolve(p).unwrap();
    assert_eq!(got.len(), 5, "a, big (= big2), sparse, empty, generated");
    assert_eq!(got[&at(b"a")], b"final a");
    assert_eq!(got[&at(b"big2")], big);
    assert_eq!(got[&at(b"empty")], b"");
    assert_eq!(got[&inline], b"gen");
}

#[test]
fn blob_changed_after_flatten_is_caught() {
    let d = tempfile::tempdir().unwrap();
    let l0 = Tar::new().file("a", b"aaaa").finish();
    let layers = vec![layer(d.path(), &l0, Compression::None, &l0)];
    let tree = flatten(&layers, &Limits::default()).unwrap();
    // Same shape, different bytes: the diff_id check of the second pass catches it.
    let evil = Tar::new().file("a", b"bbbb").finish();
    std::fs::write(&layers[0].blob, &evil).unwrap();
    let e = collect(&mut LayerContent::new(layers, Limits::default()), &tree).unwrap_err();
    let inner = DecompressError::from_io(e).expect("a decompress error");
    assert!(
        matches!(inner, DecompressError::DiffIdMismatch { .. }),
        "{inner}"
    );
}

#[test]
fn unknown_layer_is_an_error() {
    let mut tree = Tree::new(Meta::with_mode(0o755));
    let f = tree.push(Node {
        kind: NodeKind::File {
            size: 1,
            content: Content::Layer { layer: 3, entry: 0 },
        },
        meta: Meta::with_mode(0o644),
    });
    tree.link(ROOT, b"f", f);
    let e = collect(&mut LayerContent::new(Vec::new(), Limits::default()), &tree).unwrap_err();
    let inner = e.into_inner().unwrap();
    assert!(matches!(
        inner.downcast_ref::<LayerContentError>(),
        Some(LayerContentError::NoSuchLayer { layer: 3, count: 0 })
    ));
}

/// Flattens like the build does: one pass per layer, file contents set aside in a spool.
fn flatten_spooled(
    layers: &[builder::image::Layer],
    spool: &mut Spool,
) -> Result<Tree, FlattenError> {
    let mut tree = Tree::new(Meta::with_mode(0o755));
    for (i, l) in layers.iter().enumerate() {
        let r = LayerReader::open(l, &Limits::default())?;
        let r = apply_tar_spooled(&mut tree, i, &l.digest, r, spool)?;
        r.finish()?;
    }
    Ok(tree)
}

#[test]
fn spooled_contents_equal_the_layers_contents() {
    let d = tempfile::tempdir().unwrap();
    let (layers, big, sparse) = two_layers(d.path());
    let by_path = |tree: &Tree, got: BTreeMap<NodeId, Vec<u8>>| {
        let mut m = BTreeMap::new();
        for (path, id) in tree.walk() {
            if let Some(v) = got.get(&id) {
                m.insert(path.to_vec(), v.clone());
            }
        }
        m
    };
    let plain = flatten(&layers, &Limits::default()).unwrap();
    let want = collect(
        &mut LayerContent::new(layers.clone(), Limits::default()),
        &plain,
    )
    .unwrap();
    let mut spool = Spool::new_in(d.path()).unwrap();
    let tree = flatten_spooled(&layers, &mut spool).unwrap();
    for (_, id) in tree.walk() {
        if let NodeKind::File { content, .. } = &tree.nodes[id].kind {
            assert!(matches!(content, Content::Spooled { offset } if offset % 4096 == 0));
        }
    }
    let got = collect(&mut spool, &tree).unwrap();
    let (want, got) = (by_path(&plain, want), by_path(&tree, got));
    assert_eq!(got.len(), 4, "a, big (= big2), sparse, empty");
    assert_eq!(got, want);
    assert_eq!(got[&b"sparse"[..]], sparse);
    // The overwritten and whited-out files were spooled too (one pass), never streamed.
    assert!(spool.len() >= (big.len() + sparse.len()) as u64);
}

#[test]
fn spooling_a_damaged_layer_names_the_damage() {
    let d = tempfile::tempdir().unwrap();
    let data = vec![7u8; 100_000];
    let full = Tar::new().file("f", &data).finish();
    // Cut inside the file's data: a truncated tar, whatever the compression.
    let cut = &full[..50_000];
    let mut spool = Spool::new_in(d.path()).unwrap();
    let plain = layer(d.path(), cut, Compression::None, cut);
    let e = flatten_spooled(&[plain], &mut spool).unwrap_err();
    assert!(
        matches!(
            e,
            FlattenError::Tar {
                source: TarError::Truncated(_),
                ..
            }
        ),
        "{e}"
    );
    // A corrupt gzip stream is a decompression error, not a spool error.
    let mut gz = gzip(&full);
    let mid = gz.len() / 2;
    gz[mid] ^= 0xff;
    gz[mid + 1] ^= 0xff;
    let bad = layer(d.path(), &gz, Compression::Gzip, &full);
    let e = flatten_spooled(&[bad], &mut spool).unwrap_err();
    assert!(matches!(e, FlattenError::Decompress(_)), "{e}");
}
