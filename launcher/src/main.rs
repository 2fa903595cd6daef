//! `hyperlaunch [OPTIONS] POD [-- ARGS...]` and `hyperlaunch doctor`.
//!
//! The binary has its own C `main`: Rust's runtime setup before `main` (an alternate signal
//! stack, and a `/proc/self/maps` read to locate the main thread's stack guard) is skipped, as
//! it sits on the way to the guest's first instruction. What of it matters is done here: SIGPIPE
//! is ignored and closed standard descriptors are reopened on `/dev/null`.
#![cfg_attr(not(test), no_main)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use launcher::config::{Disk, Engine, LaunchConfig};
use launcher::control::EXIT_LAUNCHER;
use pod::spec::Overrides;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EngineArg {
    Auto,
    Kvm,
    Qemu,
}

/// Boot a .pod in a micro-VM. The exit status is the app's; 122-125 are the launcher's own
/// (see docs/guest-protocol.md). `hyperlaunch doctor [--json]` checks this host.
#[derive(Debug, Parser)]
#[command(
    name = "hyperlaunch",
    version,
    after_help = "Subcommand: hyperlaunch doctor [--json]"
)]
struct Cli {
    /// The pod to boot.
    pod: PathBuf,
    /// Arguments replacing the image's CMD.
    #[arg(last = true)]
    args: Vec<String>,
    /// Guest memory in MiB (default: the pod's).
    #[arg(long, value_name = "MIB")]
    memory: Option<u32>,
    /// Number of vCPUs (default: the pod's).
    #[arg(long, value_name = "N")]
    vcpus: Option<u32>,
    /// Set an environment variable (K=V), or pass the host's K.
    #[arg(short, long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Replace the image's entrypoint (an empty string clears it).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Working directory of the app.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// User of the app: uid, uid:gid, name or name:group.
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Guest hostname.
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Attach a disk (/dev/vdb, ...); `:ro` makes it read-only.
    #[arg(long, value_name = "FILE[:ro]")]
    disk: Vec<String>,
    /// Stop the VM after SECS seconds (exit 124).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// After forwarding a stop signal, wait SECS seconds before stopping the VM.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    grace: f64,
    /// Raw host terminal, terminal for the app.
    #[arg(short = 't', long)]
    tty: bool,
    /// Keep stdin attached to the app.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Print boot phase timestamps on stderr at exit.
    #[arg(long)]
    timing: bool,
    /// Hash the whole rootfs against the manifest before booting.
    #[arg(long)]
    verify: bool,
    /// Which machine runs the pod.
    #[arg(long, value_enum, default_value = "auto")]
    engine: EngineArg,
}

#[derive(Debug, Parser)]
#[command(name = "hyperlaunch doctor")]
struct DoctorCli {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Why the command line is refused.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("--env {0:?}: the variable name is empty")]
    EmptyEnvName(String),
    #[error("--disk {0:?}: no file name")]
    EmptyDisk(String),
    #[error("--{0} {1}: must be a non-negative number of seconds")]
    Seconds(&'static str, f64),
}

fn env_entry(e: &str) -> Result<Option<String>, CliError> {
    match e.split_once('=') {
        Some(("", _)) => Err(CliError::EmptyEnvName(e.to_string())),
        Some(_) => Ok(Some(e.to_string())),
        None if e.is_empty() => Err(CliError::EmptyEnvName(e.to_string())),
        // Docker's `-e NAME`: the host's value, or nothing when unset.
        None => Ok(std::env::var(e).ok().map(|v| format!("{e}={v}"))),
    }
}

fn disk(spec: &str) -> Result<Disk, CliError> {
    let (path, read_only) = match spec.strip_suffix(":ro") {
        Some(p) => (p, true),
        None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
    };
    if path.is_empty() {
        return Err(CliError::EmptyDisk(spec.to_string()));
    }
    Ok(Disk {
        path: PathBuf::from(path),
        read_only,
    })
}

fn seconds(name: &'static str, v: f64) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(v).map_err(|_| CliError::Seconds(name, v))
}

fn config(cli: Cli) -> Result<LaunchConfig, CliError> {
    let mut env = Vec::new();
    for e in &cli.env {
        env.extend(env_entry(e)?);
    }
    let overrides = Overrides {
        env,
        args: (!cli.args.is_empty()).then_some(cli.args),
        entrypoint: cli
            .entrypoint
            .map(|e| if e.is_empty() { Vec::new() } else { vec![e] }),
        user: cli.user,
        workdir: cli.workdir,
        hostname: cli.hostname,
        tty: cli.tty,
    };
    Ok(LaunchConfig {
        pod: cli.pod,
        engine: match cli.engine {
            EngineArg::Auto => Engine::Auto,
            EngineArg::Kvm => Engine::Kvm,
            EngineArg::Qemu => Engine::Qemu,
        },
        memory_mib: cli.memory,
        vcpus: cli.vcpus,
        overrides,
        disks: cli.disk.iter().map(|d| disk(d)).collect::<Result<_, _>>()?,
        timeout: cli.timeout.map(|t| seconds("timeout", t)).transpose()?,
        grace: seconds("grace", cli.grace)?,
        tty: cli.tty,
        interactive: cli.interactive,
        timing: cli.timing,
        verify: cli.verify,
    })
}

