//! Layer application rules (`builder::image::flatten`), one test per rule.

mod flatten_support;

use std::collections::BTreeMap;

use builder::image::flatten::{FlattenError, PathProblem, apply_tar, normalize};
use builder::tree::{Content, Meta, NodeId, NodeKind, ROOT, Tree};
use flatten_support::{H, Tar};

fn apply(layers: &[Vec<u8>]) -> Result<Tree, FlattenError> {
    let mut t = Tree::new(Meta::with_mode(0o755));
    for (i, l) in layers.iter().enumerate() {
        apply_tar(&mut t, i, &format!("sha256:layer{i}"), &l[..])?;
    }
    Ok(t)
}

/// Every path (hardlinks included) to its node.
fn listing(t: &Tree) -> BTreeMap<String, NodeId> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), ROOT)];
    while let Some((p, id)) = stack.pop() {
        if let Some(e) = t.entries(id) {
            for (name, &c) in e {
                let cp = if p.is_empty() {
                    String::from_utf8_lossy(name).into_owned()
                } else {
                    format!("{p}/{}", String::from_utf8_lossy(name))
                };
                out.insert(cp.clone(), c);
                stack.push((cp, c));
            }
        }
    }
    out
}

fn paths(t: &Tree) -> Vec<String> {
    listing(t).into_keys().collect()
}

fn node<'a>(t: &'a Tree, p: &str) -> &'a builder::tree::Node {
    &t.nodes[t
        .resolve(p.as_bytes())
        .unwrap_or_else(|| panic!("{p} missing"))]
}

