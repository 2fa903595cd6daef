//! hyperpod-init: PID 1 of the guest. Runs the pod's app with Docker's semantics, then powers
//! the VM off with the app's status. See `docs/guest-protocol.md`.

use init::{
    InitError, cmdline, control, error_chain, exit, guest, mounts, plan, reap, spawn, verity,
};
use init::{Steps, spec, stdio, user};
use pod::protocol::{GuestLine, Mark};

fn main() {
    // 8. Timing mark first, from the initramfs's own device nodes.
    let t0 = init::monotonic_us();
    let cpu0 = init::thread_cpu_us();
    control::open();
    control::send(&GuestLine::Mark(Mark::Init));
    exit::open_port();
    exit::install_panic_hook();

    let code = match run(t0, cpu0) {
        Ok(code) => code,
        Err(err) => {
            control::say(&error_chain(&err));
            err.exit_code()
        }
    };
    // 7. Exit.
    exit::power_off(code)
}

/// Steps 1-6; returns the pod's exit status.
fn run(t0: u64, cpu0: u64) -> Result<u8, InitError> {
    let mut steps = Steps::new(t0, cpu0);
    // 1. Early mounts.
    mounts::early()?;
    let opts = cmdline::parse(&std::fs::read_to_string(cmdline::CMDLINE_PATH).unwrap_or_default())?;
    steps.mark("mounts");

    // 2. Run spec and overrides.
    let (spec, overrides) = spec::load()?;
    let plan = plan::plan(&spec, &overrides)?;
    steps.mark("spec");

    // 3. Root: the image read-only under a writable overlay; /etc's files go straight into a
    // fresh upper layer, before the overlay exists.
    let fresh_upper = mounts::mount_layers(
        opts.root.as_deref(),
        opts.upper.as_deref(),
        &plan.writable_size,
    )?;
    let etc_written = fresh_upper
        && guest::etc_files_in_upper(
            mounts::UPPER,
            mounts::LOWER,
            &plan.hostname,
            overrides.network.as_ref(),
        )?;
    mounts::overlay_and_switch()?;
    steps.mark("root");

    // 4. Guest setup.
    guest::set_hostname(&plan.hostname)?;
    guest::loopback_up()?;
    steps.mark("lo");
    if let Some(n) = &overrides.network {
        init::net::configure(n)?;
        steps.mark("net");
    }
    if !etc_written {
        guest::etc_files(&plan.hostname, overrides.network.as_ref())?;
    }
    guest::raise_nofile()?;
    steps.mark("etc");
    let user = user::lookup(&plan.user)?;
    let mut env = plan.env.clone();
    plan::add_defaults(&mut env, &plan.hostname, &user.home);
    steps.mark("user");
    if opts.debug {
        control::say(&steps.summary());
        control::say(&steps.cpu_summary());
    }

    // 5. Spawn the app on its stdio (signals blocked first, so none is lost).
    let signals = reap::Signals::block()?;
    spawn::ensure_workdir(&plan.workdir)?;
    let launch = spawn::Launch::new(&plan, &env, &user, opts.debug.then_some(t0))?;
    let mut stdio = stdio::prepare(
        plan.tty,
        overrides.interactive,
        overrides.window_size,
        opts.stdio_window,
    )?;
    let app = spawn::spawn(&launch, &stdio.child)?;
    stdio.forked();

    // 6. Reap, forward and relay until the app exits; then end what it left running and pass
    // on the last of its output before the status.
    let mut lines = pod::protocol::LineSplitter::default();
    let status = reap::supervise(&signals, app, stdio.relay.as_mut(), &mut lines)?;
    reap::end_all();
    if let Some(r) = stdio.relay.as_mut() {
        r.drain(&mut lines);
    }
    if opts.root.is_some() {
        verity::report();
    }
    Ok(exit::status_code(status))
}
