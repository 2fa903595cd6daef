//! QEMU `microvm` under TCG, as the end-to-end tests run it outside the launcher: the command
//! line comes from the launcher's own builder ([`launcher::qemu::Microvm`]: the guest
//! protocol's machine, ports and sandbox), and this module runs it with a hard timeout,
//! recording when the console output arrived.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use launcher::qemu::{Chardev, Drive, Microvm};
/// I/O port of the exit device (`isa-debug-exit`): the guest protocol's.
pub use pod::protocol::EXIT_PORT;

/// The QEMU binary the tests use.
pub const QEMU: &str = "qemu-system-x86_64";

/// Why a QEMU run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("start {QEMU} (apt-get install qemu-system-x86)")]
    Spawn(#[source] std::io::Error),
    #[error("wait for {QEMU}")]
    Wait(#[source] std::io::Error),
    #[error("{QEMU} still running after {after:?}, killed; console so far:\n{console}")]
    Timeout { after: Duration, console: String },
}

/// The full command for `vm`: stdin null, stdout (the console) and stderr piped.
pub fn command(vm: &Microvm) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args(vm.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The words a test's kernel command line starts with: the console on ttyS0.
pub const CONSOLE: &str = "console=ttyS0";

/// Runs `vm` until QEMU exits; kills it and fails after `timeout`.
pub fn run(vm: &Microvm, timeout: Duration) -> Result<Run, QemuError> {
    let started = Instant::now();
    let mut child = command(vm).spawn().map_err(QemuError::Spawn)?;
    let console = Arc::new(Mutex::new(Capture::default()));
    let errors = Arc::new(Mutex::new(Capture::default()));
    let readers = [
        drain(child.stdout.take(), started, console.clone()),
        drain(child.stderr.take(), started, errors.clone()),
    ];
    let status = wait_until(&mut child, started + timeout).map_err(QemuError::Wait)?;
    let Some(status) = status else {
        // Kill our own child (by its handle, so its pid), then reap it.
        let _ = child.kill();
        let _ = child.wait();
        join(readers);
        let text = String::from_utf8_lossy(&console.lock().unwrap().bytes).into_owned();
        return Err(QemuError::Timeout {
            after: timeout,
            console: text,
        });
    };
    let elapsed = started.elapsed();
    join(readers);
    let console = std::mem::take(&mut *console.lock().unwrap());
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    Ok(Run {
        status,
        elapsed,
        console: console.bytes,
        arrivals: console.arrivals,
        stderr: errors.bytes,
    })
}

/// A finished QEMU run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    /// From spawn to exit.
    pub elapsed: Duration,
    /// Everything the guest wrote on ttyS0.
    pub console: Vec<u8>,
    /// QEMU's own stderr.
    pub stderr: Vec<u8>,
    /// `(time since spawn, console length after that read)`, one per read.
    arrivals: Vec<(Duration, usize)>,
}

impl Run {
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.console).into_owned()
    }

    /// The value the guest wrote to the exit port, from QEMU's status `(value << 1) | 1`.
    pub fn exit_port_value(&self) -> Option<u8> {
        match self.status.code() {
            Some(code) if code & 1 == 1 => Some((code >> 1) as u8),
            _ => None,
        }
    }

    /// When (since spawn) the console output first contained `needle`, to read granularity.
    pub fn first_seen(&self, needle: &str) -> Option<Duration> {
        let at = self
            .console
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())?;
        let end = at + needle.len();
        self.arrivals
            .iter()
            .find(|(_, len)| *len >= end)
            .map(|(t, _)| *t)
    }
}

#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    arrivals: Vec<(Duration, usize)>,
}

fn drain(
    pipe: Option<impl Read + Send + 'static>,
    started: Instant,
    into: Arc<Mutex<Capture>>,
) -> Option<JoinHandle<()>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut c = into.lock().unwrap();
            c.bytes.extend_from_slice(&buf[..n]);
            let len = c.bytes.len();
            c.arrivals.push((started.elapsed(), len));
        }
    }))
}

fn join(readers: [Option<JoinHandle<()>>; 2]) {
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
}

fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
