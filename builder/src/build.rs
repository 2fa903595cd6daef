//! `hyperbuild IMAGE -o app.pod`: one function of named steps,
//! resolve → fetch → flatten (spooling file contents) → write initramfs → write rootfs (straight
//! into the pod being sealed) → seal.
//!
//! Each layer is decompressed once: flattening sets file contents aside in the spool, and the
//! ext4 writer reads them from there. The pod, the spool and the initramfs are unnamed files
//! (`O_TMPFILE`) beside the output until the pod is linked in whole: an error, a full disk or a
//! SIGKILL at any moment leaves nothing behind (`pod::atomic` has the one narrow exception and
//! the fallback for filesystems without `O_TMPFILE`).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pod::manifest::{FORMAT_VERSION, Manifest, Resources, Sections, Source};
use pod::spec::RunSpec;
use pod::{SealError, SectionInfo};
use thiserror::Error;

use crate::ext4::{self, Ext4Error, Ext4Options};
use crate::image::Layer;
use crate::image::decompress::{LayerReader, Limits};
use crate::image::flatten::{self, FlattenError};
use crate::image::layer_content::LayerContent;
use crate::image::progress::Progress;
use crate::image::source::{self, FetchOptions, FetchedImage, SourceError};
use crate::image::spool::Spool;
use crate::initramfs::{self, InitramfsError};
use crate::kernel::{self, KernelError};
use crate::tree::{ContentSource, Meta, Tree};

/// The kernel command line every pod starts with (Firecracker-style: no probing, no waiting,
/// quiet console). The launcher appends its device entries and `console=`. Every word is one the
/// kernel knows, `key=value` or `module.param`: the kernel hands any other word to init as an
/// argument (`nomodule`, meaningless without modules, once showed PID 1 as `/init nomodule`).
///
/// Boot-time words, each measured with `bench/boot.sh` (guest time under icount, demo pod,
/// 1 vCPU / 128 MiB; docs/BENCHMARKS.md, "Boot budget"):
/// - `noreplace-smp`: keeps the kernel's `lock` prefixes when it boots on one vCPU instead of
///   rewriting every one of them (the "SMP alternatives" pass, one text poke per site): -1.7 ms.
///   Safe: SMP-safe code is correct on one CPU; an uncontended `lock` costs a few cycles.
/// - `percpu_alloc=page`: the per-CPU first chunk from 4 KiB pages (41 pages) instead of an
///   embedded 2 MiB unit that memblock zeroes whole: -1.8 ms. Safe: the generic allocator every
///   architecture without large pages uses; per-CPU data is then reached through vmalloc-space
///   4 KiB mappings (a few more TLB entries).
/// - `rodata=off`: the kernel does not re-map its text read-only and its data non-executable
///   at the end of boot, nor free the 1-2 MiB gap between them: -2.3 ms (set_memory_ro/nx
///   split the kernel's large-page mappings page by page). Safe for the host: the guest kernel
///   is not the isolation boundary, KVM is, and a pod's kernel serves one app. What is lost is
///   defence in depth inside the pod (a kernel write bug is easier to turn into code
///   execution, e.g. by an app running as `--user` that attacks its own guest kernel);
///   `hyperbuild --kernel-arg rodata=on` keeps the protection (docs/SECURITY.md).
/// - `retain_initrd`: the kernel keeps the initramfs's pages after unpacking them instead of
///   freeing them, which first fills every freed page with a poison byte: -1.37 ms under icount
///   (1.25 MB written by one `rep stosb` per page, which icount counts a byte at a time). On
///   KVM the initramfs is mapped copy-on-write from the pod file, so that poison also made the
///   host copy every page of it for each VM; retained, they stay shared in the host's page
///   cache. Cost: the initramfs's size (init and the spec, ~1.3 MB) of guest RAM is not handed
///   back, and root in the guest can read it back as `/sys/firmware/initrd` (mode 0400): the
///   init binary, the run spec and the launch's overrides, which that app is given anyway.
/// - `tsc=reliable`, `no_timer_check`: no clocksource watchdog, no IO-APIC timer check.
/// - `pci=off`/`nomodule` are not here: this kernel has neither PCI nor modules, so it passed
///   them on to init as an argument and an environment variable. Nor are Firecracker's
///   `i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd` (this kernel has no i8042 driver,
///   `CONFIG_SERIO` is off) or `cryptomgr.notests` (no `CONFIG_CRYPTO_MANAGER`): the kernel
///   ignores parameters of modules it lacks, but each word is still looked up in its parameter
///   table nine times (once at boot, once per initcall level), ~0.02 ms a word.
/// - `lpj=` is not needed: the delay loop is already derived from the TSC ("Calibrating delay
///   loop (skipped)"); the RNG is seeded from RDRAND at once ("crng init done" before the first
///   initcall), so `random.trust_cpu` changes nothing.
pub const DEFAULT_CMDLINE: &str = "reboot=k panic=-1 tsc=reliable no_timer_check \
     noreplace-smp percpu_alloc=page rodata=off retain_initrd rcupdate.rcu_expedited=1 quiet \
     root=/dev/vda ro rootfstype=ext4";

