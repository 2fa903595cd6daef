//! The whole stack timed deterministically (run by `bench/nested.sh`, ignored by `cargo test`):
//! the nested-KVM machine (`hyperpod_tests::nested`) under `-icount shift=0,sleep=off` launches
//! a busybox pod N times with `hyperlaunch --engine kvm --timing`, per vCPU count with empty
//! caches first (cold: the kernel and initramfs hashed, KVM's CPUID read) then warm, and prints
//! min/avg/max of exec → init entered and exec → app `execve` in outer-guest time. Emulated time,
//! not a real-hardware figure: the same on every machine, launcher + kernel + init in one number.

use std::collections::BTreeMap;
use std::time::Duration;

use hyperpod_tests::nested::{self, Outer, Payload};
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

/// `name` from the environment as a number, `default` when unset or not a number, at least `min`.
fn env_number(name: &str, default: u64, min: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(min)
}

/// The benches' pod: busybox running `sh -c 'exit 0'` (the app is whatever the launch's
/// arguments say), built in `dir` as `name.pod`.
fn exit_zero_pod(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let spec = RunSpec {
        entrypoint: vec!["/bin/sh".into(), "-c".into()],
        cmd: vec!["exit 0".into()],
        env: vec!["PATH=/bin".into()],
        ..RunSpec::default()
    };
    nested::build_pod(dir, name, &spec, true)
}

#[test]
#[ignore = "benchmark: bench/nested.sh runs it"]
fn nested_kvm_launch_table() {
    let Some(kernel) = nested::outer_kernel_or_skip(TEST) else {
        return;
    };
    let runs = env_number("HYPERPOD_NESTED_RUNS", 10, 2);
    let hl = nested::static_hyperlaunch();
    let work = tempfile::tempdir().unwrap();
    let pod = exit_zero_pod(work.path(), "bench");
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
            timeout: nested::OUTER_TIMEOUT,
            append: "",
        },
        &Payload { files, run: &run },
        work.path(),
    );
    assert!(boot.report.contains("NESTED-DONE"), "{}", boot.console);
    let launches = parse(&boot.report);
    assert_eq!(launches.len() as u64, 2 * runs, "{:?}", boot.report);
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

/// `NESTED-STDIO engine=E dir=out|in bytes=N code=C got=G cs=T` lines.
#[derive(Debug, PartialEq)]
struct StdioRun {
    engine: String,
    dir: String,
    bytes: u64,
    code: i32,
    /// What the app counted (`wc -c`, direction in), else `-`.
    got: String,
    /// Outer-guest time of the whole launch, centiseconds (from /proc/uptime).
    cs: u64,
}

fn parse_stdio(report: &str) -> Vec<StdioRun> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix("NESTED-STDIO "))
        .filter_map(|rest| {
            let mut kv = BTreeMap::new();
            for w in rest.split_whitespace() {
                let (k, v) = w.split_once('=')?;
                kv.insert(k, v);
            }
            Some(StdioRun {
                engine: kv.get("engine")?.to_string(),
                dir: kv.get("dir")?.to_string(),
                bytes: kv.get("bytes")?.parse().ok()?,
                code: kv.get("code")?.parse().ok()?,
                got: kv.get("got")?.to_string(),
                cs: kv.get("cs")?.parse().ok()?,
            })
        })
        .collect()
}

/// The files that make `qemu-system-x86_64` run inside the nested machine (the QEMU engine on
/// the nested KVM beside the KVM engine): the binary, the libraries `ldd` names, the microvm
/// firmware. `None` when QEMU or `ldd` is not here.
fn qemu_files() -> Option<Vec<(String, std::path::PathBuf)>> {
    let bin = std::path::Path::new("/usr/bin/qemu-system-x86_64");
    let out = std::process::Command::new("ldd").arg(bin).output().ok()?;
    if !out.status.success() {
        return None;
    }
    // At its own path: QEMU finds its data relative to the binary (../share/qemu).
    let mut files = vec![("usr/bin/qemu-system-x86_64".to_string(), bin.to_path_buf())];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let real = std::fs::canonicalize(path).ok()?;
        files.push((path.trim_start_matches('/').to_string(), real));
    }
    // (Debian's microvm loads `qboot.rom`; `bios-microvm.bin` is a link to it.)
    for fw in [
        "qboot.rom",
        "bios-microvm.bin",
        "linuxboot_dma.bin",
        "pvh.bin",
    ] {
        let host = std::path::Path::new("/usr/share/qemu").join(fw);
        if let Ok(real) = std::fs::canonicalize(&host) {
            files.push((format!("usr/share/qemu/{fw}"), real));
        }
    }
    Some(files)
}

