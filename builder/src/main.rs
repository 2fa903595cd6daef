//! `hyperbuild`: the command line. Parses arguments, runs one command, maps its error to a
//! documented exit code (see `docs/cli.md`).

use std::path::PathBuf;
use std::process::ExitCode;

use builder::build::{self, BuildError, BuildOptions, SpecOverrides};
use builder::image::config::Platform;
use builder::image::flatten::FlattenError;
use builder::image::pod_transfer::{self, TransferError};
use builder::image::source::{FetchOptions, SourceError};
use builder::initramfs::InitramfsError;
use builder::inspect;
use builder::signing::{self, SigningError};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use pod::manifest::Resources;

/// Exit codes of `hyperbuild` (documented in docs/cli.md).
mod code {
    /// Bad arguments (clap uses 2 as well).
    pub const USAGE: u8 = 2;
    /// A pod could not be opened: not a pod, bad version, truncated, bad manifest.
    pub const BAD_POD: u8 = 3;
    /// A digest or size did not match what a manifest or descriptor promised.
    pub const DIGEST: u8 = 4;
    /// The image could not be found or fetched (reference, registry, auth, network, cache).
    pub const SOURCE: u8 = 5;
    /// An I/O error on our side (output path, disk full, permissions).
    pub const IO: u8 = 6;
    /// The image's content is refused (hostile or unsupported layer, bad config).
    pub const BAD_IMAGE: u8 = 7;
    /// A build input of ours is missing: the guest kernel or the static init.
    pub const MISSING_PART: u8 = 8;
    /// A signature is missing or does not verify, or a key is unusable.
    pub const SIGNATURE: u8 = 9;
}

