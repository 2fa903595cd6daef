//! A cache of `KVM_GET_SUPPORTED_CPUID` across launches. The table depends only on the host
//! CPU, kernel, KVM modules (and their read-only parameters), the kernel command line and the
//! calling process's guest xstate permission; all are fixed within one boot except module
//! reloads. An entry is keyed (see [`key`]) on the boot id, the identity of each KVM
//! module's sysfs directory, the microcode revision, the process's guest xstate permission and
//! the host CPU's feature words; its file is named after an FNV-1a hash of that key. The entry
//! holds the whole key, the raw `kvm_cpuid_entry2` array (count + entries) and a checksum of
//! all that, so a truncated, altered or misplaced file is ignored. Any cache problem falls back
//! to the ioctl. Storing an entry removes all but the newest few others.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CpuidCacheError {
    #[error("cpuid cache entry is {0} bytes, too short")]
    Short(usize),
    #[error("cpuid cache entry has a bad magic")]
    Magic,
    #[error("cpuid cache entry has {0} entries, more than {max}", max = KVM_MAX_CPUID_ENTRIES)]
    TooMany(u32),
    #[error("cpuid cache entry has a {0}-byte key, more than {max}", max = MAX_KEY_LEN)]
    KeyTooLong(usize),
    #[error("cpuid cache entry is {got} bytes, {want} expected for its count")]
    Length { got: usize, want: usize },
    #[error("cpuid cache entry checksum mismatch")]
    Checksum,
    #[error("cpuid cache entry belongs to another key")]
    Key,
    #[error("cannot read the cpuid cache key ({0})")]
    KeySource(&'static str, #[source] std::io::Error),
    #[error("cpuid cache {0}")]
    Io(&'static str, #[source] std::io::Error),
}

/// Version of the entry format (and of the key material layout).
const MAGIC: [u8; 8] = *b"HPCPUID\x03";
/// The longest key material an entry may hold.
const MAX_KEY_LEN: usize = 4096;
/// `kvm_cpuid_entry2`: ten little-endian u32s.
const ENTRY_LEN: usize = 40;
/// The checksum: FNV-1a 64 of everything before it.
const SUM_LEN: usize = 8;
/// The longest valid entry file: magic, key length and key, count and entries, checksum.
pub const MAX_FILE_LEN: usize =
    MAGIC.len() + 4 + MAX_KEY_LEN + 4 + KVM_MAX_CPUID_ENTRIES * ENTRY_LEN + SUM_LEN;

/// FNV-1a, 64 bits: the entries' file names and checksums. Not a cryptographic hash, and none
/// is needed: an entry holds its whole key, compared byte for byte, and the cache is only as
/// trusted as the user's cache directory. It spares a warm launch the first sha256 of the
/// process (~20 µs of CPU-feature detection here).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Entries kept beside the one just stored: one per host state, so a few hosts (or boots)
/// sharing a home directory each keep theirs.
pub const KEEP_OTHER_ENTRIES: usize = 7;

/// The modules whose presence and identity are part of the key.
pub const KVM_MODULES: [&str; 4] = ["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"];

fn entry_words(e: &kvm_cpuid_entry2) -> [u32; 10] {
    [
        e.function,
        e.index,
        e.flags,
        e.eax,
        e.ebx,
        e.ecx,
        e.edx,
        e.padding[0],
        e.padding[1],
        e.padding[2],
    ]
}

/// The entry file for `key` (its key material) holding `entries` (at most
/// [`KVM_MAX_CPUID_ENTRIES`]).
pub fn encode_entry(key: &[u8], entries: &[kvm_cpuid_entry2]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(MAGIC.len() + 8 + key.len() + entries.len() * ENTRY_LEN + SUM_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        for w in entry_words(e) {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    let sum = fnv1a64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Parses an entry file written by [`encode_entry`] for `key`: exact length for its key and
/// count, at most [`MAX_KEY_LEN`] key bytes and [`KVM_MAX_CPUID_ENTRIES`] entries, checksum and
/// key must match.
pub fn parse_entry(bytes: &[u8], key: &[u8]) -> Result<Vec<kvm_cpuid_entry2>, CpuidCacheError> {
    let short = || CpuidCacheError::Short(bytes.len());
    if bytes.len() < MAGIC.len() + 8 + SUM_LEN {
        return Err(short());
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(CpuidCacheError::Magic);
    }
    let key_len = u32_at(bytes, MAGIC.len()).ok_or_else(short)? as usize;
    if key_len > MAX_KEY_LEN {
        return Err(CpuidCacheError::KeyTooLong(key_len));
    }
    let count_at = MAGIC.len() + 4 + key_len;
    let count = u32_at(bytes, count_at).ok_or_else(short)?;
    if count as usize > KVM_MAX_CPUID_ENTRIES {
        return Err(CpuidCacheError::TooMany(count));
    }
    let want = count_at + 4 + count as usize * ENTRY_LEN + SUM_LEN;
    if bytes.len() != want {
        return Err(CpuidCacheError::Length {
            got: bytes.len(),
            want,
        });
    }
    let (body, sum) = bytes.split_at(want - SUM_LEN);
    if fnv1a64(body).to_le_bytes() != sum {
        return Err(CpuidCacheError::Checksum);
    }
    if &body[MAGIC.len() + 4..count_at] != key {
        return Err(CpuidCacheError::Key);
    }
    let entries = body[count_at + 4..]
        .chunks_exact(ENTRY_LEN)
        .map(|c| {
            let w = |i: usize| u32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().unwrap());
            kvm_cpuid_entry2 {
                function: w(0),
                index: w(1),
                flags: w(2),
                eax: w(3),
                ebx: w(4),
                ecx: w(5),
                edx: w(6),
                padding: [w(7), w(8), w(9)],
            }
        })
        .collect();
    Ok(entries)
}

/// Where the key material comes from (the host's `/proc` and `/sys`, or a test's tree).
#[derive(Clone, Debug)]
pub struct KeySources {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: PathBuf,
    /// `/sys/module`.
    pub sys_module: PathBuf,
    /// The process's permitted guest xstate features (`ARCH_GET_XCOMP_GUEST_PERM`), which
    /// filter leaf 0xd of the table; `None` where the kernel does not report it.
    pub xcomp_guest_perm: Option<u64>,
    /// The host CPU's microcode revision file (`/sys/devices/system/cpu/cpu0/microcode/version`,
    /// absent in most VMs): a late microcode update can take features away.
    pub microcode: PathBuf,
    /// The host CPU's leaf 7.0 feature words ([`host_cpu_features`]): where a microcode
    /// update or `MSR_IA32_TSX_CTRL`'s CPUID clear shows.
    pub host_features: Vec<u32>,
}

impl KeySources {
    /// This host, this process.
    pub fn host() -> KeySources {
        KeySources {
            boot_id: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            sys_module: PathBuf::from("/sys/module"),
            microcode: PathBuf::from("/sys/devices/system/cpu/cpu0/microcode/version"),
            xcomp_guest_perm: xcomp_guest_perm(),
            host_features: host_cpu_features(),
        }
    }
}

/// Leaf 7.0 EBX/ECX/EDX of the CPU this runs on: TSX (RTM, HLE) and the speculation-control
/// bits, the ones a microcode update or `MSR_IA32_TSX_CTRL` changes. One instruction: `cpuid`
/// traps to the hypervisor in a VM (~6 µs on the host of `docs/BENCHMARKS.md`). On a CPU
/// without leaf 7 the words are those of its highest leaf, stable all the same.
fn host_cpu_features() -> Vec<u32> {
    let l7 = std::arch::x86_64::__cpuid_count(7, 0);
    vec![l7.ebx, l7.ecx, l7.edx]
}

/// `arch_prctl(ARCH_GET_XCOMP_GUEST_PERM)`.
fn xcomp_guest_perm() -> Option<u64> {
    const ARCH_GET_XCOMP_GUEST_PERM: libc::c_long = 0x1024;
    let mut perm = 0u64;
    // SAFETY: ARCH_GET_XCOMP_GUEST_PERM writes one u64 through the pointer, which is valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_GET_XCOMP_GUEST_PERM,
            &mut perm as *mut u64,
        )
    };
    (r == 0).then_some(perm)
}

/// Reads a small procfs/sysfs file whole (these come whole from their first read).
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(64);
    File::open(path)?.take(4096).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Appends one named field to the key material: `name NUL`, then `0` (absent) or `1`, the
/// length (u64 LE) and the bytes.
fn field(out: &mut Vec<u8>, name: &[u8], value: Option<&[u8]>) {
    out.extend_from_slice(name);
    out.push(0);
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
}

/// The key material: the boot id (required), then for each of [`KVM_MODULES`] whether it is
/// loaded and the inode number of its `/sys/module/NAME` directory, the microcode revision, the
/// guest xstate permission and the host's leaf 7 feature words. Unambiguous: every field is named and
/// length-prefixed.
///
/// Why the module's inode stands for its parameters: sysfs (kernfs) gives every node a
/// never-reused inode number (a cyclic id plus a generation), and unloading a module removes
/// its directory, so a reload — the only way to change a read-only parameter, and the moment
/// KVM recomputes what it supports — gives a new number. The writable parameters (halt
/// polling, `ignore_msrs`, `nx_huge_pages`, ... in Linux 6.12) are not read when KVM builds the
/// table. The kernel itself cannot change without a new boot id.
pub fn key(src: &KeySources) -> Result<Vec<u8>, CpuidCacheError> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(KVM_MAX_CPUID_ENTRIES as u64).to_le_bytes());
    let boot_id = read_small(&src.boot_id).map_err(|e| CpuidCacheError::KeySource("boot_id", e))?;
    field(&mut out, b"boot_id", Some(&boot_id));
    for module in KVM_MODULES {
        let ino = match fs::metadata(src.sys_module.join(module)) {
            Ok(m) => Some(m.ino().to_le_bytes()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(CpuidCacheError::KeySource("module directory", e)),
        };
        field(
            &mut out,
            format!("{module}/ino").as_bytes(),
            ino.as_ref().map(|i| &i[..]),
        );
    }
    let microcode = match read_small(&src.microcode) {
        Ok(v) => Some(v),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(CpuidCacheError::KeySource("microcode", e)),
    };
    field(&mut out, b"microcode", microcode.as_deref());
    let perm = src.xcomp_guest_perm.map(u64::to_le_bytes);
    field(&mut out, b"xcomp_guest_perm", perm.as_ref().map(|p| &p[..]));
    let features: Vec<u8> = src
        .host_features
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    field(&mut out, b"host_features", Some(&features));
    Ok(out)
}

