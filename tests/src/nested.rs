//! A real KVM on a machine without one: Debian 12's stock kernel booted under
//! `qemu-system-x86_64 -accel tcg -cpu max` (QEMU emulates AMD SVM with nested paging), its
//! `kvm-amd` loaded, and the static `hyperlaunch` run there with `--engine kvm`.
//!
//! - [`outer_kernel`]: `scripts/nested-kernel` (the .deb fetched once with `apt-get download`,
//!   checked against apt's sha256, vmlinuz and the modules cached outside the repo).
//! - [`static_hyperlaunch`]: the shipped static build (profile `ship`), built into its own target
//!   directory (the running cargo holds the test's one).
//! - [`build_pod`]: a busybox pod sealed with `pod::seal` around the project's kernel and init.
//! - [`ptyrun`]: `tests/nested/ptyrun.c` built static, the terminal the `-t` cases run on.
//! - [`Case`]: one launch, written as a case file for `tests/nested/run-cases.sh`, which runs the
//!   same commands inside the nested machine ([`boot`], engine kvm) and on the host
//!   ([`run_on_host`], engine qemu) and reports one `NESTED-CASE` line per case ([`parse`]).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pod::SectionInfo;
use pod::cpio::CpioWriter;
use pod::manifest::{FORMAT_VERSION, Manifest, Resources, Sections, Source};
use pod::spec::RunSpec;

use crate::init_fixture;
use crate::kernel::workspace_root;

/// Longest the whole nested machine (boot, every case, power off), or the host's run of the
/// cases, may take.
pub const OUTER_TIMEOUT: Duration = Duration::from_secs(300);

/// The cached outer kernel: `vmlinuz`, `modules/*.ko`, `modules.load`.
#[derive(Clone, Debug)]
pub struct OuterKernel {
    pub dir: PathBuf,
}

impl OuterKernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The package's kernel release (`6.1.0-57-amd64`).
    pub fn release(&self) -> String {
        std::fs::read_to_string(self.dir.join("release"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

/// Whether `qemu-system-x86_64` runs here.
pub fn qemu_available() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What a nested test needs first: QEMU and the outer kernel. `None` after the skip line
/// naming `test` and the reason (the suite fails on skips).
pub fn outer_kernel_or_skip(test: &str) -> Option<OuterKernel> {
    if !qemu_available() {
        crate::skip::skipped(
            test,
            "qemu-system-x86_64 missing (apt-get install qemu-system-x86)",
        );
        return None;
    }
    match outer_kernel() {
        Ok(k) => Some(k),
        Err(reason) => {
            crate::skip::skipped(
                test,
                &format!("Debian's kernel package unavailable: {reason}"),
            );
            None
        }
    }
}

/// The outer kernel from `scripts/nested-kernel`; `Err(reason)` when apt or the package is
/// unavailable (the caller reports a skip); panics on any other failure.
pub fn outer_kernel() -> Result<OuterKernel, String> {
    let script = workspace_root().join("scripts/nested-kernel");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let err = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(2) => return Err(err.trim().to_string()),
        _ => panic!("{} failed ({}): {err}", script.display(), out.status),
    }
    let dir = PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or(""),
    );
    assert!(
        dir.join("vmlinuz").is_file(),
        "{}: no vmlinuz",
        dir.display()
    );
    Ok(OuterKernel { dir })
}

/// The static `hyperlaunch` as shipped (`scripts/setup --release`), built once per test process
/// into `<target>/nested-static/`, or `$HYPERLAUNCH_STATIC` when set.
pub fn static_hyperlaunch() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("HYPERLAUNCH_STATIC") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test binary path");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("test binary is under <target>/<profile>/deps")
            .join("nested-static");
        let triple = "x86_64-unknown-linux-gnu";
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace_root())
            .args(["build", "-q", "--profile", "ship", "-p", "launcher"])
            .args(["--bin", "hyperlaunch", "--target", triple])
            .env("CARGO_TARGET_DIR", &target)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .status()
            .expect("run cargo to build the static hyperlaunch");
        assert!(status.success(), "building the static hyperlaunch failed");
        let path = target.join(triple).join("ship/hyperlaunch");
        assert!(path.is_file(), "{} missing after the build", path.display());
        path
    })
}

/// `tests/nested/ptyrun.c` built static (`gcc -static`) once per test process into
/// `<target>/nested-static/ptyrun`: it gives a command a terminal of its own (the nested
/// machine has none for `hyperlaunch -t`), inside and on the host alike.
pub fn ptyrun() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe
            .ancestors()
            .nth(3)
            .expect("test binary is under <target>/<profile>/deps")
            .join("nested-static");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("ptyrun");
        // Built beside and renamed, so a concurrent test process never runs half a file.
        let tmp = dir.join(format!("ptyrun.{}", std::process::id()));
        let src = script("ptyrun.c");
        let status = Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("gcc (build-essential) builds tests/nested/ptyrun.c");
        assert!(status.success(), "gcc -static {} failed", src.display());
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
}

