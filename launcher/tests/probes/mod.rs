//! Builds the probe guests (C + assembly in this directory, compiled with the host's gcc and
//! binutils to a flat 32-bit image) and wraps them in a minimal ELF64 with a PVH note, so the
//! launcher's real ELF/PVH loader path runs them. Also seals them into real .pod files.

#![allow(dead_code)]

pub mod direct;
pub mod packet;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the probe image is linked and loaded.
pub const LOAD_ADDR: u64 = 0x10_0000;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probes")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (install gcc and binutils): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The guest protocol's ports as the probes' C and assembly name them (`probe.h`), from
/// `pod::protocol`: the sources never spell a port number.
pub fn protocol_defines() -> Vec<String> {
    use pod::protocol::{CONSOLE_UART, CONTROL_UART, EXIT_PORT};
    vec![
        format!("-DCONSOLE={:#x}", CONSOLE_UART.port),
        format!("-DCONTROL={:#x}", CONTROL_UART.port),
        format!("-DEXIT_PORT={EXIT_PORT:#x}"),
    ]
}

/// `gcc -c` of a probe's assembly start file (`gcc` runs the preprocessor on `.S`), with the
/// protocol's ports defined.
fn asm_cc(bits: &str) -> Command {
    let mut cc = Command::new("gcc");
    cc.args([bits, "-c"]).args(protocol_defines());
    cc
}

/// `gcc -c` for a probe: freestanding, no libc, no SSE, warnings as errors, with the
/// target's flags (`arch`), the protocol's ports and a `-D` per define.
fn freestanding_cc(arch: &[&str], defines: &[&str]) -> Command {
    let mut cc = Command::new("gcc");
    cc.args(protocol_defines());
    cc.args(arch).args([
        "-O2",
        "-ffreestanding",
        "-fno-builtin",
        "-fno-pic",
        "-fno-pie",
        "-fno-stack-protector",
        "-fno-asynchronous-unwind-tables",
        "-fno-tree-loop-distribute-patterns",
        "-mgeneral-regs-only",
        "-nostdlib",
        "-Wall",
        "-Werror",
        "-Wno-unused-function",
        "-c",
    ]);
    for d in defines {
        cc.arg(format!("-D{d}"));
    }
    cc
}

/// Compiles `probe` (`hello`, `blk`, `triple`, `spin`) with extra `-D` defines into a flat image.
pub fn build_flat(dir: &Path, probe: &str, defines: &[&str]) -> Vec<u8> {
    let src = src_dir();
    let start_o = dir.join(format!("{probe}-start.o"));
    let main_o = dir.join(format!("{probe}.o"));
    let bin = dir.join(format!("{probe}.bin"));
    run(asm_cc("-m32")
        .arg("-o")
        .arg(&start_o)
        .arg(src.join("start.S")));
    let mut cc = freestanding_cc(&["-m32", "-march=i686"], defines);
    run(cc
        .arg("-o")
        .arg(&main_o)
        .arg(src.join(format!("{probe}.c"))));
    run(Command::new("ld")
        .args(["-m", "elf_i386", "--oformat", "binary", "-T"])
        .arg(src.join("probe.ld"))
        .arg("-o")
        .arg(&bin)
        .arg(&start_o)
        .arg(&main_o));
    std::fs::read(&bin).unwrap()
}