/// Run-spec changes given to `hyperbuild` (Docker's `run` flags, applied at build time).
#[derive(Clone, Debug, Default)]
pub struct SpecOverrides {
    /// Replaces the entrypoint and clears the image's cmd, as `docker run --entrypoint` does.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces cmd.
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE`, added or replacing the image's.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// Everything one build needs.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub image: String,
    pub output: PathBuf,
    pub fetch: FetchOptions,
    pub overrides: SpecOverrides,
    pub resources: Resources,
    pub kernel: Option<PathBuf>,
    pub init: Option<PathBuf>,
    /// Free space left in the rootfs, bytes.
    pub rootfs_extra: u64,
    /// No progress or step lines.
    pub quiet: bool,
    /// Set file contents aside in a spool while flattening (one decompression per layer);
    /// without it, the rootfs writer decompresses the layers again (no temp copy of contents).
    pub spool: bool,
    /// Add a dm-verity hash tree of the rootfs (`rootfs.verity`), so the guest checks every
    /// block it reads.
    pub verity: bool,
    /// Words appended to [`DEFAULT_CMDLINE`] (`--kernel-arg`), each checked by
    /// [`check_kernel_arg`].
    pub kernel_args: Vec<String>,
}

/// A `--kernel-arg` word: printable ASCII without spaces or quotes (the command line is split
/// on spaces; a quote would swallow the words after it), at most 256 bytes.
pub fn check_kernel_arg(word: &str) -> Result<(), String> {
    if word.is_empty() || word.len() > 256 {
        return Err(format!("{word:?}: must be 1 to 256 bytes"));
    }
    if let Some(c) = word.chars().find(|c| !c.is_ascii_graphic() || *c == '"') {
        return Err(format!(
            "{word:?}: {c:?} is not allowed in a kernel argument"
        ));
    }
    Ok(())
}

/// The pod's kernel command line: [`DEFAULT_CMDLINE`] and then the `--kernel-arg` words.
pub fn kernel_cmdline(args: &[String]) -> String {
    std::iter::once(DEFAULT_CMDLINE)
        .chain(args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What was built.
#[derive(Clone, Debug)]
pub struct BuildSummary {
    pub output: PathBuf,
    pub pod_bytes: u64,
    pub reference: String,
    /// The image manifest digest, or the config digest (image ID) for a `docker save` archive.
    pub image_digest: String,
    pub elapsed: Duration,
}

/// Why a build failed. Each step has its own variant; `main` maps them to exit codes.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Flatten(#[from] FlattenError),
    #[error("rootfs: {0}")]
    Rootfs(#[from] Ext4Error),
    #[error("initramfs: {0}")]
    Initramfs(#[from] InitramfsError),
    #[error("{0}")]
    Kernel(#[from] KernelError),
    #[error("seal {path}: {source}")]
    Seal { path: PathBuf, source: SealError },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("SOURCE_DATE_EPOCH {0:?} is not a whole number of seconds")]
    SourceDateEpoch(String),
    #[error("run spec: {0}")]
    Spec(String),
    #[error(
        "--platform {0}: a pod's kernel and init are {os}/{arch}, which cannot run {0} binaries",
        os = crate::image::config::GUEST_OS,
        arch = crate::image::config::GUEST_ARCHITECTURE
    )]
    Platform(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// Builds a pod. The whole pipeline, step by step.
pub fn build(opts: &BuildOptions) -> Result<BuildSummary, BuildError> {
    let started = Instant::now();
    if !opts.fetch.platform.runs_in_guest() {
        return Err(BuildError::Platform(opts.fetch.platform.to_string()));
    }
    let step = |name: &str, detail: &str| {
        if !opts.quiet {
            eprintln!("{name:>10} {detail}");
        }
    };
    let out_dir = parent_dir(&opts.output);

    step("resolve", &opts.image);
    let image = source::resolve_and_fetch(&opts.image, &opts.fetch)?;
    let created = created_time(&image)?;
    let spec = run_spec(&image, &opts.overrides)?;
    let kernel = kernel::locate(opts.kernel.as_deref())?;
    let kernel_info = kernel::identify(&kernel)?;
    let kernel_path = kernel.path;
    let init_path = initramfs::locate_init(opts.init.as_deref())?;

    step("flatten", &format!("{} layer(s)", image.layers.len()));
    let limits = Limits::default();
    let mut spool = match opts.spool {
        true => Some(
            Spool::new_in(out_dir).map_err(io_err(format!("spool in {}", out_dir.display())))?,
        ),
        false => None,
    };
    let tree = flatten_with_progress(
        &image.layers,
        &limits,
        spool.as_mut(),
        &Progress::new(opts.quiet),
    )?;
    let mut contents: Box<dyn ContentSource> = match spool {
        Some(s) => Box::new(s),
        None => Box::new(LayerContent::new(image.layers.clone(), limits)),
    };

    step("initramfs", &format!("init {}", init_path.display()));
    let initramfs_what = format!("initramfs temp file in {}", out_dir.display());
    let mut initramfs_file = tempfile::tempfile_in(out_dir).map_err(io_err(&initramfs_what))?;
    write_initramfs(&init_path, &spec, created, &initramfs_file, &initramfs_what)?;
    let initramfs_size = initramfs_file
        .rewind()
        .and_then(|()| initramfs_file.metadata())
        .map_err(io_err(&initramfs_what))?
        .len();

    step("rootfs", "writing ext4 into the pod");
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        builder: format!("hyperbuild {}", env!("CARGO_PKG_VERSION")),
        created: pod::time::format_rfc3339(created),
        source: Source {
            reference: image.reference.clone(),
            manifest_digest: image
                .manifest_digest
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            config_digest: image.config_digest.to_string(),
        },
        // Sizes now (the rootfs's is an estimate until it is written); the digests are
        // computed while sealing, each section read once.
        sections: Sections {
            kernel: sized(&kernel_path)?,
            initramfs: SectionInfo {
                size: initramfs_size,
                sha256: String::new(),
            },
            // Only the digit count matters (see `pod::begin_seal`); the file bytes are close.
            rootfs: SectionInfo {
                size: tree.file_bytes(),
                sha256: String::new(),
            },
            verity: None,
        },
        run: spec,
        resources: opts.resources.clone(),
        kernel_cmdline: kernel_cmdline(&opts.kernel_args),
        kernel: kernel_info,
        // Filled in by the seal: parameters for the rootfs size, then the root hash.
        verity: opts.verity.then(pod::manifest::Verity::default),
    };
    let seal_err = |source| BuildError::Seal {
        path: opts.output.clone(),
        source,
    };
    let open = |p: &Path| File::open(p).map_err(io_err(p.display().to_string()));
    let slot = pod::begin_seal(
        &opts.output,
        &manifest,
        &mut open(&kernel_path)?,
        &mut initramfs_file,
    )
    .map_err(seal_err)?;
    let rootfs_size = write_rootfs(
        &tree,
        &image,
        contents.as_mut(),
        slot.file(),
        slot.offset(),
        opts.rootfs_extra,
    )?;
    drop(contents);

    step("seal", &opts.output.display().to_string());
    slot.finish(rootfs_size).map_err(seal_err)?;

    let pod_bytes = std::fs::metadata(&opts.output)
        .map_err(io_err(opts.output.display().to_string()))?
        .len();
    Ok(BuildSummary {
        output: opts.output.clone(),
        pod_bytes,
        image_digest: image
            .manifest_digest
            .as_ref()
            .unwrap_or(&image.config_digest)
            .to_string(),
        reference: image.reference,
        elapsed: started.elapsed(),
    })
}

/// Applies the layers bottom first, spooling file contents if there is a spool, one progress
/// bar per layer (hidden when quiet or when stderr is not a terminal).
fn flatten_with_progress(
    layers: &[Layer],
    limits: &Limits,
    mut spool: Option<&mut Spool>,
    progress: &Progress,
) -> Result<Tree, BuildError> {
    let mut tree = Tree::new(Meta::with_mode(0o755));
    for (i, layer) in layers.iter().enumerate() {
        let bar = progress.layer(&format!("layer {}/{}", i + 1, layers.len()));
        let reader = Counted {
            inner: LayerReader::open(layer, limits).map_err(FlattenError::from)?,
            bar,
        };
        let counted = match spool.as_deref_mut() {
            Some(spool) => flatten::apply_tar_spooled(&mut tree, i, &layer.digest, reader, spool)?,
            None => flatten::apply_tar(&mut tree, i, &layer.digest, reader)?,
        };
        counted.bar.finish_and_clear();
        counted.inner.finish().map_err(FlattenError::from)?;
    }
    Ok(tree)
}

/// Counts bytes read into a progress bar.
struct Counted<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A section's size, with its digest left for sealing to compute.
fn sized(p: &Path) -> Result<SectionInfo, BuildError> {
    let size = std::fs::metadata(p)
        .map_err(io_err(p.display().to_string()))?
        .len();
    Ok(SectionInfo {
        size,
        sha256: String::new(),
    })
}

/// The pod's creation time: `SOURCE_DATE_EPOCH` when set, else the image's `created`, else 0.
fn created_time(image: &FetchedImage) -> Result<i64, BuildError> {
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        return s.trim().parse().map_err(|_| BuildError::SourceDateEpoch(s));
    }
    Ok(image
        .config
        .created
        .as_deref()
        .and_then(pod::time::parse_rfc3339)
        .unwrap_or(0))
}

/// The image's run spec with the build-time overrides applied (Docker's rules).
pub fn run_spec(image: &FetchedImage, o: &SpecOverrides) -> Result<RunSpec, BuildError> {
    let mut spec = image.config.run_spec();
    if let Some(ep) = &o.entrypoint {
        spec.entrypoint = ep.clone();
        spec.cmd.clear();
    }
    if let Some(cmd) = &o.cmd {
        spec.cmd = cmd.clone();
    }
    for kv in &o.env {
        let key = kv.split_once('=').map(|(k, _)| k).filter(|k| !k.is_empty());
        let key = key.ok_or_else(|| BuildError::Spec(format!("env {kv:?} is not KEY=VALUE")))?;
        spec.env
            .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        spec.env.push(kv.clone());
    }
    if let Some(w) = &o.workdir {
        if !w.starts_with('/') {
            return Err(BuildError::Spec(format!(
                "workdir {w:?} is not an absolute path"
            )));
        }
        spec.working_dir = w.clone();
    }
    if let Some(u) = &o.user {
        spec.user = u.clone();
    }
    if spec.entrypoint.is_empty() && spec.cmd.is_empty() {
        return Err(BuildError::Spec(
            "the image has no Entrypoint or Cmd: pass --entrypoint or --cmd".into(),
        ));
    }
    Ok(spec)
}

fn write_rootfs(
    tree: &Tree,
    image: &FetchedImage,
    contents: &mut dyn ContentSource,
    pod: &File,
    offset: u64,
    extra: u64,
) -> Result<u64, BuildError> {
    // The config digest names the image's content (it lists every layer's diff_id), so the
    // filesystem UUID and hash seed depend on content, not only on metadata.
    let opts = Ext4Options {
        extra_bytes: extra,
        seed: Some(image.config_digest.to_string().into_bytes()),
        ..Ext4Options::default()
    };
    // Straight into the pod at the rootfs section's offset; sealing hashes and fsyncs it.
    Ok(ext4::write_image_at(tree, contents, pod, offset, &opts)?.size_bytes)
}

fn write_initramfs(
    init: &Path,
    spec: &RunSpec,
    created: i64,
    file: &File,
    what: &str,
) -> Result<(), BuildError> {
    let mut w = BufWriter::new(file);
    let mtime = u32::try_from(created.max(0)).unwrap_or(u32::MAX);
    initramfs::write(init, spec, mtime, &mut w)?;
    w.flush().map_err(io_err(what))?;
    Ok(())
}

/// Parses a size like `16M`, `1G`, `512K` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 16M, 1G or 4096"))
}

/// Parses `--entrypoint`/`--cmd`: a JSON array of strings, or words separated by spaces.
pub fn parse_command(s: &str) -> Result<Vec<String>, String> {
    if s.trim_start().starts_with('[') {
        serde_json::from_str(s).map_err(|e| format!("{s:?} is not a JSON array of strings: {e}"))
    } else {
        Ok(s.split_whitespace().map(String::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_commands_parse() {
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999999G").is_err());
        assert_eq!(
            parse_command(r#"["/bin/sh","-c","echo hi"]"#).unwrap(),
            ["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(parse_command("echo  hi").unwrap(), ["echo", "hi"]);
        assert!(parse_command("[1,2]").is_err());
    }

    #[test]
    fn kernel_args_are_checked_and_appended() {
        assert!(check_kernel_arg("rodata=on").is_ok());
        assert!(check_kernel_arg("dyndbg=+p").is_ok());
        for bad in ["", "a b", "x=\"y", "tab\there", "é", &"a".repeat(257)] {
            assert!(check_kernel_arg(bad).is_err(), "{bad:?}");
        }
        assert_eq!(kernel_cmdline(&[]), DEFAULT_CMDLINE);
        let line = kernel_cmdline(&["rodata=on".into(), "loglevel=7".into()]);
        assert_eq!(line, format!("{DEFAULT_CMDLINE} rodata=on loglevel=7"));
    }
}
