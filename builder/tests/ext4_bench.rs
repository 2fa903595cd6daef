//! Micro-benchmark of the ext4 writer (run by `bench/ext4.sh`; ignored in normal test runs).
//! Writes a synthetic tree (default 2 GiB in ~20k files, `EXT4_BENCH_MIB` to change) whose
//! contents are generated in memory, and reports write throughput and peak RSS. No timing
//! assertions: the numbers are printed for the bench script.

mod ext4_support;

use builder::ext4::{Ext4Options, write_image};
use builder::tree::{Content, ContentSource, Node, NodeId, NodeKind, ROOT, Tree};
use ext4_support::*;
use std::io::{self, Read};
use std::time::Instant;

/// Non-zero bytes, varied per file, produced without per-byte work.
struct Pattern {
    block: Vec<u8>,
    offset: usize,
    left: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(self.left as usize)
            .min(self.block.len() - self.offset);
        buf[..n].copy_from_slice(&self.block[self.offset..self.offset + n]);
        self.offset = (self.offset + n) % self.block.len();
        self.left -= n as u64;
        Ok(n)
    }
}

struct Synthetic {
    block: Vec<u8>,
}

impl ContentSource for Synthetic {
    fn stream(
        &mut self,
        tree: &Tree,
        sink: &mut dyn FnMut(NodeId, &mut dyn Read) -> io::Result<()>,
    ) -> io::Result<()> {
        for (_, id) in tree.walk() {
            if let NodeKind::File { size, .. } = tree.nodes[id].kind {
                let mut r = Pattern {
                    block: self.block.clone(),
                    offset: id % 4096,
                    left: size,
                };
                sink(id, &mut r)?;
            }
        }
        Ok(())
    }
}

/// Peak resident set of this process (`VmHWM`; unlike `ru_maxrss` it is not inherited from
/// the parent across fork + exec, e.g. from cargo).
fn max_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "benchmark: run through bench/ext4.sh"]
fn ext4_write_throughput() {
    let total_mib: u64 = std::env::var("EXT4_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let mut t = Tree::new(meta(0o755));
    let mut bytes = 0u64;
    let mut files = 0u64;
    let mut dir = ROOT;
    // Size mix: mostly small files; every 20th is 1 MiB, every 200th 24 MiB.
    let small = [700u64, 3_000, 9_000, 40_000, 150_000];
    while bytes < total_mib << 20 {
        if files % 500 == 0 {
            dir = add(
                &mut t,
                ROOT,
                format!("d{files}").as_bytes(),
                dir_node(0o755),
            );
        }
        let size = match files {
            n if n % 200 == 199 => 24 << 20,
            n if n % 20 == 19 => 1 << 20,
            n => small[(n as usize * 7919) % small.len()],
        };
        let id = t.push(Node {
            kind: NodeKind::File {
                size,
                content: Content::Layer {
                    layer: 0,
                    entry: files,
                },
            },
            meta: meta(0o644),
        });
        t.link(dir, format!("file-{files}").as_bytes(), id);
        bytes += size;
        files += 1;
    }
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("img");
    let f = std::fs::File::create(&img).unwrap();
    let rss_before = max_rss_kib();
    let started = Instant::now();
    let summary = write_image(&t, &mut Synthetic { block }, &f, &Ext4Options::default()).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let rss_after = max_rss_kib();
    let fsck_started = Instant::now();
    fsck_clean(&img);
    let fsck_secs = fsck_started.elapsed().as_secs_f64();
    println!(
        "ext4 write: {files} files, {:.0} MiB in {secs:.2} s = {:.0} MiB/s; image {} MiB; peak RSS {} MiB (before write {} MiB); e2fsck -fn clean in {fsck_secs:.2} s",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs,
        summary.size_bytes >> 20,
        rss_after / 1024,
        rss_before / 1024,
    );
}
