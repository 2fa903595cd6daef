//! ext4 writer: every node kind and attribute round-trips through the real e2fsprogs tools.

mod ext4_support;

use builder::ext4::{Ext4Error, Ext4Options, write_image, write_image_at};
use builder::tree::{Content, LocalContent, Meta, Node, NodeKind, ROOT, Tree};
use ext4_support::*;
use std::collections::BTreeMap;

fn with_xattrs(mut node: Node, xattrs: &[(&str, Vec<u8>)]) -> Node {
    for (k, v) in xattrs {
        node.meta.xattrs.insert(k.as_bytes().to_vec(), v.clone());
    }
    node
}

/// A tree exercising every kind of node and attribute the writer supports.
fn kitchen_sink(host_dir: &std::path::Path) -> Tree {
    let mut root_meta = meta(0o755);
    root_meta.mtime = 1_700_000_000;
    let mut t = Tree::new(root_meta);
    let etc = add(&mut t, ROOT, b"etc", dir_node(0o755));
    let mut hosts = file_node(b"127.0.0.1 localhost\n", 0o644);
    hosts.meta.uid = 70_000; // needs the high uid half
    hosts.meta.gid = 123_456;
    hosts.meta.mtime = 1_234_567_890;
    hosts.meta.mtime_nsec = 987_654_321;
    let hosts = add(&mut t, etc, b"hosts", hosts);
    // Hardlinks: same dir and across dirs.
    t.link(etc, b"hosts.link", hosts);
    let bin = add(&mut t, ROOT, b"bin", dir_node(0o755));
    t.link(bin, b"hosts-again", hosts);
    // Every permission bit pattern class, on files and dirs.
    let modes = add(&mut t, ROOT, b"modes", dir_node(0o755));
    for mode in [
        0o7777, 0o4755, 0o2755, 0o1777, 0o6711, 0o0000, 0o0400, 0o5555, 0o3070,
    ] {
        add(
            &mut t,
            modes,
            format!("f{mode:04o}").as_bytes(),
            file_node(b"m", mode),
        );
        add(
            &mut t,
            modes,
            format!("d{mode:04o}").as_bytes(),
            dir_node(mode),
        );
    }
    // Empty file, empty dir, 255-byte names.
    add(&mut t, ROOT, b"empty", file_node(b"", 0o600));
    add(&mut t, ROOT, b"emptydir", dir_node(0o700));
    let long = vec![b'n'; 255];
    add(&mut t, ROOT, &long, file_node(b"long name", 0o644));
    let mut long_dir = long.clone();
    long_dir[0] = b'd';
    let ld = add(&mut t, ROOT, &long_dir, dir_node(0o755));
    add(&mut t, ld, &long, file_node(b"x", 0o644));
    // Depth 100.
    let mut d = ROOT;
    for i in 0..100 {
        d = add(&mut t, d, format!("l{i}").as_bytes(), dir_node(0o755));
    }
    add(&mut t, d, b"deep-file", file_node(b"at the bottom", 0o644));
    // Symlinks: fast (< 60 bytes) and slow.
    let sym = |target: &[u8]| Node {
        kind: NodeKind::Symlink(target.to_vec()),
        meta: meta(0o777),
    };
    add(&mut t, bin, b"sh", sym(b"busybox"));
    add(&mut t, bin, b"fifty-nine", sym(&[b'y'; 59]));
    add(&mut t, bin, b"sixty", sym(&[b'z'; 60]));
    let far = "/very/long/target/".repeat(20);
    add(&mut t, bin, b"far", sym(far.as_bytes()));
    // Devices and a fifo.
    let dev = add(&mut t, ROOT, b"dev", dir_node(0o755));
    let node = |kind| Node {
        kind,
        meta: meta(0o660),
    };
    add(
        &mut t,
        dev,
        b"null",
        node(NodeKind::CharDevice { major: 1, minor: 3 }),
    );
    add(
        &mut t,
        dev,
        b"sda",
        node(NodeKind::BlockDevice { major: 8, minor: 0 }),
    );
    add(
        &mut t,
        dev,
        b"big",
        node(NodeKind::CharDevice {
            major: 511,
            minor: 70_000,
        }),
    );
    add(
        &mut t,
        dev,
        b"nvme",
        node(NodeKind::BlockDevice {
            major: 259,
            minor: 300,
        }),
    );
    add(&mut t, dev, b"fifo", node(NodeKind::Fifo));
    // Extended attributes: in the inode, in a block, capability, ACL, on several kinds.
    let cap = {
        let mut v = vec![0u8; 20];
        v[0..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        v[4] = 0x00;
        v[5] = 0x04; // cap_net_bind_service (bit 10)
        v
    };
    add(
        &mut t,
        bin,
        b"ping",
        with_xattrs(
            file_node(b"\x7fELF ping", 0o755),
            &[("security.capability", cap.clone())],
        ),
    );
    add(
        &mut t,
        ROOT,
        b"xattr-inline",
        with_xattrs(
            file_node(b"a", 0o644),
            &[("user.a", b"1".to_vec()), ("trusted.t", b"tv".to_vec())],
        ),
    );
    add(
        &mut t,
        ROOT,
        b"xattr-block",
        with_xattrs(
            file_node(b"b", 0o644),
            &[
                ("user.big", vec![0xAB; 3072]),
                ("user.small", b"s".to_vec()),
                ("security.selinux", b"system_u:object_r:bin_t:s0\0".to_vec()),
            ],
        ),
    );
    let acl = [
        2u32.to_le_bytes(),
        [1, 0, 7, 0],
        u32::MAX.to_le_bytes(),
        [2, 0, 5, 0],
        1000u32.to_le_bytes(),
        [4, 0, 5, 0],
        u32::MAX.to_le_bytes(),
        [0x10, 0, 5, 0],
        u32::MAX.to_le_bytes(),
        [0x20, 0, 0, 0],
        u32::MAX.to_le_bytes(),
    ]
    .concat();
    add(
        &mut t,
        ROOT,
        b"acl-dir",
        with_xattrs(
            dir_node(0o750),
            &[
                ("system.posix_acl_access", acl.clone()),
                ("system.posix_acl_default", acl),
            ],
        ),
    );
    add(
        &mut t,
        dev,
        b"xattr-fifo",
        with_xattrs(node(NodeKind::Fifo), &[("user.k", vec![1, 2, 3])]),
    );
    add(
        &mut t,
        bin,
        b"xattr-link",
        with_xattrs(sym(b"target"), &[("user.k", vec![9; 200])]),
    );
    // Host files: one spanning several blocks with a zero block in the middle.
    let host = host_dir.join("host-file");
    let mut bytes = vec![0x5Au8; 3 * 4096 + 100];
    bytes[4096..8192].fill(0);
    std::fs::write(&host, &bytes).unwrap();
    let f = t.push(Node {
        kind: NodeKind::File {
            size: bytes.len() as u64,
            content: Content::HostFile(host),
        },
        meta: meta(0o640),
    });
    t.link(ROOT, b"host-file", f);
    // Negative and post-2038 times.
    let mut old = file_node(b"old", 0o644);
    old.meta.mtime = -86_400;
    add(&mut t, ROOT, b"old", old);
    let mut future = file_node(b"future", 0o644);
    future.meta.mtime = 2_500_000_000;
    future.meta.mtime_nsec = 1;
    add(&mut t, ROOT, b"future", future);
    t
}

#[test]
fn every_node_kind_round_trips_and_fsck_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = kitchen_sink(tmp.path());
    let (img, summary) = write(&tree, tmp.path(), &Ext4Options::default());
    assert_eq!(std::fs::metadata(&img).unwrap().len(), summary.size_bytes);
    fsck_clean(&img);
    check_tree(&tree, &img);
    // Fast vs slow symlinks, holes in host files, xattr block accounting.
    assert_eq!(stat(&img, "/bin/fifty-nine").blockcount, 0);
    assert_eq!(stat(&img, "/bin/sixty").blockcount, 8);
    assert_eq!(
        stat(&img, "/host-file").blockcount,
        3 * 8,
        "zero block left as a hole"
    );
    let xb = stat(&img, "/xattr-block");
    assert_eq!(xb.blockcount, 2 * 8, "one data block + the xattr block");
    assert!(
        xb.text.contains("File ACL: ") && !xb.text.contains("File ACL: 0\n"),
        "{}",
        xb.text
    );
    let lf = stat(&img, "/lost+found");
    assert_eq!((lf.typ.as_str(), lf.mode, lf.ino), ("directory", 0o700, 11));
}

