//! `hyperlaunch doctor`: can this host's KVM run a pod at full speed?
//!
//! Checks, one line each: `/dev/kvm` exists and opens read-write, `KVM_GET_API_VERSION` is 12,
//! the extensions the KVM engine needs, which KVM module is loaded, and a probe guest: a
//! 64-bit ring-0 guest that times a tight loop and executes `popcnt`. Some hosts (this project's
//! CI, with `kvm_pvm`) pass every ioctl check but run unmodified guest kernel code through an
//! instruction emulator: the loop is two orders of magnitude slower than native and `popcnt`
//! stops the vCPU with an emulation failure, exactly where Linux dies. Only the probe tells.
//! The verdict takes the fastest of at least three timed loop chunks: one chunk alone can be slow
//! on a native KVM (under nested KVM the first, touching fresh pages, once took 12 ms).
//!
//! Exit codes of `hyperlaunch doctor`:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | KVM runs guest code natively: the KVM engine boots pods at full speed |
//! | 3 | KVM works but emulates guest kernel code: use `--engine qemu` |
//! | 4 | no usable KVM (missing, no access, wrong API version, missing extensions): use `--engine qemu` |

use std::fmt::Write as _;
use std::os::unix::fs::FileTypeExt;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VcpuExit};
use thiserror::Error;

/// `hyperlaunch doctor` exit code: KVM runs guest code natively.
pub const EXIT_NATIVE: i32 = 0;
/// `hyperlaunch doctor` exit code: KVM works but emulates guest kernel code.
pub const EXIT_EMULATED: i32 = 3;
/// `hyperlaunch doctor` exit code: no usable KVM.
pub const EXIT_NO_KVM: i32 = 4;

/// The KVM API version every Linux since 2.6.22 reports.
pub const KVM_API_VERSION: i32 = 12;

/// The KVM device.
const KVM_PATH: &str = "/dev/kvm";

/// Extensions the KVM engine relies on, with their `KVM_CAP_*` names.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
];

/// Loop iterations per timed chunk of the probe guest (two instructions each).
pub const PROBE_CHUNK_ITERATIONS: u32 = 1 << 12;
/// A chunk slower than this is emulated. A native core runs the 4096 iterations in 1–4 us,
/// plus two exits (a few us; ~100 us at worst when nested); the instruction emulator of
/// `kvm_pvm` took 0.65–5 us per iteration (2.7–20 ms per chunk) here.
pub const PROBE_CHUNK_LIMIT: Duration = Duration::from_micros(400);
/// Timed chunks the probe runs at most.
const PROBE_MAX_CHUNKS: usize = 8;
/// Timed chunks the probe runs at least, whatever the budget: the verdict takes the best one,
/// and a single chunk can be slow for reasons other than emulation (under nested KVM the first
/// one, touching the guest's pages for the first time, took 12 ms once in four runs, the others
/// 0.04 ms).
const PROBE_MIN_CHUNKS: usize = 3;
/// Stop timing chunks once the probe has run this long.
const PROBE_BUDGET: Duration = Duration::from_millis(10);
/// Give up on a probe guest that has not finished by then.
const PROBE_WATCHDOG: Duration = Duration::from_secs(5);

