//! The two 16550 UARTs (vm-superio): the console (`ttyS0`, wired to the host's stdout/stdin) and
//! the control channel (`ttyS1`, lines of `docs/guest-protocol.md`).

use std::io::{self, Write};
use std::time::Instant;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::control::{self, ControlError, GuestEvent};

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

/// What the control channel reports to the VM's supervisor.
#[derive(Debug)]
pub enum ControlReport {
    /// A line arrived (at the given host time) and parsed...
    Event(Instant, GuestEvent),
    /// ...or did not.
    Bad(ControlError),
}

/// Collects the bytes init writes on `ttyS1` into lines, timestamps and parses each.
pub struct ControlSink {
    buf: Vec<u8>,
    report: Box<dyn FnMut(ControlReport) + Send>,
}

impl ControlSink {
    /// A sink that hands each line to `report`.
    pub fn new(report: Box<dyn FnMut(ControlReport) + Send>) -> ControlSink {
        ControlSink {
            buf: Vec::new(),
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
        self.buf.extend_from_slice(data);
        for line in control::take_lines(&mut self.buf) {
            let report = match control::parse_guest_line(&line) {
                Ok(ev) => ControlReport::Event(now, ev),
                Err(e) => ControlReport::Bad(e),
            };
            (self.report)(report);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Unbuffered writes to the launcher's stdout (every guest byte is shown as it arrives).
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(data)?;
        out.flush()?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
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
    use crate::control::Mark;

    #[test]
    fn control_sink_parses_split_lines() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut sink = ControlSink::to_channel(tx);
        sink.write_all(b"T in").unwrap();
        assert!(rx.try_recv().is_err());
        sink.write_all(b"it\nX 7\nbogus\n").unwrap();
        assert!(matches!(
            rx.try_recv(),
            Ok(ControlReport::Event(_, GuestEvent::Mark(Mark::Init)))
        ));
        assert!(matches!(
            rx.try_recv(),
            Ok(ControlReport::Event(_, GuestEvent::Exit(7)))
        ));
        assert!(matches!(rx.try_recv(), Ok(ControlReport::Bad(_))));
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
