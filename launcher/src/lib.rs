//! hyperlaunch: boots a `.pod` in a minimal KVM micro-VM (or QEMU where KVM cannot run it).
//!
//! An engine ([`vmm`], [`qemu`]) starts a machine and moves its bytes; the one [`supervisor`]
//! runs the guest protocol (`pod::protocol`) for both.

pub mod cli;
pub mod config;
pub mod devices;
pub mod doctor;
pub mod layout;
pub mod net;
pub mod publish;
pub mod qemu;
pub mod sandbox;
pub mod signature;
pub mod stdio;
pub mod supervisor;
pub mod timing;
pub mod verdict;
pub mod vmm;