#[test]
fn image_has_metadata_csum_and_no_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = kitchen_sink(tmp.path());
    let opts = Ext4Options {
        label: "rootfs".into(),
        ..Ext4Options::default()
    };
    let (img, summary) = write(&tree, tmp.path(), &opts);
    let h = dumpe2fs_header(&img);
    let features = h
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap();
    for f in [
        "metadata_csum",
        "extent",
        "64bit",
        "dir_index",
        "filetype",
        "ext_attr",
        "flex_bg",
        "extra_isize",
    ] {
        assert!(
            features.split_whitespace().any(|w| w == f),
            "{f} missing: {features}"
        );
    }
    assert!(!features.contains("has_journal"), "{features}");
    assert!(h.contains("Filesystem volume name:   rootfs"), "{h}");
    assert!(h.contains("Checksum type:            crc32c"), "{h}");
    assert!(h.contains("Block size:               4096"), "{h}");
    assert!(h.contains("Inode size:	          256"), "{h}");
    let uuid = h
        .lines()
        .find(|l| l.starts_with("Filesystem UUID:"))
        .unwrap();
    assert!(uuid.ends_with(&hex_uuid(&summary.uuid)), "{uuid}");
    // Small: the contents plus the requested 16 MiB, well under 20 MiB.
    assert!(summary.size_bytes < 20 << 20, "{summary:?}");
}