#[cfg_attr(test, allow(dead_code))]
fn launch(cfg: &LaunchConfig, exec: Instant) -> i32 {
    let engine = match cfg.engine {
        Engine::Auto if launcher::doctor::kvm_runs_guest_natively() => Engine::Kvm,
        Engine::Auto => {
            eprintln!(
                "hyperlaunch: this host's KVM does not run guest code natively (see `hyperlaunch doctor`); using QEMU"
            );
            Engine::Qemu
        }
        e => e,
    };
    match engine {
        Engine::Qemu => match launcher::qemu::run(cfg) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("hyperlaunch: {}", launcher::vmm::error_chain(&e));
                EXIT_LAUNCHER
            }
        },
        _ => launcher::vmm::launch(cfg, exec),
    }
}

/// Reopens any of fds 0-2 that is closed on `/dev/null`, so that no file the launcher opens
/// (the pod, `/dev/kvm`) is taken for stdin/stdout/stderr.
#[cfg_attr(test, allow(dead_code))]
fn sanitize_standard_fds() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three pollfd; a zero timeout does not block.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } < 0 {
        return;
    }
    for p in fds {
        if p.revents & libc::POLLNVAL != 0 {
            // SAFETY: opening a constant NUL-terminated path; the lowest free descriptor is the
            // closed one being replaced, and it is kept open for the process's lifetime.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

/// The process entry (see the module comment).
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    let exec = Instant::now();
    // SAFETY: setting a signal disposition to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    sanitize_standard_fds();
    run(exec)
}

#[cfg_attr(test, allow(dead_code))]
fn run(exec: Instant) -> ! {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "doctor") {
        let d = DoctorCli::parse_from(argv.iter().skip(1));
        std::process::exit(launcher::doctor::run(d.json));
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_LAUNCHER } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let code = match config(cli) {
        Ok(cfg) => launch(&cfg, exec),
        Err(e) => {
            eprintln!("hyperlaunch: {e}");
            EXIT_LAUNCHER
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> LaunchConfig {
        let mut v = vec!["hyperlaunch"];
        v.extend_from_slice(args);
        config(Cli::try_parse_from(v).unwrap()).unwrap()
    }

    #[test]
    fn options_become_a_launch_config() {
        let c = parse(&[
            "--memory",
            "256",
            "--vcpus",
            "2",
            "-e",
            "A=1",
            "--entrypoint",
            "/bin/sh",
            "-w",
            "/tmp",
            "--user",
            "1:2",
            "--disk",
            "d.img:ro",
            "--disk",
            "e.img",
            "--timeout",
            "1.5",
            "-t",
            "-i",
            "--timing",
            "--verify",
            "--engine",
            "kvm",
            "app.pod",
            "--",
            "x",
            "-y",
        ]);
        assert_eq!(c.pod, PathBuf::from("app.pod"));
        assert_eq!((c.memory_mib, c.vcpus), (Some(256), Some(2)));
        assert_eq!(c.overrides.env, vec!["A=1"]);
        assert_eq!(c.overrides.args, Some(vec!["x".into(), "-y".into()]));
        assert_eq!(c.overrides.entrypoint, Some(vec!["/bin/sh".into()]));
        assert_eq!(c.overrides.workdir.as_deref(), Some("/tmp"));
        assert_eq!(
            c.disks[0],
            Disk {
                path: "d.img".into(),
                read_only: true
            }
        );
        assert!(!c.disks[1].read_only);
        assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.grace, Duration::from_secs(10));
        assert!(c.tty && c.interactive && c.timing && c.verify);
        assert_eq!(c.engine, Engine::Kvm);
        let plain = parse(&["p.pod"]);
        assert!(plain.overrides.is_empty());
        assert_eq!(plain.engine, Engine::Auto);
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(env_entry("=x").is_err());
        assert!(disk(":ro").is_err());
        assert!(seconds("timeout", -1.0).is_err());
        assert_eq!(
            parse(&["--entrypoint", "", "p.pod"]).overrides.entrypoint,
            Some(vec![])
        );
        assert!(Cli::try_parse_from(["hyperlaunch", "--engine", "xen", "p.pod"]).is_err());
    }
}
