//! What a vCPU does after each `KVM_RUN` exit: a pure function of the exit and the devices.

use crate::devices::{Bus, DeviceStop};

/// A `KVM_RUN` exit, reduced to what the launcher acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit<'a> {
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    Hlt,
    /// Triple fault (or an explicit shutdown).
    Shutdown,
    /// `KVM_EXIT_INTERNAL_ERROR` with its sub-error code.
    InternalError(u32),
    /// `KVM_EXIT_FAIL_ENTRY` with the hardware reason.
    FailEntry(u64),
    /// The run was interrupted (a kick from the supervisor).
    Interrupted,
    /// Any other exit, by name.
    Other(&'static str),
}

/// Why a vCPU stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A byte was written to the exit port (`pod::protocol::EXIT_PORT`).
    ExitPort(u8),
    /// The guest reset the machine through the i8042.
    Reset,
    /// Triple fault / shutdown.
    TripleFault,
    /// KVM could not run the guest: message naming the failure.
    KvmFailure(String),
}

/// The vCPU loop's next move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Stop(StopReason),
}

/// `KVM_INTERNAL_ERROR_EMULATION`.
const SUBERROR_EMULATION: u32 = 1;
/// `KVM_INTERNAL_ERROR_SIMUL_EX`.
const SUBERROR_SIMUL_EX: u32 = 2;
/// `KVM_INTERNAL_ERROR_DELIVERY_EV`.
const SUBERROR_DELIVERY_EV: u32 = 3;

fn device_stop(s: Option<DeviceStop>) -> Action {
    match s {
        None => Action::Continue,
        Some(DeviceStop::ExitPort(v)) => Action::Stop(StopReason::ExitPort(v)),
        Some(DeviceStop::Reset) => Action::Stop(StopReason::Reset),
    }
}

/// Handles one exit: device accesses go to `bus`; fatal exits become a [`StopReason`].
pub fn handle_exit(exit: Exit<'_>, bus: &mut dyn Bus) -> Action {
    match exit {
        Exit::IoIn(port, data) => {
            bus.pio_read(port, data);
            Action::Continue
        }
        Exit::IoOut(port, data) => device_stop(bus.pio_write(port, data)),
        Exit::MmioRead(addr, data) => {
            bus.mmio_read(addr, data);
            Action::Continue
        }
        Exit::MmioWrite(addr, data) => device_stop(bus.mmio_write(addr, data)),
        // With the in-kernel irqchip HLT is handled by KVM; an exit here just re-enters.
        Exit::Hlt | Exit::Interrupted => Action::Continue,
        Exit::Shutdown => Action::Stop(StopReason::TripleFault),
        Exit::InternalError(sub) => {
            let what = match sub {
                SUBERROR_EMULATION => "emulation failure".to_string(),
                SUBERROR_SIMUL_EX => "simultaneous exceptions".to_string(),
                SUBERROR_DELIVERY_EV => "event delivery failure".to_string(),
                other => format!("sub-error {other}"),
            };
            Action::Stop(StopReason::KvmFailure(format!(
                "KVM internal error: {what}"
            )))
        }
        Exit::FailEntry(reason) => Action::Stop(StopReason::KvmFailure(format!(
            "KVM entry failure (hardware reason {reason:#x})"
        ))),
        Exit::Other(name) => Action::Stop(StopReason::KvmFailure(format!(
            "unexpected KVM exit {name}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pod::protocol::{CONSOLE_UART, EXIT_PORT};

    #[derive(Default)]
    struct FakeBus {
        writes: Vec<(u16, u8)>,
        mmio: Vec<u64>,
    }

    impl Bus for FakeBus {
        fn pio_read(&mut self, port: u16, data: &mut [u8]) {
            data.fill(port as u8);
        }
        fn pio_write(&mut self, port: u16, data: &[u8]) -> Option<DeviceStop> {
            self.writes.push((port, data[0]));
            match port {
                EXIT_PORT => Some(DeviceStop::ExitPort(data[0])),
                0x64 if data[0] == 0xfe => Some(DeviceStop::Reset),
                _ => None,
            }
        }
        fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
            self.mmio.push(addr);
            data.fill(1);
        }
        fn mmio_write(&mut self, addr: u64, _data: &[u8]) -> Option<DeviceStop> {
            self.mmio.push(addr);
            None
        }
    }

    #[test]
    fn device_exits_reach_the_bus() {
        let mut bus = FakeBus::default();
        let mut buf = [0u8; 2];
        assert_eq!(
            handle_exit(Exit::IoIn(0x3fd, &mut buf), &mut bus),
            Action::Continue
        );
        assert_eq!(buf, [0xfd, 0xfd]);
        assert_eq!(
            handle_exit(Exit::IoOut(CONSOLE_UART.port, b"a"), &mut bus),
            Action::Continue
        );
        assert_eq!(
            handle_exit(Exit::IoOut(EXIT_PORT, &[3]), &mut bus),
            Action::Stop(StopReason::ExitPort(3))
        );
        assert_eq!(
            handle_exit(Exit::IoOut(0x64, &[0xfe]), &mut bus),
            Action::Stop(StopReason::Reset)
        );
        let mut m = [0u8; 4];
        assert_eq!(
            handle_exit(Exit::MmioRead(0xd000_0000, &mut m), &mut bus),
            Action::Continue
        );
        assert_eq!(m, [1; 4]);
        assert_eq!(
            handle_exit(Exit::MmioWrite(0xd000_0050, &[0; 4]), &mut bus),
            Action::Continue
        );
        assert_eq!(bus.mmio, vec![0xd000_0000, 0xd000_0050]);
        assert_eq!(bus.writes.len(), 3);
    }

    #[test]
    fn fatal_exits_are_named() {
        let mut bus = FakeBus::default();
        assert_eq!(
            handle_exit(Exit::Shutdown, &mut bus),
            Action::Stop(StopReason::TripleFault)
        );
        assert_eq!(
            handle_exit(Exit::InternalError(1), &mut bus),
            Action::Stop(StopReason::KvmFailure(
                "KVM internal error: emulation failure".into()
            ))
        );
        assert_eq!(
            handle_exit(Exit::FailEntry(0x21), &mut bus),
            Action::Stop(StopReason::KvmFailure(
                "KVM entry failure (hardware reason 0x21)".into()
            ))
        );
        assert!(matches!(
            handle_exit(Exit::Other("Debug"), &mut bus),
            Action::Stop(StopReason::KvmFailure(m)) if m.contains("Debug")
        ));
        assert_eq!(handle_exit(Exit::Hlt, &mut bus), Action::Continue);
        assert_eq!(handle_exit(Exit::Interrupted, &mut bus), Action::Continue);
    }
}
