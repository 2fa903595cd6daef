//! The `.pod` format end to end: round trip, GNU tar compatibility, alignment, determinism, and
//! one distinct error per kind of damage.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pod::manifest::{FORMAT_VERSION, Manifest, Resources, Sections, Source};
use pod::reader::parse_layout;
use pod::spec::RunSpec;
use pod::{Pod, PodError, SealError, Section, SectionInfo};

struct Sample {
    kernel: Vec<u8>,
    initramfs: Vec<u8>,
    rootfs: Vec<u8>,
    manifest: Manifest,
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sample() -> Sample {
    // Odd sizes so every section needs padding.
    let kernel = bytes(14_337, 1);
    let initramfs = bytes(4_096 * 3 + 7, 2);
    let rootfs = bytes(1 << 20, 3);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        builder: "hyperbuild test".into(),
        created: "2024-05-06T07:08:09Z".into(),
        source: Source {
            reference: "docker.io/library/busybox:latest".into(),
            manifest_digest: format!("sha256:{}", "ab".repeat(32)),
            ..Source::default()
        },
        sections: Sections {
            kernel: SectionInfo::of_bytes(&kernel),
            initramfs: SectionInfo::of_bytes(&initramfs),
            rootfs: SectionInfo::of_bytes(&rootfs),
            verity: None,
        },
        run: RunSpec {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hi".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: "/srv".into(),
            user: "1000:1000".into(),
            hostname: "demo".into(),
            stop_signal: "SIGTERM".into(),
            exposed_ports: vec!["80/tcp".into()],
            labels: [("org.example".to_string(), "yes".to_string())].into(),
        },
        resources: Resources {
            memory_mib: 256,
            vcpus: 2,
        },
        kernel_cmdline: "reboot=k panic=-1 quiet".into(),
        kernel: None,
        verity: None,
    };
    Sample {
        kernel,
        initramfs,
        rootfs,
        manifest,
    }
}

fn write(s: &Sample, path: &Path) {
    pod::seal(
        path,
        &s.manifest,
        &mut &s.kernel[..],
        &mut &s.initramfs[..],
        &mut &s.rootfs[..],
    )
    .unwrap();
}

fn sealed(dir: &Path) -> (Sample, PathBuf) {
    let s = sample();
    let path = dir.join("app.pod");
    write(&s, &path);
    (s, path)
}

#[test]
fn round_trip_sections_are_aligned_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (s, path) = sealed(dir.path());
    let pod = Pod::open(&path).unwrap();
    assert_eq!(pod.manifest(), &s.manifest);
    assert_eq!(pod.layout().manifest_loc.offset % 4096, 0);
    for (section, want) in Section::ALL
        .into_iter()
        .zip([&s.kernel, &s.initramfs, &s.rootfs])
    {
        let loc = pod.section(section);
        assert_eq!(loc.offset % 4096, 0, "{section:?} at {}", loc.offset);
        assert_eq!(&pod.read_section(section, u64::MAX).unwrap(), want);
    }
    pod.verify().unwrap();
    assert!(matches!(
        pod.read_section(Section::Rootfs, 10),
        Err(PodError::TooLargeToRead {
            entry: "rootfs.ext4",
            ..
        })
    ));
}

#[test]
fn gnu_tar_lists_and_extracts_byte_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (s, path) = sealed(dir.path());
    let list = Command::new("tar")
        .arg("tvf")
        .arg(&path)
        .output()
        .expect("GNU tar must be installed");
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        list.stderr.is_empty(),
        "tar warned: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    let names: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().last().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["manifest.json", "kernel", "initramfs", "rootfs.ext4"]
    );

    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    let st = Command::new("tar")
        .arg("xf")
        .arg(&path)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(out.join("kernel")).unwrap(), s.kernel);
    assert_eq!(std::fs::read(out.join("initramfs")).unwrap(), s.initramfs);
    assert_eq!(std::fs::read(out.join("rootfs.ext4")).unwrap(), s.rootfs);
    let m = Manifest::from_json(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m, s.manifest);
}

