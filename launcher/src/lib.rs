//! hyperlaunch: boots a `.pod` in a minimal KVM micro-VM (or QEMU where KVM cannot run it).

pub mod cli;
pub mod config;
pub mod control;
pub mod devices;
pub mod doctor;
pub mod layout;
pub mod qemu;
pub mod signature;
pub mod verdict;
pub mod vmm;
