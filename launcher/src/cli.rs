//! The command line: `hyperlaunch [OPTIONS] POD [-- ARGS...]` and `hyperlaunch doctor [--json]`,
//! parsed into a [`LaunchConfig`]. Hand-written rather than clap: clap's parse costs ~75 µs
//! (first use) on the way to the guest's first instruction, ~4% of the 2 ms budget.
//!
//! Accepted forms, as clap and most GNU tools take them: `--name VALUE`, `--name=VALUE`,
//! `-e VALUE`, `-eVALUE`, `-e=VALUE`, clustered flags (`-it`, `-ite K=V`), options before or after the pod,
//! and everything after `--` as the app's arguments.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use pod::spec::Overrides;
use thiserror::Error;

use crate::config::{Disk, Engine, LaunchConfig};
use crate::publish::{self, NetworkMode, PortRequest};

/// Why a command line is refused.
#[derive(Debug, Error, PartialEq)]
pub enum CliError {
    #[error("no pod given (usage: hyperlaunch [OPTIONS] POD [-- ARGS...]; see --help)")]
    NoPod,
    #[error("unexpected argument {0:?}: one pod per launch, and the app's arguments go after --")]
    Extra(String),
    #[error("unknown option {0}")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("{0} takes no value")]
    UnwantedValue(String),
    #[error("{0} {1:?}: {2}")]
    BadValue(String, String, &'static str),
    #[error("{0}: not valid UTF-8")]
    NotUtf8(String),
    #[error("--env {0:?}: the variable name is empty")]
    EmptyEnvName(String),
    /// Below it the guest kernel panics or hangs (measured, see docs/launcher.md).
    #[error(
        "--memory {0:?}: below {min} MiB, the least the guest kernel boots in",
        min = pod::manifest::MEMORY_MIB_RANGE.start()
    )]
    TooLittleMemory(String),
    #[error("--disk {0:?}: no file name")]
    EmptyDisk(String),
    #[error("{0} {1:?}: {2}")]
    BadPublish(String, String, crate::publish::PublishError),
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Launch(Box<LaunchConfig>),
    Doctor {
        json: bool,
    },
    /// Print this text on stdout and exit 0 (`--help`, `--version`).
    Print(String),
}

pub const HELP: &str = "\
Boot a .pod in a micro-VM. The exit status is the app's; 122-125 are the launcher's own
(see docs/guest-protocol.md).

Usage: hyperlaunch [OPTIONS] POD [-- ARGS...]
       hyperlaunch doctor [--json]

Arguments:
  POD                 The pod to boot
  ARGS...             Arguments replacing the image's CMD

Options:
  -m, --memory SIZE     Guest memory: MiB, or with a unit b, k, m, g (512m, 1g); at least
                        32 MiB (default: the pod's)
      --vcpus N         Number of vCPUs, 1 to 254 (default: the pod's)
  -e, --env K=V         Set an environment variable (K=V), or pass the host's K
      --entrypoint CMD  Replace the image's entrypoint (an empty string clears it)
  -w, --workdir DIR     Working directory of the app
  -u, --user USER       User of the app: uid, uid:gid, name or name:group
      --hostname NAME   Guest hostname
      --disk FILE[:ro]  Attach a disk (/dev/vdb, ...); `:ro` makes it read-only
  -p, --publish [HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|/udp]
                        Publish a guest port on the host, as `docker run -p` (an empty
                        HOST_PORT takes a free one; ranges A-B)
  -P, --publish-all     Publish the image's exposed ports on free host ports (the mapping
                        is printed on stderr)
      --network MODE    passt (a rootless user-mode network, needs the `passt` package),
                        tap[:NAME] (a TAP device on a /30 link network; needs CAP_NET_ADMIN)
                        or none (loopback only) [default: passt]
      --storage-opt size=SIZE
                        Size of the writable layer (bytes, or with a unit b, k, m, g)
                        [default: half the guest memory]
      --timeout SECS    Stop the VM after SECS seconds (exit 124)
      --grace SECS      After forwarding a stop signal, wait SECS seconds before stopping
                        the VM [default: 10]
  -t, --tty             Raw host terminal, terminal for the app
  -i, --interactive     Keep stdin attached to the app
      --timing          Print boot phase timestamps on stderr at exit
      --verify          Hash the whole rootfs against the manifest before booting
      --require-signature PUB
                        Refuse a pod not signed by this Ed25519 public key (also
                        $HYPERLAUNCH_REQUIRE_SIGNATURE, /etc/hyperpod/hyperlaunch.conf)
      --engine ENGINE   Which machine runs the pod: auto, kvm or qemu [default: auto]
  -q, --quiet           No notices from the launcher itself (errors are still printed)
  -h, --help            Print help
  -V, --version         Print version
";

pub const DOCTOR_HELP: &str = "\
Check whether this host can run pods on KVM, and how.

Usage: hyperlaunch doctor [--json]

Options:
      --json     Print the report as JSON
  -h, --help     Print help
";

/// The options; `takes_value` ones consume the next argument (or `=VALUE`, or the rest of a
/// short cluster).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Opt {
    Memory,
    Vcpus,
    Env,
    Entrypoint,
    Workdir,
    User,
    Hostname,
    Disk,
    Publish,
    PublishAll,
    Network,
    Storage,
    Timeout,
    Grace,
    Tty,
    Interactive,
    Timing,
    Verify,
    RequireSignature,
    Engine,
    Quiet,
    Help,
    Version,
}