#[derive(Parser)]
#[command(
    name = "hyperbuild",
    version,
    about = "Turn a container image into a sealed micro-VM pod",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a pod holds: manifest, run spec, sections with offsets and digests.
    Inspect {
        pod: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Recompute every section's sha256 and compare with the manifest; with --pubkey, first
    /// check the pod's signature.
    Verify {
        pod: PathBuf,
        /// Require a signature by this Ed25519 public key (SPKI PEM).
        #[arg(long, value_name = "PUB")]
        pubkey: Option<PathBuf>,
    },
    /// Make an Ed25519 key pair for signing pods (PKCS#8 PEM private, SPKI PEM public).
    Keygen {
        /// Private key file to create (mode 0600).
        #[arg(long, value_name = "FILE", default_value = "hyperpod.key")]
        key: PathBuf,
        /// Public key file to create.
        #[arg(long, value_name = "FILE", default_value = "hyperpod.pub")]
        pubkey: PathBuf,
    },
    /// Sign a pod in place (its manifest, which binds every section), replacing any signature.
    Sign {
        /// Ed25519 private key (PKCS#8 PEM).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        pod: PathBuf,
    },
    /// Store a pod in a registry as an OCI artifact: REGISTRY/REPO:TAG.
    Push {
        pod: PathBuf,
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Fetch a pod pushed with `push`, verify every digest, write it atomically.
    Pull {
        reference: String,
        /// Where to write the pod.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Use only the local cache; fail if anything is missing.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Print the path of the guest kernel a build would use (installed, else cached).
    Kernel,
}

/// Registry access options shared by push and pull (the same as image pulls').
#[derive(Args)]
struct RegistryArgs {
    /// Registry credentials USER:PASS.
    #[arg(long)]
    creds: Option<String>,
    /// Docker-style config.json with registry credentials.
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Allow plain HTTP to this registry (HOST:PORT); loopback registries always may.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
}

impl RegistryArgs {
    fn fetch_options(self, offline: bool) -> FetchOptions {
        FetchOptions {
            platform: Platform::default(),
            offline,
            quiet: self.quiet,
            creds: self.creds,
            authfile: self.authfile,
            insecure_registries: self.insecure_registry,
            cache_root: None,
        }
    }
}

fn transfer_error_code(e: &TransferError) -> u8 {
    match e {
        TransferError::Reference(_)
        | TransferError::NotRegistry(_)
        | TransferError::PushDigest(_) => code::USAGE,
        TransferError::Registry(r) => {
            use builder::image::digest::DigestError;
            use builder::image::registry::RegistryError;
            match r {
                RegistryError::Verify(
                    DigestError::SizeMismatch { .. } | DigestError::Mismatch { .. },
                )
                | RegistryError::ManifestDigest { .. } => code::DIGEST,
                _ => code::SOURCE,
            }
        }
        TransferError::Artifact(_) | TransferError::PodManifest { .. } => code::BAD_POD,
        TransferError::Cache(_) => code::SOURCE,
        TransferError::Pod { source, .. } => pod_error_code(source),
        TransferError::Write { source, .. } => match source {
            pod::SealError::Refused(_)
            | pod::SealError::Digest { .. }
            | pod::SealError::Size { .. } => code::DIGEST,
            _ => code::IO,
        },
    }
}

fn signing_error_code(e: &SigningError) -> u8 {
    match e {
        SigningError::Io { .. } | SigningError::Exists(_) | SigningError::Write { .. } => code::IO,
        SigningError::Random(_) => code::IO,
        SigningError::Key { .. } | SigningError::Signature { .. } => code::SIGNATURE,
        SigningError::Pod { source, .. } => pod_error_code(source),
    }
}

/// Runs a command that prints one line on success; errors go to stderr with their exit code.
fn report<E: std::error::Error>(r: Result<String, E>, code_of: impl Fn(&E) -> u8) -> ExitCode {
    match r {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hyperbuild: {}", with_causes(&e));
            ExitCode::from(code_of(&e))
        }
    }
}

#[derive(Args)]
struct BuildArgs {
    /// Image: NAME[:TAG|@DIGEST], docker://NAME, oci:DIR[:REF], docker-archive:FILE.
    #[arg(required = true)]
    image: Option<String>,
    /// Where to write the pod.
    #[arg(short, long, value_name = "FILE", required = true)]
    output: Option<PathBuf>,
    /// Default guest memory, MiB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    /// Default vCPU count.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Replace the entrypoint (JSON array or words); clears the image's cmd.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Replace the cmd (JSON array or words).
    #[arg(long)]
    cmd: Option<String>,
    /// Set an environment variable (KEY=VALUE); repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory of the app.
    #[arg(long)]
    workdir: Option<String>,
    /// User of the app: uid, uid:gid, name or name:group.
    #[arg(long)]
    user: Option<String>,
    /// Free space in the rootfs beyond its contents (e.g. 16M, 1G).
    #[arg(long, default_value = "16M", value_parser = build::parse_size)]
    rootfs_extra: u64,
    /// Platform to pick from a multi-platform image.
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Registry credentials USER:PASS.
    #[arg(long)]
    creds: Option<String>,
    /// Docker-style config.json with registry credentials.
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Allow plain HTTP to this registry (HOST:PORT); loopback registries always may.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// Use only the local cache; fail if anything is missing.
    #[arg(long)]
    offline: bool,
    /// Guest kernel (ELF vmlinux); default: the cached build of kernel-fragments/.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Static init binary; default: $HYPERPOD_INIT or the one built next to hyperbuild.
    #[arg(long)]
    init: Option<PathBuf>,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    /// Decompress each layer twice (once to flatten, once for file contents) instead of
    /// setting file contents aside in a temp spool file: less temp disk space, slower.
    #[arg(long)]
    no_spool: bool,
    /// Leave out the rootfs's dm-verity hash tree (the guest then reads the rootfs unchecked).
    #[arg(long)]
    no_verity: bool,
    /// Append a word to the guest kernel's command line (repeatable; a later word overrides an
    /// earlier one of the same name, e.g. `--kernel-arg rodata=on`).
    #[arg(long = "kernel-arg", value_name = "WORD")]
    kernel_arg: Vec<String>,
}

fn pod_error_code(e: &pod::PodError) -> u8 {
    match e {
        pod::PodError::Io(_) => code::IO,
        pod::PodError::DigestMismatch { .. } => code::DIGEST,
        _ => code::BAD_POD,
    }
}

fn build_error_code(e: &BuildError) -> u8 {
    match e {
        BuildError::Source(s) => source_error_code(s),
        // Writing the spool failed (e.g. the disk is full): the host's fault, not the image's.
        BuildError::Flatten(FlattenError::Spool { .. }) => code::IO,
        BuildError::Flatten(_) => code::BAD_IMAGE,
        BuildError::Rootfs(_) | BuildError::Io { .. } | BuildError::Seal { .. } => code::IO,
        // Writing the initramfs failed (e.g. the disk is full): ours, not a missing part.
        BuildError::Initramfs(InitramfsError::Cpio(pod::cpio::CpioError::Write(_))) => code::IO,
        BuildError::Initramfs(_) | BuildError::Kernel(_) => code::MISSING_PART,
        BuildError::SourceDateEpoch(_) | BuildError::Spec(_) | BuildError::Platform(_) => {
            code::USAGE
        }
    }
}

fn source_error_code(e: &SourceError) -> u8 {
    use builder::image::digest::DigestError;
    use builder::image::docker_archive::DockerArchiveError;
    use builder::image::oci_layout::OciLayoutError;
    use builder::image::registry::RegistryError;
    let digest = |d: &DigestError| match d {
        DigestError::SizeMismatch { .. } | DigestError::Mismatch { .. } => code::DIGEST,
        _ => code::SOURCE,
    };
    match e {
        SourceError::OciLayout(OciLayoutError::Verify(d))
        | SourceError::Registry(RegistryError::Verify(d)) => digest(d),
        SourceError::Registry(RegistryError::ManifestDigest { .. })
        | SourceError::DockerArchive(DockerArchiveError::DiffId { .. }) => code::DIGEST,
        SourceError::OciLayout(OciLayoutError::Config(_) | OciLayoutError::Manifest(_))
        | SourceError::DockerArchive(
            DockerArchiveError::Config(_)
            | DockerArchiveError::Manifest(_)
            | DockerArchiveError::Outside(_)
            | DockerArchiveError::LinkLoop(_),
        )
        | SourceError::Registry(RegistryError::Config(_) | RegistryError::Manifest(_)) => {
            code::BAD_IMAGE
        }
        _ => code::SOURCE,
    }
}

fn fail(what: &std::path::Path, e: &pod::PodError) -> ExitCode {
    eprintln!("hyperbuild: {}: {e}", what.display());
    ExitCode::from(pod_error_code(e))
}

fn run_build(a: BuildArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("hyperbuild: {msg}");
        ExitCode::from(code::USAGE)
    };
    let platform = match Platform::parse(&a.platform) {
        Ok(p) => p,
        Err(e) => return usage(e.to_string()),
    };
    let parse = |flag: &str, v: Option<String>| -> Result<Option<Vec<String>>, String> {
        v.map(|s| build::parse_command(&s).map_err(|e| format!("--{flag}: {e}")))
            .transpose()
    };
    let (entrypoint, cmd) = match (parse("entrypoint", a.entrypoint), parse("cmd", a.cmd)) {
        (Ok(e), Ok(c)) => (e, c),
        (Err(m), _) | (_, Err(m)) => return usage(m),
    };
    if let Some(e) = a
        .kernel_arg
        .iter()
        .find_map(|w| build::check_kernel_arg(w).err())
    {
        return usage(format!("--kernel-arg {e}"));
    }
    let opts = BuildOptions {
        image: a.image.unwrap_or_default(),
        output: a.output.unwrap_or_default(),
        fetch: FetchOptions {
            platform,
            offline: a.offline,
            quiet: a.quiet,
            creds: a.creds,
            authfile: a.authfile,
            insecure_registries: a.insecure_registry,
            cache_root: None,
        },
        overrides: SpecOverrides {
            entrypoint,
            cmd,
            env: a.env,
            workdir: a.workdir,
            user: a.user,
        },
        resources: Resources {
            memory_mib: a.memory,
            vcpus: a.vcpus,
        },
        kernel: a.kernel,
        init: a.init,
        rootfs_extra: a.rootfs_extra,
        quiet: a.quiet,
        spool: !a.no_spool,
        verity: !a.no_verity,
        kernel_args: a.kernel_arg,
    };
    if !pod::manifest::MEMORY_MIB_RANGE.contains(&opts.resources.memory_mib) {
        return usage(format!(
            "--memory {} is outside {:?} MiB",
            opts.resources.memory_mib,
            pod::manifest::MEMORY_MIB_RANGE
        ));
    }
    if !pod::manifest::VCPUS_RANGE.contains(&opts.resources.vcpus) {
        return usage(format!(
            "--vcpus {} is outside {:?}",
            opts.resources.vcpus,
            pod::manifest::VCPUS_RANGE
        ));
    }
    match build::build(&opts) {
        Ok(s) => {
            println!(
                "built {} ({}) from {} {} in {:.2} s",
                s.output.display(),
                inspect::human_size(s.pod_bytes),
                s.reference,
                s.image_digest,
                s.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hyperbuild: {}", with_causes(&e));
            ExitCode::from(build_error_code(&e))
        }
    }
}

/// The error and its causes on one line, `: `-separated; a cause whose text the message
/// already shows (a wrapper that displays its source) is not repeated.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line.replace('\n', " ")
}

