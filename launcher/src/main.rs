//! `hyperlaunch [OPTIONS] POD [-- ARGS...]` and `hyperlaunch doctor`.
//!
//! The binary has its own C `main`: Rust's runtime setup before `main` (an alternate signal
//! stack, and a `/proc/self/maps` read to locate the main thread's stack guard) is skipped, as
//! it sits on the way to the guest's first instruction. What of it matters is done here: SIGPIPE
//! is ignored and closed standard descriptors are reopened on `/dev/null`.
#![cfg_attr(not(test), no_main)]

use std::io::Write;
use std::time::Instant;

use launcher::cli::{self, Command};
use launcher::config::{Engine, LaunchConfig};
use launcher::supervisor::Outcome;
use launcher::timing::Marks;
use pod::protocol::EXIT_LAUNCHER;

#[cfg_attr(test, allow(dead_code))]
fn launch(cfg: LaunchConfig, exec: Instant) -> i32 {
    if let Err(e) = launcher::signature::enforce(cfg.require_signature.as_deref(), &cfg.pod) {
        eprintln!("hyperlaunch: {e}");
        return EXIT_LAUNCHER;
    }
    // Then: a Ctrl-C or SIGTERM during the setup is forwarded once the guest runs, not fatal.
    launcher::stdio::block_signals();
    launcher::stdio::unignore_signals();
    let cfg = cfg.with_host_terminal();
    let engine = match cfg.engine {
        Engine::Auto if launcher::doctor::kvm_runs_guest_natively() => Engine::Kvm,
        Engine::Auto => {
            if !cfg.quiet {
                eprintln!(
                    "hyperlaunch: this host's KVM does not run guest code natively (see `hyperlaunch doctor`); using QEMU"
                );
            }
            Engine::Qemu
        }
        e => e,
    };
    // Raw mode only with stdin attached (`-it`), as Docker does: a raw terminal turns Ctrl-C into
    // a byte, which must then reach the app's terminal.
    let _raw = if cfg.tty && cfg.interactive {
        launcher::vmm::term::RawTerminal::enter(0)
    } else {
        None
    };
    let mut marks = Marks::new(exec, "kvm");
    let (outcome, notes) = match engine {
        Engine::Qemu => match launcher::qemu::run(&cfg, &mut marks) {
            Ok(o) => (o, String::new()),
            Err(e) => (
                Outcome {
                    code: EXIT_LAUNCHER,
                    message: Some(launcher::vmm::error_chain(&e)),
                },
                String::new(),
            ),
        },
        _ => launcher::vmm::launch(&cfg, &mut marks),
    };
    // The run is over: its last lines never hold up the exit on a stalled stderr (stdio.rs).
    let mut last = outcome
        .message
        .as_ref()
        .map(|m| format!("hyperlaunch: {m}\n"))
        .unwrap_or_default();
    if cfg.timing {
        last.push_str(&marks.report());
        last.push_str(&notes);
    }
    launcher::stdio::eprint_last(&last);
    outcome.code
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
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    let exec = Instant::now();
    // From main's own arguments: std's `args_os` is filled before `main` by glibc only (a musl
    // build, docs/BENCHMARKS.md, would see none).
    let args: Vec<std::ffi::OsString> = (1..usize::try_from(argc).unwrap_or(0))
        .map(|i| {
            use std::os::unix::ffi::OsStrExt;
            // SAFETY: the C runtime passes `argc` pointers to NUL-terminated strings in `argv`,
            // alive for the whole process.
            let arg = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
            std::ffi::OsStr::from_bytes(arg.to_bytes()).to_owned()
        })
        .collect();
    // One malloc arena for every thread: a run's threads (sandbox crew) then map no arena of
    // their own while the main thread creates the VM, which takes the same address-space lock.
    // (musl's allocator has no such setting.)
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's settings; no allocation is live across it
    // that depends on them.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
    // SAFETY: setting a signal disposition to SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    sanitize_standard_fds();
    run(exec, &args)
}

#[cfg_attr(test, allow(dead_code))]
fn run(exec: Instant, argv: &[std::ffi::OsString]) -> ! {
    let parsed = cli::parse(argv);
    let code = match parsed {
        Ok(Command::Launch(cfg)) => launch(*cfg, exec),
        Ok(Command::Doctor { json }) => launcher::doctor::run(json),
        Ok(Command::Print(text)) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            0
        }
        Err(e) => {
            eprintln!("hyperlaunch: {e}");
            EXIT_LAUNCHER
        }
    };
    std::process::exit(code);
}
