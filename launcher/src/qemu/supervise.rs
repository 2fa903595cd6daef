//! Running QEMU: spawn it, bridge the console, read the control channel, forward signals,
//! enforce `--timeout` and `--grace`, and collect how it ended.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use super::{Accel, Ending, QemuError, QemuPlan, qemu_args};
use crate::control::{self, GuestEvent, Mark};

/// How long QEMU may take to exit after the guest reported its status.
const EXIT_AFTER_STATUS: Duration = Duration::from_secs(10);
/// How long to drain QEMU's output after killing it.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);
/// Bytes of QEMU's stderr kept for the error message.
const STDERR_TAIL: usize = 8 * 1024;

/// What [`supervise`] needs besides the plan.
pub struct Options {
    pub timeout: Option<Duration>,
    pub grace: Duration,
    pub interactive: bool,
    pub tty: bool,
    /// Signal number forwarded on SIGTERM.
    pub stop_signal: i32,
    /// When the launch started (the origin of `--timeout` and of the timing marks).
    pub started: Instant,
}

/// Boot phase marks, measured from the start of the launch.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    pub qemu_spawned: Option<Duration>,
    pub init: Option<Duration>,
    pub exec: Option<Duration>,
    pub status: Option<Duration>,
    pub qemu_exited: Option<Duration>,
}

impl Timing {
    /// The `--timing` line.
    pub fn report(&self, pod_opened: Duration, accel: Accel, total: Duration) -> String {
        let ms = |d: Option<Duration>| match d {
            Some(d) => format!("{:.1}", d.as_secs_f64() * 1e3),
            None => "-".into(),
        };
        format!(
            "hyperlaunch timing (ms since start, engine qemu/{}): pod_opened={} qemu_spawned={} init={} exec={} status={} vm_gone={} total={}",
            match accel {
                Accel::Kvm => "kvm",
                Accel::Tcg => "tcg",
            },
            ms(Some(pod_opened)),
            ms(self.qemu_spawned),
            ms(self.init),
            ms(self.exec),
            ms(self.status),
            ms(self.qemu_exited),
            ms(Some(total)),
        )
    }
}

