use super::*;

fn table(n: u32) -> Vec<kvm_cpuid_entry2> {
    (0..n)
        .map(|i| kvm_cpuid_entry2 {
            function: i,
            index: i * 3,
            flags: 1,
            eax: 0x1111_0000 + i,
            ebx: 0x2222_0000 + i,
            ecx: 0x3333_0000 + i,
            edx: 0x4444_0000 + i,
            padding: [0; 3],
        })
        .collect()
}

#[test]
fn entries_round_trip_and_bad_bytes_are_refused() {
    let key = [7u8; 32];
    let t = table(5);
    let bytes = encode_entry(&key, &t);
    let header = MAGIC.len() + 4 + key.len() + 4;
    assert_eq!(bytes.len(), header + 5 * ENTRY_LEN + SUM_LEN);
    assert_eq!(parse_entry(&bytes, &key).unwrap(), t);
    assert_eq!(parse_entry(&encode_entry(&key, &[]), &key).unwrap(), vec![]);
    let full = table(KVM_MAX_CPUID_ENTRIES as u32);
    assert_eq!(parse_entry(&encode_entry(&key, &full), &key).unwrap(), full);

    // Truncated anywhere, or extended.
    for cut in [0, 10, header, header + SUM_LEN, bytes.len() - 1] {
        assert!(parse_entry(&bytes[..cut], &key).is_err(), "cut at {cut}");
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        parse_entry(&long, &key),
        Err(CpuidCacheError::Length { .. })
    ));
    // Any flipped byte: magic, key, count, entries or checksum.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x40;
        assert!(parse_entry(&b, &key).is_err(), "flip at {i}");
    }
    // Another key's (valid) entry, including a longer or shorter key.
    for other in [&[8u8; 32][..], &[7u8; 31], &[7u8; 33]] {
        assert!(matches!(
            parse_entry(&bytes, other),
            Err(CpuidCacheError::Key)
        ));
    }
    // A key length beyond the limit, or past the end.
    let mut b = bytes.clone();
    b[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        parse_entry(&b, &key),
        Err(CpuidCacheError::KeyTooLong(_))
    ));
    b[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&4000u32.to_le_bytes());
    assert!(matches!(
        parse_entry(&b, &key),
        Err(CpuidCacheError::Short(_))
    ));
    // A count beyond the limit, even with a matching length and checksum.
    let mut big = encode_entry(&key, &table(KVM_MAX_CPUID_ENTRIES as u32 + 1));
    assert!(matches!(
        parse_entry(&big, &key),
        Err(CpuidCacheError::TooMany(n)) if n as usize == KVM_MAX_CPUID_ENTRIES + 1
    ));
    big[header - 4..header].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        parse_entry(&big, &key),
        Err(CpuidCacheError::TooMany(u32::MAX))
    ));
}

/// A fake boot id and `/sys/module`.
fn tree(dir: &Path) -> KeySources {
    let boot_id = dir.join("boot_id");
    fs::write(&boot_id, "1b2234cb\n").unwrap();
    let m = dir.join("module");
    fs::create_dir_all(m.join("kvm/parameters")).unwrap();
    fs::write(m.join("kvm/parameters/enable_pmu"), "Y\n").unwrap();
    fs::create_dir_all(m.join("kvm_intel/parameters")).unwrap();
    let microcode = dir.join("microcode");
    fs::write(&microcode, "0x2b000603\n").unwrap();
    KeySources {
        boot_id,
        sys_module: m,
        microcode,
        xcomp_guest_perm: Some(0x2e7),
        host_features: vec![0x7ffa_fbff, 0xbfeb_fbff, 0x029c_67af],
    }
}

/// Replaces directory `p` by a new one (as a module reload does in sysfs): the new
/// directory exists before the old one goes, so it cannot get the old inode number.
fn recreate(p: &Path) {
    let new = p.with_extension("new");
    fs::create_dir(&new).unwrap();
    fs::remove_dir_all(p).unwrap();
    fs::rename(&new, p).unwrap();
}

