//! The `.pod` format: one tar file holding `manifest.json`, `kernel`, `initramfs` and
//! `rootfs.ext4`, each section's data at a 4 KiB-aligned offset. See `docs/pod-format.md`.

pub mod spec;