/// Why the probe guest could not be set up or run.
#[derive(Debug, Error)]
pub enum DoctorError {
    #[error("open {KVM_PATH}")]
    Open(#[source] kvm_ioctls::Error),
    #[error("create vm")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("map probe memory")]
    Mmap(#[source] std::io::Error),
    #[error("add probe memory slot")]
    MemorySlot(#[source] kvm_ioctls::Error),
    #[error("create vcpu")]
    CreateVcpu(#[source] kvm_ioctls::Error),
    #[error("set vcpu registers")]
    Registers(#[source] kvm_ioctls::Error),
    #[error("run vcpu")]
    Run(#[source] kvm_ioctls::Error),
    #[error("probe guest stopped unexpectedly: {0}")]
    UnexpectedExit(String),
    #[error("probe guest did not finish within {0:?}")]
    Hung(Duration),
}

/// What the probe guest showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// Fastest timed loop chunk ([`PROBE_CHUNK_ITERATIONS`] iterations).
    pub best_chunk: Duration,
    /// Timed chunks run.
    pub chunks: usize,
    /// `Ok` when `popcnt` ran and gave the right answer, else what happened instead.
    pub popcnt: Result<(), String>,
}

impl ProbeOutcome {
    /// Whether the guest code ran at native speed.
    pub fn fast(&self) -> bool {
        self.best_chunk < PROBE_CHUNK_LIMIT
    }

    /// Whether the probe shows a KVM that runs guest kernel code natively.
    pub fn native(&self) -> bool {
        self.fast() && self.popcnt.is_ok()
    }
}

/// One doctor check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The doctor's conclusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Native,
    Emulated,
    Unavailable,
}

impl Verdict {
    /// The `hyperlaunch doctor` exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Native => EXIT_NATIVE,
            Verdict::Emulated => EXIT_EMULATED,
            Verdict::Unavailable => EXIT_NO_KVM,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Native => "native",
            Verdict::Emulated => "emulated",
            Verdict::Unavailable => "unavailable",
        }
    }
}

/// Every check and the verdict.
#[derive(Clone, Debug)]
pub struct Report {
    pub checks: Vec<Check>,
    /// The KVM module found loaded (`kvm_intel`, `kvm_amd`, `kvm_pvm`).
    pub module: Option<String>,
    pub verdict: Verdict,
}

impl Report {
    /// The one-line conclusion.
    pub fn verdict_line(&self) -> String {
        let module = self.module.as_deref().unwrap_or("unknown module");
        match self.verdict {
            Verdict::Native => format!(
                "verdict: KVM ({module}) runs guest code natively; the KVM engine boots pods at full speed"
            ),
            Verdict::Emulated => format!(
                "verdict: this machine's KVM ({module}) emulates guest kernel code; Linux will not boot at speed under it: use --engine qemu"
            ),
            Verdict::Unavailable => {
                "verdict: no usable KVM on this machine: use --engine qemu".to_string()
            }
        }
    }

    /// One line per check, then the verdict.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let status = if c.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "{status} {}: {}", c.name, c.detail);
        }
        let _ = writeln!(out, "{}", self.verdict_line());
        out
    }

    /// The report as a JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let checks: Vec<serde_json::Value> = self
            .checks
            .iter()
            .map(|c| serde_json::json!({ "name": c.name, "ok": c.ok, "detail": c.detail }))
            .collect();
        serde_json::json!({
            "checks": checks,
            "module": self.module,
            "verdict": self.verdict.as_str(),
            "native": self.verdict == Verdict::Native,
            "message": self.verdict_line(),
            "exit_code": self.verdict.exit_code(),
        })
    }
}

/// Which KVM module is loaded, from `/proc/modules` text and the names under `/sys/module`.
/// Pure, so it can be tested on any host.
pub fn kvm_module_from(proc_modules: &str, sys_modules: &[String]) -> Option<String> {
    const KNOWN: [&str; 3] = ["kvm_intel", "kvm_amd", "kvm_pvm"];
    let loaded = |name: &str| {
        sys_modules.iter().any(|m| m == name)
            || proc_modules
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name))
    };
    KNOWN.iter().find(|m| loaded(m)).map(|m| m.to_string())
}

fn loaded_kvm_module() -> Option<String> {
    let proc_modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    let sys_modules: Vec<String> = std::fs::read_dir("/sys/module")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    kvm_module_from(&proc_modules, &sys_modules)
}

