//! hyperbuild: container image → sealed `.pod` bundle.
//!
//! The build is one pipeline of named steps: resolve → fetch → flatten → write rootfs →
//! write initramfs → seal. See `ARCHITECTURE.md` for the code map.

pub mod image;
pub mod tree;
