//! The `.pod` format: one tar file holding `manifest.json`, `kernel`, `initramfs` and
//! `rootfs.ext4`, each section's data at a 4 KiB-aligned offset. See `docs/pod-format.md`.
//!
//! - [`manifest`]: what the pod holds and how to run it.
//! - [`reader`]: [`Pod::open`], bounded parsing, sections as (offset, length), verification.
//! - [`writer`]: [`seal`], streaming and atomic; [`begin_seal`] for a rootfs written in place.
//! - [`spec`]: the run spec and launch-time overrides shared with init and the launcher.
//! - [`protocol`]: the guest protocol: ports, exit codes, control lines, stop signals, the
//!   overrides archive and the framed stdio stream.
//! - [`verity`]: the rootfs's dm-verity hash tree and the kernel arguments that open it.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

pub mod atomic;
pub mod cpio;
pub mod manifest;
pub mod protocol;
pub mod reader;
pub mod signature;
pub mod spec;
pub mod tarfmt;
pub mod time;
pub mod verity;
pub mod writer;

pub use manifest::{Manifest, SectionInfo};

/// Cache key of the `kernel-fragments/` these tools were built with (see `build.rs`): the key
/// `build-kernel.sh` caches their kernel under, and what a pod's manifest records
/// (`kernel.fragments`) when its kernel was built from them.
pub const FRAGMENTS_KEY: &str = env!("HYPERPOD_KERNEL_KEY");
pub use reader::{Pod, PodError, SIGNATURE_ENTRY, SIGNATURE_LEN, Section, SectionLoc};
pub use writer::{
    PodLayout, RootfsSlot, SealError, begin_seal, layout, seal, seal_parts, write_signed,
};

/// Streams `r` to its end; returns its length and lowercase hex sha256.
pub fn sha256_reader(r: &mut dyn Read) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((total, hex::encode(hasher.finalize())))
}

impl SectionInfo {
    /// Size and sha256 of a file's contents.
    pub fn of_file(path: &std::path::Path) -> io::Result<SectionInfo> {
        let (size, sha256) = sha256_reader(&mut std::fs::File::open(path)?)?;
        Ok(SectionInfo { size, sha256 })
    }

    /// Size and sha256 of bytes.
    pub fn of_bytes(bytes: &[u8]) -> SectionInfo {
        SectionInfo {
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}
