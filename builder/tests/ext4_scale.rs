//! ext4 writer at scale: indexed directories, sparse and large files, deep extent trees,
//! several block groups. Every image must pass `e2fsck -fn` and read back equal.

mod ext4_support;

use builder::ext4::{Ext4Options, write_image};
use builder::tree::{Content, ContentSource, Node, NodeKind, ROOT, Tree};
use ext4_support::*;
use std::io::Read;
use std::os::unix::fs::FileExt;

fn host_file(t: &mut Tree, dir: usize, name: &[u8], path: std::path::PathBuf) -> usize {
    let size = std::fs::metadata(&path).unwrap().len();
    add(
        t,
        dir,
        name,
        Node {
            kind: NodeKind::File {
                size,
                content: Content::HostFile(path),
            },
            meta: meta(0o644),
        },
    )
}

#[test]
fn directory_of_20000_entries_is_indexed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tree::new(meta(0o755));
    let big = add(&mut t, ROOT, b"big", dir_node(0o755));
    for i in 0..20_000u32 {
        let name = format!("file-{i:05}-{}", "x".repeat((i % 40) as usize));
        if i % 1000 == 0 {
            add(&mut t, big, name.as_bytes(), dir_node(0o700));
        } else {
            add(
                &mut t,
                big,
                name.as_bytes(),
                file_node(format!("{i}").as_bytes(), 0o644),
            );
        }
    }
    let (img, _) = write(&t, tmp.path(), &Ext4Options::default());
    fsck_clean(&img);
    let st = stat(&img, "/big");
    assert_eq!(
        st.flags & 0x1000,
        0x1000,
        "htree (INDEX_FL) expected: {}",
        st.text
    );
    assert_eq!(st.links, 2 + 20);
    // debugfs's htree_dump walks the index; every entry is found by a hashed lookup below.
    let dump = debugfs(&img, &["htree_dump /big".to_string()]);
    assert!(
        dump.contains("Root node dump:"),
        "{}",
        &dump[..dump.len().min(2000)]
    );
    check_tree(&t, &img);
}

#[test]
fn directory_needing_two_index_levels() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tree::new(meta(0o755));
    let big = add(&mut t, ROOT, b"wide", dir_node(0o755));
    let shared = t.push(file_node(b"shared", 0o644));
    // ~600 leaf blocks: more than the 507 a single-level root indexes.
    for i in 0..60_000u32 {
        t.link(
            big,
            format!("a-rather-long-entry-name-number-{i:06}").as_bytes(),
            shared,
        );
    }
    let (img, _) = write(&t, tmp.path(), &Ext4Options::default());
    fsck_clean(&img);
    let dump = debugfs(&img, &["htree_dump /wide".to_string()]);
    assert!(
        dump.contains("Indirect levels: 1"),
        "{}",
        &dump[..dump.len().min(2000)]
    );
    assert_eq!(
        stat(&img, "/wide/a-rather-long-entry-name-number-059999").links,
        60_000
    );
    assert_eq!(
        stat(&img, "/wide/a-rather-long-entry-name-number-000000").size,
        6
    );
}

#[test]
fn sparse_200_mib_file_uses_few_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("sparse");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(200 << 20).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"middle", 100 << 20).unwrap();
    f.write_all_at(b"tail", (200 << 20) - 4).unwrap();
    drop(f);
    let mut t = Tree::new(meta(0o755));
    host_file(&mut t, ROOT, b"sparse", src);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (img, summary) = write(&t, &out, &Ext4Options::default());
    fsck_clean(&img);
    let st = stat(&img, "/sparse");
    assert_eq!(st.size, 200 << 20);
    assert_eq!(st.blockcount, 3 * 8, "three data blocks: {}", st.text);
    assert_eq!(summary.data_blocks, 3);
    assert!(
        summary.size_bytes < 24 << 20,
        "image stays small: {summary:?}"
    );
    check_tree(&t, &img);
}

/// Streams the one big file from memory: 4 GiB of zeros, a marker, zeros to the end.
struct BigSource {
    size: u64,
}

impl ContentSource for BigSource {
    fn stream(
        &mut self,
        tree: &Tree,
        sink: &mut dyn FnMut(usize, &mut dyn Read) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let id = tree.resolve(b"huge").unwrap();
        let marker = b"beyond four gigabytes";
        let rest = self.size - (4 << 30) - marker.len() as u64;
        let mut r = std::io::repeat(0)
            .take(4 << 30)
            .chain(&marker[..])
            .chain(std::io::repeat(0).take(rest));
        sink(id, &mut r)
    }
}

