//! Finding the guest kernel and saying which one it is. Order: `--kernel PATH`, else
//! `$HYPERPOD_KERNEL`, else the installed one (`install::lib_dir()`, built from the same
//! fragments as this hyperbuild), else the build that `kernel-fragments/build-kernel.sh` cached
//! for the fragments this hyperbuild was built with.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use pod::manifest::{KernelInfo, MAX_KERNEL_RELEASE, is_fragments_key, is_kernel_release};
use thiserror::Error;

use crate::install;

/// Cache key of the fragments this binary was built with ([`pod::FRAGMENTS_KEY`]).
pub const FRAGMENTS_KEY: &str = pod::FRAGMENTS_KEY;

/// What precedes the release in a Linux kernel's banner (`init/version.c`).
const BANNER: &[u8] = b"Linux version ";

/// Why no kernel could be used.
#[derive(Debug, Error)]
pub enum KernelError {
    #[error("kernel {path}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no guest kernel installed or cached for fragments {FRAGMENTS_KEY} under {0}: run kernel-fragments/build-kernel.sh or pass --kernel"
    )]
    NotBuilt(PathBuf),
    #[error("kernel {0}: not an ELF vmlinux")]
    NotElf(PathBuf),
    #[error("kernel fragments file {0}: not one line of 16 lowercase hex digits")]
    BadFragmentsFile(PathBuf),
    #[error(
        "installed kernel {path} was built from fragments {found}, this hyperbuild from {FRAGMENTS_KEY}: reinstall the package or pass --kernel"
    )]
    InstalledMismatch { path: PathBuf, found: String },
}

/// Where a kernel was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--kernel PATH`.
    Flag,
    /// `$HYPERPOD_KERNEL`.
    Env,
    /// The package's, beside the executable.
    Installed,
    /// `build-kernel.sh`'s cache.
    Cache,
}

impl Origin {
    /// How `--version` names it.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Flag => "--kernel",
            Origin::Env => "$HYPERPOD_KERNEL",
            Origin::Installed => "installed",
            Origin::Cache => "cache",
        }
    }
}

/// A kernel to put in a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub path: PathBuf,
    pub origin: Origin,
    /// The fragments' cache key, when the kernel's place says it (see [`fragments_of`]).
    pub fragments: Option<String>,
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
pub fn locate(explicit: Option<&Path>) -> Result<Kernel, KernelError> {
    let env = std::env::var_os("HYPERPOD_KERNEL").map(PathBuf::from);
    let explicit = explicit.map(|p| (p.to_path_buf(), Origin::Flag));
    locate_in(
        explicit.or(env.map(|p| (p, Origin::Env))),
        install::lib_dir().as_deref(),
        &cache_root(),
    )
}

/// [`locate`] with its inputs given: a kernel asked for, the installed parts' directory, the
/// cache root.
fn locate_in(
    asked: Option<(PathBuf, Origin)>,
    lib_dir: Option<&Path>,
    cache_root: &Path,
) -> Result<Kernel, KernelError> {
    let installed = lib_dir
        .map(|d| d.join(install::KERNEL))
        .filter(|p| p.is_file());
    let (path, origin) = if let Some(asked) = asked {
        asked
    } else if let Some(p) = installed {
        (p, Origin::Installed)
    } else {
        let p = cache_root
            .join("kernel/by-fragments")
            .join(FRAGMENTS_KEY)
            .join("vmlinux");
        if !p.is_file() {
            return Err(KernelError::NotBuilt(cache_root.join("kernel")));
        }
        (p, Origin::Cache)
    };
    let mut magic = Vec::with_capacity(4);
    File::open(&path)
        .and_then(|f| f.take(4).read_to_end(&mut magic))
        .map_err(|source| KernelError::Unreadable {
            path: path.clone(),
            source,
        })?;
    if magic != b"\x7fELF" {
        return Err(KernelError::NotElf(path));
    }
    let fragments = fragments_of(&path)?;
    if origin == Origin::Installed && fragments.as_deref() != Some(FRAGMENTS_KEY) {
        return Err(KernelError::InstalledMismatch {
            found: fragments.unwrap_or_else(|| "(unrecorded)".into()),
            path,
        });
    }
    Ok(Kernel {
        path,
        origin,
        fragments,
    })
}

