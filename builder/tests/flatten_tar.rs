//! Unit tests of the tar parser (`builder::image::tar`).

mod flatten_support;

use std::io::Read;

use builder::image::tar::{
    Archive, Format, Kind, MAX_META_SIZE, TarError, parse_header, parse_number, parse_pax,
    parse_pax_time,
};
use flatten_support::{H, Tar, fix_checksum, pax_record};

#[test]
fn numbers_octal_and_base256() {
    assert_eq!(parse_number(b"0000644\0", "m").unwrap(), 0o644);
    assert_eq!(parse_number(b"   644 \0", "m").unwrap(), 0o644);
    assert_eq!(parse_number(b"\0\0\0\0\0\0\0\0", "m").unwrap(), 0);
    assert_eq!(parse_number(b"        ", "m").unwrap(), 0);
    assert_eq!(parse_number(b"77777777777\0", "s").unwrap(), 0o77777777777);
    // base-256 positive: 0x80 marker then big-endian.
    let mut f = [0u8; 12];
    f[0] = 0x80;
    f[4..12].copy_from_slice(&(10u64 << 33).to_be_bytes());
    assert_eq!(parse_number(&f, "s").unwrap(), 10 << 33);
    // base-256 negative: two's complement with 0xff lead.
    let f = (-5i64).to_be_bytes();
    let mut field = [0xffu8; 12];
    field[4..].copy_from_slice(&f);
    assert_eq!(parse_number(&field, "mtime").unwrap(), -5);
    for bad in [
        &b"0000648\0"[..],
        b"12x4\0",
        b"-0000001",
        b"12 34\0\0\0",
        b"\x81\0\0\0",
    ] {
        assert!(
            matches!(parse_number(bad, "f"), Err(TarError::Number("f"))),
            "{bad:?}"
        );
    }
    // Overflow of i64 in octal or base-256.
    assert!(parse_number(b"7777777777777777777777777", "f").is_err());
    let mut huge = [0xffu8; 12];
    huge[0] = 0x80;
    assert!(parse_number(&huge, "f").is_err());
}