impl Opt {
    fn long(name: &str) -> Option<Opt> {
        Some(match name {
            "memory" => Opt::Memory,
            "vcpus" => Opt::Vcpus,
            "env" => Opt::Env,
            "entrypoint" => Opt::Entrypoint,
            "workdir" => Opt::Workdir,
            "user" => Opt::User,
            "hostname" => Opt::Hostname,
            "disk" => Opt::Disk,
            "publish" => Opt::Publish,
            "publish-all" => Opt::PublishAll,
            "network" => Opt::Network,
            "storage-opt" => Opt::Storage,
            "timeout" => Opt::Timeout,
            "grace" => Opt::Grace,
            "tty" => Opt::Tty,
            "interactive" => Opt::Interactive,
            "timing" => Opt::Timing,
            "verify" => Opt::Verify,
            "require-signature" => Opt::RequireSignature,
            "engine" => Opt::Engine,
            "quiet" => Opt::Quiet,
            "help" => Opt::Help,
            "version" => Opt::Version,
            _ => return None,
        })
    }

    fn short(c: char) -> Option<Opt> {
        Some(match c {
            'e' => Opt::Env,
            'm' => Opt::Memory,
            'q' => Opt::Quiet,
            'w' => Opt::Workdir,
            'u' => Opt::User,
            'p' => Opt::Publish,
            'P' => Opt::PublishAll,
            't' => Opt::Tty,
            'i' => Opt::Interactive,
            'h' => Opt::Help,
            'V' => Opt::Version,
            _ => return None,
        })
    }

    fn takes_value(self) -> bool {
        !matches!(
            self,
            Opt::Tty
                | Opt::Interactive
                | Opt::Timing
                | Opt::PublishAll
                | Opt::Verify
                | Opt::Quiet
                | Opt::Help
                | Opt::Version
        )
    }
}

/// The launch options as given, before the checks that need several of them.
#[derive(Default)]
struct Raw {
    pod: Option<PathBuf>,
    args: Option<Vec<String>>,
    memory: Option<u32>,
    vcpus: Option<u32>,
    env: Vec<String>,
    entrypoint: Option<String>,
    workdir: Option<String>,
    user: Option<String>,
    hostname: Option<String>,
    disks: Vec<Disk>,
    publish: Vec<PortRequest>,
    publish_all: bool,
    network: Option<NetworkMode>,
    writable_size: Option<u64>,
    timeout: Option<Duration>,
    grace: Option<Duration>,
    tty: bool,
    interactive: bool,
    timing: bool,
    verify: bool,
    quiet: bool,
    require_signature: Option<PathBuf>,
    engine: Option<Engine>,
}

