//! Differential test: our flattened tree (and the contents `LayerContent` streams for it) must
//! equal what the real `umoci unpack` produces from the same OCI images.
//!
//! The images are built by `tests/fixtures/flatten-images.sh` (umoci + hand-made tar layers).
//! Needs `umoci` and `python3`, and root (device nodes, ownership, security.capability).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use builder::image::decompress::Limits;
use builder::image::flatten::flatten;
use builder::image::layer_content::LayerContent;
use builder::image::{Compression, Layer};
use builder::tree::{ContentSource, NodeId, NodeKind, ROOT, Tree};
use sha2::{Digest, Sha256};

/// Everything compared about one path.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    /// `dir`, `file <size> <sha256>`, `symlink <target>`, `char M:m`, `block M:m`, `fifo`.
    what: String,
    mode: u32,
    uid: u32,
    gid: u32,
    xattrs: BTreeMap<String, String>,
    /// Other paths naming the same inode (non-directories), sorted.
    links: Vec<String>,
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// The layers of image `tag` in the OCI layout, bottom first.
fn layers(layout: &Path, tag: &str) -> Vec<Layer> {
    let index = read_json(&layout.join("index.json"));
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("tag {tag} not in index"));
    let manifest = read_json(&blob(layout, desc["digest"].as_str().unwrap()));
    let config = read_json(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let descs = manifest["layers"].as_array().unwrap();
    assert_eq!(descs.len(), diff_ids.len());
    descs
        .iter()
        .zip(diff_ids)
        .map(|(d, id)| {
            let media_type = d["mediaType"].as_str().unwrap().to_string();
            let compression = if media_type.ends_with("+gzip") {
                Compression::Gzip
            } else if media_type.ends_with("+zstd") {
                Compression::Zstd
            } else {
                Compression::None
            };
            let digest = d["digest"].as_str().unwrap().to_string();
            Layer {
                blob: blob(layout, &digest),
                offset: 0,
                size: d["size"].as_u64().unwrap(),
                digest,
                media_type,
                compression,
                diff_id: id.as_str().unwrap().to_string(),
            }
        })
        .collect()
}

fn show(v: &[u8]) -> String {
    v.escape_ascii().to_string()
}

/// Every path of our tree (hardlinks included), with contents hashed from `LayerContent`.
fn describe_tree(tree: &Tree, layers: Vec<Layer>) -> BTreeMap<String, Entry> {
    let mut hashes: BTreeMap<NodeId, (u64, String)> = BTreeMap::new();
    LayerContent::new(layers, Limits::default())
        .stream(tree, &mut |node, r| {
            let mut h = Sha256::new();
            let mut n = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let got = r.read(&mut buf)?;
                if got == 0 {
                    break;
                }
                n += got as u64;
                h.update(&buf[..got]);
            }
            assert!(
                hashes
                    .insert(node, (n, hex::encode(h.finalize())))
                    .is_none(),
                "node {node} streamed twice"
            );
            Ok(())
        })
        .unwrap();
    let mut paths: Vec<(String, NodeId)> = vec![(String::new(), ROOT)];
    let mut stack = vec![(String::new(), ROOT)];
    while let Some((p, id)) = stack.pop() {
        for (name, &c) in tree.entries(id).into_iter().flatten() {
            let cp = if p.is_empty() {
                show(name)
            } else {
                format!("{p}/{}", show(name))
            };
            paths.push((cp.clone(), c));
            stack.push((cp, c));
        }
    }
    let mut by_node: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for (p, id) in &paths {
        by_node.entry(*id).or_default().push(p.clone());
    }
    let mut out = BTreeMap::new();
    for (p, id) in paths {
        let node = &tree.nodes[id];
        let what = match &node.kind {
            NodeKind::Dir(_) => "dir".to_string(),
            NodeKind::File { size, .. } => {
                let (n, h) = hashes
                    .get(&id)
                    .unwrap_or_else(|| panic!("{p}: not streamed"));
                assert_eq!(n, size, "{p}: streamed size");
                format!("file {size} {h}")
            }
            NodeKind::Symlink(t) => format!("symlink {}", show(t)),
            NodeKind::CharDevice { major, minor } => format!("char {major}:{minor}"),
            NodeKind::BlockDevice { major, minor } => format!("block {major}:{minor}"),
            NodeKind::Fifo => "fifo".to_string(),
        };
        let links = if matches!(node.kind, NodeKind::Dir(_)) {
            Vec::new()
        } else {
            let mut l: Vec<String> = by_node[&id].iter().filter(|o| **o != p).cloned().collect();
            l.sort();
            l
        };
        let xattrs = node
            .meta
            .xattrs
            .iter()
            .map(|(k, v)| (show(k), show(v)))
            .collect();
        out.insert(
            p,
            Entry {
                what,
                mode: node.meta.mode,
                uid: node.meta.uid,
                gid: node.meta.gid,
                xattrs,
                links,
            },
        );
    }
    out
}