/// Write end of the signal self-pipe, for the handler (-1 when none is installed).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signo: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: only async-signal-safe calls: read/restore errno, write(2) of one byte from a
        // local to a non-blocking pipe (a full pipe just drops the byte).
        unsafe {
            let errno = *libc::__errno_location();
            let b = signo as u8;
            libc::write(fd, (&b as *const u8).cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// SIGINT and SIGTERM written to a pipe while alive; the previous handlers come back on drop.
pub struct SignalPipe {
    read: RawFd,
    write: RawFd,
    old: Vec<(libc::c_int, libc::sigaction)>,
}

impl SignalPipe {
    /// Installs the handlers. Signals that arrive before [`supervise`] runs are kept.
    pub fn install() -> io::Result<SignalPipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the array on success; checked.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut guard = SignalPipe {
            read: fds[0],
            write: fds[1],
            old: Vec::new(),
        };
        SIGNAL_PIPE.store(fds[1], Ordering::SeqCst);
        for signo in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is valid; we fill the handler and an empty mask, and
            // sigaction stores the previous one in `old` (checked).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signo, &sa, &mut old) != 0 {
                    return Err(io::Error::last_os_error());
                }
                guard.old.push((signo, old));
            }
        }
        Ok(guard)
    }

    /// Signals received since the last call.
    fn drain(&self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        loop {
            // SAFETY: reads into a local buffer of the given length from our own pipe.
            let n = unsafe { libc::read(self.read, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend(buf[..n as usize].iter().map(|&b| i32::from(b)));
        }
        out
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        for (signo, old) in &self.old {
            // SAFETY: restores a sigaction previously returned by sigaction(2).
            unsafe { libc::sigaction(*signo, old, std::ptr::null_mut()) };
        }
        SIGNAL_PIPE.store(-1, Ordering::SeqCst);
        // SAFETY: both descriptors are ours and closed once.
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

fn spawn(plan: &QemuPlan, inherit: &[RawFd], interactive: bool) -> Result<Child, QemuError> {
    let mut cmd = Command::new(&plan.binary);
    cmd.args(qemu_args(plan))
        .stdin(if interactive {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fds = inherit.to_vec();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (fcntl, setpgid, prctl) on plain integers.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Its own process group: a terminal's Ctrl-C goes to the launcher only, which
            // forwards it to the app. And QEMU dies with the launcher.
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(QemuError::Spawn)
}

/// What a deadline asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// `--timeout` expired: kill QEMU (exit 124).
    Timeout,
    /// `--grace` expired after a forwarded stop signal: kill QEMU (exit 137).
    Grace,
    /// The guest reported its status but QEMU did not exit: kill it (the status stands).
    ExitWait,
    /// QEMU was killed and its output drained long enough: stop reading.
    DrainOver,
}

/// The run's deadlines. Once the guest reported its status, `--timeout` and `--grace` no
/// longer apply; once QEMU was killed, only the drain deadline does.
#[derive(Clone, Copy, Debug, Default)]
struct Clock {
    timeout_at: Option<Instant>,
    grace_at: Option<Instant>,
    status_at: Option<Instant>,
    killed_at: Option<Instant>,
}

impl Clock {
    fn deadlines(&self) -> [(Option<Instant>, Due); 3] {
        if let Some(k) = self.killed_at {
            return [
                (Some(k + DRAIN_AFTER_KILL), Due::DrainOver),
                (None, Due::Timeout),
                (None, Due::Grace),
            ];
        }
        if let Some(s) = self.status_at {
            return [
                (Some(s + EXIT_AFTER_STATUS), Due::ExitWait),
                (None, Due::Timeout),
                (None, Due::Grace),
            ];
        }
        [
            (self.timeout_at, Due::Timeout),
            (self.grace_at, Due::Grace),
            (None, Due::ExitWait),
        ]
    }

    /// The deadline that has passed at `now`, if any (the earliest first).
    fn due(&self, now: Instant) -> Option<Due> {
        self.deadlines()
            .into_iter()
            .filter_map(|(at, due)| at.filter(|&t| now >= t).map(|t| (t, due)))
            .min_by_key(|(t, _)| *t)
            .map(|(_, due)| due)
    }

    /// The next deadline.
    fn next(&self) -> Option<Instant> {
        self.deadlines().into_iter().filter_map(|(at, _)| at).min()
    }
}

/// One input the loop watches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Console,
    Stderr,
    Control,
    Signals,
}

/// Runs QEMU for `plan` to its end. `inherit` are descriptors QEMU must receive (its control
/// socket end and the kernel/initramfs memfds); `ours` is the launcher's control socket end.
pub fn supervise(
    signals: &SignalPipe,
    plan: &QemuPlan,
    inherit: &[RawFd],
    ours: UnixStream,
    theirs: UnixStream,
    opts: Options,
) -> Result<(Ending, Timing), QemuError> {
    let mut child = spawn(plan, inherit, opts.interactive)?;
    drop(theirs);
    let mut timing = Timing {
        qemu_spawned: Some(opts.started.elapsed()),
        ..Timing::default()
    };
    // Raw mode only with stdin attached (`-it`), as Docker does: a raw terminal turns Ctrl-C
    // into a byte, which must then reach the app's terminal.
    let _raw = if opts.tty && opts.interactive {
        crate::vmm::term::RawTerminal::enter(0)
    } else {
        None
    };
    if let Some(mut stdin) = child.stdin.take() {
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut stdin);
        });
    }
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let mut ctl = ours;

    let mut ending = Ending::default();
    let mut ctl_buf = Vec::new();
    let mut stderr_held = Vec::new();
    let mut stderr_tail: Vec<u8> = Vec::new();
    let mut open = [
        (Source::Console, true),
        (Source::Stderr, true),
        (Source::Control, true),
        (Source::Signals, true),
    ];
    let mut clock = Clock {
        timeout_at: opts.timeout.and_then(|t| opts.started.checked_add(t)),
        ..Clock::default()
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut held_signals: Vec<i32> = Vec::new();

    loop {
        let streams_open = open[..3].iter().any(|(_, o)| *o);
        if !streams_open {
            break;
        }
        let now = Instant::now();
        match clock.due(now) {
            Some(Due::DrainOver) => break,
            Some(due) => {
                ending.timed_out |= due == Due::Timeout;
                ending.killed |= due == Due::Grace;
                kill(&child);
                clock.killed_at = Some(now);
            }
            None => {}
        }
        let wait_ms: i32 = match clock.next() {
            None => -1,
            Some(t) => {
                let d = t.saturating_duration_since(Instant::now());
                i32::try_from(d.as_millis() + 1).unwrap_or(i32::MAX)
            }
        };

        let mut pollfds = Vec::new();
        let mut which = Vec::new();
        for (src, is_open) in open {
            if !is_open {
                continue;
            }
            let fd = match src {
                Source::Console => stdout.as_raw_fd(),
                Source::Stderr => stderr.as_raw_fd(),
                Source::Control => ctl.as_raw_fd(),
                Source::Signals => signals.read,
            };
            pollfds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            which.push(src);
        }
        // SAFETY: `pollfds` is a live array of `len` pollfd structs.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            kill(&child);
            let _ = child.wait();
            return Err(QemuError::Supervise(e));
        }
        for (pfd, src) in pollfds.iter().zip(which) {
            if pfd.revents == 0 {
                continue;
            }
            match src {
                Source::Console => match read_some(&mut stdout, &mut buf) {
                    Some(data) => {
                        ending.guest_seen = true;
                        let mut out = io::stdout().lock();
                        let _ = out.write_all(data);
                        let _ = out.flush();
                    }
                    None => close(&mut open, src),
                },
                Source::Stderr => match read_some(&mut stderr, &mut buf) {
                    Some(data) => {
                        keep_tail(&mut stderr_tail, data);
                        if ending.guest_seen {
                            forward_stderr(&mut stderr_held, data);
                        } else {
                            stderr_held.extend_from_slice(data);
                        }
                    }
                    None => close(&mut open, src),
                },
                Source::Control => match read_some(&mut ctl, &mut buf) {
                    Some(data) => {
                        ctl_buf.extend_from_slice(data);
                        for line in control::take_lines(&mut ctl_buf) {
                            ending.guest_seen = true;
                            let at = opts.started.elapsed();
                            match control::parse_guest_line(&line) {
                                Ok(GuestEvent::Mark(Mark::Init)) => {
                                    timing.init.get_or_insert(at);
                                    // init has the port open now: what it is sent waits in
                                    // its tty until it reads it.
                                    for signo in held_signals.drain(..) {
                                        send_signal(&mut ctl, signo);
                                    }
                                }
                                Ok(GuestEvent::Mark(Mark::Exec)) => {
                                    timing.exec.get_or_insert(at);
                                }
                                Ok(GuestEvent::Exit(code)) => {
                                    if ending.status.is_none() {
                                        ending.status = Some(code);
                                        timing.status = Some(at);
                                        clock.status_at = Some(Instant::now());
                                    }
                                }
                                Ok(GuestEvent::Panic(msg)) => {
                                    ending.panic.get_or_insert(msg);
                                }
                                Err(e) => eprintln!("hyperlaunch: ignoring control line: {e}"),
                            }
                        }
                    }
                    None => close(&mut open, src),
                },
                Source::Signals => {
                    for signo in signals.drain() {
                        if ending.status.is_some() || clock.killed_at.is_some() {
                            continue;
                        }
                        let forward = if signo == libc::SIGINT {
                            libc::SIGINT
                        } else {
                            opts.stop_signal
                        };
                        // Before init opened the control port, the UART would drop the line.
                        if timing.init.is_some() {
                            send_signal(&mut ctl, forward);
                        } else {
                            held_signals.push(forward);
                        }
                        if let Some(at) = Instant::now().checked_add(opts.grace) {
                            clock.grace_at.get_or_insert(at);
                        }
                    }
                }
            }
        }
    }
    if clock.killed_at.is_none() && open[..3].iter().any(|(_, o)| *o) {
        kill(&child);
    }
    let status = child.wait().map_err(QemuError::Supervise)?;
    timing.qemu_exited = Some(opts.started.elapsed());
    ending.qemu_code = status.code();
    if !stderr_held.is_empty() && (ending.guest_seen || ending.status.is_some()) {
        forward_stderr(&mut stderr_held, &[]);
    }
    ending.qemu_stderr = String::from_utf8_lossy(&stderr_tail).trim().to_string();
    Ok((ending, timing))
}

