//! Synthetic pods for the push/pull and signing tests: pseudo-random sections sealed by the pod
//! crate (with a verity tree, as hyperbuild writes them), and the `hyperbuild` runner.

#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pod::SectionInfo;
use pod::manifest::{Manifest, Resources, Sections, Source, Verity};
use pod::spec::RunSpec;

pub const HYPERBUILD: &str = env!("CARGO_BIN_EXE_hyperbuild");

/// `len` pseudo-random bytes (xorshift) from `seed`.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Seals a pod at `path` with a `rootfs_blocks` × 4 KiB rootfs (and its verity tree when
/// `verity`); `seed` varies every section.
pub fn make_pod(path: &Path, rootfs_blocks: usize, seed: u64, verity: bool) -> Manifest {
    let kernel = bytes(300_001, seed);
    let initramfs = bytes(70_003, seed + 1);
    let rootfs = bytes(rootfs_blocks * 4096, seed + 2);
    let manifest = Manifest {
        format_version: pod::manifest::FORMAT_VERSION,
        builder: "hyperbuild test".into(),
        created: "2024-05-06T07:08:09Z".into(),
        source: Source {
            reference: "oci:/test:pod".into(),
            manifest_digest: format!("sha256:{}", "5".repeat(64)),
            config_digest: String::new(),
        },
        sections: Sections {
            kernel: SectionInfo::of_bytes(&kernel),
            initramfs: SectionInfo::of_bytes(&initramfs),
            rootfs: SectionInfo {
                size: rootfs.len() as u64,
                sha256: String::new(),
            },
            verity: None,
        },
        run: RunSpec {
            cmd: vec!["/bin/true".into()],
            ..RunSpec::default()
        },
        resources: Resources::default(),
        kernel_cmdline: "reboot=k panic=-1 quiet".into(),
        kernel: None,
        verity: verity.then(Verity::default),
    };
    let slot = pod::begin_seal(path, &manifest, &mut &kernel[..], &mut &initramfs[..]).unwrap();
    slot.file().write_all_at(&rootfs, slot.offset()).unwrap();
    slot.finish(rootfs.len() as u64).unwrap()
}

/// Runs hyperbuild with `args` and extra environment.
pub fn hyperbuild(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(HYPERBUILD);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run hyperbuild")
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a failure with `code` and a one-line stderr containing every `needle`.
pub fn fails(out: &Output, code: i32, needles: &[&str], what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: stderr {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "{what}: not one line: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{what}: {err:?} does not name {n:?}");
    }
}

/// A fresh blob cache for one hyperbuild run.
pub fn cache_env(dir: &Path) -> PathBuf {
    let p = dir.join("cache");
    std::fs::create_dir_all(&p).unwrap();
    p
}
