//! QEMU as a machine for the shared supervisor: spawn it, turn its byte streams into events and
//! output (a thread each: console → stderr, control channel → lines, stdio stream → the app's
//! stdout/stderr, QEMU's own stderr → kept for errors), forward stdin and signals, and say how
//! it ended once it has exited and every stream is drained.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pod::protocol::stdio::{self, Credits};
use pod::protocol::{GuestLine, HostLine, LineSplitter};

use super::{QemuError, QemuPlan, qemu_args};
use crate::stdio::OutputDemux;
use crate::supervisor::{self, Event, Machine, MachineEnd, Report};
use crate::timing::Marks;

/// How long QEMU's streams may take to drain after it was killed.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);
/// Bytes of QEMU's stderr kept for the error message.
const STDERR_TAIL: usize = 8 * 1024;

/// The launcher's ends of the guest's channels, and QEMU's (closed here once QEMU has them).
pub struct Channels {
    pub control: UnixStream,
    pub stdio: UnixStream,
    pub theirs: Vec<UnixStream>,
}

fn spawn(plan: &QemuPlan, inherit: &[RawFd]) -> Result<Child, QemuError> {
    let mut cmd = Command::new(&plan.binary);
    cmd.args(qemu_args(plan))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fds = inherit.to_vec();
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (fcntl, setpgid, prctl, pthread_sigmask) on plain integers.
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
            // The launcher blocks the signals it forwards; QEMU gets the default mask.
            crate::stdio::unblock_signals();
            Ok(())
        });
    }
    cmd.spawn().map_err(QemuError::Spawn)
}