/// This host's [`key`] for this process, gathered once: `--engine auto`'s verdict
/// (`crate::verdict`) and the CPUID table both use it. A failure is not kept: the next call
/// tries again.
pub fn host_key() -> Result<Vec<u8>, CpuidCacheError> {
    static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    if let Some(k) = KEY.get() {
        return Ok(k.clone());
    }
    let k = key(&KeySources::host())?;
    Ok(KEY.get_or_init(|| k).clone())
}

/// Length of an entry's file name.
const ENTRY_NAME_LEN: usize = 16;

pub(crate) fn entry_name(key: &[u8]) -> String {
    format!("{:016x}", fnv1a64(key))
}

/// A directory of CPUID entries, one file per key.
pub struct CpuidCache {
    dir: PathBuf,
}

impl CpuidCache {
    pub fn new(dir: PathBuf) -> CpuidCache {
        CpuidCache { dir }
    }

    /// `cpuid/` beside the verified-digest cache (`$XDG_CACHE_HOME/hyperpod/cpuid`, else
    /// `$HOME/.cache/hyperpod/cpuid`).
    pub fn default_dir() -> Option<PathBuf> {
        Some(super::trust::default_cache_dir()?.parent()?.join("cpuid"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the entry for `key`: its FNV-1a 64 in hex.
    pub fn entry_path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(entry_name(key))
    }

    /// The table stored for `key`, if a valid entry is there.
    pub fn load(&self, key: &[u8]) -> Result<Vec<kvm_cpuid_entry2>, CpuidCacheError> {
        let f = File::open(self.entry_path(key)).map_err(|e| CpuidCacheError::Io("read", e))?;
        let mut bytes = Vec::with_capacity(MAX_FILE_LEN + 1);
        f.take(MAX_FILE_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CpuidCacheError::Io("read", e))?;
        parse_entry(&bytes, key)
    }

    /// Stores `entries` for `key`: a temp file in the same directory, renamed into place. No
    /// fsync: a torn file after a crash fails its checksum and is rewritten.
    pub fn store(&self, key: &[u8], entries: &[kvm_cpuid_entry2]) -> Result<(), CpuidCacheError> {
        if entries.len() > KVM_MAX_CPUID_ENTRIES {
            return Err(CpuidCacheError::TooMany(entries.len() as u32));
        }
        super::trust::create_private_dir(&self.dir).map_err(|e| CpuidCacheError::Io("mkdir", e))?;
        // No fsync: a torn file after a crash fails its checksum and is rewritten.
        let bytes = encode_entry(key, entries);
        super::trust::replace_file(&self.dir, &self.entry_path(key), &bytes, false)
            .map_err(|e| CpuidCacheError::Io("write", e))?;
        self.collect(key);
        Ok(())
    }

    /// Removes all entries but `key`'s and the [`KEEP_OTHER_ENTRIES`] most recently written
    /// others. Best effort: an entry that cannot be listed or removed stays.
    fn collect(&self, key: &[u8]) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        let current = entry_name(key);
        let mut others: Vec<(std::time::SystemTime, PathBuf)> = dir
            .flatten()
            .filter(|d| {
                let name = d.file_name();
                let name = name.to_string_lossy();
                name.len() == ENTRY_NAME_LEN
                    && name.bytes().all(|b| b.is_ascii_hexdigit())
                    && name != current
            })
            .filter_map(|d| Some((d.metadata().ok()?.modified().ok()?, d.path())))
            .collect();
        others.sort_by_key(|o| std::cmp::Reverse(o.0));
        for (_, path) in others.into_iter().skip(KEEP_OTHER_ENTRIES) {
            let _ = fs::remove_file(path);
        }
    }
}

/// Where a launch's CPUID table came from.
#[derive(Debug)]
pub enum CpuidSource {
    /// A valid cache entry.
    Cache,
    /// The ioctl; `stored` says whether the cache entry was (re)written, `cache` why the
    /// cache was not used (none when there is no cache).
    Kvm {
        cache: Option<CpuidCacheError>,
        stored: Option<Result<(), CpuidCacheError>>,
    },
}

/// How the CPUID table of a launch was obtained, for `--timing`.
#[derive(Debug)]
pub struct CpuidLookup {
    pub source: CpuidSource,
    /// Time spent gathering the key (zero without a cache).
    pub key_time: Duration,
    /// Time from asking to having the table (key, read or ioctl, and the store).
    pub total_time: Duration,
}

impl CpuidLookup {
    /// One line for `--timing`.
    pub fn note(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let how = match &self.source {
            CpuidSource::Cache => "cache hit".to_string(),
            CpuidSource::Kvm {
                cache: None,
                stored: None,
            } => "KVM_GET_SUPPORTED_CPUID, no cache".to_string(),
            CpuidSource::Kvm { cache, stored } => {
                let mut s = "KVM_GET_SUPPORTED_CPUID".to_string();
                if let Some(e) = cache {
                    s.push_str(&format!("; {}", super::error_chain(e)));
                }
                match stored {
                    Some(Ok(())) => s.push_str("; entry stored"),
                    Some(Err(e)) => s.push_str(&format!("; {}", super::error_chain(e))),
                    None => {}
                }
                s
            }
        };
        format!(
            "hyperlaunch timing: cpuid table {:.3} ms (key {:.3} ms): {how}\n",
            ms(self.total_time),
            ms(self.key_time)
        )
    }
}

/// The supported-CPUID table: from `cache` when it holds a valid entry for this host's key,
/// else from `fetch` (the ioctl), then stored. A cache problem never fails: it only means
/// `fetch` is called.
pub fn supported_cpuid<E>(
    cache: Option<&CpuidCache>,
    key: impl FnOnce() -> Result<Vec<u8>, CpuidCacheError>,
    fetch: impl FnOnce() -> Result<CpuId, E>,
) -> Result<(CpuId, CpuidLookup), E> {
    let start = Instant::now();
    let Some(cache) = cache else {
        let cpuid = fetch()?;
        let lookup = CpuidLookup {
            source: CpuidSource::Kvm {
                cache: None,
                stored: None,
            },
            key_time: Duration::ZERO,
            total_time: start.elapsed(),
        };
        return Ok((cpuid, lookup));
    };
    let key = key();
    let key_time = start.elapsed();
    let (cpuid, source) = match key {
        Err(e) => (
            fetch()?,
            CpuidSource::Kvm {
                cache: Some(e),
                stored: None,
            },
        ),
        Ok(key) => match cache.load(&key).and_then(|v| {
            CpuId::from_entries(&v).map_err(|_| CpuidCacheError::TooMany(v.len() as u32))
        }) {
            Ok(cpuid) => (cpuid, CpuidSource::Cache),
            Err(e) => {
                let cpuid = fetch()?;
                let stored = Some(cache.store(&key, cpuid.as_slice()));
                // A missing entry is the normal cold case, not worth a note.
                let miss = matches!(&e, CpuidCacheError::Io(_, io)
                    if io.kind() == std::io::ErrorKind::NotFound);
                let source = CpuidSource::Kvm {
                    cache: (!miss).then_some(e),
                    stored,
                };
                (cpuid, source)
            }
        },
    };
    let lookup = CpuidLookup {
        source,
        key_time,
        total_time: start.elapsed(),
    };
    Ok((cpuid, lookup))
}

#[cfg(test)]
mod tests;
