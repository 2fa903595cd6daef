use super::*;

#[test]
fn guest_lines_round_trip_and_refuse_garbage() {
    for l in [
        GuestLine::Mark(Mark::Init),
        GuestLine::Mark(Mark::Exec),
        GuestLine::Exit(0),
        GuestLine::Exit(255),
        GuestLine::Panic("boom at x".into()),
    ] {
        let s = l.format();
        assert_eq!(GuestLine::parse(s.trim_end_matches('\n').as_bytes()), Ok(l));
    }
    assert_eq!(
        GuestLine::parse(b"T exec\r"),
        Ok(GuestLine::Mark(Mark::Exec))
    );
    for bad in ["X 256", "X -1", "X +1", "X ", "X 1 2"] {
        assert!(
            matches!(
                GuestLine::parse(bad.as_bytes()),
                Err(LineError::BadStatus(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        GuestLine::parse(b"hello"),
        Err(LineError::Unknown(_))
    ));
    assert_eq!(GuestLine::parse(&[b'x'; 65]), Err(LineError::TooLong));
    assert_eq!(GuestLine::parse(b"X \xff"), Err(LineError::NotAscii));
    let long = GuestLine::Panic("é".repeat(100)).format();
    assert_eq!(long.len(), MAX_LINE + 1);
    assert!(long.is_ascii());
    assert_eq!(
        GuestLine::Panic("a\nb".into()).format(),
        "P a?b\n".to_string()
    );
}

#[test]
fn host_lines_round_trip_and_refuse_garbage() {
    for l in [
        HostLine::Signal(1),
        HostLine::Signal(15),
        HostLine::Signal(64),
        HostLine::WindowSize { rows: 24, cols: 80 },
        HostLine::WindowSize {
            rows: 65535,
            cols: 0,
        },
        HostLine::Credit(1),
        HostLine::Credit(u32::MAX),
    ] {
        let s = l.format();
        assert_eq!(HostLine::parse(s.trim_end_matches('\n').as_bytes()), Ok(l));
    }
    for bad in ["S 0", "S 65", "S -9", "S +9", "S x", "S "] {
        assert!(
            matches!(
                HostLine::parse(bad.as_bytes()),
                Err(LineError::BadSignal(_))
            ),
            "{bad}"
        );
    }
    for bad in ["C 0", "C ", "C -1", "C 4294967296", "C 1 2", "C x"] {
        assert!(
            matches!(
                HostLine::parse(bad.as_bytes()),
                Err(LineError::BadCredit(_))
            ),
            "{bad}"
        );
    }
    for bad in ["W 24", "W 24 x", "W 70000 80", "W  24 80", "W 24 80 1"] {
        assert!(
            matches!(HostLine::parse(bad.as_bytes()), Err(LineError::BadSize(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        HostLine::parse(b"X 1"),
        Err(LineError::Unknown(_))
    ));
    assert_eq!(HostLine::parse(&[b'S'; 65]), Err(LineError::TooLong));
}

#[test]
fn splitter_splits_and_bounds() {
    let mut sp = LineSplitter::default();
    assert!(sp.push(b"S 1").is_empty());
    assert_eq!(
        sp.push(b"5\nS 2\nS"),
        vec![b"S 15".to_vec(), b"S 2".to_vec()]
    );
    assert_eq!(sp.push(b" 9\n"), vec![b"S 9".to_vec()]);
    let mut long = vec![b'a'; 200];
    long.extend_from_slice(b"\nS 3\n");
    let lines = sp.push(&long);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].len(), MAX_LINE + 1);
    assert_eq!(HostLine::parse(&lines[0]), Err(LineError::TooLong));
    assert_eq!(lines[1], b"S 3");
}

#[test]
fn stop_signals_parse_like_docker() {
    for (name, n) in [
        ("", 15),
        ("SIGTERM", 15),
        ("term", 15),
        ("sigquit", 3),
        ("SIGKILL", 9),
        ("9", 9),
        ("64", 64),
        ("SIGRTMIN", 34),
        ("SIGRTMIN+3", 37),
        ("rtmin+30", 64),
        ("SIGRTMAX", 64),
        ("SIGRTMAX-2", 62),
        ("SIGWINCH", 28),
        (" SIGUSR1 ", 10),
    ] {
        assert_eq!(parse_signal(name), Ok(n), "{name}");
    }
    for bad in [
        "0",
        "65",
        "-1",
        "SIGNOPE",
        "SIGRTMIN+31",
        "SIGRTMAX+1",
        "SIGRTMIN-1",
        "RTMIN+",
        "SIG",
        "+5",
    ] {
        assert!(parse_signal(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_signal("SIGNOPE").unwrap_err().to_string(),
        "unknown signal \"SIGNOPE\""
    );
}

#[test]
fn overrides_archive_is_deterministic_and_reads_back() {
    assert!(overrides_archive(&Overrides::default()).unwrap().is_none());
    let o = Overrides {
        env: vec!["A=1".into()],
        args: Some(vec!["x".into()]),
        ..Overrides::default()
    };
    let a = overrides_archive(&o).unwrap().unwrap();
    assert_eq!(a, overrides_archive(&o).unwrap().unwrap());
    assert_eq!(a.len() % 4, 0);
    let entries = crate::cpio::parse(&a).unwrap();
    assert!(entries.iter().all(|e| e.mtime == 0));
    let json = entries
        .iter()
        .find(|e| e.name == OVERRIDES_PATH.trim_start_matches('/').as_bytes())
        .expect("overrides.json in the archive");
    let crate::cpio::EntryKind::File(data) = &json.kind else {
        panic!("overrides.json is not a file: {json:?}");
    };
    assert_eq!(serde_json::from_slice::<Overrides>(data).unwrap(), o);
}

#[test]
fn lpj_is_the_tsc_rate_per_tick_of_the_pinned_kernel_hz() {
    // The fragments pin the tick rate lpj= is computed for (a strict merge fails otherwise).
    let base = include_str!("../../../kernel-fragments/common/base.conf");
    let pin = format!("\nCONFIG_HZ_{GUEST_KERNEL_HZ}=y\n");
    assert!(base.contains(&pin), "base.conf does not pin {}", pin.trim());
    // 1 GHz (icount's TSC): 4,000,000 loops per 4 ms tick; a 2.1 GHz host's: 8,400,000.
    assert_eq!(lpj_arg(1_000_000).as_deref(), Some("lpj=4000000"));
    assert_eq!(lpj_arg(2_100_000).as_deref(), Some("lpj=8400000"));
    assert_eq!(lpj_arg(u32::MAX).as_deref(), Some("lpj=17179869180"));
    assert_eq!(lpj_arg(0), None);
}