fn utf8(name: &str, v: &OsStr) -> Result<String, CliError> {
    v.to_str()
        .map(str::to_string)
        .ok_or_else(|| CliError::NotUtf8(name.to_string()))
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, CliError> {
    v.parse()
        .map_err(|_| CliError::BadValue(name.into(), v.into(), "not a whole number"))
}

/// `N[b|k|m|g]` (Docker's units, case-insensitive, an optional `b`/`ib` after k, m, g; powers
/// of 1024) in bytes; a bare number counts `bare_unit` bytes. Pure.
pub fn parse_size(v: &str, bare_unit: u64) -> Option<u64> {
    let lower = v.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let (unit, suffix) = match &lower[digits.len()..] {
        "" => (bare_unit, ""),
        "b" => (1, "b"),
        u => {
            let scale = match u.as_bytes()[0] {
                b'k' => 1u64 << 10,
                b'm' => 1 << 20,
                b'g' => 1 << 30,
                _ => return None,
            };
            (scale, &u[1..])
        }
    };
    if !matches!(suffix, "" | "b" | "ib") || digits.is_empty() {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// `--memory`: a size (a bare number is MiB) as a whole number of MiB within the range the
/// guest kernel boots in.
fn memory_mib(name: &str, v: &str) -> Result<u32, CliError> {
    let range = pod::manifest::MEMORY_MIB_RANGE;
    let bad = |why| CliError::BadValue(name.into(), v.into(), why);
    let bytes = parse_size(v, 1 << 20).ok_or(bad("not a size like 512, 512m or 1g"))?;
    if bytes % (1 << 20) != 0 {
        return Err(bad("not a whole number of MiB"));
    }
    match u32::try_from(bytes >> 20) {
        Ok(mib) if mib < *range.start() => Err(CliError::TooLittleMemory(v.into())),
        Ok(mib) if range.contains(&mib) => Ok(mib),
        _ => Err(bad("more than 1 TiB")),
    }
}

/// `--storage-opt size=SIZE` (Docker's only storage option here; a bare number is bytes).
fn storage_opt(name: &str, v: &str) -> Result<u64, CliError> {
    let bad = |why| CliError::BadValue(name.into(), v.into(), why);
    let size = v
        .strip_prefix("size=")
        .ok_or(bad("the only storage option is size=SIZE"))?;
    let bytes = parse_size(size, 1).ok_or(bad("not a size like 512m or 2g"))?;
    if bytes < pod::spec::MIN_WRITABLE_SIZE {
        return Err(bad("the writable layer needs at least 1 MiB"));
    }
    Ok(bytes)
}

/// The longest `--timeout`/`--grace` taken (~31 years): any deadline stays representable.
pub const MAX_SECONDS: f64 = 1e9;

fn seconds(name: &str, v: &str) -> Result<Duration, CliError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s <= MAX_SECONDS)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| {
            CliError::BadValue(
                name.into(),
                v.into(),
                "not a number of seconds from 0 to 1000000000",
            )
        })
}

/// `-e K=V` as an environment entry; `-e K` takes the host's `K` (nothing when unset), as
/// Docker does.
fn env_entry(e: &str) -> Result<Option<String>, CliError> {
    match e.split_once('=') {
        Some(("", _)) => Err(CliError::EmptyEnvName(e.to_string())),
        Some(_) => Ok(Some(e.to_string())),
        None if e.is_empty() => Err(CliError::EmptyEnvName(e.to_string())),
        None => Ok(std::env::var(e).ok().map(|v| format!("{e}={v}"))),
    }
}

fn disk(spec: &OsStr) -> Result<Disk, CliError> {
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(spec);
    let (path, read_only) = match bytes.strip_suffix(b":ro") {
        Some(p) => (p, true),
        None => (bytes.strip_suffix(b":rw").unwrap_or(bytes), false),
    };
    if path.is_empty() {
        return Err(CliError::EmptyDisk(spec.to_string_lossy().into_owned()));
    }
    Ok(Disk {
        path: PathBuf::from(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(path)),
        read_only,
    })
}

