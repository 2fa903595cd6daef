//! `hyperlaunch doctor` as a user runs it: its lines, `--json`, and its exit code.

use std::process::Command;

use launcher::doctor;

fn hyperlaunch() -> std::path::PathBuf {
    std::env::var_os("HYPERLAUNCH_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_hyperlaunch").into())
}

#[test]
fn doctor_prints_checks_and_exits_with_the_verdict_code() {
    let want = doctor::diagnose().verdict.exit_code();
    let out = Command::new(hyperlaunch())
        .arg("doctor")
        .output()
        .expect("run hyperlaunch doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(want));
    let last = text.lines().last().expect("output");
    assert!(last.starts_with("verdict: "), "{text}");
    assert!(
        text.lines()
            .filter(|l| !l.starts_with("verdict: "))
            .all(|l| l.starts_with("ok ") || l.starts_with("FAIL ")),
        "{text}"
    );
    assert!(text.contains("/dev/kvm"), "{text}");

    let out = Command::new(hyperlaunch())
        .args(["doctor", "--json"])
        .output()
        .expect("run hyperlaunch doctor --json");
    assert_eq!(out.status.code(), Some(want));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(json["exit_code"], want);
    assert!(json["checks"].as_array().is_some_and(|c| !c.is_empty()));
}