/// Seals a busybox pod running `spec` into `dir/<name>.pod` (no `/init` when `with_init` is
/// false: the guest kernel panics).
pub fn build_pod(dir: &Path, name: &str, spec: &RunSpec, with_init: bool) -> PathBuf {
    let work = dir.join(format!("{name}.parts"));
    std::fs::create_dir_all(&work).unwrap();
    let initramfs = pod_initramfs(spec, with_init);
    let rootfs = init_fixture::rootfs(&work, &[]);
    let kernel = init_fixture::kernel();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        builder: "nested-kvm fixture".into(),
        created: "2024-01-01T00:00:00Z".into(),
        source: Source {
            reference: "test:busybox".into(),
            manifest_digest: format!("sha256:{}", "0".repeat(64)),
            ..Source::default()
        },
        sections: Sections {
            kernel: SectionInfo::of_file(&kernel).unwrap(),
            initramfs: SectionInfo::of_bytes(&initramfs),
            rootfs: SectionInfo::of_file(&rootfs).unwrap(),
            verity: None,
        },
        run: spec.clone(),
        resources: Resources {
            memory_mib: 128,
            vcpus: 1,
        },
        kernel_cmdline: "reboot=k panic=-1 quiet".into(),
        kernel: None,
        verity: None,
    };
    let path = dir.join(format!("{name}.pod"));
    pod::seal(
        &path,
        &manifest,
        &mut std::fs::File::open(&kernel).unwrap(),
        &mut initramfs.as_slice(),
        &mut std::fs::File::open(&rootfs).unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(&work).unwrap();
    path
}

/// The static init: `$HYPERPOD_INIT` (scripts/test sets it) or built by [`init_fixture`].
fn init_binary() -> PathBuf {
    std::env::var_os("HYPERPOD_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| init_fixture::init_binary().to_path_buf())
}

/// A pod's initramfs as the builder makes it: `/init`, the run spec, early device nodes.
fn pod_initramfs(spec: &RunSpec, with_init: bool) -> Vec<u8> {
    let mut w = CpioWriter::new(Vec::new(), 0);
    w.dir("dev", 0o755).unwrap();
    w.char_device("dev/console", 0o600, 5, 1).unwrap();
    w.char_device("dev/null", 0o666, 1, 3).unwrap();
    w.char_device("dev/port", 0o600, 1, 4).unwrap();
    w.char_device("dev/ttyS1", 0o600, 4, 65).unwrap();
    w.dir("hyperpod", 0o755).unwrap();
    let spec = serde_json::to_vec(spec).unwrap();
    w.file("hyperpod/spec.json", 0o644, &spec).unwrap();
    if with_init {
        let init = std::fs::read(init_binary()).unwrap();
        w.file("init", 0o755, &init).unwrap();
    }
    w.finish().unwrap()
}

/// `s` as one POSIX shell word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn sh_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| sh_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One launch: `hyperlaunch --engine E OPTS PODS/POD [-- ARGS]`.
#[derive(Clone, Debug, Default)]
pub struct Case {
    pub name: String,
    pub pod: String,
    pub opts: Vec<String>,
    pub args: Vec<String>,
    /// Run the launcher on a terminal of its own ([`ptyrun`] with these options, e.g.
    /// `-r -s 37x101`); stdout is then what that terminal shows.
    pub tty: Option<Vec<String>>,
    /// The launcher's stdin (else /dev/null); with `tty`, typed on its terminal.
    pub stdin: Option<Vec<u8>>,
    /// Signal name sent once `ready` is on the app's stdout (`NAME@SECONDS`: that long after
    /// the launcher's start).
    pub signal: Option<String>,
    /// Shell run in the case's directory before the launch.
    pub setup: String,
    /// Shell run in the case's directory while the app runs: once `ready` is on its stdout,
    /// before `signal` is sent (so only with a signal by name); its output comes first in
    /// the after-run output.
    pub during: String,
    /// Shell run after it; its output is compared across engines too.
    pub post: String,
}

impl Case {
    pub fn new(name: &str, pod: &str, opts: &[&str], args: &[&str]) -> Case {
        Case {
            name: name.into(),
            pod: pod.into(),
            opts: opts.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Case::default()
        }
    }

    /// The case file `run-cases.sh` sources.
    pub fn file(&self) -> String {
        format!(
            "pod={}\nopts={}\nargs={}\ntty={}\nsignal={}\nsetup={}\nduring={}\npost={}\n",
            sh_quote(&format!("{}.pod", self.pod)),
            sh_quote(&sh_words(&self.opts)),
            sh_quote(&sh_words(&self.args)),
            sh_quote(&self.tty.as_deref().map(sh_words).unwrap_or_default()),
            sh_quote(self.signal.as_deref().unwrap_or("")),
            sh_quote(&self.setup),
            sh_quote(&self.during),
            sh_quote(&self.post),
        )
    }
}

/// Writes `cases` as `dir/NN-NAME.case` (+ `.stdin`), in order.
pub fn write_cases(dir: &Path, cases: &[Case]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, c) in cases.iter().enumerate() {
        let stem = format!("{i:02}-{}", c.name);
        std::fs::write(dir.join(format!("{stem}.case")), c.file()).unwrap();
        if let Some(input) = &c.stdin {
            std::fs::write(dir.join(format!("{stem}.stdin")), input).unwrap();
        }
    }
}