/// Wraps a flat image in an ELF64 executable: one PT_LOAD at [`LOAD_ADDR`] and a PT_NOTE
/// holding the `Xen` `XEN_ELFNOTE_PHYS32_ENTRY` note pointing at its first byte.
pub fn pvh_elf(flat: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_off = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());
    let code_off = 0x1000usize;
    let mut e = vec![0u8; code_off];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little-endian
    e[6] = 1; // version
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    e[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    e[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    e[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    e[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let mut phdr =
        |i: usize, p_type: u32, flags: u32, off: u64, addr: u64, size: u64, align: u64| {
            let b = EHDR + i * PHDR;
            e[b..b + 4].copy_from_slice(&p_type.to_le_bytes());
            e[b + 4..b + 8].copy_from_slice(&flags.to_le_bytes());
            e[b + 8..b + 16].copy_from_slice(&off.to_le_bytes());
            e[b + 16..b + 24].copy_from_slice(&addr.to_le_bytes()); // vaddr
            e[b + 24..b + 32].copy_from_slice(&addr.to_le_bytes()); // paddr
            e[b + 32..b + 40].copy_from_slice(&size.to_le_bytes()); // filesz
            e[b + 40..b + 48].copy_from_slice(&size.to_le_bytes()); // memsz
            e[b + 48..b + 56].copy_from_slice(&align.to_le_bytes());
        };
    phdr(
        0,
        1,
        7,
        code_off as u64,
        LOAD_ADDR,
        flat.len() as u64,
        0x1000,
    ); // PT_LOAD rwx
    phdr(1, 4, 4, note_off as u64, 0, note.len() as u64, 4); // PT_NOTE
    e[note_off..note_off + note.len()].copy_from_slice(&note);
    e.extend_from_slice(flat);
    e
}

/// Builds probe `probe` as a PVH ELF.
pub fn build(dir: &Path, probe: &str, defines: &[&str]) -> Vec<u8> {
    pvh_elf(&build_flat(dir, probe, defines))
}

/// Seals a real .pod at `path` with `kernel`, `initramfs` and `rootfs`.
pub fn seal_pod(path: &Path, kernel: &[u8], initramfs: &[u8], rootfs: &[u8], cmdline: &str) {
    seal_pod_with(path, kernel, initramfs, rootfs, cmdline, None);
}

/// [`seal_pod`] with the manifest's `kernel` record (e.g. one naming this build's fragments).
pub fn seal_pod_with(
    path: &Path,
    kernel: &[u8],
    initramfs: &[u8],
    rootfs: &[u8],
    cmdline: &str,
    kernel_info: Option<pod::manifest::KernelInfo>,
) {
    use pod::SectionInfo;
    use pod::manifest::{Manifest, Resources, Sections, Source};
    let manifest = Manifest {
        format_version: pod::manifest::FORMAT_VERSION,
        builder: "launcher probe tests".into(),
        created: "2024-01-01T00:00:00Z".into(),
        source: Source::default(),
        sections: Sections {
            kernel: SectionInfo::of_bytes(kernel),
            initramfs: SectionInfo::of_bytes(initramfs),
            rootfs: SectionInfo::of_bytes(rootfs),
            verity: None,
        },
        run: Default::default(),
        resources: Resources {
            memory_mib: 64,
            vcpus: 1,
        },
        kernel_cmdline: cmdline.into(),
        kernel: kernel_info,
        verity: None,
    };
    pod::seal(
        path,
        &manifest,
        &mut &kernel[..],
        &mut &initramfs[..],
        &mut &rootfs[..],
    )
    .unwrap();
}

/// `true` when /dev/kvm can be opened; otherwise reports the test as skipped.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            hyperpod_tests::skip::skipped(
                test,
                &format!("/dev/kvm cannot be opened ({e}); this test needs KVM"),
            );
            false
        }
    }
}

/// FNV-1a 32 over `bytes`, as blk.c computes it.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(2_166_136_261u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    })
}

/// `setup_sects` of the probe bzImage: the boot sector plus 4 setup sectors precede the payload.
pub const BZ_SETUP_SECTS: u8 = 4;
/// Boot protocol 2.12: the first with `xloadflags` (and so `XLF_KERNEL_64`).
pub const BZ_VERSION: u16 = 0x020c;
/// `loadflags`: the protected-mode code is loaded at 0x100000 or above.
pub const LOADED_HIGH: u8 = 0x01;
/// `xloadflags`: the kernel has the 64-bit entry at its load address + 0x200.
pub const XLF_KERNEL_64: u16 = 0x01;

/// The probe bzImage's protected-mode payload (bzstart.S + bz.c) and the memory it needs.
pub struct BzPayload {
    /// Where it is linked to run: `code32_start` and `pref_address`.
    pub load: u64,
    /// The bytes loaded at `load` (bss not included).
    pub code: Vec<u8>,
    /// From `load` to the end of its bss, rounded up to 4 KiB: `init_size`.
    pub init_size: u32,
}

