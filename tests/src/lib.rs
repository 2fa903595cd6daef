//! Shared helpers for the end-to-end tests: the guest kernel, QEMU, init fixtures, a fake static
//! ELF, the probe image booted through the real binaries, and a real `docker-registry` started on
//! loopback.
pub mod elf;
pub mod init_fixture;
pub mod kernel;
pub mod nested;
pub mod probe;
pub mod qemu;
pub mod registry;
pub mod skip;
pub mod web;