/// One `NESTED-CASE` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub name: String,
    pub engine: String,
    pub exit: i32,
    pub ms: u64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub post: Vec<u8>,
}

impl Report {
    /// The case name without its `NN-` order prefix.
    pub fn case(&self) -> &str {
        self.name.split_once('-').map_or(&self.name, |(_, n)| n)
    }
}

/// The `NESTED-CASE` lines of a report (other lines are left to the caller).
pub fn parse(text: &str) -> Vec<Report> {
    text.lines()
        .filter_map(|l| parse_line(l.trim_end_matches('\r')))
        .collect()
}

fn parse_line(line: &str) -> Option<Report> {
    let rest = line.strip_prefix("NESTED-CASE ")?;
    let mut words = rest.split(' ');
    let name = words.next()?.to_string();
    let mut r = Report {
        name,
        engine: String::new(),
        exit: -1,
        ms: 0,
        stdout: Vec::new(),
        stderr: Vec::new(),
        post: Vec::new(),
    };
    for w in words {
        let (k, v) = w.split_once('=')?;
        match k {
            "engine" => r.engine = v.to_string(),
            "exit" => r.exit = v.parse().ok()?,
            "ms" => r.ms = v.parse().ok()?,
            "stdout" => r.stdout = hex::decode(v).ok()?,
            "stderr" => r.stderr = hex::decode(v).ok()?,
            "post" => r.post = hex::decode(v).ok()?,
            _ => {}
        }
    }
    Some(r)
}

/// `tests/nested/<name>`.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("tests/nested").join(name)
}

/// Runs the cases in `cases` on the host with `hl --engine qemu` (busybox sh, as inside) and
/// returns the report.
pub fn run_on_host(hl: &Path, pods: &Path, cases: &Path, work: &Path) -> String {
    let report = work.join("host-report.txt");
    std::fs::create_dir_all(work).unwrap();
    let _ = std::fs::remove_file(&report);
    let mut child = Command::new(crate::kernel::BUSYBOX)
        .args(["sh", "-c", ". \"$0\""])
        .arg(script("run-cases.sh"))
        .env("ENGINE", "qemu")
        .env("HL", hl)
        .env("PTYRUN", ptyrun())
        .env("PODS", pods)
        .env("CASES", cases)
        .env("WORK", work.join("cases"))
        .env("REPORT", &report)
        .stdin(Stdio::null())
        .spawn()
        .expect("busybox sh runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > OUTER_TIMEOUT {
            let _ = child.kill();
            panic!("run-cases.sh on the host still ran after {OUTER_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "run-cases.sh on the host: {status}");
    std::fs::read_to_string(&report).unwrap_or_default()
}

/// What to put in the nested machine's initramfs besides busybox and the modules.
#[derive(Default)]
pub struct Payload<'a> {
    /// `(path in the initramfs, host file)`.
    pub files: Vec<(String, PathBuf)>,
    /// `/nested/run`: shell sourced by `tests/nested/init.sh` after the modules are loaded.
    pub run: &'a str,
}

/// Outer console lines after which the nested machine never finishes its run.
const FATAL: [&str; 3] = ["soft lockup", "Kernel panic", "self-detected stall"];

/// Outer machine settings.
pub struct Outer<'a> {
    pub kernel: &'a OuterKernel,
    pub vcpus: u32,
    /// `-icount shift=0,sleep=off`: guest time deterministic, ~3× slower.
    pub icount: bool,
    /// Longest the machine may run (boot, payload, power off): [`OUTER_TIMEOUT`] unless a
    /// payload needs more.
    pub timeout: Duration,
    /// More words for the outer kernel's command line (after [`OUTER_CMDLINE`]); a
    /// `MODULE.PARAM=VALUE` word for a module the machine loads is passed to its `insmod`
    /// (`tests/nested/init.sh`).
    pub append: &'a str,
}