/// Compiles the 64-bit probe payload linked at `load` (`defines`: `EXIT_CODE=`, `BSS_BYTES=`).
pub fn build_bz_payload(dir: &Path, load: u64, defines: &[&str]) -> BzPayload {
    let src = src_dir();
    let start_o = dir.join("bzstart.o");
    let main_o = dir.join("bz.o");
    let elf = dir.join("bz.elf");
    let bin = dir.join("bz.bin");
    run(asm_cc("-m64")
        .arg("-o")
        .arg(&start_o)
        .arg(src.join("bzstart.S")));
    let mut cc = freestanding_cc(&["-m64", "-mcmodel=small", "-mno-red-zone"], defines);
    cc.arg(format!("-DBZ_LOAD={load:#x}ull"))
        .arg(format!("-DHDR_VERSION={BZ_VERSION:#x}"))
        .arg(format!("-DSETUP_SECTS={BZ_SETUP_SECTS}"));
    run(cc.arg("-o").arg(&main_o).arg(src.join("bz.c")));
    run(Command::new("ld")
        .args(["-m", "elf_x86_64", "-static", "--no-dynamic-linker", "-T"])
        .arg(src.join("bz.ld"))
        .arg(format!("--defsym=BZ_LOAD={load:#x}"))
        .arg("-o")
        .arg(&elf)
        .arg(&start_o)
        .arg(&main_o));
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin));
    let nm = Command::new("nm").arg(&elf).output().expect("run nm");
    assert!(nm.status.success(), "nm {}", elf.display());
    let symbol = |name: &str| -> u64 {
        String::from_utf8_lossy(&nm.stdout)
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                let (value, _, sym) = (f.next()?, f.next()?, f.next()?);
                (sym == name).then(|| u64::from_str_radix(value, 16).unwrap())
            })
            .unwrap_or_else(|| panic!("no {name} in {}", elf.display()))
    };
    assert_eq!(symbol("startup_32"), load);
    assert_eq!(symbol("startup_64"), load + 0x200);
    let init_size = (symbol("_end") - load).next_multiple_of(0x1000);
    BzPayload {
        load,
        code: std::fs::read(&bin).unwrap(),
        init_size: u32::try_from(init_size).unwrap(),
    }
}

/// The setup header fields the probe bzImage sets (Documentation/arch/x86/boot.rst).
#[derive(Clone, Copy, Debug)]
pub struct BzHeader {
    pub setup_sects: u8,
    pub version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub code32_start: u32,
    pub pref_address: u64,
    pub init_size: u32,
    pub kernel_alignment: u32,
}

impl BzHeader {
    /// An honest header for `p`: protocol 2.12, loaded high, 64-bit entry, not relocatable,
    /// to run at its link address.
    pub fn for_payload(p: &BzPayload) -> BzHeader {
        BzHeader {
            setup_sects: BZ_SETUP_SECTS,
            version: BZ_VERSION,
            loadflags: LOADED_HIGH,
            xloadflags: XLF_KERNEL_64,
            code32_start: u32::try_from(p.load).unwrap(),
            pref_address: p.load,
            init_size: p.init_size,
            kernel_alignment: 0x20_0000,
        }
    }
}

