//! The doctor on the machine running the tests. The expected verdict is derived from which KVM
//! module the host has loaded, independently of the probe, so a wrong probe fails here:
//! `kvm_pvm` emulates guest kernel code, `kvm_intel`/`kvm_amd` run it natively, no `/dev/kvm`
//! means no KVM.

use std::path::Path;

use launcher::doctor::{self, EXIT_EMULATED, EXIT_NATIVE, EXIT_NO_KVM, Verdict};

fn host_module() -> Option<&'static str> {
    ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists())
}

fn expected_verdict() -> Verdict {
    let accessible = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    match (accessible, host_module()) {
        (false, _) => Verdict::Unavailable,
        (true, Some("kvm_pvm")) => Verdict::Emulated,
        (true, Some(_)) => Verdict::Native,
        (true, None) => panic!("/dev/kvm opens but no kvm_intel/kvm_amd/kvm_pvm module is loaded"),
    }
}

#[test]
fn verdict_matches_the_hosts_kvm() {
    let report = doctor::diagnose();
    let text = report.to_text();
    eprintln!("{text}");
    let want = expected_verdict();
    assert_eq!(report.verdict, want, "{text}");
    assert_eq!(report.module.as_deref(), host_module());
    // One line per check with ok/FAIL, then the verdict.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), report.checks.len() + 1);
    for (line, check) in lines.iter().zip(&report.checks) {
        let status = if check.ok { "ok  " } else { "FAIL" };
        assert!(line.starts_with(status), "{line}");
        assert!(line.contains(&check.name), "{line}");
    }
    assert!(lines.last().unwrap().starts_with("verdict: "));
    match want {
        Verdict::Emulated => {
            assert_eq!(report.verdict.exit_code(), EXIT_EMULATED);
            assert!(text.contains("kvm_pvm"), "{text}");
            assert!(text.contains("emulates guest kernel code"), "{text}");
            assert!(text.contains("Linux will not boot at speed"), "{text}");
            assert!(text.contains("--engine qemu"), "{text}");
            // The ioctl-level checks pass here: only the probe tells.
            let failed: Vec<&str> = report
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name.as_str())
                .collect();
            assert!(failed.contains(&"probe popcnt"), "{failed:?}");
            assert!(failed.contains(&"probe loop"), "{failed:?}");
        }
        Verdict::Native => {
            assert_eq!(report.verdict.exit_code(), EXIT_NATIVE);
            assert!(report.checks.iter().all(|c| c.ok), "{text}");
        }
        Verdict::Unavailable => {
            assert_eq!(report.verdict.exit_code(), EXIT_NO_KVM);
            assert!(text.contains("--engine qemu"), "{text}");
        }
    }
}

#[test]
fn auto_engine_answer_agrees_and_is_cached() {
    let native = doctor::kvm_runs_guest_natively();
    assert_eq!(native, expected_verdict() == Verdict::Native);
    // Second call: the cached answer.
    assert_eq!(doctor::kvm_runs_guest_natively(), native);
}

#[test]
fn json_report_carries_every_check_and_the_verdict() {
    let report = doctor::diagnose();
    let json = report.to_json();
    assert_eq!(
        json["checks"].as_array().unwrap().len(),
        report.checks.len()
    );
    assert_eq!(json["exit_code"], report.verdict.exit_code());
    assert_eq!(json["native"], report.verdict == Verdict::Native);
    let want = match expected_verdict() {
        Verdict::Native => "native",
        Verdict::Emulated => "emulated",
        Verdict::Unavailable => "unavailable",
    };
    assert_eq!(json["verdict"], want);
    assert_eq!(json["message"], report.verdict_line());
}

#[test]
fn probe_sees_the_emulator_or_native_code() {
    if expected_verdict() == Verdict::Unavailable {
        hyperpod_tests::skip::skipped(
            "probe_sees_the_emulator_or_native_code",
            "no accessible /dev/kvm on this host; the probe needs one",
        );
        return;
    }
    let p = doctor::probe().expect("the probe guest runs");
    eprintln!("{p:?}");
    assert!(p.chunks >= 1);
    match expected_verdict() {
        Verdict::Emulated => {
            let err = p.popcnt.clone().unwrap_err();
            assert!(err.contains("emulation failure"), "{err}");
            assert!(!p.fast(), "{p:?}");
        }
        _ => assert!(p.native(), "{p:?}"),
    }
}