#[test]
#[ignore = "benchmark: bench/nested.sh --stdio runs it"]
fn nested_stdio_throughput() {
    const TEST: &str = "nested_bench::nested_stdio_throughput";
    let Some(kernel) = nested::outer_kernel_or_skip(TEST) else {
        return;
    };
    let mib = env_number("HYPERPOD_NESTED_MIB", 16, 1);
    let hl = nested::static_hyperlaunch();
    let work = tempfile::tempdir().unwrap();
    let pod = exit_zero_pod(work.path(), "stdio");
    let mut files = vec![
        ("bin/hyperlaunch".to_string(), hl.to_path_buf()),
        ("pods/stdio.pod".to_string(), pod),
    ];
    let qemu = qemu_files().expect("ldd lists qemu-system-x86_64's libraries");
    files.extend(qemu);
    // Each launch timed in outer-guest time (/proc/uptime, 10 ms steps), twice per size: the
    // empty launch is taken out of the big one, the better of the two counts.
    let run = format!(
        "export PATH=$PATH:/usr/bin\n\
         n=$(({mib} * 1048576))\n\
         cs() {{ read -r up _ < /proc/uptime; echo \"${{up%.*}}${{up#*.}}\"; }}\n\
         for engine in kvm qemu; do for dir in out in; do for size in 0 $n 0 $n; do\n\
           t0=$(cs)\n\
           if [ $dir = out ]; then\n\
             \"$HL\" --engine $engine --network none --timeout 1200 -q --entrypoint /bin/sh /pods/stdio.pod -- -c \"head -c $size /dev/zero\" > /dev/null 2> /tmp/err; code=$?; got=-\n\
           else\n\
             head -c $size /dev/zero | \"$HL\" --engine $engine --network none --timeout 1200 -q -i --entrypoint /bin/sh /pods/stdio.pod -- -c 'wc -c' > /tmp/out 2> /tmp/err; code=$?; got=$(tr -dc 0-9 < /tmp/out)\n\
           fi\n\
           t1=$(cs)\n\
           [ $code = 0 ] || say \"NESTED-ERROR $engine $dir $size: $(head -c 300 /tmp/err | tr '\\n' ' ')\"\n\
           say \"NESTED-STDIO engine=$engine dir=$dir bytes=$size code=$code got=${{got:--}} cs=$((t1 - t0))\"\n\
         done; done; done\n"
    );
    let boot = nested::boot(
        &Outer {
            kernel: &kernel,
            vcpus: 1,
            icount: false,
            // 16 launches, 8 of them moving `mib` each (seen: 1-1.5 MiB/s on a loaded host).
            timeout: nested::OUTER_TIMEOUT + Duration::from_secs(20 * mib),
            append: "",
        },
        &Payload { files, run: &run },
        work.path(),
    );
    assert!(boot.report.contains("NESTED-DONE"), "{}", boot.console);
    let runs = parse_stdio(&boot.report);
    assert_eq!(runs.len(), 16, "{}", boot.report);
    for r in &runs {
        assert_eq!(r.code, 0, "a launch failed: {}", boot.report);
        if r.dir == "in" {
            assert_eq!(
                r.got,
                r.bytes.to_string(),
                "the app counted: {}",
                boot.report
            );
        }
    }
    println!(
        "nested KVM, outer kernel {}, outer QEMU -accel tcg -cpu max -smp 1 -m 2G (no -icount: \
         outer-guest time follows the host clock); {mib} MiB each way, {:.0} s wall",
        kernel.release(),
        boot.wall.as_secs_f64()
    );
    println!(
        "| engine (inside the nested machine) | direction | empty launch, s | {mib} MiB launch, s | MiB/s |"
    );
    println!("|---|---|---|---|---|");
    for engine in ["kvm", "qemu"] {
        for (dir, label) in [
            ("out", "guest → host (stdout)"),
            ("in", "host → guest (-i)"),
        ] {
            let best = |bytes: u64| {
                runs.iter()
                    .filter(|r| r.engine == engine && r.dir == dir && r.bytes == bytes)
                    .map(|r| r.cs)
                    .min()
                    .unwrap()
            };
            let (empty, big) = (best(0), best(mib * 1_048_576));
            let secs = big.saturating_sub(empty).max(1) as f64 / 100.0;
            println!(
                "| {engine} | {label} | {:.2} | {:.2} | {:.1} |",
                empty as f64 / 100.0,
                big as f64 / 100.0,
                mib as f64 / secs
            );
        }
    }
}

#[test]
fn stdio_lines_parse() {
    let got = parse_stdio("x\nNESTED-STDIO engine=kvm dir=in bytes=5 code=0 got=5 cs=123\n");
    assert_eq!(
        got,
        vec![StdioRun {
            engine: "kvm".into(),
            dir: "in".into(),
            bytes: 5,
            code: 0,
            got: "5".into(),
            cs: 123
        }]
    );
}

#[test]
fn timing_lines_parse() {
    let report = "NESTED-KVM ok\nNESTED-TIMING vcpus=2 run=1 code=0 pod-opened=1183.218 init-entered=1370.270 app-exec=1391.675 exit=1391.9 \nNESTED-DONE\n";
    let got = parse(report);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].1, got[0].2), (2, 1, 0));
    assert_eq!(got[0].3["app-exec"], 1391.675);
}
