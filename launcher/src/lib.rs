//! hyperlaunch: boots a `.pod` in a minimal KVM micro-VM (or QEMU where KVM cannot run it).

pub mod config;
pub mod control;
