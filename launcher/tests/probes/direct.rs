//! For tests that drive a probe VM built with `launcher::vmm::build_vm` themselves, without the
//! launcher's run loop: a byte sink to capture a device's output, and a plain vCPU loop over
//! `handle_exit`.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{VcpuExit, VcpuFd};
use launcher::devices::Devices;
use launcher::vmm::exit::{Action, Exit, StopReason, handle_exit};

/// Output captured in memory (a serial console's, or the stdio device's).
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `vcpu` until a device or KVM stops it.
pub fn vcpu_loop(mut vcpu: VcpuFd, devices: Arc<Mutex<Devices>>) -> StopReason {
    loop {
        let exit = match vcpu.run() {
            Ok(VcpuExit::IoIn(p, d)) => Exit::IoIn(p, d),
            Ok(VcpuExit::IoOut(p, d)) => Exit::IoOut(p, d),
            Ok(VcpuExit::MmioRead(a, d)) => Exit::MmioRead(a, d),
            Ok(VcpuExit::MmioWrite(a, d)) => Exit::MmioWrite(a, d),
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(other) => panic!("unexpected exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => panic!("KVM_RUN: {e}"),
        };
        let mut d = devices.lock().unwrap();
        if let Action::Stop(why) = handle_exit(exit, &mut *d) {
            return why;
        }
    }
}
