use super::*;

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn launch(args: &[&str]) -> LaunchConfig {
    match parse(&os(args)) {
        Ok(Command::Launch(c)) => *c,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn err(args: &[&str]) -> CliError {
    match parse(&os(args)) {
        Err(e) => e,
        other => panic!("{args:?} was accepted: {other:?}"),
    }
}

#[test]
fn options_become_a_launch_config() {
    let c = launch(&[
        "--memory",
        "256",
        "--vcpus=2",
        "-e",
        "A=1",
        "--env=B=2=3",
        "-eC=x",
        "--entrypoint",
        "/bin/sh",
        "-w",
        "/tmp",
        "--user",
        "1:2",
        "--hostname",
        "box",
        "--disk",
        "d.img:ro",
        "--disk=e.img",
        "--timeout",
        "1.5",
        "--grace",
        "0",
        "-it",
        "--timing",
        "--verify",
        "--engine",
        "kvm",
        "app.pod",
        "--",
        "x",
        "-y",
        "--timing",
    ]);
    assert_eq!(c.pod, PathBuf::from("app.pod"));
    assert_eq!((c.memory_mib, c.vcpus), (Some(256), Some(2)));
    assert_eq!(c.overrides.env, vec!["A=1", "B=2=3", "C=x"]);
    assert_eq!(
        c.overrides.args,
        Some(vec!["x".into(), "-y".into(), "--timing".into()])
    );
    assert_eq!(c.overrides.entrypoint, Some(vec!["/bin/sh".into()]));
    assert_eq!(c.overrides.workdir.as_deref(), Some("/tmp"));
    assert_eq!(c.overrides.user.as_deref(), Some("1:2"));
    assert_eq!(c.overrides.hostname.as_deref(), Some("box"));
    assert_eq!(
        c.disks,
        vec![
            Disk {
                path: "d.img".into(),
                read_only: true
            },
            Disk {
                path: "e.img".into(),
                read_only: false
            }
        ]
    );
    assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(c.grace, Duration::ZERO);
    assert!(c.tty && c.interactive && c.timing && c.verify && c.overrides.tty);
    assert_eq!(c.engine, Engine::Kvm);
}

#[test]
fn defaults_and_placement() {
    let plain = launch(&["p.pod"]);
    assert!(plain.overrides.is_empty());
    assert_eq!(plain.engine, Engine::Auto);
    assert_eq!(plain.grace, Duration::from_secs(10));
    assert_eq!((plain.memory_mib, plain.timeout), (None, None));
    assert!(!(plain.tty || plain.interactive || plain.timing || plain.verify));
    // Options after the pod, a cluster ending in a value, `--` with nothing after it.
    let c = launch(&["p.pod", "--timing", "-tiw/srv", "--"]);
    assert!(c.timing && c.tty && c.interactive);
    assert_eq!(c.overrides.workdir.as_deref(), Some("/srv"));
    assert_eq!(c.overrides.args, None);
    // `-w=/app`, `-u=1000`, `-e=A=1`: the `=` after a short option is not part of the value.
    let c = launch(&["-w=/app", "-u=1000", "-e=A=1", "p"]);
    assert_eq!(c.overrides.workdir.as_deref(), Some("/app"));
    assert_eq!(c.overrides.user.as_deref(), Some("1000"));
    assert_eq!(c.overrides.env, vec!["A=1"]);
    assert_eq!(err(&["-t=1", "p"]), CliError::Unknown("-=".into()));
    // A value that looks like an option is still the value; `-` is a pod name.
    assert_eq!(
        launch(&["-u", "-1", "p"]).overrides.user.as_deref(),
        Some("-1")
    );
    assert_eq!(launch(&["-"]).pod, PathBuf::from("-"));
    // An empty entrypoint clears it.
    assert_eq!(
        launch(&["--entrypoint", "", "p"]).overrides.entrypoint,
        Some(vec![])
    );
}

#[test]
fn env_without_value_takes_the_hosts() {
    // PATH is set in any test environment; a name that is unset passes nothing.
    let path = std::env::var("PATH").unwrap();
    let c = launch(&["-e", "PATH", "-e", "HYPERPOD_SURELY_UNSET_VAR", "p"]);
    assert_eq!(c.overrides.env, vec![format!("PATH={path}")]);
}

#[test]
fn bad_command_lines_are_refused_by_name() {
    assert_eq!(err(&[]), CliError::NoPod);
    assert_eq!(err(&["--timing"]), CliError::NoPod);
    assert_eq!(err(&["a.pod", "b.pod"]), CliError::Extra("b.pod".into()));
    assert_eq!(err(&["--nope", "p"]), CliError::Unknown("--nope".into()));
    assert_eq!(err(&["-x", "p"]), CliError::Unknown("-x".into()));
    assert_eq!(err(&["-tx", "p"]), CliError::Unknown("-x".into()));
    assert_eq!(
        err(&["p", "--memory"]),
        CliError::MissingValue("--memory".into())
    );
    assert_eq!(err(&["p", "-e"]), CliError::MissingValue("-e".into()));
    assert_eq!(
        err(&["--timing=1", "p"]),
        CliError::UnwantedValue("--timing".into())
    );
    assert!(
        matches!(err(&["--memory", "1T", "p"]), CliError::BadValue(n, v, _) if n == "--memory" && v == "1T")
    );
    assert!(matches!(err(&["--vcpus=-1", "p"]), CliError::BadValue(..)));
    assert!(matches!(
        err(&["--timeout", "-1", "p"]),
        CliError::BadValue(..)
    ));
    assert!(matches!(
        err(&["--grace", "NaN", "p"]),
        CliError::BadValue(..)
    ));
    // Deadlines that would overflow the clock are refused, not a crash at run time.
    assert!(matches!(
        err(&["--timeout", "1e19", "p"]),
        CliError::BadValue(..)
    ));
    assert!(matches!(
        err(&["--grace=1000000001", "p"]),
        CliError::BadValue(..)
    ));
    let max = Duration::from_secs(1_000_000_000);
    assert_eq!(launch(&["--timeout", "1e9", "p"]).timeout, Some(max));
    assert!(matches!(
        err(&["--engine", "xen", "p"]),
        CliError::BadValue(..)
    ));
    assert_eq!(err(&["-e", "=x", "p"]), CliError::EmptyEnvName("=x".into()));
    assert_eq!(err(&["--env=", "p"]), CliError::EmptyEnvName(String::new()));
    assert_eq!(
        err(&["--disk", ":ro", "p"]),
        CliError::EmptyDisk(":ro".into())
    );
    // Every message is one line.
    for e in [err(&[]), err(&["a", "b"]), err(&["--memory", "x", "p"])] {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

#[test]
fn non_utf8_paths_pass_and_non_utf8_text_is_refused() {
    use std::os::unix::ffi::OsStringExt;
    let bad = OsString::from_vec(vec![b'p', 0xff]);
    let mut args = vec![OsString::from("--disk"), bad.clone(), bad.clone()];
    match parse(&args) {
        Ok(Command::Launch(c)) => {
            assert_eq!(c.pod.as_os_str(), bad.as_os_str());
            assert_eq!(c.disks[0].path.as_os_str(), bad.as_os_str());
        }
        other => panic!("{other:?}"),
    }
    args.extend([OsString::from("--"), bad.clone()]);
    assert_eq!(
        parse(&args).unwrap_err(),
        CliError::NotUtf8("an app argument".into())
    );
    let args = vec![OsString::from("-u"), bad, OsString::from("p")];
    assert_eq!(parse(&args).unwrap_err(), CliError::NotUtf8("-u".into()));
}

#[test]
fn help_version_and_doctor() {
    for h in [
        &["--help"][..],
        &["p.pod", "-h"],
        &["-ith"],
        &["--memory", "x", "--help"],
    ] {
        assert!(
            matches!(parse(&os(h)), Ok(Command::Print(t)) if t == HELP),
            "{h:?}"
        );
    }
    assert!(
        matches!(parse(&os(&["-V"])), Ok(Command::Print(t)) if t.starts_with("hyperlaunch 0."))
    );
    assert!(matches!(
        parse(&os(&["doctor"])),
        Ok(Command::Doctor { json: false })
    ));
    assert!(matches!(
        parse(&os(&["doctor", "--json"])),
        Ok(Command::Doctor { json: true })
    ));
    assert!(matches!(parse(&os(&["doctor", "-h"])), Ok(Command::Print(t)) if t == DOCTOR_HELP));
    assert_eq!(
        parse(&os(&["doctor", "--jsn"])).unwrap_err(),
        CliError::Unknown("--jsn".into())
    );
    // A pod named "doctor" is reachable as ./doctor.
    assert_eq!(launch(&["./doctor"]).pod, PathBuf::from("./doctor"));
    // Every option in the help text parses.
    for line in HELP.lines().filter(|l| l.trim_start().starts_with('-')) {
        let long = line
            .split_whitespace()
            .find(|w| w.starts_with("--"))
            .unwrap();
        let name = long.trim_end_matches(',').trim_start_matches("--");
        assert!(
            Opt::long(name).is_some(),
            "{name} in the help is not parsed"
        );
    }
}

#[test]
fn random_command_lines_never_panic() {
    let pieces = [
        "--",
        "-",
        "-e",
        "-it",
        "-eA=1",
        "--env",
        "--env=",
        "--memory",
        "--memory=",
        "64",
        "-1",
        "x.pod",
        "--disk",
        ":ro",
        "--timeout",
        "1e300",
        "--engine",
        "qemu",
        "-h",
        "-V",
        "-w",
        "--grace=",
        "doctor",
        "--json",
        "=",
        "-tiu",
        "--timing=",
        "--nope",
        "",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..5000 {
        let n = (next() % 8) as usize;
        let args: Vec<OsString> = (0..n)
            .map(|_| OsString::from(pieces[(next() % pieces.len() as u64) as usize]))
            .collect();
        let _ = parse(&args);
    }
}

#[test]
fn memory_takes_dockers_units_and_refuses_what_cannot_boot() {
    let mib = |v: &str| launch(&["--memory", v, "p"]).memory_mib.unwrap();
    // A bare number stays MiB; b, k, m, g as Docker takes them, any case, with b/ib.
    assert_eq!(mib("256"), 256);
    assert_eq!(mib("512M"), 512);
    assert_eq!(mib("512m"), 512);
    assert_eq!(mib("1G"), 1024);
    assert_eq!(mib("2gb"), 2048);
    assert_eq!(mib("1GiB"), 1024);
    assert_eq!(mib("65536k"), 64);
    assert_eq!(mib("67108864b"), 64);
    assert_eq!(launch(&["-m", "1g", "p"]).memory_mib, Some(1024));
    let min = *pod::manifest::MEMORY_MIB_RANGE.start();
    assert_eq!(mib(&min.to_string()), min);
    assert_eq!(min, 32, "the help text and docs say 32 MiB");
    assert!(HELP.contains("at least\n                        32 MiB"));
    // Below the minimum: one line naming the value and the minimum.
    for small in ["8", "31", "8m", "31M", "0"] {
        let e = err(&["--memory", small, "p"]);
        assert!(
            matches!(&e, CliError::TooLittleMemory(v) if v == small),
            "{small}: {e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("--memory \"{small}\": below 32 MiB, the least the guest kernel boots in")
        );
    }
    for bad in [
        "1.5g",
        "1k",
        "100000000",
        "2t",
        "-1",
        "m",
        "12q",
        "1 g",
        "1gg",
        "",
    ] {
        assert!(
            matches!(
                err(&["--memory", bad, "p"]),
                CliError::BadValue(..) | CliError::TooLittleMemory(_)
            ),
            "{bad}"
        );
    }
    assert!(
        matches!(err(&["--memory", "1k", "p"]), CliError::BadValue(_, _, why) if why.contains("whole number of MiB"))
    );
}

#[test]
fn vcpus_are_checked_for_every_engine() {
    for engine in ["kvm", "qemu", "auto"] {
        assert_eq!(
            launch(&["--engine", engine, "--vcpus", "254", "p"]).vcpus,
            Some(254)
        );
        assert_eq!(
            launch(&["--engine", engine, "--vcpus", "1", "p"]).vcpus,
            Some(1)
        );
        for bad in ["0", "255", "1000", "4294967296"] {
            assert!(
                matches!(err(&["--engine", engine, "--vcpus", bad, "p"]), CliError::BadValue(n, v, _) if n == "--vcpus" && v == bad),
                "{engine} {bad}"
            );
        }
    }
}

#[test]
fn storage_opt_sizes_the_writable_layer() {
    assert_eq!(launch(&["p"]).overrides.writable_size, None);
    let size = |v: &str| {
        launch(&["--storage-opt", v, "p"])
            .overrides
            .writable_size
            .unwrap()
    };
    assert_eq!(size("size=1g"), 1 << 30);
    assert_eq!(size("size=512M"), 512 << 20);
    // A bare number is bytes, as in Docker's --storage-opt size=.
    assert_eq!(size("size=1048576"), 1 << 20);
    for bad in ["1g", "size=", "size=1k", "size=x", "quota=1g", "size=1t"] {
        assert!(
            matches!(err(&["--storage-opt", bad, "p"]), CliError::BadValue(n, v, _) if n == "--storage-opt" && v == bad),
            "{bad}"
        );
    }
}

#[test]
fn quiet_is_a_flag() {
    assert!(!launch(&["p"]).quiet);
    assert!(launch(&["-q", "p"]).quiet);
    assert!(launch(&["p", "--quiet"]).quiet);
    let c = launch(&["-qit", "p"]);
    assert!(c.quiet && c.interactive && c.tty);
}

#[test]
fn sizes_parse_like_dockers_units() {
    assert_eq!(parse_size("10", 1), Some(10));
    assert_eq!(parse_size("10", 1 << 20), Some(10 << 20));
    assert_eq!(parse_size("10b", 1 << 20), Some(10));
    assert_eq!(parse_size("3K", 1), Some(3 << 10));
    assert_eq!(parse_size("3kb", 1), Some(3 << 10));
    assert_eq!(parse_size("3kib", 1), Some(3 << 10));
    assert_eq!(parse_size("5G", 1), Some(5 << 30));
    for bad in [
        "",
        "g",
        "1x",
        "1bb",
        "1ibb",
        "+1",
        "1.0",
        "18446744073709551615k",
        "1 m",
    ] {
        assert_eq!(parse_size(bad, 1), None, "{bad}");
    }
}