/// The outer kernel's command line.
pub const OUTER_CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4 tsc=reliable";

/// What one nested boot produced.
#[derive(Debug)]
pub struct NestedBoot {
    /// The outer console (ttyS0): the outer kernel's log, the launchers' stderr is in the report.
    pub console: String,
    /// The report port (ttyS1).
    pub report: String,
    pub wall: Duration,
    /// Why the first outer boot was abandoned, when it stalled and this is the second.
    pub retried: Option<String>,
}

/// The newc initramfs of the nested machine.
pub fn initramfs(kernel: &OuterKernel, payload: &Payload<'_>, out: &Path) {
    let file = std::fs::File::create(out).unwrap();
    let mut w = CpioWriter::new(std::io::BufWriter::new(file), 0);
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "nested",
        "nested/modules",
    ] {
        w.dir(d, 0o755).unwrap();
    }
    w.char_device("dev/console", 0o600, 5, 1).unwrap();
    let add = |w: &mut CpioWriter<_>, name: &str, host: &Path, mode: u32| {
        let f = std::fs::File::open(host).unwrap_or_else(|e| panic!("{}: {e}", host.display()));
        let len = f.metadata().unwrap().len();
        w.file_from_reader(name, mode, len, f).unwrap();
    };
    add(
        &mut w,
        "bin/busybox",
        Path::new(crate::kernel::BUSYBOX),
        0o755,
    );
    add(&mut w, "init", &script("init.sh"), 0o755);
    add(&mut w, "bin/ptyrun", ptyrun(), 0o755);
    add(
        &mut w,
        "nested/run-cases.sh",
        &script("run-cases.sh"),
        0o644,
    );
    let load = std::fs::read_to_string(kernel.dir.join("modules.load")).unwrap();
    w.file("nested/modules.load", 0o644, load.as_bytes())
        .unwrap();
    for m in load.lines() {
        let host = kernel.dir.join("modules").join(format!("{m}.ko"));
        add(&mut w, &format!("nested/modules/{m}.ko"), &host, 0o644);
    }
    w.file("nested/run", 0o644, payload.run.as_bytes()).unwrap();
    let mut dirs = std::collections::BTreeSet::new();
    for (name, _) in &payload.files {
        let mut p = Path::new(name).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    for d in &dirs {
        if !["bin", "nested", "tmp"].contains(&d.as_str()) {
            w.dir(d, 0o755).unwrap();
        }
    }
    for (name, host) in &payload.files {
        let mode = std::fs::metadata(host).unwrap().permissions();
        let mode = std::os::unix::fs::PermissionsExt::mode(&mode) & 0o7777;
        add(&mut w, name, host, mode);
    }
    w.finish().unwrap();
}

/// Boots the nested machine with `payload` and returns its console and report when it powers
/// off. The emulated outer machine stalls now and then under QEMU 7.2's TCG (seen: 2 boots in
/// 6 of a loaded session, 3 in 40 of `bench/nested.sh --stalls` on 2026-12-03): QEMU idle, its
/// CPU halted with interrupts on and the local timer's interrupt pending in the APIC, never
/// taken (docs/BENCHMARKS.md), so a boot that has not finished after [`Outer::timeout`] or
/// whose kernel breaks down is tried once more, and the result says so
/// ([`NestedBoot::retried`]); a second stall panics with both reasons.
pub fn boot(outer: &Outer<'_>, payload: &Payload<'_>, work: &Path) -> NestedBoot {
    match try_boot(outer, payload, work) {
        Ok(b) => b,
        Err(first) => {
            eprintln!("nested: the outer machine stalled, booting it once more: {first}");
            match try_boot(outer, payload, work) {
                Ok(b) => NestedBoot {
                    retried: Some(first.lines().next().unwrap_or_default().to_string()),
                    ..b
                },
                Err(second) => panic!("the nested machine stalled twice:\n{first}\n---\n{second}"),
            }
        }
    }
}

