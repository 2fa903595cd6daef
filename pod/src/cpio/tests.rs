use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use super::*;

/// An archive with one of everything the writer makes.
fn sample() -> Vec<u8> {
    let mut w = CpioWriter::new(Vec::new(), 1_700_000_000);
    w.dir("bin", 0o755).unwrap();
    w.file("/bin/hello", 0o755, b"#!/bin/sh\necho hi\n")
        .unwrap();
    w.file("empty", 0o600, b"").unwrap();
    let big: Vec<u8> = (0..200_003u32).map(|i| (i * 7 % 251) as u8).collect();
    w.file_from_reader("big", 0o644, big.len() as u64, Cursor::new(big))
        .unwrap();
    w.symlink("bin/sh", "hello").unwrap();
    w.dir("dev", 0o755).unwrap();
    w.char_device("dev/console", 0o600, 5, 1).unwrap();
    w.block_device("dev/vda", 0o660, 254, 0).unwrap();
    w.dir("tmp", 0o1777).unwrap();
    w.finish().unwrap()
}

#[test]
fn golden_bytes_of_a_one_directory_archive() {
    let mut w = CpioWriter::new(Vec::new(), 7);
    w.dir("d", 0o755).unwrap();
    let bytes = w.finish().unwrap();
    let mut want = Vec::new();
    want.extend_from_slice(b"070701");
    for f in [1u32, 0o40755, 0, 0, 2, 7, 0, 0, 0, 0, 0, 2, 0] {
        want.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    want.extend_from_slice(b"d\0");
    want.extend_from_slice(b"070701");
    for f in [0u32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0] {
        want.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    want.extend_from_slice(b"TRAILER!!!\0\0\0\0");
    assert_eq!(bytes, want);
    assert_eq!(bytes.len(), 236);
}

#[test]
fn round_trips_every_kind_deterministically() {
    let bytes = sample();
    assert_eq!(bytes, sample(), "same input, same bytes");
    assert_eq!(bytes.len() % 4, 0);
    let entries = parse(&bytes).unwrap();
    let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(
        names,
        [
            &b"bin"[..],
            b"bin/hello",
            b"empty",
            b"big",
            b"bin/sh",
            b"dev",
            b"dev/console",
            b"dev/vda",
            b"tmp"
        ]
    );
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.ino, i as u32 + 1, "inodes count up by order");
        assert_eq!((e.uid, e.gid), (0, 0));
        assert_eq!(e.mtime, 1_700_000_000);
    }
    assert_eq!(entries[0].kind, EntryKind::Dir);
    assert_eq!(entries[0].nlink, 2);
    assert_eq!(
        entries[1].kind,
        EntryKind::File(b"#!/bin/sh\necho hi\n".to_vec())
    );
    assert_eq!(entries[1].mode, 0o755);
    assert_eq!(entries[2].kind, EntryKind::File(Vec::new()));
    let big: Vec<u8> = (0..200_003u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(entries[3].kind, EntryKind::File(big));
    assert_eq!(entries[4].kind, EntryKind::Symlink(b"hello".to_vec()));
    assert_eq!(entries[4].mode, 0o777);
    assert_eq!(
        entries[6].kind,
        EntryKind::CharDevice { major: 5, minor: 1 }
    );
    assert_eq!(
        entries[7].kind,
        EntryKind::BlockDevice {
            major: 254,
            minor: 0
        }
    );
    assert_eq!(entries[8].mode, 0o1777);
}

#[test]
fn every_header_is_four_byte_aligned() {
    let bytes = sample();
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(i) = bytes[from..].windows(6).position(|w| w == MAGIC) {
        starts.push(from + i);
        from += i + 6;
    }
    // 9 entries + trailer; file contents here never contain the magic.
    assert_eq!(starts.len(), 10);
    assert!(starts.iter().all(|s| s % 4 == 0), "{starts:?}");
}

#[test]
fn concatenated_archives_parse_in_order() {
    let mut bytes = sample();
    let mut w = CpioWriter::new(Vec::new(), 0);
    w.dir("hyperpod", 0o755).unwrap();
    w.file("hyperpod/overrides.json", 0o644, b"{}").unwrap();
    bytes.extend_from_slice(&w.finish().unwrap());
    let entries = parse(&bytes).unwrap();
    assert_eq!(entries.len(), 11);
    assert_eq!(entries[10].name, b"hyperpod/overrides.json");
    assert_eq!(entries[10].ino, 2);
    // Zero padding between archives (what GNU cpio's 512-byte blocks look like) is skipped.
    let mut padded = sample();
    padded.resize(padded.len() + 512, 0);
    padded.extend_from_slice(&sample());
    assert_eq!(parse(&padded).unwrap().len(), 18);
}

#[test]
fn streamed_file_must_match_its_size() {
    let mut w = CpioWriter::new(Vec::new(), 0);
    let err = w
        .file_from_reader("short", 0o644, 10, Cursor::new(vec![1u8; 9]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CpioError::ShortRead {
                expected: 10,
                got: 9,
                ..
            }
        ),
        "{err}"
    );
    let mut w = CpioWriter::new(Vec::new(), 0);
    let err = w
        .file_from_reader("long", 0o644, 10, Cursor::new(vec![1u8; 11]))
        .unwrap_err();
    assert!(
        matches!(err, CpioError::LongRead { expected: 10, .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "long: reader has more than the 10 bytes announced"
    );
}

#[test]
fn rejects_bad_input_before_writing() {
    let mut w = CpioWriter::new(Vec::new(), 0);
    for name in [
        &b""[..],
        b"/",
        b"a//b",
        b"a/",
        b"../x",
        b"a/./b",
        b"a\0b",
        b"TRAILER!!!",
    ] {
        let err = w.file(name, 0o644, b"x").unwrap_err();
        assert!(matches!(err, CpioError::BadName { .. }), "{name:?}: {err}");
    }
    assert!(matches!(
        w.file(vec![b'a'; 4096], 0o644, b""),
        Err(CpioError::BadName { .. })
    ));
    let err = w.dir("d", 0o40755).unwrap_err();
    assert_eq!(err.to_string(), "d: mode 0o40755 has bits outside 0o7777");
    let err = w
        .file_from_reader("huge", 0o644, MAX_DATA_LEN + 1, io::empty())
        .unwrap_err();
    assert!(matches!(err, CpioError::TooLarge { .. }), "{err}");
    assert!(matches!(w.symlink("l", ""), Err(CpioError::BadName { .. })));
    assert_eq!(w.bytes_written(), 0, "nothing written for rejected entries");
}

#[test]
fn parse_rejects_damage_without_panicking() {
    let bytes = sample();
    let n = bytes.len();
    // Every cut near the ends, every 61st byte inside the big file's data (keeps it fast).
    for cut in (0..n).filter(|&c| c < 1024 || c > n - 1024 || c % 61 == 0) {
        // Every proper prefix lacks the trailer or part of an entry.
        assert!(
            parse(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes parsed"
        );
    }
    let mut bad = bytes.clone();
    bad[0] = b'1';
    assert!(matches!(
        parse(&bad),
        Err(CpioError::Malformed { offset: 0, .. })
    ));
    let mut bad = bytes.clone();
    bad[6 + 8 * 6] = b'G'; // filesize field of the first entry
    assert!(parse(&bad).is_err());
    let mut bad = bytes;
    bad[6 + 8 * 6..6 + 8 * 7].copy_from_slice(b"FFFFFFFF");
    assert!(parse(&bad).is_err());
}

fn gnu_cpio(args: &[&str], input: &[u8], dir: &std::path::Path) -> String {
    use std::io::Write as _;
    let mut child = Command::new("cpio")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("GNU cpio must be installed (apt-get install cpio)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cpio {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // -t prints to stdout, -v of -i prints names to stderr.
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn gnu_cpio_lists_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let listing = gnu_cpio(&["-t", "--quiet"], &sample(), dir.path());
    let names: Vec<&str> = listing.lines().collect();
    assert_eq!(
        names,
        [
            "bin",
            "bin/hello",
            "empty",
            "big",
            "bin/sh",
            "dev",
            "dev/console",
            "dev/vda",
            "tmp"
        ]
    );
    let long = gnu_cpio(&["-tv", "--quiet"], &sample(), dir.path());
    let line = |name: &str| {
        long.lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} missing in {long}"))
            .to_string()
    };
    assert!(line("dev/console").starts_with("crw-------"), "{long}");
    assert!(line("dev/console").contains("5,"), "{long}");
    assert!(line("dev/vda").starts_with("brw-rw----"), "{long}");
    assert!(line("bin/sh -> hello").starts_with("lrwxrwxrwx"), "{long}");
    assert!(line("tmp").starts_with("drwxrwxrwt"), "{long}");
    assert!(line(" big").contains("200003"), "{long}");
    assert!(line("bin/hello").contains(" root "), "{long}");
}

#[test]
fn gnu_cpio_extracts_the_archive() {
    let mut w = CpioWriter::new(Vec::new(), 1_000_000_000);
    w.dir("bin", 0o755).unwrap();
    w.file("bin/hello", 0o750, b"#!/bin/sh\necho hi\n").unwrap();
    let data = vec![0xa5u8; 70_001];
    w.file_from_reader("bin/data", 0o640, data.len() as u64, &data[..])
        .unwrap();
    w.symlink("bin/sh", "hello").unwrap();
    w.dir("etc", 0o700).unwrap();
    let bytes = w.finish().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let log = gnu_cpio(
        &["-idv", "--no-absolute-filenames", "--quiet"],
        &bytes,
        dir.path(),
    );
    assert_eq!(log.lines().count(), 5, "{log}");
    let root = dir.path();
    assert_eq!(
        std::fs::read(root.join("bin/hello")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(std::fs::read(root.join("bin/data")).unwrap(), data);
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        std::path::Path::new("hello")
    );
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("bin/hello"), 0o750);
    assert_eq!(mode("bin/data"), 0o640);
    assert_eq!(mode("etc"), 0o700);
}
