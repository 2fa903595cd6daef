//! The guest's devices and the port/MMIO dispatch to them. Each device that the kernel must be
//! told about adds its own command-line entry ([`Devices::cmdline_entries`]).

pub mod blk_request;
pub mod console_chain;
pub mod net_chain;
pub mod net_stream;
pub mod serial;
pub mod virtio_blk;
pub mod virtio_console;
pub mod virtio_mmio;
pub mod virtio_net;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vm_superio::{I8042Device, Trigger};

use crate::layout;
use serial::{ConsoleSerial, ControlSerial};
use virtio_blk::VirtioBlk;
use virtio_console::VirtioConsole;
use virtio_net::{NetAccess, VirtioNet};

/// A device asked for the VM to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceStop {
    /// A byte was written to the exit port.
    ExitPort(u8),
    /// The i8042 was told to pulse the reset line.
    Reset,
}

/// Port and MMIO accesses, as the vCPU loop sees them.
pub trait Bus {
    fn pio_read(&mut self, port: u16, data: &mut [u8]);
    fn pio_write(&mut self, port: u16, data: &[u8]) -> Option<DeviceStop>;
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Option<DeviceStop>;
}

/// Records an i8042 reset request.
#[derive(Clone, Default)]
pub struct ResetFlag(Arc<AtomicBool>);

impl ResetFlag {
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

impl Trigger for ResetFlag {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Every device of one VM.
pub struct Devices {
    pub console: ConsoleSerial,
    pub control: ControlSerial,
    i8042: I8042Device<ResetFlag>,
    reset: ResetFlag,
    /// virtio-mmio block devices; device `i` is at `layout::virtio_mmio_addr(i)`.
    pub blocks: Vec<VirtioBlk>,
    /// The stdio console (`hvc0`) at `layout::VIRTIO_CONSOLE_ADDR`.
    pub stdio: VirtioConsole,
    /// The network device at `layout::VIRTIO_NET_ADDR`, when the launch has a network backend.
    pub net: Option<VirtioNet>,
}

impl Devices {
    pub fn new(
        console: ConsoleSerial,
        control: ControlSerial,
        blocks: Vec<VirtioBlk>,
        stdio: VirtioConsole,
        net: Option<VirtioNet>,
    ) -> Devices {
        let reset = ResetFlag::default();
        Devices {
            console,
            control,
            i8042: I8042Device::new(reset.clone()),
            reset,
            blocks,
            stdio,
            net,
        }
    }

    /// The kernel command-line entries that describe these devices.
    pub fn cmdline_entries(&self) -> Vec<String> {
        let mut v = vec!["console=ttyS0".to_string()];
        for i in 0..self.blocks.len() {
            v.push(format!(
                "virtio_mmio.device={}K@{:#x}:{}",
                layout::VIRTIO_MMIO_SIZE / 1024,
                layout::virtio_mmio_addr(i),
                layout::VIRTIO_IRQS[i]
            ));
        }
        v.push(format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            layout::VIRTIO_MMIO_SIZE / 1024,
            layout::VIRTIO_CONSOLE_ADDR,
            layout::VIRTIO_CONSOLE_IRQ
        ));
        if self.net.is_some() {
            v.push(format!(
                "virtio_mmio.device={}K@{:#x}:{}",
                layout::VIRTIO_MMIO_SIZE / 1024,
                layout::VIRTIO_NET_ADDR,
                layout::VIRTIO_NET_IRQ
            ));
        }
        v
    }

    /// Hands bytes of the app's stdio stream (frames of `pod::protocol::stdio`) to the guest
    /// through the stdio console's receive buffers; returns how many it took (0: none posted,
    /// wait for [`VirtioConsole::rx_ready_evt`] and try again).
    pub fn push_stdin(&mut self, frames: &[u8]) -> usize {
        self.stdio.push_rx(frames)
    }

