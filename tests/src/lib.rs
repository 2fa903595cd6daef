//! Shared helpers for the end-to-end tests.
pub mod init_fixture;
pub mod kernel;
pub mod qemu;
