//! hyperbuild: container image → sealed `.pod` bundle.
//!
//! The build is one pipeline of named steps: resolve → fetch → flatten → write rootfs →
//! write initramfs → seal. See `ARCHITECTURE.md` for the code map.

pub mod artifact;
pub mod build;
pub mod ext4;
pub mod image;
pub mod initramfs;
pub mod inspect;
pub mod install;
pub mod kernel;
pub mod signing;
pub mod tree;