/// One boot of the nested machine, as [`boot`] without the retry: `Err` with why and the
/// outer CPU's state (QEMU's monitor: `info registers -a`, `info lapic`) when it stalled or
/// its kernel broke down.
pub fn try_boot(
    outer: &Outer<'_>,
    payload: &Payload<'_>,
    work: &Path,
) -> Result<NestedBoot, String> {
    std::fs::create_dir_all(work).unwrap();
    let initrd = work.join("nested-initrd.cpio");
    initramfs(outer.kernel, payload, &initrd);
    let report = work.join("nested-report.txt");
    let _ = std::fs::remove_file(&report);
    // QEMU's monitor: what the outer CPU was doing when the machine stalls.
    let monitor = work.join("nested-monitor.sock");
    let _ = std::fs::remove_file(&monitor);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "2G"])
        .arg("-smp")
        .arg(outer.vcpus.to_string())
        .args(["-display", "none", "-no-reboot", "-monitor"])
        .arg(format!("unix:{},server=on,wait=off", monitor.display()))
        .args(["-serial", "stdio", "-serial"])
        .arg(format!("file:{}", report.display()))
        .arg("-kernel")
        .arg(outer.kernel.vmlinuz())
        .arg("-initrd")
        .arg(&initrd)
        .arg("-append")
        .arg(format!("{OUTER_CMDLINE} {}", outer.append).trim_end());
    if outer.icount {
        cmd.args(["-icount", "shift=0,sleep=off"]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("qemu-system-x86_64 runs");
    let stdout = child.stdout.take().unwrap();
    // The outer kernel's first sign of a machine that will not finish.
    let broken: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = broken.clone();
    let console = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            eprintln!("outer: {}", line.trim_end());
            if FATAL.iter().any(|f| line.contains(f)) {
                seen.lock()
                    .unwrap()
                    .get_or_insert_with(|| line.trim_end().to_string());
            }
            text.push_str(line.trim_end_matches('\r'));
            text.push('\n');
        }
        text
    });
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > outer.timeout {
            let state = monitor_query(&monitor, &["info cpus", "info registers -a", "info lapic"]);
            let _ = child.kill();
            let _ = child.wait();
            // Where it stopped: the cases reported so far and the console's last lines.
            let console = console.join().unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(30).collect();
            let done = std::fs::read_to_string(&report).unwrap_or_default();
            let cases: Vec<&str> = done
                .lines()
                .filter_map(|l| l.strip_prefix("NESTED-CASE "))
                .filter_map(|l| l.split(' ').next())
                .collect();
            return Err(format!(
                "the nested machine still ran after {:?}; cases reported: {cases:?}\n\
                 console tail:\n{}\nouter machine state (QEMU monitor):\n{state}",
                outer.timeout,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        if let Some(line) = broken.lock().unwrap().clone() {
            let state = monitor_query(&monitor, &["info cpus", "info registers -a", "info lapic"]);
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the nested machine's kernel broke down: {line}\n\
                 outer machine state (QEMU monitor):\n{state}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let wall = started.elapsed();
    let console = console.join().unwrap();
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(&report) {
        f.read_to_string(&mut text).unwrap();
    }
    Ok(NestedBoot {
        console,
        report: text.replace('\r', ""),
        wall,
        retried: None,
    })
}

/// The answers of QEMU's human monitor at `socket` to `commands` (what could be read of them:
/// this is a diagnostic for a machine that already failed).
fn monitor_query(socket: &Path, commands: &[&str]) -> String {
    use std::io::Write;
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return format!("(no monitor at {})", socket.display());
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let drain = |s: &mut std::os::unix::net::UnixStream| {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).replace('\r', "")
    };
    drain(&mut s); // the greeting
    let mut text = String::new();
    for c in commands {
        if s.write_all(format!("{c}\n").as_bytes()).is_err() {
            break;
        }
        text.push_str(&drain(&mut s));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse() {
        let text =
            "noise\nNESTED-CASE 03-exit engine=kvm exit=7 ms=12 stdout=6869 stderr= post=0a\r\n";
        let r = parse(text);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].case(), "exit");
        assert_eq!(r[0].exit, 7);
        assert_eq!(r[0].stdout, b"hi");
        assert_eq!(r[0].post, b"\n");
        assert!(parse("NESTED-CASE x exit=zz").is_empty());
    }

    #[test]
    fn case_files_quote_every_word() {
        let mut c = Case::new("q", "main", &["-e", "A=it's"], &["echo \"$A\""]);
        c.signal = Some("TERM".into());
        let f = c.file();
        assert!(
            f.contains(r"opts=''\''-e'\'' '\''A=it'\''\'\'''\''s'\'''"),
            "{f}"
        );
        let out = Command::new(crate::kernel::BUSYBOX)
            .args([
                "sh",
                "-c",
                &format!("{f}\neval \"set -- $opts $args\"; printf '<%s>' \"$@\""),
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "<-e><A=it's><echo \"$A\">"
        );
    }
}
