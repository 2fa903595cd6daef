//! The two 16550 UARTs (vm-superio): the console (`ttyS0`: kernel messages and init's own
//! diagnostics, shown on the host's stderr) and the control channel (`ttyS1`, lines of
//! `docs/guest-protocol.md`).

use std::io::{self, Write};
use std::time::Instant;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use pod::protocol::{GuestLine, LineError, LineSplitter};

/// Raises a UART's interrupt through its irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The console UART.
pub type ConsoleSerial = Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;
/// The control-channel UART.
pub type ControlSerial = Serial<IrqTrigger, vm_superio::serial::NoEvents, ControlSink>;

/// What the control channel reports to the VM's supervisor: a line, the host time it arrived,
/// parsed or refused.
pub type ControlReport = (Instant, Result<GuestLine, LineError>);

/// Collects the bytes init writes on `ttyS1` into lines, timestamps and parses each.
pub struct ControlSink {
    lines: LineSplitter,
    report: Box<dyn FnMut(ControlReport) + Send>,
}

impl ControlSink {
    /// A sink that hands each line to `report`.
    pub fn new(report: Box<dyn FnMut(ControlReport) + Send>) -> ControlSink {
        ControlSink {
            lines: LineSplitter::default(),
            report,
        }
    }

    /// A sink that sends each line on a channel (dropped silently once the receiver is gone).
    pub fn to_channel(tx: std::sync::mpsc::Sender<ControlReport>) -> ControlSink {
        ControlSink::new(Box::new(move |r| {
            let _ = tx.send(r);
        }))
    }
}

impl Write for ControlSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let now = Instant::now();
        for line in self.lines.push(data) {
            (self.report)((now, GuestLine::parse(&line)));
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes to the launcher's stderr, where the console goes (unbuffered: every byte is shown as
/// it arrives; a stalled reader holds the guest back, until the run stops:
/// [`crate::stdio::write_guest_output`]).
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        crate::stdio::write_guest_output(2, data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Queues `bytes` into a UART's receive FIFO; returns how many fit.
pub fn feed<W: Write>(
    serial: &mut Serial<IrqTrigger, vm_superio::serial::NoEvents, W>,
    bytes: &[u8],
) -> usize {
    if serial.fifo_capacity() == 0 {
        return 0;
    }
    serial.enqueue_raw_bytes(bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pod::protocol::Mark;

    #[test]
    fn control_sink_parses_split_lines() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sink = ControlSink::to_channel(tx);
        sink.write_all(b"T in").unwrap();
        assert!(rx.try_recv().is_err());
        sink.write_all(b"it\nX 7\nbogus\n").unwrap();
        assert!(matches!(
            rx.try_recv(),
            Ok((_, Ok(GuestLine::Mark(Mark::Init))))
        ));
        assert!(matches!(rx.try_recv(), Ok((_, Ok(GuestLine::Exit(7))))));
        assert!(matches!(rx.try_recv(), Ok((_, Err(_)))));
    }

    #[test]
    fn uart_feeds_and_raises_its_irq() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s: ControlSerial = Serial::new(
            IrqTrigger(evt.try_clone().unwrap()),
            ControlSink::to_channel(tx),
        );
        s.write(1, 1).unwrap(); // IER: received-data interrupt
        assert_eq!(feed(&mut s, b"S 2\n"), 4);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(s.read(0), b'S');
    }
}