#[test]
fn two_writes_are_byte_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (_, pa) = sealed(a.path());
    let (_, pb) = sealed(b.path());
    assert_eq!(std::fs::read(pa).unwrap(), std::fs::read(pb).unwrap());
}

#[test]
fn huge_sections_use_a_pax_size_record() {
    // A rootfs beyond the 8 GiB ustar limit: write the stream to a sink, parse only headers.
    let s = sample();
    let mut m = s.manifest.clone();
    let big = (8u64 << 30) + 4097;
    m.sections.rootfs = SectionInfo {
        size: big,
        sha256: "0".repeat(64),
    };
    let mut out = Vec::new();
    let mut rootfs = std::io::Read::take(std::io::repeat(0), big);
    let err = pod::writer::write_pod(
        &mut LimitedSink(&mut out, 1 << 20),
        &m,
        &mut &s.kernel[..],
        &mut &s.initramfs[..],
        &mut rootfs,
    );
    // The sink stops after the headers; what was written must parse up to the rootfs header.
    assert!(err.is_err());
    let pax = &out[..];
    let needle = format!("size={big}\n");
    assert!(
        pax.windows(needle.len()).any(|w| w == needle.as_bytes()),
        "no PAX size record"
    );
}

struct LimitedSink<'a>(&'a mut Vec<u8>, usize);
impl std::io::Write for LimitedSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > self.1 {
            return Err(std::io::Error::other("sink full"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pod_bytes() -> (Sample, Vec<u8>) {
    let s = sample();
    let mut out = Vec::new();
    pod::writer::write_pod(
        &mut out,
        &s.manifest,
        &mut &s.kernel[..],
        &mut &s.initramfs[..],
        &mut &s.rootfs[..],
    )
    .unwrap();
    (s, out)
}

/// Rewrites the ustar header at `offset` with a new size, fixing its checksum.
fn set_header_size(bytes: &mut [u8], offset: usize, size: u64) {
    let h: &mut [u8; 512] = (&mut bytes[offset..offset + 512]).try_into().unwrap();
    let name_end = h[..100].iter().position(|&b| b == 0).unwrap();
    let name = String::from_utf8(h[..name_end].to_vec()).unwrap();
    let mtime = u64::from_str_radix(std::str::from_utf8(&h[136..147]).unwrap(), 8).unwrap();
    *h = pod::tarfmt::encode_header(&name, h[156], size, mtime);
}

#[test]
fn every_kind_of_damage_has_its_own_error() {
    let (s, good) = pod_bytes();
    let layout = parse_layout(&good[..]).unwrap();
    let kernel = layout.sections[0];

    // Not a tar at all / corrupt magic.
    let mut bad = good.clone();
    bad[257] = b'X';
    assert!(
        matches!(parse_layout(&bad[..]), Err(PodError::BadMagic(_))),
        "corrupt ustar magic"
    );
    let mut bad = good.clone();
    let at = bad.windows(13).position(|w| w == b"hyperpod-pod/").unwrap();
    bad[at] = b'H'; // inside PAX data: no header checksum covers it
    assert!(
        matches!(parse_layout(&bad[..]), Err(PodError::BadMagic(_))),
        "corrupt pod magic"
    );
    assert!(matches!(
        parse_layout(&b"hello"[..]),
        Err(PodError::BadMagic(_))
    ));

    // A newer format version.
    let mut bad = good.clone();
    bad[at + 13] = b'9';
    assert!(matches!(parse_layout(&bad[..]), Err(PodError::Version(v)) if v == "9"));

    // Truncated anywhere.
    for cut in [600, 5000, kernel.offset as usize + 10, good.len() - 600] {
        let r = parse_layout(&good[..cut]);
        assert!(
            matches!(
                r,
                Err(PodError::Truncated(_)) | Err(PodError::PastEnd { .. })
            ),
            "cut at {cut}: {r:?}"
        );
    }
    assert!(matches!(
        parse_layout(&good[..600]),
        Err(PodError::Truncated(_))
    ));

    // Lying sizes: the tar header disagrees with the manifest.
    let mut bad = good.clone();
    let kernel_header = kernel.offset as usize - 512;
    set_header_size(&mut bad, kernel_header, kernel.len - 1);
    assert!(matches!(
        parse_layout(&bad[..]),
        Err(PodError::SizeMismatch {
            entry: "kernel",
            ..
        })
    ));

    // Offsets past the end: a header claiming more data than the file has.
    let mut bad = good.clone();
    let rootfs_header = layout.sections[2].offset as usize - 512;
    set_header_size(&mut bad, rootfs_header, 1 << 32);
    assert!(matches!(
        parse_layout(&bad[..]),
        Err(PodError::PastEnd {
            entry: "rootfs.ext4",
            ..
        })
    ));

    // Header checksum damage in a later entry.
    let mut bad = good.clone();
    bad[kernel_header + 3] ^= 0x20;
    assert!(matches!(
        parse_layout(&bad[..]),
        Err(PodError::Header {
            entry: "kernel",
            ..
        })
    ));

    // Manifest that is not JSON (size kept): manifest error, not a panic.
    let mut bad = good.clone();
    let m = layout.manifest_loc.offset as usize;
    bad[m] = b'!';
    assert!(matches!(parse_layout(&bad[..]), Err(PodError::Manifest(_))));

    // Digest mismatch: the structure is fine, the bytes are not.
    let dir = tempfile::tempdir().unwrap();
    let mut bad = good.clone();
    bad[layout.sections[2].offset as usize + 100] ^= 1;
    let path = dir.path().join("bad.pod");
    std::fs::write(&path, &bad).unwrap();
    let pod = Pod::open(&path).unwrap();
    pod.verify_section(Section::Kernel).unwrap();
    let err = pod.verify().unwrap_err();
    assert!(
        matches!(
            err,
            PodError::DigestMismatch {
                entry: "rootfs.ext4",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&s.manifest.sections.rootfs.sha256));

    // No input is ever a panic: flip every 97th byte of the headers region.
    for i in (0..layout.sections[1].offset as usize).step_by(97) {
        let mut bad = good.clone();
        bad[i] ^= 0xff;
        let _ = parse_layout(&bad[..]);
    }
}

#[test]
fn sealing_checks_sections_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = sample();
    let path = dir.path().join("app.pod");

    let short = &s.rootfs[..s.rootfs.len() - 1];
    let err = pod::seal(
        &path,
        &s.manifest,
        &mut &s.kernel[..],
        &mut &s.initramfs[..],
        &mut &short[..],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SealError::Size {
                entry: "rootfs.ext4",
                ..
            }
        ),
        "{err}"
    );

    let mut other = s.initramfs.clone();
    other[0] ^= 1;
    let err = pod::seal(
        &path,
        &s.manifest,
        &mut &s.kernel[..],
        &mut &other[..],
        &mut &s.rootfs[..],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SealError::Digest {
                entry: "initramfs",
                ..
            }
        ),
        "{err}"
    );

    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(entries.is_empty(), "left behind: {entries:?}");

    // An existing pod is replaced only by a complete new one.
    write(&s, &path);
    let before = std::fs::read(&path).unwrap();
    let _ = pod::seal(
        &path,
        &s.manifest,
        &mut &s.kernel[..],
        &mut &other[..],
        &mut &s.rootfs[..],
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// Seals `s` with its rootfs written in place, the manifest first carrying `estimate` as the
/// rootfs size; returns the manifest sealed.
fn seal_in_place(s: &Sample, path: &Path, estimate: u64) -> Result<Manifest, SealError> {
    let mut unhashed = s.manifest.clone();
    for info in [
        &mut unhashed.sections.kernel,
        &mut unhashed.sections.initramfs,
        &mut unhashed.sections.rootfs,
    ] {
        info.sha256 = "f".repeat(64); // ignored: the digests are computed
    }
    unhashed.sections.rootfs.size = estimate;
    let slot = pod::begin_seal(path, &unhashed, &mut &s.kernel[..], &mut &s.initramfs[..])?;
    assert_eq!(slot.offset() % 4096, 0);
    assert_eq!(slot.file().metadata().unwrap().len(), slot.offset());
    // Written the way the ext4 writer does: positional writes, the last blocks first.
    let half = s.rootfs.len() / 2;
    slot.file()
        .write_all_at(&s.rootfs[half..], slot.offset() + half as u64)?;
    slot.file().write_all_at(&s.rootfs[..half], slot.offset())?;
    slot.finish(s.rootfs.len() as u64)
}

#[test]
fn rootfs_written_in_place_gives_the_same_bytes_and_digests() {
    let dir = tempfile::tempdir().unwrap();
    let (s, reference) = sealed(dir.path());
    let reference = std::fs::read(&reference).unwrap();
    for estimate in [s.rootfs.len() as u64, 1, 1 << 40] {
        let path = dir.path().join(format!("in-place-{estimate}.pod"));
        let sealed = seal_in_place(&s, &path, estimate).unwrap();
        assert_eq!(sealed, s.manifest);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            reference,
            "estimate {estimate}"
        );
        Pod::open(&path).unwrap().verify().unwrap();
    }

    // Sizes are still enforced, and a failure (or a slot dropped unfinished) leaves nothing.
    let out = dir.path().join("short.pod");
    let short = &s.kernel[..10];
    let err = pod::begin_seal(&out, &s.manifest, &mut &short[..], &mut &s.initramfs[..])
        .err()
        .expect("a short kernel is refused");
    assert!(
        matches!(
            err,
            SealError::Size {
                entry: "kernel",
                ..
            }
        ),
        "{err}"
    );
    let slot =
        pod::begin_seal(&out, &s.manifest, &mut &s.kernel[..], &mut &s.initramfs[..]).unwrap();
    drop(slot);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("short"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// When the real rootfs size has another digit count than the estimate and the manifest's
/// length crosses a block boundary, every section moves; the result is still `seal`'s bytes.
#[test]
fn in_place_sections_move_when_the_manifest_grows_or_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let base = sample();
    let real = base.rootfs.len() as u64; // 7 digits
    let (mut grew, mut shrank) = (false, false);
    // Pad the manifest until the estimate's and the real size's layouts differ, both ways.
    for pad in 0..4200 {
        if grew && shrank {
            break;
        }
        let mut s = Sample {
            kernel: base.kernel.clone(),
            initramfs: base.initramfs.clone(),
            rootfs: base.rootfs.clone(),
            manifest: base.manifest.clone(),
        };
        s.manifest.run.env.push(format!("PAD={}", "x".repeat(pad)));
        for (estimate, flag) in [(1u64, &mut grew), (1 << 40, &mut shrank)] {
            if *flag {
                continue;
            }
            let mut guess = s.manifest.clone();
            guess.sections.rootfs.size = estimate;
            if pod::layout(&guess).unwrap().data == pod::layout(&s.manifest).unwrap().data {
                continue;
            }
            *flag = true;
            let reference = dir.path().join(format!("ref-{pad}.pod"));
            write(&s, &reference);
            let path = dir.path().join(format!("moved-{pad}-{estimate}.pod"));
            assert_eq!(seal_in_place(&s, &path, estimate).unwrap(), s.manifest);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                std::fs::read(&reference).unwrap(),
                "pad {pad}, estimate {estimate}, real {real}"
            );
            Pod::open(&path).unwrap().verify().unwrap();
        }
    }
    assert!(grew && shrank, "no padding made the sections move");
}
