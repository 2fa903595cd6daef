//! Finding the guest kernel: `--kernel PATH`, else `$HYPERPOD_KERNEL`, else the build that
//! `kernel-fragments/build-kernel.sh` cached for the fragments this hyperbuild was built with.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Cache key of the fragments this binary was built with (see `build.rs`).
pub const FRAGMENTS_KEY: &str = env!("HYPERPOD_KERNEL_KEY");

/// Why no kernel could be used.
#[derive(Debug, Error)]
pub enum KernelError {
    #[error("kernel {path}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no guest kernel cached for fragments {FRAGMENTS_KEY} under {0}: run kernel-fragments/build-kernel.sh or pass --kernel"
    )]
    NotBuilt(PathBuf),
    #[error("kernel {0}: not an ELF vmlinux")]
    NotElf(PathBuf),
}

/// `$HYPERPOD_CACHE`, else `$XDG_CACHE_HOME/hyperpod`, else `~/.cache/hyperpod`.
pub fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("HYPERPOD_CACHE") {
        return PathBuf::from(p);
    }
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    xdg.join("hyperpod")
}

/// The kernel to put in a pod.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, KernelError> {
    let path = match explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("HYPERPOD_KERNEL").map(PathBuf::from))
    {
        Some(p) => p,
        None => {
            let dir = cache_root().join("kernel/by-fragments").join(FRAGMENTS_KEY);
            let p = dir.join("vmlinux");
            if !p.is_file() {
                return Err(KernelError::NotBuilt(cache_root().join("kernel")));
            }
            p
        }
    };
    let mut magic = Vec::with_capacity(4);
    std::fs::File::open(&path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 4), &mut magic))
        .map_err(|source| KernelError::Unreadable {
            path: path.clone(),
            source,
        })?;
    if magic != b"\x7fELF" {
        return Err(KernelError::NotElf(path));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_16_hex_and_missing_kernels_are_named() {
        assert_eq!(FRAGMENTS_KEY.len(), 16);
        assert!(FRAGMENTS_KEY.bytes().all(|b| b.is_ascii_hexdigit()));
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("vmlinux");
        assert!(matches!(
            locate(Some(&missing)),
            Err(KernelError::Unreadable { .. })
        ));
        std::fs::write(&missing, b"\x7fE").unwrap();
        assert!(matches!(
            locate(Some(&missing)),
            Err(KernelError::NotElf(_))
        ));
        std::fs::write(&missing, b"MZ not elf").unwrap();
        assert!(matches!(
            locate(Some(&missing)),
            Err(KernelError::NotElf(_))
        ));
        std::fs::write(&missing, b"\x7fELF....").unwrap();
        assert_eq!(locate(Some(&missing)).unwrap(), missing);
    }

    #[test]
    fn finds_what_the_build_script_built() {
        // The script is the reference: the kernel it prints must be the one our key names.
        // It returns at once when the kernel is cached (scripts/setup builds it first).
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-fragments/build-kernel.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let built = Path::new(stdout.lines().last().unwrap().trim());
        let ours = cache_root()
            .join("kernel/by-fragments")
            .join(FRAGMENTS_KEY)
            .join("vmlinux");
        assert_eq!(ours.canonicalize().unwrap(), built.canonicalize().unwrap());
    }
}
