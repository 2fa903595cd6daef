use super::*;

fn elf(path: &Path, tail: &[u8]) {
    let mut bytes = b"\x7fELF".to_vec();
    bytes.extend_from_slice(tail);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn key_is_16_hex_and_missing_kernels_are_named() {
    assert!(is_fragments_key(FRAGMENTS_KEY));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("vmlinux");
    let flag = |p: &Path| Some((p.to_path_buf(), Origin::Flag));
    let cache = dir.path().join("cache");
    assert!(matches!(
        locate_in(flag(&missing), None, &cache),
        Err(KernelError::Unreadable { .. })
    ));
    for bytes in [&b"\x7fE"[..], b"MZ not elf"] {
        std::fs::write(&missing, bytes).unwrap();
        assert!(matches!(
            locate_in(flag(&missing), None, &cache),
            Err(KernelError::NotElf(_))
        ));
    }
    elf(&missing, b"....");
    let k = locate_in(flag(&missing), None, &cache).unwrap();
    assert_eq!(
        (k.path, k.origin, k.fragments),
        (missing, Origin::Flag, None)
    );
    let e = locate_in(None, None, &cache).unwrap_err();
    assert!(matches!(e, KernelError::NotBuilt(_)), "{e}");
}

#[test]
fn installed_kernel_comes_before_the_cache_and_must_match_our_fragments() {
    let dir = tempfile::tempdir().unwrap();
    // The cache, as build-kernel.sh lays it out.
    let cache = dir.path().join("cache");
    let entry = cache.join(format!("kernel/{FRAGMENTS_KEY}-6.12.117-1~deb12u1"));
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::create_dir_all(cache.join("kernel/by-fragments")).unwrap();
    std::os::unix::fs::symlink(
        format!("../{FRAGMENTS_KEY}-6.12.117-1~deb12u1"),
        cache.join("kernel/by-fragments").join(FRAGMENTS_KEY),
    )
    .unwrap();
    elf(&entry.join("vmlinux"), b"cached");
    let lib = dir.path().join("usr/lib/hyperpod");
    std::fs::create_dir_all(&lib).unwrap();

    // Nothing installed: the cache, its key read from the entry's directory name.
    let k = locate_in(None, Some(&lib), &cache).unwrap();
    assert_eq!(k.origin, Origin::Cache);
    assert_eq!(k.fragments.as_deref(), Some(FRAGMENTS_KEY));

    // Installed with its fragments file: preferred.
    elf(&lib.join(install::KERNEL), b"installed");
    std::fs::write(
        lib.join(install::KERNEL_FRAGMENTS),
        format!("{FRAGMENTS_KEY}\n"),
    )
    .unwrap();
    let k = locate_in(None, Some(&lib), &cache).unwrap();
    assert_eq!(k.path, lib.join("vmlinux"));
    assert_eq!(k.origin, Origin::Installed);
    assert_eq!(k.fragments.as_deref(), Some(FRAGMENTS_KEY));

    // Asked for explicitly: that one, even with a kernel installed.
    let k = locate_in(
        Some((entry.join("vmlinux"), Origin::Env)),
        Some(&lib),
        &cache,
    )
    .unwrap();
    assert_eq!(k.origin, Origin::Env);
    assert_eq!(k.fragments.as_deref(), Some(FRAGMENTS_KEY));

    // Installed from other fragments, or without a record: refused, naming both keys.
    std::fs::write(lib.join(install::KERNEL_FRAGMENTS), "0000000000000000\n").unwrap();
    let e = locate_in(None, Some(&lib), &cache).unwrap_err();
    assert!(matches!(e, KernelError::InstalledMismatch { .. }), "{e}");
    assert!(e.to_string().contains("0000000000000000"), "{e}");
    std::fs::write(lib.join(install::KERNEL_FRAGMENTS), "not a key").unwrap();
    let e = locate_in(None, Some(&lib), &cache).unwrap_err();
    assert!(matches!(e, KernelError::BadFragmentsFile(_)), "{e}");
    std::fs::remove_file(lib.join(install::KERNEL_FRAGMENTS)).unwrap();
    let e = locate_in(None, Some(&lib), &cache).unwrap_err();
    assert!(e.to_string().contains("(unrecorded)"), "{e}");
}

#[test]
fn release_comes_from_the_banner() {
    let banner = b"\0\0Linux version 6.12.117 (root@host) (gcc 12) #1 SMP\n\0";
    assert_eq!(release_in(banner), Some("6.12.117"));
    // printk's format string has no release; a bad candidate is skipped for a later good one.
    let mixed = b"%s version %s\0Linux version \x01\x02 x\0Linux version 6.1.0-rc1+ (x)";
    assert_eq!(release_in(mixed), Some("6.1.0-rc1+"));
    assert_eq!(
        release_in(b"Linux version 6.12.117"),
        None,
        "cut: no space yet"
    );
    assert_eq!(release_in(b"no banner here"), None);
    let long = format!("Linux version {} (x)", "9".repeat(65));
    assert_eq!(release_in(long.as_bytes()), None);

    // Read in chunks: a banner across a chunk boundary is still found.
    let dir = tempfile::tempdir().unwrap();
    for at in [0usize, (1 << 20) - 20, (1 << 20) - 3, 3 << 20] {
        let mut bytes = vec![0u8; at];
        bytes.extend_from_slice(b"Linux version 6.12.117 (root@host)");
        bytes.extend_from_slice(&[0u8; 100]);
        let p = dir.path().join("k");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(
            read_release(&p).unwrap().as_deref(),
            Some("6.12.117"),
            "at {at}"
        );
    }
    std::fs::write(dir.path().join("k"), vec![7u8; 3 << 20]).unwrap();
    assert_eq!(read_release(&dir.path().join("k")).unwrap(), None);
}

#[test]
fn finds_what_the_build_script_built() {
    // The script is the reference: the kernel it prints must be the one our key names.
    // It returns at once when the kernel is cached (scripts/setup builds it first).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-fragments/build-kernel.sh");
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
    let ours = locate_in(None, None, &cache_root()).unwrap();
    assert_eq!(ours.origin, Origin::Cache);
    assert_eq!(ours.fragments.as_deref(), Some(FRAGMENTS_KEY));
    assert_eq!(
        ours.path.canonicalize().unwrap(),
        built.canonicalize().unwrap()
    );
    // The real kernel's banner gives the release the guest reports (`uname -r`).
    let release = read_release(&ours.path).unwrap().unwrap();
    assert!(release.starts_with("6.12."), "{release}");
}