#[test]
fn header_fields_prefix_and_checksum() {
    let mut h = H::new(b"name.txt", b'0');
    h.mode = 0o4755;
    h.uid = 1000;
    h.gid = 100;
    h.size = 12;
    h.link = b"lnk".to_vec();
    let mut b = h.block();
    b[345..348].copy_from_slice(b"dir");
    fix_checksum(&mut b);
    let r = parse_header(&b).unwrap();
    assert_eq!(r.name, b"dir/name.txt");
    assert_eq!((r.mode, r.uid, r.gid, r.size), (0o4755, 1000, 100, 12));
    assert_eq!(r.linkname, b"lnk");
    assert_eq!(r.format, Format::Ustar);
    // GNU magic: prefix area is not a prefix.
    let mut g = h.clone();
    g.gnu = true;
    assert_eq!(parse_header(&g.block()).unwrap().format, Format::Gnu);
    // Broken checksum.
    let mut bad = h.block();
    bad[0] ^= 1;
    assert!(matches!(parse_header(&bad), Err(TarError::Checksum { .. })));
    // Signed-sum checksum (old writers) is accepted.
    let mut s = H::new(b"\xe9t\xe9", b'0').block();
    s[148..156].fill(b' ');
    let signed: i64 = s.iter().map(|&x| i64::from(x as i8)).sum();
    s[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
    assert!(parse_header(&s).is_ok());
}

#[test]
fn pax_records_parse_strictly() {
    let mut data = pax_record(b"path", b"a/b");
    data.extend(pax_record(b"SCHILY.xattr.user.k", b"v=1\n\0"));
    let recs = parse_pax(&data).unwrap();
    assert_eq!(recs[0], (b"path".to_vec(), b"a/b".to_vec()));
    assert_eq!(
        recs[1],
        (b"SCHILY.xattr.user.k".to_vec(), b"v=1\n\0".to_vec())
    );
    assert_eq!(parse_pax(b"").unwrap(), vec![]);
    for bad in [
        &b"12 path=ab\n"[..], // length says 12, record is 11
        b"12 path=ab\nX",     // trailing junk
        b"99 path=ab\n",      // length past the end
        b"x path=ab\n",
        b"10 pathab\n",   // no '='
        b"8 =abc\n",      // empty key
        b"12 path=abX",   // no newline
        b"012 path=ab\n", // leading zero
        b"4 a\n",
        b"3 \n",
        b"99999999999999999999999999 a=b\n",
    ] {
        assert!(
            matches!(parse_pax(bad), Err(TarError::Pax(_))),
            "{:?}",
            bad.escape_ascii().to_string()
        );
    }
}

#[test]
fn pax_times() {
    assert_eq!(parse_pax_time(b"1700000000").unwrap(), (1_700_000_000, 0));
    assert_eq!(parse_pax_time(b"1.5").unwrap(), (1, 500_000_000));
    assert_eq!(parse_pax_time(b"1.123456789999").unwrap(), (1, 123_456_789));
    assert_eq!(parse_pax_time(b"-1.5").unwrap(), (-2, 500_000_000));
    assert_eq!(parse_pax_time(b"-3").unwrap(), (-3, 0));
    for bad in [
        &b""[..],
        b".5",
        b"1.x",
        b"--1",
        b"1e9",
        b"99999999999999999999",
    ] {
        assert!(parse_pax_time(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn archive_yields_entries_with_exact_data() {
    let mut t = Tar::new();
    t.file("a", b"hello")
        .dir("d/", 0o755)
        .long_name(&[b'x'; 300])
        .file("short", b"long-named")
        .pax(&[
            (b"path", b"pax/name"),
            (b"mtime", b"12.25"),
            (b"SCHILY.xattr.user.a", b"1"),
        ])
        .file("ignored", &[7u8; 1000]);
    // A global header in between is skipped.
    let g = pax_record(b"comment", b"global");
    let mut gh = H::new(b"pax_global_header", b'g');
    gh.size = g.len() as u64;
    t.entry(gh, &g).symlink("s", "target");
    let bytes = t.finish();
    let mut a = Archive::new(&bytes[..]);
    let (i, h) = a.next_entry().unwrap().unwrap();
    assert_eq!((i, h.path.as_slice(), h.size), (0, &b"a"[..], 5));
    let mut s = String::new();
    a.data().read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello");
    let (i, h) = a.next_entry().unwrap().unwrap();
    assert_eq!((i, h.kind), (1, Kind::Directory));
    let (i, h) = a.next_entry().unwrap().unwrap();
    assert_eq!((i, h.path), (2, vec![b'x'; 300]));
    // Data left unread is skipped.
    let (i, h) = a.next_entry().unwrap().unwrap();
    assert_eq!((i, h.path.as_slice()), (3, &b"pax/name"[..]));
    assert_eq!((h.mtime, h.mtime_nsec), (12, 250_000_000));
    assert_eq!(
        h.xattrs.get(&b"user.a"[..]).map(Vec::as_slice),
        Some(&b"1"[..])
    );
    let mut buf = Vec::new();
    a.data().read_to_end(&mut buf).unwrap();
    assert_eq!(buf, vec![7u8; 1000]);
    let (i, h) = a.next_entry().unwrap().unwrap();
    assert_eq!(
        (i, h.kind, h.link.as_slice()),
        (4, Kind::Symlink, &b"target"[..])
    );
    assert!(a.next_entry().unwrap().is_none());
    assert!(a.next_entry().unwrap().is_none());
}

#[test]
fn end_of_stream_at_a_boundary_ends_the_archive() {
    let mut t = Tar::new();
    t.file("a", b"x");
    let mut a = Archive::new(&t.buf[..]);
    assert!(a.next_entry().unwrap().is_some());
    assert!(a.next_entry().unwrap().is_none());
    // Padding of the last entry cut short by the end (as `umoci insert` writes): an end.
    let mut t = Tar::new();
    t.file("a", b"hello");
    let short = &t.buf[..512 + 5];
    let mut a = Archive::new(short);
    a.next_entry().unwrap().unwrap();
    let mut s = String::new();
    a.data().read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello");
    assert!(a.next_entry().unwrap().is_none());
    // But a cut inside the data is truncation.
    let mut a = Archive::new(&t.buf[..512 + 4]);
    a.next_entry().unwrap().unwrap();
    assert!(matches!(
        a.next_entry(),
        Err(TarError::Truncated("entry data"))
    ));
    let mut t = Tar::new();
    t.file("a", b"x");
    // A single zero block then EOF is also an end.
    let mut one = t.buf.clone();
    one.extend_from_slice(&[0u8; 512]);
    let mut a = Archive::new(&one[..]);
    a.next_entry().unwrap();
    assert!(a.next_entry().unwrap().is_none());
}

#[test]
fn pax_size_rules() {
    // Header size 0 + PAX size: PAX wins.
    let mut t = Tar::new();
    t.pax(&[(b"size", b"3")]);
    let h = H::new(b"f", b'0');
    t.raw(h.block(), b"abc");
    let bytes = t.finish();
    let mut a = Archive::new(&bytes[..]);
    let (_, h) = a.next_entry().unwrap().unwrap();
    assert_eq!(h.size, 3);
    // Header and PAX agree: fine.
    let mut t = Tar::new();
    t.pax(&[(b"size", b"3")]).file("f", b"abc");
    let bytes = t.finish();
    assert_eq!(
        Archive::new(&bytes[..])
            .next_entry()
            .unwrap()
            .unwrap()
            .1
            .size,
        3
    );
    // Disagreement: refused.
    let mut t = Tar::new();
    t.pax(&[(b"size", b"1024")]).file("f", b"abc");
    let bytes = t.finish();
    assert!(matches!(
        Archive::new(&bytes[..]).next_entry(),
        Err(TarError::SizeConflict {
            header: 3,
            pax: 1024
        })
    ));
}

#[test]
fn meta_bounds_checked_before_reading() {
    let mut h = H::new(b"PaxHeaders/x", b'x');
    h.size = MAX_META_SIZE + 1;
    let mut t = Tar::new();
    t.raw(h.block(), b"");
    assert!(matches!(
        Archive::new(&t.buf[..]).next_entry(),
        Err(TarError::MetaTooLarge { size, .. }) if size == MAX_META_SIZE + 1
    ));
}

#[test]
fn v7_trailing_slash_is_a_directory() {
    let mut b = H::new(b"olddir/", 0).block();
    b[257..265].fill(0);
    fix_checksum(&mut b);
    let mut t = Tar::new();
    t.raw(b, b"");
    let bytes = t.finish();
    let (_, h) = Archive::new(&bytes[..]).next_entry().unwrap().unwrap();
    assert_eq!(h.kind, Kind::Directory);
}