/// Runs every check.
pub fn diagnose() -> Report {
    let mut checks = Vec::new();
    let module = loaded_kvm_module();
    let mut check = |name: &str, ok: bool, detail: String| {
        checks.push(Check {
            name: name.to_string(),
            ok,
            detail,
        })
    };

    let exists = match std::fs::metadata(KVM_PATH) {
        Ok(m) if m.file_type().is_char_device() => {
            check(KVM_PATH, true, "character device present".into());
            true
        }
        Ok(_) => {
            check(
                KVM_PATH,
                false,
                "exists but is not a character device".into(),
            );
            false
        }
        Err(e) => {
            check(KVM_PATH, false, format!("missing ({e})"));
            false
        }
    };
    let kvm = if exists {
        match Kvm::new() {
            Ok(k) => {
                check("access", true, "opened read-write".into());
                Some(k)
            }
            Err(e) => {
                check("access", false, format!("cannot open read-write: {e}"));
                None
            }
        }
    } else {
        None
    };
    let module_ok = matches!(module.as_deref(), Some("kvm_intel" | "kvm_amd"));
    let module_detail = match module.as_deref() {
        Some("kvm_pvm") => {
            "kvm_pvm (PVM: guest kernels run through a software emulator, not VT-x/AMD-V)".into()
        }
        Some(m) => m.to_string(),
        None => "none of kvm_intel, kvm_amd, kvm_pvm found".into(),
    };
    check("module", module_ok, module_detail);

    let Some(kvm) = kvm else {
        return Report {
            checks,
            module,
            verdict: Verdict::Unavailable,
        };
    };
    let version = kvm.get_api_version();
    let version_ok = version == KVM_API_VERSION;
    check(
        "api version",
        version_ok,
        format!("{version} (want {KVM_API_VERSION})"),
    );
    let mut caps_ok = true;
    for (cap, name) in REQUIRED_CAPS {
        let has = kvm.check_extension(*cap);
        caps_ok &= has;
        check(name, has, if has { "supported" } else { "missing" }.into());
    }
    if !version_ok || !caps_ok {
        return Report {
            checks,
            module,
            verdict: Verdict::Unavailable,
        };
    }
    drop(kvm);

    let verdict = match probe_with_watchdog() {
        Ok(p) => {
            let per_iter = p.best_chunk.as_nanos() as f64 / f64::from(PROBE_CHUNK_ITERATIONS);
            check(
                "probe loop",
                p.fast(),
                format!(
                    "{PROBE_CHUNK_ITERATIONS} iterations in {:.3} ms at best of {} ({per_iter:.1} ns each; native is under {} ns)",
                    p.best_chunk.as_secs_f64() * 1e3,
                    p.chunks,
                    PROBE_CHUNK_LIMIT.as_nanos() / u128::from(PROBE_CHUNK_ITERATIONS),
                ),
            );
            match &p.popcnt {
                Ok(()) => check("probe popcnt", true, "ran in a 64-bit ring-0 guest".into()),
                Err(e) => check("probe popcnt", false, e.clone()),
            }
            if p.native() {
                Verdict::Native
            } else {
                Verdict::Emulated
            }
        }
        Err(e) => {
            check("probe guest", false, error_chain(&e));
            Verdict::Unavailable
        }
    };
    Report {
        checks,
        module,
        verdict,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let _ = write!(s, ": {inner}");
        src = inner.source();
    }
    s
}

/// Whether this host's KVM runs guest kernel code natively (for `--engine auto`): `/dev/kvm`
/// opens with the API version and extensions the engine needs, and the probe guest runs
/// natively (a few milliseconds), which is asked once per host state (see `verdict`).
pub fn kvm_runs_guest_natively() -> bool {
    static NATIVE: OnceLock<bool> = OnceLock::new();
    *NATIVE.get_or_init(|| {
        let Ok(kvm) = Kvm::new() else {
            return false;
        };
        if kvm.get_api_version() != KVM_API_VERSION
            || REQUIRED_CAPS.iter().any(|(c, _)| !kvm.check_extension(*c))
        {
            return false;
        }
        drop(kvm);
        let key = crate::vmm::cpuid_cache::host_key();
        crate::verdict::runs_natively(
            crate::verdict::default_dir().as_deref(),
            key.as_deref().ok(),
            || probe_with_watchdog().is_ok_and(|p| p.native()),
        )
    })
}

/// `hyperlaunch doctor [--json]`: prints the report and returns the exit code.
pub fn run(json: bool) -> i32 {
    let report = diagnose();
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    report.verdict.exit_code()
}

/// Runs [`probe`] on its own thread; a guest stuck in the kernel's emulator is abandoned.
fn probe_with_watchdog() -> Result<ProbeOutcome, DoctorError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kvm-probe".into())
        .spawn(move || {
            let _ = tx.send(probe());
        })
        .map_err(|e| DoctorError::UnexpectedExit(format!("spawn probe thread: {e}")))?;
    rx.recv_timeout(PROBE_WATCHDOG)
        .unwrap_or(Err(DoctorError::Hung(PROBE_WATCHDOG)))
}

