//! Shared helpers for the ext4 writer tests: tree builders, and oracles built on the real
//! e2fsprogs tools (`e2fsck -fn`, `debugfs`, `dumpe2fs`). Missing tools make tests fail.
#![allow(dead_code)]

use builder::ext4::{Ext4Options, Ext4Summary, write_image};
use builder::tree::{Content, LocalContent, Meta, Node, NodeId, NodeKind, Tree};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

pub fn meta(mode: u32) -> Meta {
    Meta::with_mode(mode)
}

pub fn dir_node(mode: u32) -> Node {
    Node {
        kind: NodeKind::Dir(BTreeMap::new()),
        meta: meta(mode),
    }
}

pub fn file_node(bytes: &[u8], mode: u32) -> Node {
    Node {
        kind: NodeKind::File {
            size: bytes.len() as u64,
            content: Content::Inline(Arc::from(bytes)),
        },
        meta: meta(mode),
    }
}

/// Adds `node` under `dir` as `name`; returns its id.
pub fn add(tree: &mut Tree, dir: NodeId, name: &[u8], node: Node) -> NodeId {
    let id = tree.push(node);
    tree.link(dir, name, id);
    id
}

/// Writes `tree` into `dir/img` with `opts`.
pub fn write(tree: &Tree, dir: &Path, opts: &Ext4Options) -> (PathBuf, Ext4Summary) {
    let path = dir.join("img");
    let f = std::fs::File::create(&path).unwrap();
    let started = std::time::Instant::now();
    let summary = write_image(tree, &mut LocalContent, &f, opts).expect("write_image");
    eprintln!("write_image: {:?} for {summary:?}", started.elapsed());
    // Debug aid: keep a copy of every image written (e.g. to loop-mount it by hand).
    if let Some(keep) = std::env::var_os("EXT4_TEST_KEEP_DIR") {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::fs::copy(&path, Path::new(&keep).join(format!("{n}.img"))).unwrap();
    }
    (path, summary)
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?} (is e2fsprogs installed?): {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `e2fsck -fn`: exit 0 and nothing but the version, pass headers and the summary line.
pub fn fsck_clean(img: &Path) {
    let started = std::time::Instant::now();
    let (code, out, err) = run(Command::new("e2fsck").arg("-fn").arg(img));
    eprintln!("e2fsck -fn: {:?}", started.elapsed());
    let allowed_pass = [
        "Pass 1: Checking inodes, blocks, and sizes",
        "Pass 2: Checking directory structure",
        "Pass 3: Checking directory connectivity",
        "Pass 4: Checking reference counts",
        "Pass 5: Checking group summary information",
    ];
    let mut summary = false;
    for line in out.lines().chain(err.lines()) {
        if line.is_empty() || line.starts_with("e2fsck 1.") || allowed_pass.contains(&line) {
            continue;
        }
        if line.contains(" files (") && line.contains(" blocks") && !summary {
            summary = true;
            continue;
        }
        panic!("e2fsck complaint: {line:?}\nstdout:\n{out}\nstderr:\n{err}");
    }
    assert!(summary, "no e2fsck summary line:\n{out}\n{err}");
    assert_eq!(code, 0, "e2fsck -fn exit code\n{out}\n{err}");
}

/// Runs debugfs commands (one per line) and returns stdout.
pub fn debugfs(img: &Path, cmds: &[String]) -> String {
    let file = img.with_extension("cmds");
    std::fs::write(&file, cmds.join("\n") + "\n").unwrap();
    let (code, out, _) = run(Command::new("debugfs").arg("-f").arg(&file).arg(img));
    assert_eq!(code, 0, "debugfs failed");
    out
}

/// Splits debugfs `-f` output into each command's output.
pub fn per_command(out: &str) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for line in out.lines() {
        if line.starts_with("debugfs: ") {
            parts.push(String::new());
        } else if let Some(p) = parts.last_mut() {
            p.push_str(line);
            p.push('\n');
        }
    }
    parts
}

/// One inode as `debugfs stat` shows it.
#[derive(Debug, Default)]
pub struct Stat {
    pub ino: u64,
    pub typ: String,
    pub mode: u32,
    pub flags: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u32,
    pub blockcount: u64,
    pub device: Option<(u32, u32)>,
    pub mtime_raw: String,
    pub text: String,
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    text[at..].split_whitespace().next()
}