/// Writes all of `bytes` to `sock`, waiting for room; gives up when the peer is gone (no
/// SIGPIPE).
fn send_all(sock: &UnixStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: sends from a live buffer on our own socket.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(n) => bytes = &bytes[n..],
            Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Reads `r` to its end (or an error), handing each piece to `take`.
fn pump(mut r: impl Read, mut take: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => take(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// QEMU's stderr: held until the guest has shown life (a QEMU that fails to start says why in
/// the launcher's one error line instead), then passed on; the tail is kept for that line.
#[derive(Default)]
struct QemuStderr {
    held: Vec<u8>,
    tail: Vec<u8>,
}

impl QemuStderr {
    fn take(&mut self, data: &[u8], guest_seen: bool) {
        self.tail.extend_from_slice(data);
        let excess = self.tail.len().saturating_sub(STDERR_TAIL);
        self.tail.drain(..excess);
        if guest_seen {
            let mut err = io::stderr().lock();
            let _ = err.write_all(&self.held);
            let _ = err.write_all(data);
            self.held.clear();
        } else if self.held.len() < STDERR_TAIL {
            self.held.extend_from_slice(data);
        }
    }
}

/// How QEMU's exit reads as a machine's end (pure).
pub fn machine_end(code: Option<i32>, guest_seen: bool, stderr_tail: &str) -> MachineEnd {
    let last = stderr_tail
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    match code {
        // `isa-debug-exit` exits with (value << 1) | 1.
        Some(c) if c & 1 == 1 && guest_seen => MachineEnd::ExitPort((c >> 1) as u8),
        // -no-reboot: a reset (a kernel panic with panic=-1) ends QEMU with 0.
        Some(0) => MachineEnd::Reset,
        _ if !guest_seen => MachineEnd::Failed(if last.is_empty() {
            match code {
                Some(c) => format!("{} failed to start: exit status {c}", super::QEMU_BINARY),
                None => format!("{} was killed by a signal", super::QEMU_BINARY),
            }
        } else {
            format!("{} failed to start: {last}", super::QEMU_BINARY)
        }),
        Some(c) => MachineEnd::Failed(format!("{} exited with status {c}", super::QEMU_BINARY)),
        None => MachineEnd::Failed(format!("{} was killed by a signal", super::QEMU_BINARY)),
    }
}

struct QemuMachine {
    pid: libc::pid_t,
    control: Arc<Mutex<UnixStream>>,
    /// Set once QEMU has exited (its streams may still be draining).
    exited: Arc<AtomicBool>,
    /// Signalled once QEMU has exited and its streams are drained.
    gone: Receiver<()>,
}

impl Machine for QemuMachine {
    fn send_line(&mut self, line: &HostLine) -> bool {
        // The stdio thread is sending a credit (and may wait for room): retry soon.
        let control = match self.control.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        let bytes = line.format();
        // SAFETY: sends from a live buffer on our own socket; MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::send(
                control.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(n) if n < bytes.len() => {
                // A few bytes of a short line: finish it (QEMU gone ends the write with EPIPE).
                send_all(&control, &bytes.as_bytes()[n..]);
                true
            }
            Ok(_) => true,
            // Busy (the guest does not read): retry; gone: the run is ending anyway.
            Err(_) => io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock,
        }
    }

    fn finish(&mut self, stop: bool) -> Result<(), String> {
        if self.gone.try_recv().is_ok() {
            return Ok(());
        }
        if self.exited.load(Ordering::SeqCst) {
            // QEMU is gone and the app's output is on its way to a reader that is slow, but
            // reading: every byte of it is passed on, however long that takes.
            let _ = self.gone.recv();
            return Ok(());
        }
        if stop {
            // SAFETY: kill(2) on our own child; the waiter thread signals `gone` only after
            // reaping it, which has not happened (a reaped pid is not reused before that).
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
        let wait = if stop {
            DRAIN_AFTER_KILL
        } else {
            supervisor::END_AFTER_STATUS
        };
        // A stream kept open by something else must not hang the launcher: give up on it.
        let _ = self.gone.recv_timeout(wait);
        Ok(())
    }
}

/// Runs QEMU for `plan` under the shared supervisor. `inherit` are the descriptors QEMU must
/// receive.
pub fn run(
    plan: &QemuPlan,
    inherit: &[RawFd],
    channels: Channels,
    interactive: bool,
    opts: &supervisor::Options,
    marks: &mut Marks,
) -> Result<Report, QemuError> {
    let (tx, events) = crate::supervisor::event_queue();
    let mut child = spawn(plan, inherit)?;
    marks.qemu_spawned = Some(Instant::now());
    drop(channels.theirs);
    let guest_seen = Arc::new(AtomicBool::new(false));
    let stderr = Arc::new(Mutex::new(QemuStderr::default()));
    let stdout: ChildStdout = child.stdout.take().expect("stdout is piped");
    let qemu_err: ChildStderr = child.stderr.take().expect("stderr is piped");
    let io_err = |e| QemuError::Supervise(e);
    let control_r = channels.control.try_clone().map_err(io_err)?;
    // Written by the supervisor (its lines) and the stdio thread (credits), a line at a time.
    let control = Arc::new(Mutex::new(channels.control));
    let stdio_w = channels.stdio.try_clone().map_err(io_err)?;
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    let mut start = |name: &str, f: Box<dyn FnOnce() + Send>| -> Result<(), QemuError> {
        let t = std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(io_err)?;
        readers.push(t);
        Ok(())
    };
    {
        let (seen, held) = (guest_seen.clone(), stderr.clone());
        start(
            "console",
            Box::new(move || {
                pump(stdout, |data| {
                    seen.store(true, Ordering::SeqCst);
                    // The console is diagnostics: kernel messages, init's own lines.
                    let _ = io::stderr().lock().write_all(data);
                    let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
                    h.take(&[], true);
                });
            }),
        )?;
    }
    {
        let (seen, tx) = (guest_seen.clone(), tx.clone());
        start(
            "control",
            Box::new(move || {
                let mut lines = LineSplitter::default();
                pump(control_r, |data| {
                    seen.store(true, Ordering::SeqCst);
                    let now = Instant::now();
                    for line in lines.push(data) {
                        let _ = tx.send(Event::Line(now, GuestLine::parse(&line)));
                    }
                });
            }),
        )?;
    }
    {
        let (seen, stdio_r, control) = (guest_seen.clone(), channels.stdio, control.clone());
        start(
            "stdio",
            Box::new(move || {
                let mut demux = OutputDemux::default();
                let mut credits = Credits::default();
                pump(stdio_r, |data| {
                    seen.store(true, Ordering::SeqCst);
                    demux.write(data);
                    // What is written out is credited back (kernel_cmdline set the window).
                    if let Some(cost) = credits.due(demux.cost(), stdio::QEMU_WINDOW) {
                        let c = control.lock().unwrap_or_else(|e| e.into_inner());
                        send_all(&c, HostLine::Credit(cost).format().as_bytes());
                    }
                });
            }),
        )?;
    }
    {
        let (seen, held) = (guest_seen.clone(), stderr.clone());
        start(
            "qemu-stderr",
            Box::new(move || {
                pump(qemu_err, |data| {
                    let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
                    h.take(data, seen.load(Ordering::SeqCst));
                });
            }),
        )?;
    }
    let gate = Arc::new(supervisor::StdinGate::default());
    if interactive {
        let mut w = stdio_w;
        crate::stdio::forward_stdin(gate.clone(), move |frames| w.write_all(frames).is_ok());
    } else {
        drop(stdio_w);
    }
    {
        let tx = tx.clone();
        crate::stdio::forward_signals(move |sig| tx.send(Event::Signal(sig)).is_ok());
    }
    let pid = child.id() as libc::pid_t;
    let (gone_tx, gone) = mpsc::channel();
    let exited = Arc::new(AtomicBool::new(false));
    let waiter = {
        let (seen, held, exited) = (guest_seen.clone(), stderr.clone(), exited.clone());
        std::thread::Builder::new()
            .name("qemu-wait".into())
            .spawn(move || {
                let status = child.wait();
                exited.store(true, Ordering::SeqCst);
                // Every byte QEMU wrote is taken before the end is told.
                for r in readers {
                    let _ = r.join();
                }
                let code = status.ok().and_then(|s| s.code());
                let tail = {
                    let h = held.lock().unwrap_or_else(|e| e.into_inner());
                    String::from_utf8_lossy(&h.tail).into_owned()
                };
                let _ = tx.send(Event::Ended(machine_end(
                    code,
                    seen.load(Ordering::SeqCst),
                    &tail,
                )));
                let _ = gone_tx.send(());
            })
            .map_err(io_err)?
    };
    let mut machine = QemuMachine {
        pid,
        control,
        exited,
        gone,
    };
    let report = supervisor::supervise(opts, &events, &mut machine, &gate);
    if waiter.is_finished() {
        let _ = waiter.join();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_exits_read_as_machine_ends() {
        assert_eq!(machine_end(Some(7), true, ""), MachineEnd::ExitPort(3));
        assert_eq!(machine_end(Some(0), true, ""), MachineEnd::Reset);
        assert_eq!(machine_end(Some(0), false, ""), MachineEnd::Reset);
        let f = machine_end(
            Some(1),
            false,
            "qemu: bad option\nqemu: -drive: no such file\n",
        );
        assert_eq!(
            f,
            MachineEnd::Failed(
                "qemu-system-x86_64 failed to start: qemu: -drive: no such file".into()
            )
        );
        assert!(
            matches!(machine_end(None, false, ""), MachineEnd::Failed(m) if m.contains("killed"))
        );
        assert!(
            matches!(machine_end(Some(2), true, ""), MachineEnd::Failed(m) if m.contains("status 2"))
        );
    }
}