impl Raw {
    /// Applies one option; `value` is present exactly when the option takes one.
    fn set(&mut self, opt: Opt, name: &str, value: Option<&OsStr>) -> Result<(), CliError> {
        let text = || utf8(name, value.unwrap_or_default());
        match opt {
            Opt::Memory => self.memory = Some(memory_mib(name, &text()?)?),
            Opt::Vcpus => {
                let v = text()?;
                let n: u32 = number(name, &v)?;
                if !pod::manifest::VCPUS_RANGE.contains(&n) {
                    return Err(CliError::BadValue(name.into(), v, "not from 1 to 254"));
                }
                self.vcpus = Some(n);
            }
            Opt::Env => self.env.extend(env_entry(&text()?)?),
            Opt::Entrypoint => self.entrypoint = Some(text()?),
            Opt::Workdir => self.workdir = Some(text()?),
            Opt::User => self.user = Some(text()?),
            Opt::Hostname => self.hostname = Some(text()?),
            Opt::Disk => self.disks.push(disk(value.unwrap_or_default())?),
            Opt::Publish => {
                let v = text()?;
                let reqs = publish::parse_publish(&v)
                    .map_err(|e| CliError::BadPublish(name.into(), v.clone(), e))?;
                self.publish.extend(reqs);
            }
            Opt::PublishAll => self.publish_all = true,
            Opt::Network => {
                let v = text()?;
                self.network = Some(publish::parse_network(&v).ok_or(CliError::BadValue(
                    name.into(),
                    v,
                    "passt, tap[:NAME] or none",
                ))?);
            }
            Opt::Storage => self.writable_size = Some(storage_opt(name, &text()?)?),
            Opt::Timeout => self.timeout = Some(seconds(name, &text()?)?),
            Opt::Grace => self.grace = Some(seconds(name, &text()?)?),
            Opt::Engine => {
                let v = text()?;
                self.engine = Some(match v.as_str() {
                    "auto" => Engine::Auto,
                    "kvm" => Engine::Kvm,
                    "qemu" => Engine::Qemu,
                    _ => return Err(CliError::BadValue(name.into(), v, "auto, kvm or qemu")),
                });
            }
            Opt::Tty => self.tty = true,
            Opt::Interactive => self.interactive = true,
            Opt::Timing => self.timing = true,
            Opt::Verify => self.verify = true,
            Opt::Quiet => self.quiet = true,
            Opt::RequireSignature => {
                self.require_signature = Some(PathBuf::from(value.unwrap_or_default()))
            }
            // Answered by the caller before any other option is applied.
            Opt::Help | Opt::Version => {}
        }
        Ok(())
    }

    fn into_config(self) -> Result<LaunchConfig, CliError> {
        let pod = self.pod.ok_or(CliError::NoPod)?;
        let overrides = Overrides {
            env: self.env,
            args: self.args,
            entrypoint: self
                .entrypoint
                .map(|e| if e.is_empty() { Vec::new() } else { vec![e] }),
            user: self.user,
            workdir: self.workdir,
            hostname: self.hostname,
            tty: self.tty,
            interactive: self.interactive,
            // The host terminal's TERM and size are filled in at launch (`config::host_terminal`).
            term: None,
            window_size: None,
            writable_size: self.writable_size,
            // Filled in by the engine when the launch has a network (`net::HostNetwork`).
            network: None,
        };
        Ok(LaunchConfig {
            pod,
            engine: self.engine.unwrap_or(Engine::Auto),
            memory_mib: self.memory,
            vcpus: self.vcpus,
            overrides,
            disks: self.disks,
            publish: self.publish,
            publish_all: self.publish_all,
            network: self.network,
            timeout: self.timeout,
            grace: self.grace.unwrap_or(Duration::from_secs(10)),
            tty: self.tty,
            interactive: self.interactive,
            timing: self.timing,
            verify: self.verify,
            quiet: self.quiet,
            require_signature: self.require_signature,
        })
    }
}

/// One parsed argument before `--`.
enum Token<'a> {
    /// An option with its value, if it takes one.
    Opt(Opt, String, Option<OsString>),
    Positional(&'a OsStr),
    /// `--`: the rest are the app's arguments.
    Rest,
}