#[test]
fn key_changes_with_every_input() {
    let dir = tempfile::tempdir().unwrap();
    let src = tree(dir.path());
    let base = key(&src).unwrap();
    assert_eq!(key(&src).unwrap(), base, "the key is stable");
    let p = |rel: &str| dir.path().join(rel);
    let mut seen = vec![base];
    fn changed(seen: &mut Vec<Vec<u8>>, what: &str, k: Vec<u8>) {
        assert!(!seen.contains(&k), "{what} did not change the key");
        seen.push(k);
    }
    fs::write(p("boot_id"), "2c3345dc\n").unwrap();
    changed(&mut seen, "boot id", key(&src).unwrap());
    fs::write(p("microcode"), "0x2b000604\n").unwrap();
    changed(&mut seen, "microcode revision", key(&src).unwrap());
    fs::remove_file(p("microcode")).unwrap();
    changed(&mut seen, "no microcode revision", key(&src).unwrap());
    // A module reloaded (its parameters may differ), loaded or unloaded.
    recreate(&p("module/kvm_intel"));
    changed(&mut seen, "kvm_intel reloaded", key(&src).unwrap());
    recreate(&p("module/kvm"));
    changed(&mut seen, "kvm reloaded", key(&src).unwrap());
    fs::create_dir_all(p("module/kvm_amd")).unwrap();
    changed(&mut seen, "kvm_amd loaded", key(&src).unwrap());
    fs::create_dir_all(p("module/kvm_pvm/parameters")).unwrap();
    changed(&mut seen, "kvm_pvm loaded", key(&src).unwrap());
    fs::remove_dir_all(p("module/kvm_intel")).unwrap();
    changed(&mut seen, "kvm_intel unloaded", key(&src).unwrap());
    // Modules other than KVM's do not matter, nor does anything inside a module's
    // directory (sysfs only changes it with a reload).
    fs::create_dir_all(p("module/ext4/parameters")).unwrap();
    fs::write(p("module/kvm/refcnt"), "3\n").unwrap();
    assert_eq!(key(&src).unwrap(), *seen.last().unwrap());
    // The process's guest xstate permission.
    let mut other = src.clone();
    other.xcomp_guest_perm = Some(0x602e7);
    changed(&mut seen, "xcomp perm", key(&other).unwrap());
    other.xcomp_guest_perm = None;
    changed(&mut seen, "no xcomp perm", key(&other).unwrap());
    // A host feature bit (e.g. a microcode update turning TSX off).
    other.host_features[2] ^= 1 << 11;
    changed(&mut seen, "host feature bit", key(&other).unwrap());
    // No boot id: no key.
    fs::remove_file(p("boot_id")).unwrap();
    assert!(matches!(
        key(&src),
        Err(CpuidCacheError::KeySource("boot_id", _))
    ));
}

#[test]
fn storing_keeps_only_the_newest_entries() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CpuidCache::new(dir.path().join("cpuid"));
    let t = table(3);
    let total = KEEP_OTHER_ENTRIES as u8 + 4;
    for i in 0..total {
        cache.store(&[i; 32], &t).unwrap();
        // Distinct modification times, oldest first.
        let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + u64::from(i));
        File::options()
            .write(true)
            .open(cache.entry_path(&[i; 32]))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    // Files that are not entries are left alone.
    fs::write(cache.dir().join("notes.txt"), b"mine").unwrap();
    // Storing again the oldest key keeps it and the newest others.
    cache.store(&[0; 32], &t).unwrap();
    let mut left: Vec<String> = fs::read_dir(cache.dir())
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut want: Vec<String> = std::iter::once(0)
        .chain(total - KEEP_OTHER_ENTRIES as u8..total)
        .map(|i| entry_name(&[i; 32]))
        .collect();
    want.push("notes.txt".into());
    want.sort();
    assert_eq!(left, want);
    assert_eq!(cache.load(&[0; 32]).unwrap(), t);
}

#[test]
fn store_round_trips_atomically_and_ignores_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CpuidCache::new(dir.path().join("hyperpod/cpuid"));
    let key = [3u8; 32];
    let t = table(40);
    assert!(matches!(cache.load(&key), Err(CpuidCacheError::Io(..))));
    cache.store(&key, &t).unwrap();
    assert_eq!(cache.load(&key).unwrap(), t);
    // Only the entry is left: the temp file was renamed into place.
    let names: Vec<_> = fs::read_dir(cache.dir())
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![entry_name(&key)]);
    // Overwriting replaces the file (a new inode), never writes into it in place.
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let path = cache.entry_path(&key);
    let before = ino(&path);
    let held = File::open(&path).unwrap();
    cache.store(&key, &table(2)).unwrap();
    assert_ne!(ino(&path), before);
    let mut old = Vec::new();
    (&held).read_to_end(&mut old).unwrap();
    assert_eq!(
        parse_entry(&old, &key).unwrap(),
        t,
        "a reader keeps the old whole entry"
    );
    assert_eq!(cache.load(&key).unwrap(), table(2));
    // Truncated, altered, oversized: ignored.
    let good = fs::read(&path).unwrap();
    fs::write(&path, &good[..good.len() - 5]).unwrap();
    assert!(cache.load(&key).is_err());
    let mut bad = good.clone();
    bad[MAGIC.len() + 4 + key.len() + 4 + 8] ^= 1;
    fs::write(&path, &bad).unwrap();
    assert!(matches!(cache.load(&key), Err(CpuidCacheError::Checksum)));
    let mut huge = good.clone();
    huge.resize(MAX_FILE_LEN + 100, 0);
    fs::write(&path, &huge).unwrap();
    assert!(matches!(
        cache.load(&key),
        Err(CpuidCacheError::Length { .. })
    ));
    // Another key's entry copied under this name.
    fs::write(&path, encode_entry(&[4u8; 32], &t)).unwrap();
    assert!(matches!(cache.load(&key), Err(CpuidCacheError::Key)));
}