#[test]
fn file_over_4_gib_uses_size_high() {
    let tmp = tempfile::tempdir().unwrap();
    let size = (5u64 << 30) + 12345;
    let mut t = Tree::new(meta(0o755));
    add(
        &mut t,
        ROOT,
        b"huge",
        Node {
            kind: NodeKind::File {
                size,
                content: Content::Layer { layer: 0, entry: 0 },
            },
            meta: meta(0o644),
        },
    );
    let img = tmp.path().join("img");
    let f = std::fs::File::create(&img).unwrap();
    let started = std::time::Instant::now();
    write_image(&t, &mut BigSource { size }, &f, &Ext4Options::default()).unwrap();
    eprintln!("write_image of 5 GiB (zeros): {:?}", started.elapsed());
    fsck_clean(&img);
    let st = stat(&img, "/huge");
    assert_eq!(st.size, size);
    assert_eq!(st.blockcount, 8);
    // The one data block is file block 4 GiB / 4 KiB; read it straight from the image.
    let at = st
        .text
        .find("(1048576):")
        .unwrap_or_else(|| panic!("{}", st.text))
        + 10;
    let phys: u64 = st.text[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut buf = [0u8; 21];
    let f = std::fs::File::open(&img).unwrap();
    f.read_exact_at(&mut buf, phys * 4096).unwrap();
    assert_eq!(&buf, b"beyond four gigabytes");
}

#[test]
fn fragmented_file_gets_an_extent_tree() {
    let tmp = tempfile::tempdir().unwrap();
    // 3000 data blocks separated by holes: 3000 extents, 9 leaf blocks, depth 2.
    let src = tmp.path().join("frag");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(6000 * 4096).unwrap();
    for i in 0..3000u64 {
        f.write_all_at(&[(i % 251) as u8 + 1; 4096], 2 * i * 4096)
            .unwrap();
    }
    drop(f);
    let mut t = Tree::new(meta(0o755));
    host_file(&mut t, ROOT, b"frag", src);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (img, _) = write(&t, &out, &Ext4Options::default());
    fsck_clean(&img);
    let st = stat(&img, "/frag");
    // 3000 data blocks + 9 leaves + 1 index block.
    assert_eq!(
        st.blockcount,
        (3000 + 9 + 1) * 8,
        "{}",
        &st.text[..st.text.len().min(800)]
    );
    check_tree(&t, &img);
}

#[test]
fn data_spanning_several_groups_and_backup_areas() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tree::new(meta(0o755));
    // 420 MiB of non-zero data: groups 0-3, crossing the backup areas of groups 1 and 3.
    for (n, mib) in [(0u8, 300u64), (1, 120)] {
        let src = tmp.path().join(format!("data{n}"));
        let f = std::fs::File::create(&src).unwrap();
        let chunk: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
            .collect();
        for m in 0..mib {
            f.write_all_at(&chunk, m << 20).unwrap();
        }
        drop(f);
        host_file(&mut t, ROOT, format!("data{n}").as_bytes(), src);
    }
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let (img, summary) = write(&t, &out, &Ext4Options::default());
    assert!(summary.groups >= 4, "{summary:?}");
    fsck_clean(&img);
    check_tree(&t, &img);
    let h = dumpe2fs_header(&img);
    assert!(h.contains("Flex block group size:    16"), "{h}");
}

#[test]
fn more_inodes_than_one_group_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tree::new(meta(0o755));
    // 70 000 inodes need three groups (32 768 inodes each) although the data is tiny.
    for d in 0..7 {
        let dir = add(&mut t, ROOT, format!("d{d}").as_bytes(), dir_node(0o755));
        for i in 0..10_000 {
            add(
                &mut t,
                dir,
                format!("f{i}").as_bytes(),
                file_node(b"", 0o644),
            );
        }
    }
    let (img, summary) = write(&t, tmp.path(), &Ext4Options::default());
    assert!(
        summary.groups >= 3 && summary.inodes >= 70_008,
        "{summary:?}"
    );
    // Groups shrink for inode-heavy trees: no 128 MiB groups carried just for inode tables
    // (about 17 MiB of inode tables + 16 MiB of requested free space).
    assert!(summary.size_bytes < 48 << 20, "{summary:?}");
    fsck_clean(&img);
    // Blocks per group as planned, and the kernel-facing geometry e2fsck accepted.
    let h = dumpe2fs_header(&img);
    assert!(!h.contains("Blocks per group:         32768"), "{h}");
    let last = stat(&img, "/d6/f9999");
    assert!(
        last.ino > 65_536,
        "an inode in the third group: {}",
        last.text
    );
    assert_eq!((last.typ.as_str(), last.size), ("regular", 0));
}