/// `hyperbuild --version`: the version, the fragments this build expects, and the kernel and
/// init a build would use now (each found the way a build finds it).
fn long_version() -> String {
    let mut text = format!(
        "{}\nkernel fragments: {}",
        env!("CARGO_PKG_VERSION"),
        builder::kernel::FRAGMENTS_KEY
    );
    let kernel = builder::kernel::locate(None).and_then(|k| {
        let release = builder::kernel::read_release(&k.path)?;
        Ok((k, release))
    });
    match kernel {
        Ok((k, release)) => text.push_str(&format!(
            "\nkernel: {} ({}, Linux {}, fragments {})",
            k.path.display(),
            k.origin.name(),
            release.as_deref().unwrap_or("unknown"),
            k.fragments.as_deref().unwrap_or("unknown"),
        )),
        Err(e) => text.push_str(&format!("\nkernel: none ({e})")),
    }
    match builder::initramfs::locate_init(None) {
        Ok(p) => text.push_str(&format!("\ninit: {}", p.display())),
        Err(e) => text.push_str(&format!("\ninit: none ({e})")),
    }
    text
}

fn main() -> ExitCode {
    let mut command = Cli::command();
    // Only `--version` pays for finding and reading the kernel.
    if std::env::args_os().any(|a| a == "--version") {
        command = command.long_version(&*Box::leak(long_version().into_boxed_str()));
    }
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        None => run_build(cli.build),
        Some(Command::Inspect { pod: path, json }) => match pod::Pod::open(&path) {
            Ok(p) if json => {
                println!("{:#}", inspect::json(&p));
                ExitCode::SUCCESS
            }
            Ok(p) => {
                print!("{}", inspect::table(&path, &p));
                ExitCode::SUCCESS
            }
            Err(e) => fail(&path, &e),
        },
        Some(Command::Verify {
            pod: path,
            pubkey: Some(pubkey),
        }) => report(signing::verify(&pubkey, &path), signing_error_code),
        Some(Command::Keygen { key, pubkey }) => report(
            signing::keygen(&key, &pubkey).map(|()| {
                format!(
                    "wrote {} (private, keep it secret) and {} (public)",
                    key.display(),
                    pubkey.display()
                )
            }),
            signing_error_code,
        ),
        Some(Command::Sign { key, pod: path }) => {
            report(signing::sign(&key, &path), signing_error_code)
        }
        Some(Command::Push {
            pod: path,
            reference,
            registry,
        }) => report(
            pod_transfer::push(&path, &reference, &registry.fetch_options(false)).map(|p| {
                format!(
                    "pushed {} ({} blobs uploaded, {} already there)",
                    p.reference, p.uploaded, p.skipped
                )
            }),
            transfer_error_code,
        ),
        Some(Command::Pull {
            reference,
            output,
            offline,
            registry,
        }) => report(
            pod_transfer::pull(&reference, &output, &registry.fetch_options(offline)).map(|p| {
                format!(
                    "pulled {}@{} to {} ({}, sha256 {})",
                    p.reference,
                    p.manifest_digest,
                    output.display(),
                    inspect::human_size(p.bytes),
                    p.pod_sha256
                )
            }),
            transfer_error_code,
        ),
        Some(Command::Verify {
            pod: path,
            pubkey: None,
        }) => match inspect::verify(&path) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&path, &e),
        },
        Some(Command::Kernel) => match builder::kernel::locate(None) {
            Ok(k) => {
                println!("{}", k.path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hyperbuild: {e}");
                ExitCode::from(code::MISSING_PART)
            }
        },
    }
}
