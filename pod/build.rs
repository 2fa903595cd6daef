//! Computes the guest kernel's cache key from `kernel-fragments/` exactly as
//! `kernel-fragments/build-kernel.sh` does (see its header): `FRAGMENTS_KEY`, so that
//! `hyperbuild` finds the kernel the script built for these fragments and `hyperlaunch` knows a
//! pod's kernel was built from them.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).expect("read kernel-fragments") {
        let entry = entry.expect("read kernel-fragments entry");
        let path = entry.path();
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            // The diagnostic overlay is not part of the pods' kernel (build-kernel.sh keys it
            // separately, with --diagnostic).
            if dir == root && entry.file_name() == "diagnostic" {
                continue;
            }
            files(root, &path, out);
        } else if kind.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("inside root")
                .to_string_lossy()
                .into_owned();
            out.push((rel, path));
        }
    }
}

fn main() {
    // Read when the script runs, not when it was compiled: cargo reuses a compiled build script
    // between checkouts of the same sources (worktrees sharing one target directory).
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir).join("../kernel-fragments");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut all = Vec::new();
    files(&root, &root, &mut all);
    all.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut h = Sha256::new();
    for (rel, path) in &all {
        println!("cargo:rerun-if-changed={}", path.display());
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(std::fs::read(path).expect("read fragment"));
        h.update([0]);
    }
    let key = hex::encode(h.finalize());
    println!("cargo:rustc-env=HYPERPOD_KERNEL_KEY={}", &key[..16]);
}