// Probe guest memory layout (guest-physical): GDT, 4-level identity page tables mapping the
// first 2 MiB with one large page, and the code.
const PROBE_MEM: usize = 2 << 20;
const GDT_ADDR: usize = 0x500;
const PML4_ADDR: usize = 0x1000;
const PDPT_ADDR: usize = 0x2000;
const PD_ADDR: usize = 0x3000;
const CODE_ADDR: usize = 0x8000;
const STACK_TOP: u64 = 0x7000;
/// Port the guest writes after each loop chunk; it then reads [`PORT_MORE`].
const PORT_CHUNK: u16 = 0x11;
/// Port the guest reads: 0 runs another chunk, anything else goes on to `popcnt`.
const PORT_MORE: u16 = 0x12;
/// Port the guest writes `popcnt(0x0f0f)` (8) to.
const PORT_POPCNT: u16 = 0x10;

/// The probe guest's code (64-bit):
///
/// ```text
/// chunk: mov ecx, ITER          ; b9 imm32
/// 1:     dec ecx                ; ff c9
///        jnz 1b                 ; 75 fc
///        out 0x11, al           ; e6 11
///        in al, 0x12            ; e4 12
///        test al, al            ; 84 c0
///        jz chunk               ; 74 ef
///        mov eax, 0x0f0f        ; b8 0f 0f 00 00
///        popcnt eax, eax        ; f3 0f b8 c0
///        out 0x10, al           ; e6 10
///        hlt                    ; f4
/// ```
fn probe_code(iterations: u32) -> Vec<u8> {
    let mut code = vec![0xb9];
    code.extend_from_slice(&iterations.to_le_bytes());
    code.extend_from_slice(&[
        0xff, 0xc9, 0x75, 0xfc, 0xe6, 0x11, 0xe4, 0x12, 0x84, 0xc0, 0x74, 0xef, 0xb8, 0x0f, 0x0f,
        0x00, 0x00, 0xf3, 0x0f, 0xb8, 0xc0, 0xe6, 0x10, 0xf4, // ... out 0x10, al; hlt
    ]);
    code
}

/// Anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Self, DoctorError> {
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DoctorError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len, "probe write out of range");
        // SAFETY: the range is inside the mapping (checked above) and we hold it mutably.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Builds a one-vCPU 64-bit guest running [`probe_code`], times the loop chunks, then lets it
/// run `popcnt`.
pub fn probe() -> Result<ProbeOutcome, DoctorError> {
    // Declared first so it is dropped last, after the VM that maps it.
    let mut mem = Mapping::new(PROBE_MEM)?;
    let kvm = Kvm::new().map_err(DoctorError::Open)?;
    let vm = kvm.create_vm().map_err(DoctorError::CreateVm)?;

    // GDT: null, 64-bit code (selector 0x08), data (selector 0x10).
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write(GDT_ADDR, &gdt_bytes);
    mem.write(PML4_ADDR, &(PDPT_ADDR as u64 | 0x3).to_le_bytes());
    mem.write(PDPT_ADDR, &(PD_ADDR as u64 | 0x3).to_le_bytes());
    mem.write(PD_ADDR, &0x83u64.to_le_bytes()); // present, writable, 2 MiB page at 0
    mem.write(CODE_ADDR, &probe_code(PROBE_CHUNK_ITERATIONS));

    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: PROBE_MEM as u64,
        userspace_addr: mem.ptr as u64,
    };
    // SAFETY: the region is a live mapping of PROBE_MEM bytes that outlives the VM: `mem` is
    // declared before `vm`, so it is dropped after it on every path.
    unsafe { vm.set_user_memory_region(region) }.map_err(DoctorError::MemorySlot)?;
    let mut vcpu = vm.create_vcpu(0).map_err(DoctorError::CreateVcpu)?;

    let mut sregs = vcpu.get_sregs().map_err(DoctorError::Registers)?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: 0x10,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.gdt.base = GDT_ADDR as u64;
    sregs.gdt.limit = (gdt_bytes.len() - 1) as u16;
    sregs.cr3 = PML4_ADDR as u64;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 0x8000_0033; // PG | NE | ET | MP | PE
    sregs.efer = 0x500; // LMA | LME
    vcpu.set_sregs(&sregs).map_err(DoctorError::Registers)?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_ADDR as u64,
        rsp: STACK_TOP,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(DoctorError::Registers)?;

    let started = Instant::now();
    let mut last = started;
    let mut best = Duration::MAX;
    let mut chunks = 0usize;
    let popcnt = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT_CHUNK, _)) => {
                let now = Instant::now();
                best = best.min(now - last);
                last = now;
                chunks += 1;
            }
            Ok(VcpuExit::IoIn(PORT_MORE, data)) => {
                let done = enough_chunks(chunks, started.elapsed());
                data.fill(u8::from(done));
                last = Instant::now();
            }
            Ok(VcpuExit::IoOut(PORT_POPCNT, data)) => {
                break if data.first() == Some(&8) {
                    Ok(())
                } else {
                    Err(format!("popcnt(0x0f0f) gave {data:?}, want 8"))
                };
            }
            Ok(VcpuExit::InternalError) if chunks > 0 => {
                break Err("KVM internal error (emulation failure) on popcnt".to_string());
            }
            Ok(VcpuExit::FailEntry(reason, _)) if chunks > 0 => {
                break Err(format!("vcpu entry failed on popcnt (reason {reason:#x})"));
            }
            Ok(exit) => return Err(DoctorError::UnexpectedExit(format!("{exit:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(DoctorError::Run(e)),
        }
    };
    // Let the guest reach its `hlt` when popcnt worked; a stopped vCPU has nothing more to do.
    if popcnt.is_ok() {
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => {}
            Ok(exit) => return Err(DoctorError::UnexpectedExit(format!("{exit:?}"))),
            Err(e) => return Err(DoctorError::Run(e)),
        }
    }
    Ok(ProbeOutcome {
        best_chunk: best,
        chunks,
        popcnt,
    })
}