pub fn parse_stat(text: &str) -> Stat {
    let num = |k: &str| field(text, k).unwrap_or_else(|| panic!("{k} in {text}"));
    let device = text.find("Device major/minor number: ").map(|at| {
        let s = &text[at + 27..];
        let hex = &s[s.find("(hex ").unwrap() + 5..];
        let (a, b) = hex.split_once(':').unwrap();
        let b = b.split(')').next().unwrap();
        (
            u32::from_str_radix(a, 16).unwrap(),
            u32::from_str_radix(b, 16).unwrap(),
        )
    });
    Stat {
        ino: num("Inode: ").parse().unwrap(),
        typ: num("Type: ").to_string(),
        mode: u32::from_str_radix(num("Mode: "), 8).unwrap(),
        flags: u32::from_str_radix(num("Flags: ").trim_start_matches("0x"), 16).unwrap(),
        uid: num("User: ").parse().unwrap(),
        gid: num("Group: ").parse().unwrap(),
        size: num("Size: ").parse().unwrap(),
        links: num("Links: ").parse().unwrap(),
        blockcount: num("Blockcount: ").parse().unwrap(),
        device,
        mtime_raw: num(" mtime: ").to_string(),
        text: text.to_string(),
    }
}

pub fn stat(img: &Path, path: &str) -> Stat {
    let out = debugfs(img, &[format!("stat \"{path}\"")]);
    parse_stat(&per_command(&out)[0])
}

fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// Reads the whole image back and checks it equals `tree`: every reachable path's type,
/// mode, owner, size, link count, mtime, device numbers, file bytes, link target and xattrs.
pub fn check_tree(tree: &Tree, img: &Path) {
    let dump = img.with_extension("rdump");
    let _ = std::fs::remove_dir_all(&dump);
    std::fs::create_dir(&dump).unwrap();
    debugfs(img, &[format!("rdump / {}", dump.display())]);
    let counts = tree.link_counts();
    // Every entry (hardlinks included), not only the first path of each node.
    let mut paths: Vec<(String, NodeId)> = Vec::new();
    for (path, id) in tree.walk() {
        if let Some(entries) = tree.entries(id) {
            for (name, &child) in entries {
                let p = if path.is_empty() {
                    String::from_utf8(name.clone()).unwrap()
                } else {
                    format!(
                        "{}/{}",
                        String::from_utf8(path.clone()).unwrap(),
                        String::from_utf8_lossy(name)
                    )
                };
                paths.push((p, child));
            }
        }
    }
    paths.push((String::new(), builder::tree::ROOT));
    // Inode numbers from `ls -p` of every directory (by-path lookups in huge directories are
    // slow in debugfs), then stat / ea_list by inode number.
    let dirs: Vec<String> = tree
        .walk()
        .into_iter()
        .filter(|(_, id)| tree.entries(*id).is_some())
        .map(|(p, _)| String::from_utf8(p).unwrap())
        .collect();
    let ls_cmds: Vec<String> = dirs.iter().map(|d| format!("ls -p \"/{d}\"")).collect();
    let ls_outs = per_command(&debugfs(img, &ls_cmds));
    assert_eq!(ls_outs.len(), dirs.len());
    let mut ino_by_path: BTreeMap<String, u64> = BTreeMap::new();
    for (d, out) in dirs.iter().zip(&ls_outs) {
        for line in out.lines().filter(|l| l.starts_with('/')) {
            let f: Vec<&str> = line.split('/').collect();
            let (ino, name) = (f[1].parse::<u64>().unwrap(), f[5]);
            if name == "." || name == ".." {
                if d.is_empty() && name == "." {
                    ino_by_path.insert(String::new(), ino);
                }
                continue;
            }
            let p = if d.is_empty() {
                name.to_string()
            } else {
                format!("{d}/{name}")
            };
            ino_by_path.insert(p, ino);
        }
    }
    let mut cmds = Vec::new();
    for (p, _) in &paths {
        let ino = ino_by_path
            .get(p)
            .unwrap_or_else(|| panic!("/{p} not listed"));
        cmds.push(format!("stat <{ino}>"));
        cmds.push(format!("ea_list <{ino}>"));
    }
    let outs = per_command(&debugfs(img, &cmds));
    assert_eq!(outs.len(), cmds.len());
    let mut ino_of_node: BTreeMap<NodeId, u64> = BTreeMap::new();
    for (i, (p, id)) in paths.iter().enumerate() {
        let node = &tree.nodes[*id];
        let st = parse_stat(&outs[2 * i]);
        let ctx = format!("/{p}: {}", st.text);
        if let Some(prev) = ino_of_node.insert(*id, st.ino) {
            assert_eq!(prev, st.ino, "hardlink inode {ctx}");
        }
        let typ = match &node.kind {
            NodeKind::Dir(_) => "directory",
            NodeKind::File { .. } => "regular",
            NodeKind::Symlink(_) => "symlink",
            NodeKind::CharDevice { .. } => "character",
            NodeKind::BlockDevice { .. } => "block",
            NodeKind::Fifo => "FIFO",
        };
        assert_eq!(st.typ, typ, "type {ctx}");
        assert_eq!(st.mode, node.meta.mode, "mode {ctx}");
        assert_eq!(
            (st.uid, st.gid),
            (node.meta.uid, node.meta.gid),
            "owner {ctx}"
        );
        let extra_root_link =
            u32::from(*id == builder::tree::ROOT && tree.lookup(0, b"lost+found").is_none());
        assert_eq!(st.links, counts[*id] + extra_root_link, "links {ctx}");
        let want_time = format!(
            "{:#010x}:{:08x}",
            node.meta.mtime as u32,
            node.meta.mtime_nsec << 2
                | ((node.meta.mtime - i64::from(node.meta.mtime as i32)) >> 32) as u32 & 3
        );
        assert_eq!(st.mtime_raw, want_time, "mtime {ctx}");
        let local = dump.join(p);
        match &node.kind {
            NodeKind::File { size, content } => {
                assert_eq!(st.size, *size, "size {ctx}");
                let got = std::fs::read(&local).unwrap();
                let want = match content {
                    Content::Inline(b) => b.to_vec(),
                    Content::HostFile(h) => std::fs::read(h).unwrap(),
                    Content::Layer { .. } | Content::Spooled { .. } => unreachable!(),
                };
                assert!(sha(&got) == sha(&want), "content of {ctx}");
            }
            NodeKind::Symlink(t) => {
                assert_eq!(st.size, t.len() as u64, "size {ctx}");
                let got = std::fs::read_link(&local).unwrap();
                assert_eq!(got.as_os_str().as_encoded_bytes(), &t[..], "target {ctx}");
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                assert_eq!(st.device, Some((*major, *minor)), "device {ctx}");
            }
            NodeKind::Dir(_) => assert!(local.is_dir() || p.is_empty(), "dir {ctx}"),
            NodeKind::Fifo => {}
        }
        // Extended attributes: names from ea_list, values through ea_get -f.
        let listed: Vec<String> = outs[2 * i + 1]
            .lines()
            .filter(|l| l.starts_with("  "))
            .map(|l| l.trim_start().split(" (").next().unwrap().to_string())
            .collect();
        let want: Vec<String> = node
            .meta
            .xattrs
            .keys()
            .map(|k| String::from_utf8(k.clone()).unwrap())
            .collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(
            listed_sorted,
            want,
            "xattr names {ctx}\n{}",
            outs[2 * i + 1]
        );
        for (k, v) in &node.meta.xattrs {
            let name = String::from_utf8(k.clone()).unwrap();
            let f = img.with_extension("xattr");
            let _ = std::fs::remove_file(&f);
            debugfs(
                img,
                &[format!("ea_get -f {} <{}> {name}", f.display(), st.ino)],
            );
            let got = std::fs::read(&f).unwrap_or_default();
            if name.starts_with("system.posix_acl_") {
                // ids of unnamed entries are "undefined": debugfs reads them back as 0.
                assert_eq!(acl_norm(&got), acl_norm(v), "acl {name} of {ctx}");
            } else {
                assert_eq!(&got, v, "xattr {name} of {ctx}");
            }
        }
    }
}

fn acl_norm(v: &[u8]) -> Vec<u8> {
    let mut v = v.to_vec();
    for e in v[4..].chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        if tag != 2 && tag != 8 {
            e[4..].fill(0);
        }
    }
    v
}

/// `dumpe2fs -h` output.
pub fn dumpe2fs_header(img: &Path) -> String {
    let (code, out, err) = run(Command::new("dumpe2fs").arg("-h").arg(img));
    assert_eq!(code, 0, "dumpe2fs: {err}");
    out
}