#[test]
fn kinds_and_metadata_are_kept() {
    let mut l = Tar::new();
    l.dir("./", 0o755)
        .dir("./etc/", 0o750)
        .file_mode("./bin/su", b"su", 0o4755);
    let mut h = H::new(b"dev/tty", b'3');
    (h.devmajor, h.devminor, h.mode, h.uid, h.gid) = (5, 0, 0o666, 0, 5);
    l.entry(h, b"");
    let mut h = H::new(b"dev/sda", b'4');
    (h.devmajor, h.devminor) = (8, 1);
    l.entry(h, b"");
    l.entry(H::new(b"run/fifo", b'6'), b"");
    l.symlink("etc/link", "../bin/su")
        .hardlink("bin/su2", "bin/su");
    l.pax(&[
        (b"SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
        (b"uid", b"70000"),
    ])
    .file_mode("bin/ping", b"ping", 0o1755);
    let t = apply(&[l.finish()]).unwrap();
    assert_eq!(
        paths(&t),
        [
            "bin", "bin/ping", "bin/su", "bin/su2", "dev", "dev/sda", "dev/tty", "etc", "etc/link",
            "run", "run/fifo"
        ]
    );
    assert_eq!(node(&t, "etc").meta.mode, 0o750);
    let su = node(&t, "bin/su");
    assert_eq!(su.meta.mode, 0o4755);
    assert!(matches!(
        su.kind,
        NodeKind::File {
            size: 2,
            content: Content::Layer { layer: 0, entry: 2 }
        }
    ));
    assert_eq!(t.resolve(b"bin/su"), t.resolve(b"bin/su2"));
    assert_eq!(
        node(&t, "dev/tty").kind,
        NodeKind::CharDevice { major: 5, minor: 0 }
    );
    assert_eq!(node(&t, "dev/tty").meta.gid, 5);
    assert_eq!(
        node(&t, "dev/sda").kind,
        NodeKind::BlockDevice { major: 8, minor: 1 }
    );
    assert_eq!(node(&t, "run/fifo").kind, NodeKind::Fifo);
    assert_eq!(
        node(&t, "etc/link").kind,
        NodeKind::Symlink(b"../bin/su".to_vec())
    );
    let ping = node(&t, "bin/ping");
    assert_eq!((ping.meta.mode, ping.meta.uid), (0o1755, 70000));
    assert_eq!(
        ping.meta.xattrs[&b"security.capability"[..]],
        b"\x01\x00\x00\x02"
    );
    // Implicit parents: 0755 root.
    assert_eq!(node(&t, "bin").meta, Meta::with_mode(0o755));
    assert_eq!(node(&t, "bin/su").meta.mtime, 1_600_000_000);
}

#[test]
fn whiteout_hides_lower_only() {
    let mut l0 = Tar::new();
    l0.file("a", b"1").file("b", b"1").file("c", b"1");
    let mut l1 = Tar::new();
    // Whiteout before and after a same-layer entry of the same name.
    l1.file(".wh.a", b"")
        .file("a", b"2")
        .file("b", b"2")
        .file(".wh.b", b"")
        .file(".wh.c", b"");
    let t = apply(&[l0.finish(), l1.finish()]).unwrap();
    assert_eq!(paths(&t), ["a", "b"]);
    for p in ["a", "b"] {
        assert!(matches!(
            node(&t, p).kind,
            NodeKind::File {
                content: Content::Layer { layer: 1, .. },
                ..
            }
        ));
    }
}

#[test]
fn whiteout_of_directory_removes_subtree() {
    let mut l0 = Tar::new();
    l0.file("d/x/y", b"1").file("d/z", b"1").file("keep", b"");
    let mut l1 = Tar::new();
    l1.file(".wh.d", b"").file("nodir/.wh.q", b"");
    let t = apply(&[l0.finish(), l1.finish()]).unwrap();
    // Whiteouts never create anything.
    assert_eq!(paths(&t), ["keep"]);
}

#[test]
fn whiteout_of_dir_rewritten_in_same_layer_keeps_upper_only() {
    let mut l0 = Tar::new();
    l0.file("d/old", b"1");
    let mut l1 = Tar::new();
    l1.dir("d/", 0o700).file("d/new", b"2").file(".wh.d", b"");
    let t = apply(&[l0.finish(), l1.finish()]).unwrap();
    assert_eq!(paths(&t), ["d", "d/new"]);
    assert_eq!(node(&t, "d").meta.mode, 0o700);
}

#[test]
fn opaque_applies_before_the_layer_whatever_the_order() {
    for opaque_first in [true, false] {
        let mut l0 = Tar::new();
        l0.file("d/old", b"1")
            .file("d/sub/deep", b"1")
            .file("other/x", b"1");
        let mut l1 = Tar::new();
        if opaque_first {
            l1.file("d/.wh..wh..opq", b"");
        }
        l1.file("d/new", b"2").file("d/sub/fresh", b"2");
        if !opaque_first {
            l1.file("d/.wh..wh..opq", b"");
        }
        let t = apply(&[l0.finish(), l1.finish()]).unwrap();
        assert_eq!(
            paths(&t),
            ["d", "d/new", "d/sub", "d/sub/fresh", "other", "other/x"],
            "opaque first: {opaque_first}"
        );
    }
}

#[test]
fn other_whiteout_metadata_is_ignored() {
    let mut l0 = Tar::new();
    l0.file("a", b"1");
    let mut l1 = Tar::new();
    l1.file(".wh..wh.plnk/123", b"").file(".wh..wh.aufs", b"");
    let t = apply(&[l0.finish(), l1.finish()]).unwrap();
    // `.wh..wh.plnk/123`'s last component is not a whiteout: it is an ordinary file under an
    // oddly named directory, as umoci unpacks it. The top-level `.wh..wh.aufs` is skipped.
    assert_eq!(paths(&t), [".wh..wh.plnk", ".wh..wh.plnk/123", "a"]);
}

#[test]
fn replacement_rules() {
    let mut l0 = Tar::new();
    l0.dir("d/", 0o755)
        .file("d/keep", b"1")
        .dir("gone/", 0o755)
        .file("gone/x", b"1")
        .file("f", b"1");
    let mut l1 = Tar::new();
    let mut h = H::new(b"d/", b'5');
    (h.mode, h.uid) = (0o700, 7);
    l1.entry(h, b"");
    l1.file("gone", b"now a file")
        .dir("f/", 0o711)
        .file("f/in", b"");
    let t = apply(&[l0.finish(), l1.finish()]).unwrap();
    assert_eq!(paths(&t), ["d", "d/keep", "f", "f/in", "gone"]);
    assert_eq!(
        (node(&t, "d").meta.mode, node(&t, "d").meta.uid),
        (0o700, 7)
    );
    assert!(matches!(
        node(&t, "gone").kind,
        NodeKind::File { size: 10, .. }
    ));
    assert_eq!(node(&t, "f").meta.mode, 0o711);
}

#[test]
fn duplicates_in_one_layer_later_wins() {
    let mut l = Tar::new();
    l.file("x", b"first")
        .file("x", b"second!")
        .dir("d/", 0o700)
        .dir("d/", 0o755);
    let t = apply(&[l.finish()]).unwrap();
    assert!(matches!(
        node(&t, "x").kind,
        NodeKind::File {
            size: 7,
            content: Content::Layer { layer: 0, entry: 1 }
        }
    ));
    assert_eq!(node(&t, "d").meta.mode, 0o755);
}

#[test]
fn root_entry_sets_root_attributes() {
    let mut l = Tar::new();
    let mut h = H::new(b"./", b'5');
    h.mode = 0o711;
    l.entry(h, b"");
    let t = apply(&[l.finish()]).unwrap();
    assert_eq!(t.nodes[ROOT].meta.mode, 0o711);
}

#[test]
fn hardlinks_across_layers_and_to_symlinks() {
    let mut l0 = Tar::new();
    l0.file("usr/bin/a", b"aaa").symlink("s", "usr/bin/a");
    let mut l1 = Tar::new();
    l1.hardlink("./b", "./usr/bin/a")
        .hardlink("s2", "s")
        .file(".wh.usr", b"");
    let t = apply(&[l0.finish(), l1.finish()]).unwrap();
    // The whiteout removed a name, not the inode still named by `b`.
    assert_eq!(paths(&t), ["b", "s", "s2"]);
    assert!(matches!(
        node(&t, "b").kind,
        NodeKind::File {
            size: 3,
            content: Content::Layer { layer: 0, entry: 0 }
        }
    ));
    assert_eq!(t.resolve(b"s"), t.resolve(b"s2"));
    assert_eq!(t.link_counts()[t.resolve(b"s").unwrap()], 2);
}

#[test]
fn paths_are_normalised_lexically() {
    assert_eq!(
        normalize(b"./a//b/./c/../d").unwrap(),
        [&b"a"[..], b"b", b"d"]
    );
    assert_eq!(normalize(b"a/..").unwrap(), Vec::<&[u8]>::new());
    assert_eq!(normalize(b"../a"), Err(PathProblem::Escape));
    assert_eq!(normalize(b"/a"), Err(PathProblem::Absolute));
    assert_eq!(normalize(b""), Err(PathProblem::Invalid));
    assert_eq!(normalize(b"a\0b"), Err(PathProblem::Invalid));
    let mut l = Tar::new();
    l.file("a/../b", b"").file("./c//d", b"");
    let t = apply(&[l.finish()]).unwrap();
    assert_eq!(paths(&t), ["b", "c", "c/d"]);
}

#[test]
fn pax_and_gnu_names_reach_the_tree() {
    let long = format!("{}/file", "d".repeat(200));
    let mut l = Tar::new();
    l.long_name(long.as_bytes()).file("trunc", b"x");
    l.pax(&[(b"path", "é/ü".as_bytes()), (b"mtime", b"-1.25")])
        .file("ignored", b"");
    let t = apply(&[l.finish()]).unwrap();
    assert!(t.resolve(long.as_bytes()).is_some());
    let n = node(&t, "é/ü");
    assert_eq!((n.meta.mtime, n.meta.mtime_nsec), (-2, 750_000_000));
}