/// Whether the probe has timed enough loop chunks after `chunks` of them in `elapsed`.
fn enough_chunks(chunks: usize, elapsed: Duration) -> bool {
    chunks >= PROBE_MAX_CHUNKS || (chunks >= PROBE_MIN_CHUNKS && elapsed >= PROBE_BUDGET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slow_chunk_does_not_end_the_probe() {
        let slow = PROBE_BUDGET * 2;
        assert!(!enough_chunks(1, slow));
        assert!(!enough_chunks(PROBE_MIN_CHUNKS - 1, slow));
        assert!(enough_chunks(PROBE_MIN_CHUNKS, slow));
        assert!(!enough_chunks(PROBE_MIN_CHUNKS, PROBE_BUDGET / 2));
        assert!(enough_chunks(PROBE_MAX_CHUNKS, Duration::ZERO));
    }

    #[test]
    fn finds_the_kvm_module() {
        let sys = vec!["kvm".to_string(), "kvm_pvm".to_string()];
        assert_eq!(kvm_module_from("", &sys).as_deref(), Some("kvm_pvm"));
        let proc = "kvm_intel 380928 0 - Live 0x0\nkvm 1146880 1 kvm_intel, Live 0x0\n";
        assert_eq!(kvm_module_from(proc, &[]).as_deref(), Some("kvm_intel"));
        assert_eq!(kvm_module_from("kvm 1 0 - Live 0x0\n", &[]), None);
        assert_eq!(
            kvm_module_from("", &["kvm_amd".to_string()]).as_deref(),
            Some("kvm_amd")
        );
    }

    #[test]
    fn probe_code_jumps_land_on_instructions() {
        let code = probe_code(7);
        assert_eq!(&code[1..5], &7u32.to_le_bytes());
        // jnz at 7 (rel8 at 8) targets `dec ecx` at 5; jz at 15 targets 0.
        assert_eq!(9 + code[8] as i8 as isize, 5);
        assert_eq!(17 + code[16] as i8 as isize, 0);
        assert_eq!(code.last(), Some(&0xf4)); // hlt
    }

    #[test]
    fn verdicts_map_to_distinct_exit_codes() {
        assert_eq!(Verdict::Native.exit_code(), 0);
        assert_ne!(Verdict::Emulated.exit_code(), 0);
        assert_ne!(Verdict::Unavailable.exit_code(), 0);
        assert_ne!(
            Verdict::Emulated.exit_code(),
            Verdict::Unavailable.exit_code()
        );
        let slow = ProbeOutcome {
            best_chunk: Duration::from_millis(30),
            chunks: 1,
            popcnt: Ok(()),
        };
        assert!(!slow.native());
        let fast_but_broken = ProbeOutcome {
            best_chunk: Duration::from_micros(20),
            chunks: 8,
            popcnt: Err("emulation failure".into()),
        };
        assert!(fast_but_broken.fast() && !fast_but_broken.native());
    }
}