/// A bzImage: boot sector and `setup_sects` setup sectors (real-mode code that only halts:
/// the launcher never runs it) carrying the setup header at 0x1f1, then `payload`.
pub fn bzimage(payload: &[u8], h: &BzHeader) -> Vec<u8> {
    let setup_len = (usize::from(h.setup_sects) + 1) * 512;
    let mut img = vec![0u8; setup_len];
    let mut put = |off: usize, bytes: &[u8]| img[off..off + bytes.len()].copy_from_slice(bytes);
    // Boot sector and setup entry (real mode): cli; hlt; jmp back to the hlt.
    let halt = [0xfa, 0xf4, 0xeb, 0xfd]; // cli; hlt; jmp -3
    put(0, &halt);
    const SETUP_CODE: usize = 0x280;
    put(SETUP_CODE, &halt);
    put(0x1f1, &[h.setup_sects]);
    put(0x1f4, &(payload.len().div_ceil(16) as u32).to_le_bytes()); // syssize
    put(0x1fa, &0xffffu16.to_le_bytes()); // vid_mode: normal
    put(0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    // jump: short jmp from 0x202 to the setup code; also the end of the header.
    put(0x200, &[0xeb, (SETUP_CODE - 0x202) as u8]);
    put(0x202, b"HdrS");
    put(0x206, &h.version.to_le_bytes());
    put(0x20c, &0x1000u16.to_le_bytes()); // start_sys_seg
    put(0x211, &[h.loadflags]);
    put(0x214, &h.code32_start.to_le_bytes());
    put(0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(0x230, &h.kernel_alignment.to_le_bytes());
    put(0x234, &[0, 21]); // relocatable_kernel: no; min_alignment: 2 MiB
    put(0x236, &h.xloadflags.to_le_bytes());
    put(0x238, &2047u32.to_le_bytes()); // cmdline_size
    put(0x258, &h.pref_address.to_le_bytes());
    put(0x260, &h.init_size.to_le_bytes());
    img.extend_from_slice(payload);
    img
}

/// What one `hyperlaunch` run gave. A probe guest prints on the serial console, which the
/// launcher shows on its stderr (with the launcher's own lines): `console` is that stderr.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub console: String,
}

/// Runs `hyperlaunch --engine kvm EXTRA POD -- APP_ARGS` with its cache under `dir`, echoing
/// what it printed (for the test log).
pub fn launch(dir: &Path, pod: &Path, extra: &[&str], app_args: &[&str]) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
        .args(["--engine", "kvm"])
        .args(extra)
        .arg(pod)
        .arg("--")
        .args(app_args)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let r = Run {
        code: out.status.code().expect("hyperlaunch killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        console: stderr.clone(),
        stderr,
    };
    eprintln!(
        "--- exit {}\n--- stdout\n{}--- stderr\n{}",
        r.code, r.stdout, r.stderr
    );
    r
}

/// Runs one launch; returns (exit code, the launcher's peak RSS in KiB). The peak comes from
/// GNU time (`%M`), which forks the launcher from its own small process: `wait4` here would
/// report at least this test process's RSS, which an exec after a vfork carries into the
/// child's `ru_maxrss`.
pub fn launch_peak_rss(pod: &std::path::Path, cache: &std::path::Path) -> (i32, i64) {
    let mut m = Measured::start(pod, cache, &[], std::process::Stdio::null());
    let status = m.child.wait().unwrap();
    (status.code().expect("exit code"), m.peak_kib())
}

/// A `hyperlaunch --engine kvm --memory 32 EXTRA POD` running under GNU time (see
/// [`launch_peak_rss`]), its stdout and stderr discarded.
pub struct Measured {
    pub child: std::process::Child,
    report: PathBuf,
}

impl Measured {
    pub fn start(
        pod: &std::path::Path,
        cache: &std::path::Path,
        extra: &[&str],
        stdin: std::process::Stdio,
    ) -> Measured {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let report = cache.with_extension(format!("rss-{}-{n}", std::process::id()));
        let child = std::process::Command::new("/usr/bin/time")
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&report)
            .arg(env!("CARGO_BIN_EXE_hyperlaunch"))
            .args(["--engine", "kvm", "--memory", "32"])
            .args(extra)
            .arg(pod)
            .env("XDG_CACHE_HOME", cache)
            .stdin(stdin)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run /usr/bin/time (Debian package time, scripts/setup installs it)");
        Measured { child, report }
    }

    /// The launcher's peak RSS in KiB, once the child has been waited for.
    pub fn peak_kib(&mut self) -> i64 {
        let kib = std::fs::read_to_string(&self.report).unwrap();
        kib.lines().last().unwrap().trim().parse().unwrap()
    }
}

/// `VmHWM` (peak RSS so far) of a running process, in KiB; `None` once it is gone.
pub fn hwm_kib(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
