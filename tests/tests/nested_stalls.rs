//! How often the nested machine's outer QEMU stalls (run by `bench/nested.sh --stalls N`,
//! ignored by `cargo test`): N outer boots in a row without the harness's retry
//! (`nested::try_boot`), each launching a pod a few times with the KVM engine the way the
//! parity cases do (output, an idle app, `-i` input, 2 vCPUs), `HYPERPOD_NESTED_ROUNDS` times. Each boot's result is printed,
//! and for a stall the outer CPU's state from QEMU's monitor. `HYPERPOD_NESTED_APPEND` adds
//! words to the outer kernel's command line (`kvm_amd.PARAM=V` reaches the module), so one
//! setting at a time can be counted against the default.

use std::time::{Duration, Instant};

use hyperpod_tests::nested::{self, Outer, Payload};
use pod::spec::RunSpec;

const TEST: &str = "nested_stalls::outer_machine_stalls";

/// Longest one boot may take: a clean boot with this payload takes well under a minute on an
/// idle host, a few on a loaded one.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// And per round of launches beyond the first.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

/// The launches of one round (run inside, with `say` and `$HL` from `tests/nested/init.sh`).
const ROUND: &str = "\
i=1\n\
for a in 'i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done' \\\n\
         'sleep 3; echo slept' \\\n\
         'wc -c' \\\n\
         'echo cpus=$(grep -c ^processor /proc/cpuinfo); sleep 1'; do\n\
  opts=''\n\
  [ $i = 4 ] && opts='--vcpus 2'\n\
  head -c 1048576 /dev/zero | \"$HL\" --engine kvm --network none -q -i --timeout 120 $opts \\\n\
    /pods/stall.pod -- \"$a\" > /tmp/out 2> /tmp/err\n\
  say \"NESTED-LAUNCH $r.$i exit=$? $(tail -n 1 /tmp/out)\"\n\
  i=$((i + 1))\n\
done\n";

#[test]
#[ignore = "diagnostic: bench/nested.sh --stalls runs it"]
fn outer_machine_stalls() {
    let Some(kernel) = nested::outer_kernel_or_skip(TEST) else {
        return;
    };
    let boots: u32 = std::env::var("HYPERPOD_NESTED_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1);
    let rounds: u32 = std::env::var("HYPERPOD_NESTED_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    // The outer kernel's clock calibration first (a host too loaded to calibrate right would
    // show here).
    let run = format!(
        "say \"NESTED-CLOCK $(dmesg | grep -o -e 'tsc: [A-Z].*' -e 'clocksource: Switched.*' | tr '\\n' ';')\"\n\
         for r in $(seq {rounds}); do\n{ROUND}done\n"
    );
    let append = std::env::var("HYPERPOD_NESTED_APPEND").unwrap_or_default();
    let hl = nested::static_hyperlaunch();
    let work = tempfile::tempdir().unwrap();
    let spec = RunSpec {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["exit 0".into()],
        env: vec!["PATH=/bin".into()],
        ..RunSpec::default()
    };
    let pod = nested::build_pod(work.path(), "stall", &spec, true);
    let files = vec![
        ("bin/hyperlaunch".to_string(), hl.to_path_buf()),
        ("pods/stall.pod".to_string(), pod),
    ];
    let outer = Outer {
        kernel: &kernel,
        vcpus: 1,
        icount: false,
        timeout: BOOT_TIMEOUT + ROUND_TIMEOUT * (rounds - 1),
        append: &append,
    };
    println!(
        "nested stalls: {boots} outer boots, -smp 1, outer command line {:?}, {} KVM launches each",
        format!("{} {append}", nested::OUTER_CMDLINE).trim_end(),
        4 * rounds
    );
    let (mut stalls, mut failed) = (0, 0);
    for b in 1..=boots {
        let started = Instant::now();
        match nested::try_boot(
            &outer,
            &Payload {
                files: files.clone(),
                run: &run,
            },
            work.path(),
        ) {
            Ok(boot) => {
                let launches: Vec<&str> = boot
                    .report
                    .lines()
                    .filter(|l| l.starts_with("NESTED-LAUNCH"))
                    .collect();
                let done = boot.report.contains("NESTED-DONE");
                let clock = boot
                    .report
                    .lines()
                    .find_map(|l| l.strip_prefix("NESTED-CLOCK "))
                    .unwrap_or("?");
                println!(
                    "boot {b}: {} in {:.0} s, {launches:?}, clock: {clock}",
                    if done { "finished" } else { "ENDED EARLY" },
                    boot.wall.as_secs_f64()
                );
                if !done {
                    failed += 1;
                    println!("{}", boot.console);
                }
            }
            Err(why) => {
                stalls += 1;
                println!(
                    "boot {b}: STALLED after {:.0} s: {why}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    println!(
        "nested stalls: {stalls} of {boots} outer boots stalled, {failed} ended without finishing"
    );
}
