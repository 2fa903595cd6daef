//! Where an installed hyperbuild finds its parts: next to its own executable, FHS-style.
//! `/usr/bin/hyperbuild` looks in `/usr/lib/hyperpod/`; a tarball unpacked anywhere keeps the
//! same relative layout (`PREFIX/bin/hyperbuild`, `PREFIX/lib/hyperpod/`). `scripts/package`
//! lays the package out by these names.

use std::path::PathBuf;

/// The parts' directory, relative to the directory above the executable's.
pub const LIB_DIR: &str = "lib/hyperpod";
/// The guest kernel (an ELF vmlinux) in [`LIB_DIR`].
pub const KERNEL: &str = "vmlinux";
/// Beside the kernel: the cache key of the `kernel-fragments/` it was built from, one line.
pub const KERNEL_FRAGMENTS: &str = "vmlinux.fragments";
/// The static guest init in [`LIB_DIR`].
pub const INIT: &str = "hyperpod-init";

/// `<executable's directory>/../lib/hyperpod`, whether or not it exists. The executable's path
/// is the kernel's (`/proc/self/exe`), so symlinks to it lead to the real install.
pub fn lib_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join(LIB_DIR))
}
