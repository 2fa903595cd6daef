//! The whole stack timed deterministically (run by `bench/nested.sh`, ignored by `cargo test`):
//! the nested-KVM machine (`hyperpod_tests::nested`) under `-icount shift=0,sleep=off` launches
//! a busybox pod N times with `hyperlaunch --engine kvm --timing`, per vCPU count with empty
//! caches first (cold: the kernel and initramfs hashed, KVM's CPUID read) then warm, and prints
//! min/avg/max of exec → init entered and exec → app `execve` in outer-guest time. Emulated time,
//! not a real-hardware figure: the same on every machine, launcher + kernel + init in one number.

use std::collections::BTreeMap;

use hyperpod_tests::nested::{self, Outer, Payload};
use hyperpod_tests::skip;
use pod::spec::RunSpec;

const TEST: &str = "nested_bench::nested_kvm_launch_table";

/// One launch's marks (ms since exec), by phase name.
type Marks = BTreeMap<String, f64>;

/// `NESTED-TIMING vcpus=V run=I code=C phase=ms ...` lines → (vcpus, run, exit, marks).
fn parse(report: &str) -> Vec<(u32, u32, i32, Marks)> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix("NESTED-TIMING "))
        .filter_map(|rest| {
            let mut vcpus = None;
            let mut run = None;
            let mut exit = None;
            let mut marks = Marks::new();
            for w in rest.split_whitespace() {
                let (k, v) = w.split_once('=')?;
                match k {
                    "vcpus" => vcpus = v.parse().ok(),
                    "run" => run = v.parse().ok(),
                    "code" => exit = v.parse().ok(),
                    _ => {
                        marks.insert(k.to_string(), v.parse().ok()?);
                    }
                }
            }
            Some((vcpus?, run?, exit?, marks))
        })
        .collect()
}

fn stats(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    let avg = values.iter().sum::<f64>() / values.len() as f64;
    format!("{min:.1} / {avg:.1} / {max:.1}")
}

#[test]
#[ignore = "benchmark: bench/nested.sh runs it"]
fn nested_kvm_launch_table() {
    if !nested::qemu_available() {
        skip::skipped(
            TEST,
            "qemu-system-x86_64 missing (apt-get install qemu-system-x86)",
        );
        return;
    }
    let kernel = match nested::outer_kernel() {
        Ok(k) => k,
        Err(reason) => {
            skip::skipped(
                TEST,
                &format!("Debian's kernel package unavailable: {reason}"),
            );
            return;
        }
    };
    let runs: u32 = std::env::var("HYPERPOD_NESTED_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(2);
    let hl = nested::static_hyperlaunch();
    let work = tempfile::tempdir().unwrap();
    let spec = RunSpec {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["exit 0".into()],
        env: vec!["PATH=/bin".into()],
        ..RunSpec::default()
    };
    let pod = nested::build_pod(work.path(), "bench", &spec, true);
    let run = format!(
        "for v in 1 2; do\n\
           rm -rf \"$HOME/.cache/hyperpod\"\n\
           i=1; while [ $i -le {runs} ]; do\n\
             \"$HL\" --engine kvm --timing --vcpus $v /pods/bench.pod > /dev/null 2> /tmp/timing; code=$?\n\
             say \"NESTED-TIMING vcpus=$v run=$i code=$code $(sed -n 's/^hyperlaunch timing: \\([a-z-]*\\) *\\([0-9.]*\\) ms$/\\1=\\2/p' /tmp/timing | tr '\\n' ' ')\"\n\
             i=$((i + 1))\n\
           done\n\
         done\n"
    );
    let files = vec![
        ("bin/hyperlaunch".to_string(), hl.to_path_buf()),
        ("pods/bench.pod".to_string(), pod),
    ];
    let boot = nested::boot(
        &Outer {
            kernel: &kernel,
            // One outer CPU: under -icount with -smp 2, QEMU 7.2 printed nothing in 10 minutes
            // (without -icount -smp 2 boots). The inner 2-vCPU launches share it.
            vcpus: 1,
            icount: true,
        },
        &Payload { files, run: &run },
        work.path(),
    );
    assert!(boot.report.contains("NESTED-DONE"), "{}", boot.console);
    let launches = parse(&boot.report);
    assert_eq!(launches.len() as u32, 2 * runs, "{:?}", boot.report);
    println!(
        "nested KVM, outer kernel {}, outer QEMU -accel tcg -cpu max -smp 1 -m 2G -icount shift=0,sleep=off; \
         {runs} launches per vCPU count, {:.0} s wall",
        kernel.release(),
        boot.wall.as_secs_f64()
    );
    println!(
        "| vCPUs | launch | n | exec → init entered, ms (min / avg / max) | exec → app execve, ms (min / avg / max) | pod opened, ms (min / avg / max) |"
    );
    println!("|---|---|---|---|---|---|");
    for v in [1, 2] {
        for (label, pick) in [("cold (1st)", true), ("warm", false)] {
            let chosen: Vec<&Marks> = launches
                .iter()
                .filter(|(vc, run, exit, _)| {
                    assert_eq!(*exit, 0, "a launch failed: {}", boot.report);
                    *vc == v && (*run == 1) == pick
                })
                .map(|(_, _, _, m)| m)
                .collect();
            let col = |phase: &str| -> Vec<f64> {
                chosen
                    .iter()
                    .filter_map(|m| m.get(phase).copied())
                    .collect()
            };
            println!(
                "| {v} | {label} | {} | {} | {} | {} |",
                chosen.len(),
                stats(&col("init-entered")),
                stats(&col("app-exec")),
                stats(&col("pod-opened"))
            );
        }
    }
}

#[test]
fn timing_lines_parse() {
    let report = "NESTED-KVM ok\nNESTED-TIMING vcpus=2 run=1 code=0 pod-opened=1183.218 init-entered=1370.270 app-exec=1391.675 exit=1391.9 \nNESTED-DONE\n";
    let got = parse(report);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].1, got[0].2), (2, 1, 0));
    assert_eq!(got[0].3["app-exec"], 1391.675);
}
