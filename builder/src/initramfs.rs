//! The pod's initramfs: the static init as `/init`, the run spec, and the device nodes init
//! needs before it mounts devtmpfs (see `docs/guest-protocol.md`). Deterministic: the same init
//! binary, spec and time give the same bytes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use pod::cpio::{CpioError, CpioWriter};
use pod::spec::{RunSpec, SPEC_PATH};
use thiserror::Error;

/// Why the initramfs could not be written.
#[derive(Debug, Error)]
pub enum InitramfsError {
    #[error("init binary {path}: {source}")]
    Init { path: PathBuf, source: io::Error },
    #[error(
        "init binary {0}: not a static x86-64 ELF executable (build one with scripts/build-init)"
    )]
    NotStatic(PathBuf),
    #[error(
        "no init binary found: build it with scripts/setup, or pass --init / set HYPERPOD_INIT"
    )]
    NoInit,
    #[error("cpio: {0}")]
    Cpio(#[from] CpioError),
    #[error("run spec: {0}")]
    Spec(#[from] serde_json::Error),
}

/// Directories created in the initramfs (init mounts onto or below them).
const DIRS: [&str; 8] = [
    "dev", "hyperpod", "mnt", "proc", "run", "sys", "tmp", "root",
];

/// Device nodes init needs before devtmpfs: (path, mode, major, minor).
const DEVICES: [(&str, u32, u32, u32); 5] = [
    ("dev/console", 0o600, 5, 1),
    ("dev/null", 0o666, 1, 3),
    ("dev/port", 0o600, 1, 4),
    ("dev/ttyS0", 0o600, 4, 64),
    ("dev/ttyS1", 0o600, 4, 65),
];

/// Finds the static init: `explicit`, else `$HYPERPOD_INIT`, else the installed one
/// (`install::lib_dir()`), else next to this executable, else in the workspace's static-target
/// build directory.
pub fn locate_init(explicit: Option<&Path>) -> Result<PathBuf, InitramfsError> {
    if let Some(p) = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("HYPERPOD_INIT").map(PathBuf::from))
    {
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(|_| InitramfsError::NoInit)?;
    let installed = crate::install::lib_dir()
        .map(|d| d.join(crate::install::INIT))
        .filter(|p| p.is_file());
    if let Some(p) = installed {
        return Ok(p);
    }
    locate_init_near(exe.parent().ok_or(InitramfsError::NoInit)?)
}

/// The init for a `hyperbuild` in `dir`: the first static one of the candidates, else the first
/// one found (refused later with a hint how to build a static one). A plain `cargo build
/// --release` leaves a dynamic `hyperpod-init` beside `hyperbuild` in `target/release/`: the
/// static build in `target/x86_64-unknown-linux-gnu/guest/` (`scripts/build-init`) wins over it.
fn locate_init_near(dir: &Path) -> Result<PathBuf, InitramfsError> {
    let found: Vec<PathBuf> = [
        dir.join(crate::install::INIT),
        dir.join("../x86_64-unknown-linux-gnu/guest/hyperpod-init"),
        dir.join("../../x86_64-unknown-linux-gnu/guest/hyperpod-init"),
    ]
    .into_iter()
    .filter(|p| p.is_file())
    .collect();
    let is_static = |p: &PathBuf| File::open(p).is_ok_and(|mut f| check_static(p, &mut f).is_ok());
    found
        .iter()
        .find(|p| is_static(p))
        .or(found.first())
        .cloned()
        .ok_or(InitramfsError::NoInit)
}

/// Checks that `path` is an x86-64 ELF executable with no program interpreter (static).
fn check_static(path: &Path, file: &mut File) -> Result<u64, InitramfsError> {
    let err = |source| InitramfsError::Init {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(err)?.len();
    let mut head = vec![0u8; 4096.min(size as usize)];
    file.read_exact(&mut head).map_err(err)?;
    let not_static = || InitramfsError::NotStatic(path.to_path_buf());
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[18] != 62 {
        return Err(not_static());
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let phoff = u64::from_le_bytes(head[32..40].try_into().unwrap_or_default()) as usize;
    let (phentsize, phnum) = (u16_at(54) as usize, u16_at(56) as usize);
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let ptype = head.get(at..at + 4).ok_or_else(not_static)?;
        if ptype == 3u32.to_le_bytes() {
            return Err(not_static()); // PT_INTERP: dynamically linked
        }
    }
    io::Seek::rewind(file).map_err(err)?;
    Ok(size)
}

/// Writes the initramfs for `spec` with init binary `init` to `out`; every entry gets `mtime`.
pub fn write(
    init: &Path,
    spec: &RunSpec,
    mtime: u32,
    out: impl Write,
) -> Result<(), InitramfsError> {
    let mut file = File::open(init).map_err(|source| InitramfsError::Init {
        path: init.to_path_buf(),
        source,
    })?;
    let size = check_static(init, &mut file)?;
    let mut w = CpioWriter::new(out, mtime);
    for d in DIRS {
        w.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    for (path, mode, major, minor) in DEVICES {
        w.char_device(path, mode, major, minor)?;
    }
    w.file_from_reader("init", 0o755, size, file)?;
    let mut json = serde_json::to_vec_pretty(spec)?;
    json.push(b'\n');
    w.file(SPEC_PATH.trim_start_matches('/'), 0o644, &json)?;
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_static_elf(dir: &Path) -> PathBuf {
        let p = dir.join("init");
        hyperpod_tests::elf::write_fake_static_elf(&p, hyperpod_tests::elf::HEADERS, 0);
        p
    }

    #[test]
    fn holds_init_spec_and_devices_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let init = fake_static_elf(dir.path());
        let spec = RunSpec {
            cmd: vec!["/bin/sh".into()],
            ..RunSpec::default()
        };
        let mut a = Vec::new();
        write(&init, &spec, 1_700_000_000, &mut a).unwrap();
        let mut b = Vec::new();
        write(&init, &spec, 1_700_000_000, &mut b).unwrap();
        assert_eq!(a, b);
        let entries = pod::cpio::parse(&a).unwrap();
        let names: Vec<String> = entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        for want in [
            "init",
            "hyperpod/spec.json",
            "dev/console",
            "dev/port",
            "dev/ttyS1",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        let spec_entry = entries
            .iter()
            .find(|e| e.name == b"hyperpod/spec.json")
            .unwrap();
        let pod::cpio::EntryKind::File(data) = &spec_entry.kind else {
            panic!("spec is not a file")
        };
        let back: RunSpec = serde_json::from_slice(data).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn a_static_init_wins_over_a_dynamic_one_beside_hyperbuild() {
        let t = tempfile::tempdir().unwrap();
        let release = t.path().join("target/release");
        let cross = t.path().join("target/x86_64-unknown-linux-gnu/guest");
        std::fs::create_dir_all(&release).unwrap();
        assert!(matches!(
            locate_init_near(&release),
            Err(InitramfsError::NoInit)
        ));
        // Only the dynamic one (what `cargo build --release` leaves): found, then refused with
        // the command that builds a static one.
        std::fs::copy("/bin/sh", release.join("hyperpod-init")).unwrap();
        let dynamic = locate_init_near(&release).unwrap();
        assert_eq!(dynamic, release.join("hyperpod-init"));
        let err = write(&dynamic, &RunSpec::default(), 0, Vec::new()).unwrap_err();
        assert!(
            err.to_string()
                .contains("build one with scripts/build-init"),
            "{err}"
        );
        // With the static build present, it is chosen.
        std::fs::create_dir_all(&cross).unwrap();
        hyperpod_tests::elf::write_fake_static_elf(
            &cross.join("hyperpod-init"),
            hyperpod_tests::elf::HEADERS,
            0,
        );
        let chosen = locate_init_near(&release).unwrap();
        assert_eq!(
            chosen,
            release.join("../x86_64-unknown-linux-gnu/guest/hyperpod-init")
        );
        write(&chosen, &RunSpec::default(), 0, Vec::new()).unwrap();
    }

    #[test]
    fn refuses_dynamic_or_non_elf_init() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("init");
        std::fs::write(&p, b"#!/bin/sh\necho hi\n").unwrap();
        let err = write(&p, &RunSpec::default(), 0, Vec::new()).unwrap_err();
        assert!(matches!(err, InitramfsError::NotStatic(_)), "{err}");
        // /bin/sh on the host is dynamically linked.
        let err = write(Path::new("/bin/sh"), &RunSpec::default(), 0, Vec::new()).unwrap_err();
        assert!(matches!(err, InitramfsError::NotStatic(_)), "{err}");
        let err = write(
            &dir.path().join("missing"),
            &RunSpec::default(),
            0,
            Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, InitramfsError::Init { .. }), "{err}");
    }
}