fn send_signal(ctl: &mut UnixStream, signo: i32) {
    // QEMU gone or not reading: the grace timer ends the run anyway.
    let _ = ctl.write_all(control::signal_line(signo).as_bytes());
}

fn kill(child: &Child) {
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
}

fn close(open: &mut [(Source, bool); 4], src: Source) {
    for (s, o) in open.iter_mut() {
        if *s == src {
            *o = false;
        }
    }
}

/// Reads what is available; `None` at end of stream (or on an error, which ends it too).
fn read_some<'a, R: Read>(r: &mut R, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    loop {
        match r.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

fn forward_stderr(held: &mut Vec<u8>, data: &[u8]) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(held);
    let _ = err.write_all(data);
    held.clear();
}

fn keep_tail(tail: &mut Vec<u8>, data: &[u8]) {
    tail.extend_from_slice(data);
    let excess = tail.len().saturating_sub(STDERR_TAIL);
    tail.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_run() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Clock {
            timeout_at: Some(t0 + s(30)),
            ..Clock::default()
        };
        assert_eq!(c.next(), Some(t0 + s(30)));
        assert_eq!(c.due(t0 + s(29)), None);
        assert_eq!(c.due(t0 + s(30)), Some(Due::Timeout));
        // A stop signal at 10 s with 5 s of grace comes due first.
        c.grace_at = Some(t0 + s(15));
        assert_eq!(c.next(), Some(t0 + s(15)));
        assert_eq!(c.due(t0 + s(16)), Some(Due::Grace));
        assert_eq!(c.due(t0 + s(40)), Some(Due::Grace));
        // Once the status is in, only the wait for QEMU's exit counts.
        c.status_at = Some(t0 + s(12));
        assert_eq!(c.next(), Some(t0 + s(12) + EXIT_AFTER_STATUS));
        assert_eq!(c.due(t0 + s(16)), None);
        assert_eq!(c.due(t0 + s(12) + EXIT_AFTER_STATUS), Some(Due::ExitWait));
        // Once killed, only the drain.
        c.killed_at = Some(t0 + s(50));
        assert_eq!(c.next(), Some(t0 + s(50) + DRAIN_AFTER_KILL));
        assert_eq!(c.due(t0 + s(50)), None);
        assert_eq!(c.due(t0 + s(50) + DRAIN_AFTER_KILL), Some(Due::DrainOver));
        assert_eq!(Clock::default().next(), None);
        assert_eq!(Clock::default().due(t0), None);
    }
}