/// The fragments key a kernel file was built from, as its place records it: a
/// `vmlinux.fragments` file beside it (the package's), else a `<key16>-<version>` directory
/// holding it (build-kernel.sh's cache, also through its `by-fragments/` link); else unknown.
pub fn fragments_of(kernel: &Path) -> Result<Option<String>, KernelError> {
    let beside = kernel.with_file_name(install::KERNEL_FRAGMENTS);
    if kernel.file_name() == Some(std::ffi::OsStr::new(install::KERNEL)) && beside.is_file() {
        let mut text = String::new();
        File::open(&beside)
            .and_then(|f| f.take(64).read_to_string(&mut text))
            .map_err(|source| KernelError::Unreadable {
                path: beside.clone(),
                source,
            })?;
        let key = text.strip_suffix('\n').unwrap_or(&text);
        if !is_fragments_key(key) {
            return Err(KernelError::BadFragmentsFile(beside));
        }
        return Ok(Some(key.to_string()));
    }
    let real = kernel
        .canonicalize()
        .unwrap_or_else(|_| kernel.to_path_buf());
    let dir = real
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str());
    Ok(dir
        .and_then(|n| n.split_once('-'))
        .filter(|(key, version)| is_fragments_key(key) && !version.is_empty())
        .map(|(key, _)| key.to_string()))
}

/// The release in a kernel image's banner (`Linux version 6.12.117 (...)` → `6.12.117`): the
/// first banner whose release is a valid one. Pure; `None` if there is none.
pub fn release_in(bytes: &[u8]) -> Option<&str> {
    let mut rest = bytes;
    while let Some(at) = memchr::memmem::find(rest, BANNER) {
        let tail = &rest[at + BANNER.len()..];
        let end = tail
            .iter()
            .take(MAX_KERNEL_RELEASE + 1)
            .position(|&b| b == b' ' || b == 0)
            .unwrap_or(tail.len().min(MAX_KERNEL_RELEASE + 1));
        if let Ok(s) = std::str::from_utf8(&tail[..end]) {
            if tail.get(end) == Some(&b' ') && is_kernel_release(s) {
                return Some(s);
            }
        }
        rest = &rest[at + 1..];
    }
    None
}

/// Reads a kernel file in chunks for its release (see [`release_in`]).
pub fn read_release(path: &Path) -> Result<Option<String>, KernelError> {
    const CHUNK: usize = 1 << 20;
    const KEEP: usize = BANNER.len() + MAX_KERNEL_RELEASE + 1;
    let err = |source| KernelError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let mut buf = Vec::with_capacity(CHUNK + KEEP);
    loop {
        let kept = buf.len();
        buf.resize(kept + CHUNK, 0);
        let n = file.read(&mut buf[kept..]).map_err(err)?;
        buf.truncate(kept + n);
        // A banner cut by the buffer's end has no space after its release yet: not taken, and
        // found whole next time (the last KEEP bytes stay).
        if let Some(r) = release_in(&buf) {
            return Ok(Some(r.to_string()));
        }
        if n == 0 {
            return Ok(None);
        }
        let cut = buf.len().saturating_sub(KEEP);
        buf.drain(..cut);
    }
}

/// What a pod's manifest records about `kernel`: its release and fragments key, or nothing if
/// the file has no Linux banner.
pub fn identify(kernel: &Kernel) -> Result<Option<KernelInfo>, KernelError> {
    Ok(read_release(&kernel.path)?.map(|release| KernelInfo {
        release,
        fragments: kernel.fragments.clone(),
    }))
}

#[cfg(test)]
mod tests;