fn hex_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[test]
fn same_tree_gives_identical_bytes_and_seed_changes_uuid() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = kitchen_sink(tmp.path());
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let (ia, sa) = write(&tree, &a, &Ext4Options::default());
    let (ib, sb) = write(&tree, &b, &Ext4Options::default());
    assert_eq!(sa, sb);
    assert!(
        std::fs::read(&ia).unwrap() == std::fs::read(&ib).unwrap(),
        "images differ"
    );
    let c = tmp.path().join("c");
    std::fs::create_dir(&c).unwrap();
    let seeded = Ext4Options {
        seed: Some(b"sha256:abc".to_vec()),
        ..Ext4Options::default()
    };
    let (ic, sc) = write(&tree, &c, &seeded);
    assert_ne!(sa.uuid, sc.uuid);
    fsck_clean(&ic);
    // A metadata change changes the derived UUID.
    let mut other = tree.clone();
    other.nodes[ROOT].meta.mode = 0o700;
    let d = tmp.path().join("d");
    std::fs::create_dir(&d).unwrap();
    let (_, sd) = write(&other, &d, &Ext4Options::default());
    assert_ne!(sa.uuid, sd.uuid);
}

/// Written at an offset inside another file (as into a pod), the image is the same bytes, what
/// lies before the offset is kept and stale bytes after it are gone (holes must read as zeros).
#[test]
fn image_written_at_an_offset_is_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = kitchen_sink(tmp.path());
    let (alone, summary) = write(&tree, tmp.path(), &Ext4Options::default());
    let alone = std::fs::read(alone).unwrap();
    let base = 3 * 4096u64;
    let path = tmp.path().join("container");
    let prefix: Vec<u8> = (0..base).map(|i| (i % 253) as u8 + 1).collect();
    let mut stale = prefix.clone();
    stale.extend(std::iter::repeat_n(0xee, alone.len() + 8192));
    std::fs::write(&path, &stale).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let at = write_image_at(&tree, &mut LocalContent, &f, base, &Ext4Options::default()).unwrap();
    assert_eq!(at, summary);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, base + summary.size_bytes);
    assert_eq!(&bytes[..base as usize], &prefix[..]);
    assert!(
        bytes[base as usize..] == alone[..],
        "image bytes differ at an offset"
    );
}

fn try_write(tree: &Tree) -> Result<(), Ext4Error> {
    let tmp = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(tmp.path().join("img")).unwrap();
    write_image(tree, &mut LocalContent, &f, &Ext4Options::default()).map(|_| ())
}