/// Splits the arguments (without the program name) into tokens, taking option values from
/// `=VALUE`, the rest of a short cluster or the next argument.
fn tokens(args: &[OsString]) -> Result<(Vec<Token<'_>>, &[OsString]), CliError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_os_str();
        i += 1;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(arg);
        if bytes == b"--" {
            out.push(Token::Rest);
            return Ok((out, &args[i..]));
        }
        if let Some(long) = bytes.strip_prefix(b"--") {
            let (name, inline) = match long.iter().position(|&b| b == b'=') {
                Some(eq) => (&long[..eq], Some(&long[eq + 1..])),
                None => (long, None),
            };
            let shown = format!("--{}", String::from_utf8_lossy(name));
            let opt = std::str::from_utf8(name)
                .ok()
                .and_then(Opt::long)
                .ok_or_else(|| CliError::Unknown(shown.clone()))?;
            let value = match (opt.takes_value(), inline) {
                (true, Some(v)) => {
                    Some(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(v).into())
                }
                (true, None) => {
                    let v = args
                        .get(i)
                        .ok_or_else(|| CliError::MissingValue(shown.clone()))?;
                    i += 1;
                    Some(v.clone())
                }
                (false, Some(_)) => return Err(CliError::UnwantedValue(shown)),
                (false, None) => None,
            };
            out.push(Token::Opt(opt, shown, value));
        } else if bytes.len() > 1 && bytes[0] == b'-' {
            // A short cluster: flags, then at most one option taking a value.
            let mut rest = &bytes[1..];
            while let Some((&c, tail)) = rest.split_first() {
                rest = tail;
                let shown = format!("-{}", char::from(c));
                let opt = (c.is_ascii())
                    .then(|| Opt::short(char::from(c)))
                    .flatten()
                    .ok_or_else(|| CliError::Unknown(shown.clone()))?;
                if !opt.takes_value() {
                    out.push(Token::Opt(opt, shown, None));
                    continue;
                }
                let value = if rest.is_empty() {
                    let v = args
                        .get(i)
                        .ok_or_else(|| CliError::MissingValue(shown.clone()))?;
                    i += 1;
                    v.clone()
                } else {
                    // `-w=/app` as clap and Docker take it: the `=` is not part of the value.
                    let v = rest.strip_prefix(b"=").unwrap_or(rest);
                    <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(v).into()
                };
                out.push(Token::Opt(opt, shown, Some(value)));
                break;
            }
        } else {
            out.push(Token::Positional(arg));
        }
    }
    Ok((out, &[]))
}

/// Parses the arguments after the program name.
pub fn parse(args: &[OsString]) -> Result<Command, CliError> {
    if args.first().is_some_and(|a| a == "doctor") {
        return parse_doctor(&args[1..]);
    }
    let (tokens, rest) = tokens(args)?;
    // --help and --version win over anything else, as in clap.
    for t in &tokens {
        match t {
            Token::Opt(Opt::Help, ..) => return Ok(Command::Print(HELP.to_string())),
            Token::Opt(Opt::Version, ..) => {
                return Ok(Command::Print(format!(
                    "hyperlaunch {}\n",
                    env!("CARGO_PKG_VERSION")
                )));
            }
            _ => {}
        }
    }
    let mut raw = Raw::default();
    for t in tokens {
        match t {
            Token::Opt(opt, name, value) => raw.set(opt, &name, value.as_deref())?,
            Token::Positional(p) if raw.pod.is_none() => raw.pod = Some(PathBuf::from(p)),
            Token::Positional(p) => return Err(CliError::Extra(p.to_string_lossy().into())),
            Token::Rest => {
                let args = rest
                    .iter()
                    .map(|a| utf8("an app argument", a))
                    .collect::<Result<Vec<_>, _>>()?;
                raw.args = (!args.is_empty()).then_some(args);
            }
        }
    }
    Ok(Command::Launch(Box::new(raw.into_config()?)))
}

fn parse_doctor(args: &[OsString]) -> Result<Command, CliError> {
    let mut json = false;
    for a in args {
        match a.to_str() {
            Some("--json") => json = true,
            Some("-h" | "--help") => return Ok(Command::Print(DOCTOR_HELP.to_string())),
            _ => return Err(CliError::Unknown(a.to_string_lossy().into_owned())),
        }
    }
    Ok(Command::Doctor { json })
}

#[cfg(test)]
mod tests;
