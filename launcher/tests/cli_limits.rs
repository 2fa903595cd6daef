//! `hyperlaunch` refusing what cannot boot before any machine starts, the same on both engines
//! (one line, exit 125), and `-q` silencing the launcher's notices but never its errors.

use std::process::{Command, Output};

fn hyperlaunch(args: &[&str]) -> Output {
    let bin = std::env::var_os("HYPERLAUNCH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_hyperlaunch").into());
    Command::new(bin)
        .args(args)
        .output()
        .expect("run hyperlaunch")
}

/// Exit 125 with one `hyperlaunch: ...` line on stderr containing `needle`, nothing on stdout.
fn refused(args: &[&str], needle: &str) {
    let out = hyperlaunch(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(
        err.starts_with("hyperlaunch: ") && err.contains(needle),
        "{args:?}: {err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn memory_below_the_minimum_and_vcpus_out_of_range_are_refused_by_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    // The pod need not exist: the values are refused first.
    let pod = dir.path().join("none.pod");
    let pod = pod.to_str().unwrap();
    for engine in ["kvm", "qemu", "auto"] {
        for small in ["8", "31", "24m", "16M"] {
            refused(
                &["--engine", engine, "--memory", small, pod],
                "below 32 MiB, the least the guest kernel boots in",
            );
        }
        for vcpus in ["0", "255"] {
            refused(
                &["--engine", engine, "--vcpus", vcpus, pod],
                &format!("--vcpus \"{vcpus}\": not from 1 to 254"),
            );
        }
        // Docker's units are taken: the launch goes on to open the (missing) pod.
        for ok in ["512M", "1g", "32"] {
            let out = hyperlaunch(&["-q", "--engine", engine, "--memory", ok, pod]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!err.contains("--memory"), "{ok}: {err}");
            assert!(err.contains("none.pod"), "{ok}: {err}");
        }
    }
}

#[test]
fn quiet_silences_notices_but_not_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("none.pod");
    let pod = pod.to_str().unwrap();
    let loud = hyperlaunch(&[pod]);
    let loud_err = String::from_utf8_lossy(&loud.stderr);
    let quiet = hyperlaunch(&["-q", pod]);
    let quiet_err = String::from_utf8_lossy(&quiet.stderr);
    assert_eq!(loud.status.code(), Some(125));
    assert_eq!(quiet.status.code(), Some(125));
    // The error (the missing pod) is printed either way, as the only line with -q.
    assert_eq!(quiet_err.lines().count(), 1, "{quiet_err}");
    assert!(quiet_err.contains("none.pod"), "{quiet_err}");
    assert_eq!(loud_err.lines().last(), quiet_err.lines().last());
    // Where `--engine auto` falls back to QEMU it says so, unless -q.
    if loud_err.contains("using QEMU") {
        assert_eq!(loud_err.lines().count(), 2, "{loud_err}");
        assert!(!quiet_err.contains("using QEMU"), "{quiet_err}");
    } else {
        eprintln!("KVM runs guests natively here: no notice to silence; errors checked");
    }
}