#[test]
fn wrong_content_sizes_are_errors_naming_the_path() {
    let mut t = Tree::new(meta(0o755));
    let d = add(&mut t, ROOT, b"usr", dir_node(0o755));
    let short = t.push(Node {
        kind: NodeKind::File {
            size: 10,
            content: Content::Inline(b"abc"[..].into()),
        },
        meta: meta(0o644),
    });
    t.link(d, b"short", short);
    let e = try_write(&t).unwrap_err();
    assert!(
        matches!(
            e,
            Ext4Error::ShortContent {
                got: 3,
                expected: 10,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "/usr/short: content is 3 bytes, expected 10");

    t.nodes[short].kind = NodeKind::File {
        size: 2,
        content: Content::Inline(b"abc"[..].into()),
    };
    let e = try_write(&t).unwrap_err();
    assert_eq!(e.to_string(), "/usr/short: content is longer than 2 bytes");

    let tmp = tempfile::tempdir().unwrap();
    t.nodes[short].kind = NodeKind::File {
        size: 2,
        content: Content::HostFile(tmp.path().join("missing")),
    };
    assert!(matches!(try_write(&t).unwrap_err(), Ext4Error::Source(_)));
}

#[test]
fn invalid_trees_are_refused() {
    // A directory named twice.
    let mut t = Tree::new(meta(0o755));
    let d = add(&mut t, ROOT, b"a", dir_node(0o755));
    t.link(ROOT, b"b", d);
    assert_eq!(
        try_write(&t).unwrap_err().to_string(),
        "/b: directory linked more than once"
    );
    // A lost+found that is not a directory.
    let mut t = Tree::new(meta(0o755));
    add(&mut t, ROOT, b"lost+found", file_node(b"", 0o644));
    assert!(matches!(try_write(&t).unwrap_err(), Ext4Error::LostFound));
    // Unknown xattr namespace.
    let mut t = Tree::new(meta(0o755));
    add(
        &mut t,
        ROOT,
        b"x",
        with_xattrs(file_node(b"", 0o644), &[("os2.thing", vec![1])]),
    );
    assert_eq!(
        try_write(&t).unwrap_err().to_string(),
        "/x: xattr os2.thing: namespace ext4 cannot store"
    );
    // Attributes larger than a block.
    let mut t = Tree::new(meta(0o755));
    add(
        &mut t,
        ROOT,
        b"y",
        with_xattrs(
            file_node(b"", 0o644),
            &[("user.a", vec![1; 3000]), ("user.b", vec![2; 3000])],
        ),
    );
    assert!(matches!(
        try_write(&t).unwrap_err(),
        Ext4Error::Xattr { .. }
    ));
    // Symlink target too long.
    let mut t = Tree::new(meta(0o755));
    add(
        &mut t,
        ROOT,
        b"s",
        Node {
            kind: NodeKind::Symlink(vec![b'a'; 4096]),
            meta: meta(0o777),
        },
    );
    assert!(matches!(
        try_write(&t).unwrap_err(),
        Ext4Error::SymlinkTarget { len: 4096, .. }
    ));
}

#[test]
fn existing_lost_found_is_kept_and_minimal_tree_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tree::new(Meta {
        xattrs: BTreeMap::new(),
        ..meta(0o755)
    });
    add(&mut t, ROOT, b"lost+found", dir_node(0o700));
    let (img, _) = write(&t, tmp.path(), &Ext4Options::default());
    fsck_clean(&img);
    check_tree(&t, &img);
    let empty = Tree::new(meta(0o755));
    let dir2 = tmp.path().join("2");
    std::fs::create_dir(&dir2).unwrap();
    let (img2, s2) = write(
        &empty,
        &dir2,
        &Ext4Options {
            extra_bytes: 0,
            ..Ext4Options::default()
        },
    );
    fsck_clean(&img2);
    check_tree(&empty, &img2);
    assert!(s2.size_bytes < 1 << 20, "{s2:?}");
}

/// Streams files in reverse walk order, optionally skipping or repeating the first one.
struct Reordered {
    skip_first: bool,
    repeat_first: bool,
}

impl builder::tree::ContentSource for Reordered {
    fn stream(
        &mut self,
        tree: &Tree,
        sink: &mut dyn FnMut(usize, &mut dyn std::io::Read) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let files: Vec<(usize, Vec<u8>)> = tree
            .walk()
            .into_iter()
            .filter_map(|(_, id)| match &tree.nodes[id].kind {
                NodeKind::File {
                    content: Content::Inline(b),
                    ..
                } => Some((id, b.to_vec())),
                _ => None,
            })
            .collect();
        for (i, (id, bytes)) in files.iter().enumerate().rev() {
            if i == 0 && self.skip_first {
                continue;
            }
            sink(*id, &mut &bytes[..])?;
            if i == 0 && self.repeat_first {
                sink(*id, &mut &bytes[..])?;
            }
        }
        Ok(())
    }
}

#[test]
fn any_stream_order_gives_a_clean_image_and_stream_mistakes_are_errors() {
    let mut t = Tree::new(meta(0o755));
    let d = add(&mut t, ROOT, b"d", dir_node(0o755));
    for i in 0..50u32 {
        let body: Vec<u8> = (0..i * 1000).map(|j| (j % 251) as u8 + 1).collect();
        add(
            &mut t,
            d,
            format!("f{i}").as_bytes(),
            file_node(&body, 0o644),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    let f = std::fs::File::create(&img).unwrap();
    let mut src = Reordered {
        skip_first: false,
        repeat_first: false,
    };
    write_image(&t, &mut src, &f, &Ext4Options::default()).unwrap();
    fsck_clean(&img);
    check_tree(&t, &img);

    src.skip_first = true;
    let e = write_image(&t, &mut src, &f, &Ext4Options::default()).unwrap_err();
    assert_eq!(e.to_string(), "/d/f0: content never streamed");
    src.skip_first = false;
    src.repeat_first = true;
    let e = write_image(&t, &mut src, &f, &Ext4Options::default()).unwrap_err();
    assert_eq!(e.to_string(), "/d/f0: content streamed twice");
}
