//! `--engine auto`'s question, "does this host's KVM run guest code natively?", answered once
//! per host state. The doctor's probe guest costs a few milliseconds on native KVM (tens here)
//! on every launch otherwise. A positive answer is recorded in
//! `$XDG_CACHE_HOME/hyperpod/native/` (else `~/.cache/hyperpod/native/`): a file named after the
//! CPUID cache's key for this host state (boot id, KVM modules, microcode, CPU features; see
//! `vmm::cpuid_cache`) and holding that key, compared byte for byte. A negative answer is never
//! recorded: a loaded host can fail the probe's timing, and the QEMU boot it leads to costs far
//! more than the probe.

use std::path::{Path, PathBuf};

use crate::vmm::{cpuid_cache, trust};

/// `native/` beside the CPUID cache.
pub fn default_dir() -> Option<PathBuf> {
    Some(
        cpuid_cache::CpuidCache::default_dir()?
            .parent()?
            .join("native"),
    )
}

fn record_path(dir: &Path, key: &[u8]) -> PathBuf {
    dir.join(cpuid_cache::entry_name(key))
}

/// Whether `dir` records a positive answer for `key`.
fn recorded(dir: &Path, key: &[u8]) -> bool {
    trust::file_holds(&record_path(dir, key), key)
}

/// Records a positive answer for `key` (temp file + rename). Best effort: not recording only
/// means probing again next time.
fn record(dir: &Path, key: &[u8]) {
    if trust::create_private_dir(dir).is_ok() {
        let _ = trust::replace_file(dir, &record_path(dir, key), key, false);
    }
}

/// The answer for this host state: from the record in `dir` for `key` if there is one, else
/// from `probe` (recorded when positive). Without a directory or a key, always `probe`.
pub fn runs_natively(dir: Option<&Path>, key: Option<&[u8]>, probe: impl FnOnce() -> bool) -> bool {
    let (Some(dir), Some(key)) = (dir, key) else {
        return probe();
    };
    if recorded(dir, key) {
        return true;
    }
    let native = probe();
    if native {
        record(dir, key);
    }
    native
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::fs;

    #[test]
    fn a_positive_answer_is_recorded_per_key_and_a_negative_one_never() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("native");
        let probes = Cell::new(0);
        let probe = |answer: bool| {
            let probes = &probes;
            move || {
                probes.set(probes.get() + 1);
                answer
            }
        };
        let (a, b) = (&b"host state a"[..], &b"host state b"[..]);
        // Negative: probed every time, nothing written.
        assert!(!runs_natively(Some(&dir), Some(a), probe(false)));
        assert!(!runs_natively(Some(&dir), Some(a), probe(false)));
        assert_eq!(probes.get(), 2);
        assert!(!dir.exists());
        // Positive: probed once, then answered from the record.
        assert!(runs_natively(Some(&dir), Some(a), probe(true)));
        assert!(runs_natively(Some(&dir), Some(a), probe(false)));
        assert_eq!(probes.get(), 3);
        // Another host state is probed afresh.
        assert!(!runs_natively(Some(&dir), Some(b), probe(false)));
        assert_eq!(probes.get(), 4);
        // A record that does not hold its key (altered, truncated, or another key's) is ignored.
        for bad in [&b"host state x"[..], b"host state", b"host state a\n"] {
            fs::write(record_path(&dir, a), bad).unwrap();
            assert!(!runs_natively(Some(&dir), Some(a), probe(false)), "{bad:?}");
        }
        assert_eq!(probes.get(), 7);
        // Without a directory or a key: the probe, every time.
        assert!(runs_natively(None, Some(a), probe(true)));
        assert!(!runs_natively(Some(&dir), None, probe(false)));
        assert_eq!(probes.get(), 9);
        // An unwritable directory only means probing again.
        let file = tmp.path().join("a-file");
        fs::write(&file, b"").unwrap();
        assert!(runs_natively(
            Some(&file.join("native")),
            Some(a),
            probe(true)
        ));
        assert!(runs_natively(
            Some(&file.join("native")),
            Some(a),
            probe(true)
        ));
        assert_eq!(probes.get(), 11);
    }
}
