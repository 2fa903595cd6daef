//! The supported-CPUID cache against this machine's `/dev/kvm`: the cached table equals what
//! `KVM_GET_SUPPORTED_CPUID` returns, and a warm launch takes it from the cache.

mod probes;

use std::process::{Command, Stdio};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use launcher::vmm::cpuid_cache::{CpuidCache, CpuidSource, KeySources, key, supported_cpuid};

/// Runs `f` with the thread pinned to CPU 0: leaf 1's EBX holds the APIC id of the CPU the
/// ioctl ran on, so two reads only compare equal from the same CPU.
fn on_cpu0<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls get valid pointers to it.
    let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `old` is a valid cpu_set_t of `size` bytes.
    assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut old) }, 0);
    // SAFETY: as above.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU 0 is within the set's bounds.
    unsafe { libc::CPU_SET(0, &mut one) };
    // SAFETY: `one` is a valid cpu_set_t of `size` bytes.
    assert_eq!(unsafe { libc::sched_setaffinity(0, size, &one) }, 0);
    let r = f();
    // SAFETY: `old` is a valid cpu_set_t of `size` bytes.
    assert_eq!(unsafe { libc::sched_setaffinity(0, size, &old) }, 0);
    r
}

fn ioctl(kvm: &Kvm) -> CpuId {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap()
}

#[test]
fn cached_table_equals_the_ioctl() {
    if !probes::kvm_available("cached_table_equals_the_ioctl") {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = CpuidCache::new(dir.path().join("cpuid"));
    let src = KeySources::host();
    on_cpu0(|| {
        let (cold, l) =
            supported_cpuid(Some(&cache), || key(&src), || Ok::<_, ()>(ioctl(&kvm))).unwrap();
        assert!(
            matches!(
                l.source,
                CpuidSource::Kvm {
                    cache: None,
                    stored: Some(Ok(()))
                }
            ),
            "{}",
            l.note()
        );
        let (warm, l) = supported_cpuid(
            Some(&cache),
            || key(&src),
            || -> Result<CpuId, ()> { panic!("warm lookup called the ioctl") },
        )
        .unwrap();
        assert!(matches!(l.source, CpuidSource::Cache), "{}", l.note());
        let fresh = ioctl(&kvm);
        assert!(!fresh.as_slice().is_empty());
        assert_eq!(cold.as_slice(), fresh.as_slice());
        assert_eq!(warm.as_slice(), fresh.as_slice());
        eprintln!(
            "cpuid cache: {} entries; warm lookup {:.3} ms (key {:.3} ms)",
            warm.as_slice().len(),
            l.total_time.as_secs_f64() * 1e3,
            l.key_time.as_secs_f64() * 1e3
        );
    });
}

#[test]
fn warm_launch_takes_the_table_from_the_cache() {
    if !probes::kvm_available("warm_launch_takes_the_table_from_the_cache") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("hello.pod");
    probes::seal_pod(
        &pod,
        &probes::build(dir.path(), "hello", &["EXIT_CODE=0"]),
        b"initramfs",
        &[0u8; 4096],
        "quiet",
    );
    let cache = dir.path().join("cache");
    // Each launcher runs on CPU 0 (it inherits this thread's affinity): the table's leaf 1
    // EBX holds the APIC id of the CPU the ioctl ran on, and the rewritten entry is compared
    // with the first one byte for byte.
    let launch = || {
        let out = on_cpu0(|| {
            Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
                .args(["--engine", "kvm", "--memory", "64", "--timing"])
                .arg(&pod)
                .env("XDG_CACHE_HOME", &cache)
                .stdout(Stdio::null())
                .output()
                .unwrap()
        });
        assert_eq!(out.status.code(), Some(0));
        let err = String::from_utf8(out.stderr).unwrap();
        err.lines()
            .find(|l| l.starts_with("hyperlaunch timing: cpuid table"))
            .unwrap_or_else(|| panic!("no cpuid line in {err}"))
            .to_string()
    };
    let cold = launch();
    assert!(
        cold.ends_with("KVM_GET_SUPPORTED_CPUID; entry stored"),
        "{cold}"
    );
    let entries: Vec<_> = std::fs::read_dir(cache.join("hyperpod/cpuid"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let warm = launch();
    assert!(warm.ends_with("cache hit"), "{warm}");
    // A corrupted entry is ignored and rewritten; the launch still succeeds.
    let good = std::fs::read(&entries[0]).unwrap();
    std::fs::write(&entries[0], &good[..good.len() / 2]).unwrap();
    let repaired = launch();
    assert!(
        repaired.contains("KVM_GET_SUPPORTED_CPUID; cpuid cache entry is")
            && repaired.ends_with("entry stored"),
        "{repaired}"
    );
    assert_eq!(std::fs::read(&entries[0]).unwrap(), good);
    assert!(launch().ends_with("cache hit"));
}