fn xattrs(path: &Path) -> BTreeMap<String, String> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: `c` is NUL-terminated and `names` is a writable buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: both strings are NUL-terminated; `val` is writable for its length.
        let len = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        assert!(len >= 0, "lgetxattr {}", path.display());
        out.insert(show(name), show(&val[..len as usize]));
    }
    out
}

/// Every path under `root` as umoci unpacked it.
fn describe_fs(root: &Path) -> BTreeMap<String, Entry> {
    let mut all: Vec<(String, PathBuf)> = vec![(String::new(), root.to_path_buf())];
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((p, dir)) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = show(e.file_name().as_bytes());
            let cp = if p.is_empty() {
                name
            } else {
                format!("{p}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                stack.push((cp.clone(), e.path()));
            }
            all.push((cp, e.path()));
        }
    }
    let mut by_inode: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (p, path) in &all {
        let md = std::fs::symlink_metadata(path).unwrap();
        if !md.is_dir() {
            by_inode.entry(md.ino()).or_default().push(p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for (p, path) in all {
        let md = std::fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let dev = |r: u64| format!("{}:{}", libc::major(r), libc::minor(r));
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            format!("file {} {}", md.len(), hex::encode(Sha256::digest(&bytes)))
        } else if ft.is_symlink() {
            format!(
                "symlink {}",
                show(std::fs::read_link(&path).unwrap().as_os_str().as_bytes())
            )
        } else if ft.is_char_device() {
            format!("char {}", dev(md.rdev()))
        } else if ft.is_block_device() {
            format!("block {}", dev(md.rdev()))
        } else if ft.is_fifo() {
            "fifo".to_string()
        } else {
            panic!("{p}: unexpected file type");
        };
        let links = if ft.is_dir() {
            Vec::new()
        } else {
            let mut l: Vec<String> = by_inode[&md.ino()]
                .iter()
                .filter(|o| **o != p)
                .cloned()
                .collect();
            l.sort();
            l
        };
        out.insert(
            p,
            Entry {
                what,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                xattrs: xattrs(&path),
                links,
            },
        );
    }
    out
}

#[test]
fn flatten_matches_umoci_unpack() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        hyperpod_tests::skip::skipped(
            "flatten_matches_umoci_unpack",
            "the umoci differential needs root (device nodes, ownership, capabilities)",
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/flatten-images.sh");
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("bash")
        .arg(&script)
        .arg(dir.path())
        .status()
        .expect("run fixture script");
    assert!(
        status.success(),
        "fixture script failed (needs umoci and python3)"
    );
    let layout = dir.path().join("oci");
    let mut compared = 0;
    for tag in ["basic", "layered", "inserted"] {
        let layers = layers(&layout, tag);
        let tree = flatten(&layers, &Limits::default()).unwrap_or_else(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg += &format!(": {s}");
                src = s.source();
            }
            panic!("{tag}: {msg}")
        });
        let ours = describe_tree(&tree, layers);
        let bundle = dir.path().join(format!("bundle-{tag}"));
        let out = Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle)
            .output()
            .expect("run umoci (is it installed?)");
        assert!(
            out.status.success(),
            "umoci unpack {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = describe_fs(&bundle.join("rootfs"));
        let mut diffs = Vec::new();
        for p in ours
            .keys()
            .chain(theirs.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            match (ours.get(p), theirs.get(p)) {
                (Some(a), Some(b)) if p.is_empty() => {
                    // The bundle's rootfs directory: umoci applies the layer's `./` entry.
                    if (a.mode, a.uid, a.gid) != (b.mode, b.uid, b.gid) {
                        diffs.push(format!("{tag}: /: ours {a:?}\n   umoci {b:?}"));
                    }
                }
                (Some(a), Some(b)) if a == b => compared += 1,
                (a, b) => diffs.push(format!("{tag}: {p}:\n   ours  {a:?}\n   umoci {b:?}")),
            }
        }
        assert!(
            diffs.is_empty(),
            "differences from umoci:\n{}",
            diffs.join("\n")
        );
    }
    eprintln!("umoci differential: {compared} paths identical over 3 images");
    assert!(compared > 60, "{compared}");
}