    fn stdio_at(&mut self, addr: u64) -> Option<(&mut VirtioConsole, u64)> {
        let off = addr.checked_sub(layout::VIRTIO_CONSOLE_ADDR)?;
        (off < layout::VIRTIO_MMIO_SIZE).then_some((&mut self.stdio, off))
    }

    fn net_at(&mut self, addr: u64) -> Option<(&mut VirtioNet, u64)> {
        let off = addr.checked_sub(layout::VIRTIO_NET_ADDR)?;
        let net = self.net.as_mut()?;
        (off < layout::VIRTIO_MMIO_SIZE).then_some((net, off))
    }

    fn block_at(&mut self, addr: u64) -> Option<(&mut VirtioBlk, u64)> {
        let rel = addr.checked_sub(layout::VIRTIO_MMIO_BASE)?;
        let i = usize::try_from(rel / layout::VIRTIO_MMIO_SIZE).ok()?;
        let dev = self.blocks.get_mut(i)?;
        Some((dev, rel % layout::VIRTIO_MMIO_SIZE))
    }
}

/// The network backend thread reaches the device through the VM's device lock.
impl NetAccess for Mutex<Devices> {
    fn with_net<R>(&self, f: impl FnOnce(&mut VirtioNet) -> R) -> Option<R> {
        let mut d = self.lock().unwrap_or_else(|e| e.into_inner());
        d.net.as_mut().map(f)
    }
}

fn in_uart(port: u16, base: u16) -> Option<u8> {
    (port >= base && port < base + layout::SERIAL_PORT_COUNT).then(|| (port - base) as u8)
}

impl Bus for Devices {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        let v = if let Some(off) = in_uart(port, layout::SERIAL_CONSOLE_PORT) {
            self.console.read(off)
        } else if let Some(off) = in_uart(port, layout::SERIAL_CONTROL_PORT) {
            self.control.read(off)
        } else if port == layout::I8042_DATA_PORT || port == layout::I8042_COMMAND_PORT {
            self.i8042.read((port - layout::I8042_DATA_PORT) as u8)
        } else {
            0xff
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> Option<DeviceStop> {
        let &v = data.first()?;
        if let Some(off) = in_uart(port, layout::SERIAL_CONSOLE_PORT) {
            // A full host pipe or a closed stdout must not stop the guest.
            let _ = self.console.write(off, v);
        } else if let Some(off) = in_uart(port, layout::SERIAL_CONTROL_PORT) {
            let _ = self.control.write(off, v);
        } else if port == layout::I8042_COMMAND_PORT || port == layout::I8042_DATA_PORT {
            let _ = self.i8042.write((port - layout::I8042_DATA_PORT) as u8, v);
            if self.reset.take() {
                return Some(DeviceStop::Reset);
            }
        } else if port == layout::EXIT_PORT {
            return Some(DeviceStop::ExitPort(v));
        }
        None
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        if let Some((dev, off)) = self.block_at(addr) {
            dev.read(off, data);
        } else if let Some((dev, off)) = self.stdio_at(addr) {
            dev.read(off, data);
        } else if let Some((dev, off)) = self.net_at(addr) {
            dev.read(off, data);
        } else {
            data.fill(0xff);
        }
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Option<DeviceStop> {
        if let Some((dev, off)) = self.block_at(addr) {
            dev.write(off, data);
        } else if let Some((dev, off)) = self.stdio_at(addr) {
            dev.write(off, data);
        } else if let Some((dev, off)) = self.net_at(addr) {
            dev.write(off, data);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serial::{ControlSink, IrqTrigger};
    use vm_superio::Serial;
    use vmm_sys_util::eventfd::EventFd;

    pub(crate) fn test_devices() -> (Devices, std::sync::mpsc::Receiver<serial::ControlReport>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let evt = || IrqTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let console: ConsoleSerial = Serial::new(evt(), Box::new(std::io::sink()));
        let control: ControlSerial = Serial::new(evt(), ControlSink::to_channel(tx));
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)])
            .unwrap();
        let stdio = VirtioConsole::new(Box::new(|_| {}), mem).unwrap();
        (Devices::new(console, control, Vec::new(), stdio, None), rx)
    }

    #[test]
    fn exit_port_reset_and_serial_dispatch() {
        let (mut d, rx) = test_devices();
        assert_eq!(
            d.pio_write(pod::protocol::EXIT_PORT, &[9]),
            Some(DeviceStop::ExitPort(9))
        );
        assert_eq!(d.pio_write(0x64, &[0x12]), None);
        assert_eq!(d.pio_write(0x64, &[0xfe]), Some(DeviceStop::Reset));
        for &b in b"X 5\n" {
            assert_eq!(d.pio_write(pod::protocol::CONTROL_UART.port, &[b]), None);
        }
        assert!(matches!(
            rx.try_recv(),
            Ok((_, Ok(pod::protocol::GuestLine::Exit(5))))
        ));
        let mut b = [0u8; 1];
        d.pio_read(0x3fd, &mut b); // LSR: transmitter empty
        assert_ne!(b[0] & 0x20, 0);
        d.pio_read(0x80, &mut b);
        assert_eq!(b[0], 0xff);
        let mut m = [0u8; 4];
        d.mmio_read(layout::VIRTIO_MMIO_BASE, &mut m);
        assert_eq!(m, [0xff; 4]); // no device there
        // The stdio console answers in its window only.
        d.mmio_read(layout::VIRTIO_CONSOLE_ADDR + 8, &mut m);
        assert_eq!(u32::from_le_bytes(m), 3);
        d.mmio_read(
            layout::VIRTIO_CONSOLE_ADDR + layout::VIRTIO_MMIO_SIZE,
            &mut m,
        );
        assert_eq!(m, [0xff; 4]);
        assert_eq!(
            d.mmio_write(layout::VIRTIO_CONSOLE_ADDR + 0x70, &[1, 0, 0, 0]),
            None
        );
        d.mmio_read(layout::VIRTIO_CONSOLE_ADDR + 0x70, &mut m);
        assert_eq!(m, [1, 0, 0, 0]);
    }

    #[test]
    fn command_line_names_each_virtio_window() {
        let (d, _rx) = test_devices();
        assert_eq!(
            d.cmdline_entries(),
            vec!["console=ttyS0", "virtio_mmio.device=4K@0xd000c000:18"]
        );
    }

    #[test]
    fn a_network_device_gets_its_window_and_command_line_entry() {
        let (mut d, _rx) = test_devices();
        // No backend, no device: the window reads as nothing there.
        let mut m = [0u8; 4];
        d.mmio_read(layout::VIRTIO_NET_ADDR, &mut m);
        assert_eq!(m, [0xff; 4]);
        assert!(Mutex::new(test_devices().0).with_net(|_| ()).is_none());
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)])
            .unwrap();
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let backend = virtio_net::NetBackend {
            link: virtio_net::NetLink::Stream(ours),
            mac: virtio_net::DEFAULT_MAC,
        };
        d.net = Some(VirtioNet::new(backend, mem).unwrap());
        assert_eq!(
            d.cmdline_entries().last().unwrap(),
            "virtio_mmio.device=4K@0xd000d000:19"
        );
        d.mmio_read(layout::VIRTIO_NET_ADDR + 8, &mut m);
        assert_eq!(u32::from_le_bytes(m), 1, "virtio-net device ID");
        d.mmio_read(layout::VIRTIO_NET_ADDR + layout::VIRTIO_MMIO_SIZE, &mut m);
        assert_eq!(m, [0xff; 4]);
        assert_eq!(
            d.mmio_write(layout::VIRTIO_NET_ADDR + 0x70, &[1, 0, 0, 0]),
            None
        );
        d.mmio_read(layout::VIRTIO_NET_ADDR + 0x70, &mut m);
        assert_eq!(m, [1, 0, 0, 0]);
        assert!(Mutex::new(d).with_net(|n| n.counters()).is_some());
    }
}
