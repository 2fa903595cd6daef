//! QEMU `microvm` under TCG, as the end-to-end tests run it: a command builder and a runner with a
//! hard timeout.
//!
//! The machine is the one the guest protocol describes (`docs/guest-protocol.md`): ELF vmlinux
//! through PVH, `acpi=off` (virtio-mmio devices then reach the kernel as `virtio_mmio.device=` on
//! the command line, which QEMU appends itself), ttyS0 = the console on QEMU's stdout, an optional
//! ttyS1 (I/O 0x2f8, IRQ 3) for the control channel, and `isa-debug-exit` at port 0xf4 so the
//! guest can end the VM (QEMU then exits with `(value << 1) | 1`).

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The QEMU binary the tests use.
pub const QEMU: &str = "qemu-system-x86_64";
use pod::protocol::CONTROL_UART;
/// I/O port of the exit device (`isa-debug-exit`): the guest protocol's.
pub use pod::protocol::EXIT_PORT;

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

/// Where the second serial port (ttyS1, the control channel) is connected.
#[derive(Clone, Debug)]
pub enum Control {
    /// Guest output is written to this file (input: none).
    File(PathBuf),
    /// QEMU connects to a Unix socket the test listens on.
    Connect(PathBuf),
    /// QEMU listens on a Unix socket without waiting for a client.
    Listen(PathBuf),
}

/// A raw disk image given to the guest as the next `/dev/vdX` (virtio-blk over MMIO).
#[derive(Clone, Debug)]
pub struct Drive {
    pub path: PathBuf,
    /// Window inside the file: `(offset, size)` in bytes (a pod's rootfs section).
    pub window: Option<(u64, u64)>,
    pub read_only: bool,
}

/// A `qemu-system-x86_64 -M microvm` invocation.
#[derive(Clone, Debug)]
pub struct Microvm {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: Vec<String>,
    memory_mib: u32,
    cpus: u32,
    control: Option<Control>,
    drives: Vec<Drive>,
    exit_device: bool,
    icount: bool,
    /// With icount, let idle time pass in real time (`sleep=on`) instead of warping.
    icount_sleep: bool,
    extra: Vec<OsString>,
}

impl Microvm {
    /// A 1-vCPU, 256 MiB machine booting `kernel` with `console=ttyS0`.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Microvm {
            kernel: kernel.into(),
            initrd: None,
            cmdline: vec!["console=ttyS0".into()],
            memory_mib: 256,
            cpus: 1,
            control: None,
            drives: Vec::new(),
            exit_device: true,
            icount: false,
            icount_sleep: false,
            extra: Vec::new(),
        }
    }

    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// Adds words to the kernel command line.
    pub fn append(mut self, words: &str) -> Self {
        self.cmdline
            .extend(words.split_whitespace().map(String::from));
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Connects ttyS1 (the control channel).
    pub fn control(mut self, control: Control) -> Self {
        self.control = Some(control);
        self
    }

    pub fn drive(mut self, drive: Drive) -> Self {
        self.drives.push(drive);
        self
    }

    /// Leaves out the `isa-debug-exit` device (the guest then ends the VM by rebooting).
    pub fn without_exit_device(mut self) -> Self {
        self.exit_device = false;
        self
    }

    /// Deterministic guest time (`-icount shift=0,sleep=off`); about 15 times slower.
    pub fn icount(mut self) -> Self {
        self.icount = true;
        self
    }

    /// Instructions counted as with [`Microvm::icount`], but idle time (waits for disk reads)
    /// passes in real time (`sleep=on`): with `sleep=off` a read that finds the vCPU idle is
    /// charged up to the guest's next timer.
    pub fn icount_idle_in_real_time(mut self) -> Self {
        self.icount = true;
        self.icount_sleep = true;
        self
    }

    /// Any other QEMU argument, appended last.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// The kernel command line as passed with `-append`.
    pub fn cmdline(&self) -> String {
        self.cmdline.join(" ")
    }

    /// The full command: stdin null, stdout (the console) and stderr piped.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(QEMU);
        cmd.args(["-M", "microvm,acpi=off", "-accel", "tcg", "-cpu", "max"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-no-reboot", "-serial", "stdio"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-append")
            .arg(self.cmdline());
        if let Some(initrd) = &self.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        if self.exit_device {
            cmd.args([
                "-device",
                &format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x01"),
            ]);
        }
        if let Some(control) = &self.control {
            let chardev = match control {
                Control::File(p) => format!("file,id=ctl,path={}", opt_path(p)),
                Control::Connect(p) => format!("socket,id=ctl,path={}", opt_path(p)),
                Control::Listen(p) => {
                    format!("socket,id=ctl,path={},server=on,wait=off", opt_path(p))
                }
            };
            cmd.args(["-chardev", &chardev]).arg("-device").arg(format!(
                "isa-serial,chardev=ctl,iobase={:#x},irq={}",
                CONTROL_UART.port, CONTROL_UART.irq
            ));
        }
        for (i, d) in self.drives.iter().enumerate() {
            let ro = if d.read_only { ",readonly=on" } else { "" };
            let drive = match d.window {
                Some((offset, size)) => format!(
                    "driver=raw,offset={offset},size={size},file.driver=file,file.filename={},if=none,id=vd{i}{ro}",
                    opt_path(&d.path)
                ),
                None => format!("file={},format=raw,if=none,id=vd{i}{ro}", opt_path(&d.path)),
            };
            cmd.args(["-drive", &drive])
                .args(["-device", &format!("virtio-blk-device,drive=vd{i}")]);
        }
        if self.icount {
            let sleep = if self.icount_sleep { "on" } else { "off" };
            cmd.args(["-icount", &format!("shift=0,sleep={sleep}")]);
        }
        cmd.args(&self.extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs QEMU until it exits; kills it and fails after `timeout`.
    pub fn run(&self, timeout: Duration) -> Result<Run, QemuError> {
        let started = Instant::now();
        let mut child = self.command().spawn().map_err(QemuError::Spawn)?;
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

/// A path inside a QEMU option value: commas are doubled.
fn opt_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(vm: &Microvm) -> Vec<String> {
        vm.command()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn command_has_the_machine_and_devices() {
        let vm = Microvm::new("/k/vmlinux")
            .initrd("/k/initrd")
            .append("quiet  panic=-1")
            .cpus(2)
            .control(Control::File("/t/ctl,1".into()))
            .drive(Drive {
                path: "/p/app.pod".into(),
                window: Some((8192, 4096)),
                read_only: true,
            });
        let a = args(&vm).join(" ");
        assert!(
            a.starts_with("-M microvm,acpi=off -accel tcg -cpu max -nodefaults"),
            "{a}"
        );
        assert!(
            a.contains("-kernel /k/vmlinux -append console=ttyS0 quiet panic=-1 -initrd /k/initrd"),
            "{a}"
        );
        assert!(a.contains("-smp 2"), "{a}");
        assert!(
            a.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x01"),
            "{a}"
        );
        assert!(a.contains("-chardev file,id=ctl,path=/t/ctl,,1 -device isa-serial,chardev=ctl,iobase=0x2f8,irq=3"), "{a}");
        assert!(a.contains("-drive driver=raw,offset=8192,size=4096,file.driver=file,file.filename=/p/app.pod,if=none,id=vd0,readonly=on -device virtio-blk-device,drive=vd0"), "{a}");
        assert!(
            !args(&vm.without_exit_device())
                .join(" ")
                .contains("isa-debug-exit")
        );
    }
}