fn cpuid_of(t: &[kvm_cpuid_entry2]) -> CpuId {
    CpuId::from_entries(t).unwrap()
}

#[test]
fn lookups_fall_back_to_the_ioctl_and_rewrite_bad_entries() {
    let dir = tempfile::tempdir().unwrap();
    let src = tree(dir.path());
    let cache = CpuidCache::new(dir.path().join("cache/cpuid"));
    let t = table(12);
    let fetch_ok = || Ok::<_, ()>(cpuid_of(&t));
    let fetch_never = || -> Result<CpuId, ()> { panic!("the ioctl was called on a hit") };

    // Cold: the ioctl, then stored; warm: the cache only.
    let (c, l) = supported_cpuid(Some(&cache), || key(&src), fetch_ok).unwrap();
    assert_eq!(c.as_slice(), &t[..]);
    assert!(matches!(
        l.source,
        CpuidSource::Kvm {
            cache: None,
            stored: Some(Ok(()))
        }
    ));
    let (c, l) = supported_cpuid(Some(&cache), || key(&src), fetch_never).unwrap();
    assert_eq!(c.as_slice(), &t[..]);
    assert!(matches!(l.source, CpuidSource::Cache));
    assert!(l.note().contains("cache hit"));

    // A corrupt entry: the ioctl, and the entry rewritten.
    let path = cache.entry_path(&key(&src).unwrap());
    fs::write(&path, b"garbage").unwrap();
    let (c, l) = supported_cpuid(Some(&cache), || key(&src), fetch_ok).unwrap();
    assert_eq!(c.as_slice(), &t[..]);
    assert!(matches!(
        l.source,
        CpuidSource::Kvm {
            cache: Some(CpuidCacheError::Short(7)),
            stored: Some(Ok(()))
        }
    ));
    assert_eq!(cache.load(&key(&src).unwrap()).unwrap(), t);

    // A changed input: a miss (new entry), the old entry untouched.
    recreate(&dir.path().join("module/kvm"));
    let (_, l) = supported_cpuid(Some(&cache), || key(&src), fetch_ok).unwrap();
    assert!(matches!(l.source, CpuidSource::Kvm { cache: None, .. }));
    assert_eq!(fs::read_dir(cache.dir()).unwrap().count(), 2);

    // No key (no boot id), or an unwritable cache: the ioctl, never an error.
    let mut no_key = src.clone();
    no_key.boot_id = dir.path().join("nowhere");
    let (c, l) = supported_cpuid(Some(&cache), || key(&no_key), fetch_ok).unwrap();
    assert_eq!(c.as_slice(), &t[..]);
    assert!(matches!(
        l.source,
        CpuidSource::Kvm {
            cache: Some(CpuidCacheError::KeySource(..)),
            stored: None
        }
    ));
    let file = dir.path().join("a-file");
    fs::write(&file, b"").unwrap();
    let blocked = CpuidCache::new(file.join("cpuid"));
    let (c, l) = supported_cpuid(Some(&blocked), || key(&src), fetch_ok).unwrap();
    assert_eq!(c.as_slice(), &t[..]);
    assert!(matches!(
        l.source,
        CpuidSource::Kvm {
            stored: Some(Err(_)),
            ..
        }
    ));
    assert!(l.note().contains("cpuid cache mkdir"), "{}", l.note());

    // No cache at all; and the ioctl's own error is the lookup's error.
    let (_, l) = supported_cpuid(None, || key(&src), fetch_ok).unwrap();
    assert!(matches!(
        l.source,
        CpuidSource::Kvm {
            cache: None,
            stored: None
        }
    ));
    let empty = CpuidCache::new(dir.path().join("empty"));
    assert_eq!(
        supported_cpuid(
            Some(&empty),
            || key(&src),
            || Err::<CpuId, _>("ioctl failed")
        )
        .unwrap_err(),
        "ioctl failed"
    );
}
