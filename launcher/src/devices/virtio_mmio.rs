//! The virtio-mmio transport (version 2, modern devices only): the register window a driver
//! programs (identification, feature negotiation with `VIRTIO_F_VERSION_1` required, status and
//! reset, N split virtqueues, notify, interrupt status/ack, configuration space). The device
//! behind it implements [`VirtioDevice`]: what it is, what it offers, and what a queue kick does.

use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// virtio-mmio transport version 2 (modern).
pub const VERSION: u32 = 2;
/// Our vendor ID ("HYPD").
pub const VENDOR_ID: u32 = 0x4450_5948;
/// `VIRTIO_F_VERSION_1`: the only transport feature, and a required one.
pub const F_VERSION_1: u64 = 1 << 32;
/// Device status bit `ACKNOWLEDGE`.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status bit `DRIVER`.
pub const STATUS_DRIVER: u32 = 2;
/// Device status bit `DRIVER_OK`.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status bit `FEATURES_OK`.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Interrupt status bit: a used ring was updated.
pub const INT_USED_RING: u32 = 1;
/// Start of the device-specific configuration space in the window.
pub const CONFIG_OFFSET: u64 = 0x100;

/// Register offsets of the window (virtio 1.2, 4.2.2).
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Why a transport could not be set up.
#[derive(Debug, Error)]
pub enum VirtioMmioError {
    #[error("cannot create the interrupt eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("queue {0} has an invalid maximum size {1} (a power of two up to 32768)")]
    QueueSize(usize, u16),
}

/// The device half of a virtio-mmio device.
pub trait VirtioDevice {
    /// The virtio device ID (2 block, 3 console, ...).
    fn device_id(&self) -> u32;
    /// Every feature the device offers; must include [`F_VERSION_1`].
    fn features(&self) -> u64;
    /// The maximum size of each queue (powers of two); their number is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// A driver read of the device configuration space at `offset` (from its start).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver kicked queue `index` (already checked: in range, ready, rings inside guest
    /// memory, device `DRIVER_OK`). Returns whether to raise the used-ring interrupt.
    fn queue_notify(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool;
    /// The driver set `DRIVER_OK`.
    fn activate(&mut self) {}
    /// The driver reset the device (status 0).
    fn reset(&mut self) {}
}

/// A virtio-mmio register window around the device `D`.
pub struct VirtioMmio<D> {
    device: D,
    mem: GuestMemoryMmap,
    irq: EventFd,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    status: u32,
    interrupt_status: u32,
    queue_sel: u32,
}

/// A driver write of `v` to queue register `offset` of a queue that is not ready.
fn configure_queue(q: &mut Queue, offset: u64, v: u32) {
    match offset {
        // An invalid size (zero, too big, not a power of two) is ignored.
        reg::QUEUE_NUM => {
            let _ = q.try_set_size(v as u16);
        }
        reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
        reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
        reg::QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
        reg::QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
        reg::QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
        reg::QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(v)),
        _ => {}
    }
}

fn new_queues(sizes: &[u16]) -> Result<Vec<Queue>, VirtioMmioError> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &max)| Queue::new(max).map_err(|_| VirtioMmioError::QueueSize(i, max)))
        .collect()
}

impl<D: VirtioDevice> VirtioMmio<D> {
    /// A window for `device`, reaching guest memory `mem`.
    pub fn new(device: D, mem: GuestMemoryMmap) -> Result<VirtioMmio<D>, VirtioMmioError> {
        let queues = new_queues(device.queue_max_sizes())?;
        Ok(VirtioMmio {
            device,
            mem,
            irq: EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioMmioError::EventFd)?,
            queues,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            status: 0,
            interrupt_status: 0,
            queue_sel: 0,
        })
    }

    /// The eventfd to register as this device's irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register as the driver last wrote it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Queue `index` with the device and guest memory, when the device may use it: the driver
    /// has set `DRIVER_OK`, the queue is ready and its rings lie in guest memory.
    pub fn live_queue(&mut self, index: usize) -> Option<(&mut D, &mut Queue, &GuestMemoryMmap)> {
        if self.status & STATUS_DRIVER_OK == 0 {
            return None;
        }
        let q = self.queues.get_mut(index)?;
        if !q.ready() || !q.is_valid(&self.mem) {
            return None;
        }
        Some((&mut self.device, q, &self.mem))
    }

    /// Sets the used-ring interrupt bit and raises the interrupt.
    pub fn raise_interrupt(&mut self) {
        self.interrupt_status |= INT_USED_RING;
        // A full eventfd counter still means "interrupt pending": nothing is lost.
        let _ = self.irq.write(1);
    }

    fn offered(&self) -> u64 {
        self.device.features() | F_VERSION_1
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.driver_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.queue_sel = 0;
        self.device.reset();
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        let v: u32 = match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered() as u32,
                1 => (self.offered() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => u32::from(self.selected().is_some_and(|q| q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            // The configuration never changes: generation 0.
            reg::CONFIG_GENERATION => 0,
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// A guest write at `offset` in the window (only 32-bit writes to the registers count; the
    /// configuration space is read-only).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(&bytes) = <&[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(bytes);
        let sel = self.queue_sel as usize;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let keep = !(0xffff_ffffu64 << shift);
                self.driver_features =
                    (self.driver_features & keep) | (u64::from(v) << shift) & self.offered();
            }
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_READY => {
                if let Some(q) = self.queues.get_mut(sel) {
                    q.set_ready(v == 1);
                }
            }
            reg::QUEUE_NOTIFY => self.notify(v as usize),
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.write_status(v),
            _ => {
                // Queue size and addresses change only while the queue is not ready.
                if let Some(q) = self.queues.get_mut(sel).filter(|q| !q.ready()) {
                    configure_queue(q, offset, v);
                }
            }
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & STATUS_FEATURES_OK != 0 && self.driver_features & F_VERSION_1 == 0 {
            // A legacy driver: refuse FEATURES_OK.
            self.status = v & !STATUS_FEATURES_OK;
            return;
        }
        let was_ok = self.status & STATUS_DRIVER_OK != 0;
        self.status = v;
        if !was_ok && v & STATUS_DRIVER_OK != 0 {
            self.device.activate();
        }
    }

    /// The driver kicked queue `index`: the device serves it, then the interrupt if it asks.
    fn notify(&mut self, index: usize) {
        let Some((dev, q, mem)) = self.live_queue(index) else {
            return;
        };
        if dev.queue_notify(index, q, mem) {
            self.raise_interrupt();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    /// Writes one 32-bit register.
    pub fn w<D: VirtioDevice>(dev: &mut VirtioMmio<D>, off: u64, v: u32) {
        dev.write(off, &v.to_le_bytes());
    }

    /// Reads one 32-bit register.
    pub fn r<D: VirtioDevice>(dev: &mut VirtioMmio<D>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Negotiates VERSION_1 and sets up queue `i` of size `size` at `base` (descriptors),
    /// `base + 0x1000` (available ring) and `base + 0x2000` (used ring) for each `(i, base)`;
    /// then `DRIVER_OK`.
    pub fn bring_up<D: VirtioDevice>(dev: &mut VirtioMmio<D>, size: u32, queues: &[(u32, u64)]) {
        assert_eq!(r(dev, reg::MAGIC), MAGIC);
        w(dev, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(dev, reg::DRIVER_FEATURES_SEL, 1);
        w(dev, reg::DRIVER_FEATURES, 1); // VERSION_1
        w(dev, reg::STATUS, 1 | 2 | STATUS_FEATURES_OK);
        assert_eq!(r(dev, reg::STATUS) & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
        for &(i, base) in queues {
            w(dev, reg::QUEUE_SEL, i);
            w(dev, reg::QUEUE_NUM, size);
            w(dev, reg::QUEUE_DESC_LOW, base as u32);
            w(dev, reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
            w(dev, reg::QUEUE_AVAIL_LOW, (base + 0x1000) as u32);
            w(dev, reg::QUEUE_AVAIL_HIGH, 0);
            w(dev, reg::QUEUE_USED_LOW, (base + 0x2000) as u32);
            w(dev, reg::QUEUE_USED_HIGH, 0);
            w(dev, reg::QUEUE_READY, 1);
        }
        w(
            dev,
            reg::STATUS,
            1 | 2 | STATUS_DRIVER_OK | STATUS_FEATURES_OK,
        );
    }

    /// A device with two queues that counts kicks and features nothing beyond VERSION_1.
    #[derive(Default)]
    struct Counter {
        kicks: Vec<usize>,
        resets: usize,
        activations: usize,
    }

    impl VirtioDevice for Counter {
        fn device_id(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            F_VERSION_1 | 1 << 3
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 4]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn queue_notify(&mut self, index: usize, _q: &mut Queue, _m: &GuestMemoryMmap) -> bool {
            self.kicks.push(index);
            index == 1
        }
        fn activate(&mut self) {
            self.activations += 1;
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn counter() -> VirtioMmio<Counter> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        VirtioMmio::new(Counter::default(), mem).unwrap()
    }

    #[test]
    fn identifies_and_negotiates() {
        let mut d = counter();
        assert_eq!(r(&mut d, reg::VERSION), 2);
        assert_eq!(r(&mut d, reg::DEVICE_ID), 42);
        assert_eq!(r(&mut d, reg::VENDOR_ID), VENDOR_ID);
        assert_eq!(r(&mut d, reg::DEVICE_FEATURES), 1 << 3);
        w(&mut d, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut d, reg::DEVICE_FEATURES), 1);
        w(&mut d, reg::DEVICE_FEATURES_SEL, 2);
        assert_eq!(r(&mut d, reg::DEVICE_FEATURES), 0);
        // Without VERSION_1 FEATURES_OK does not stick.
        w(&mut d, reg::STATUS, 1 | 2);
        w(&mut d, reg::DRIVER_FEATURES_SEL, 0);
        w(&mut d, reg::DRIVER_FEATURES, 0xffff_ffff);
        w(&mut d, reg::STATUS, 1 | 2 | 8);
        assert_eq!(r(&mut d, reg::STATUS), 1 | 2);
        assert_eq!(d.driver_features, 1 << 3, "only offered features are kept");
        // Queue registers follow QUEUE_SEL; a selector past the queues reads 0.
        w(&mut d, reg::QUEUE_SEL, 1);
        assert_eq!(r(&mut d, reg::QUEUE_NUM_MAX), 4);
        w(&mut d, reg::QUEUE_SEL, 2);
        assert_eq!(r(&mut d, reg::QUEUE_NUM_MAX), 0);
        w(&mut d, reg::QUEUE_READY, 1);
        assert_eq!(r(&mut d, reg::QUEUE_READY), 0);
        // Configuration space reads are the device's; writes and short register writes do
        // nothing.
        let mut c = [0u8; 2];
        d.read(CONFIG_OFFSET + 5, &mut c);
        assert_eq!(c, [5, 6]);
        d.write(reg::QUEUE_SEL, &[0, 0]);
        assert_eq!(d.queue_sel, 2);
    }

    #[test]
    fn kicks_reach_the_device_only_when_live_and_reset_clears_all() {
        let mut d = counter();
        w(&mut d, reg::QUEUE_NOTIFY, 0);
        assert!(d.device().kicks.is_empty(), "not DRIVER_OK yet");
        bring_up(&mut d, 4, &[(0, 0x1_0000), (1, 0x2_0000)]);
        assert_eq!(d.device().activations, 1);
        w(&mut d, reg::QUEUE_NOTIFY, 0);
        w(&mut d, reg::QUEUE_NOTIFY, 7);
        assert_eq!(d.device().kicks, vec![0], "out-of-range index ignored");
        assert_eq!(r(&mut d, reg::INTERRUPT_STATUS), 0);
        w(&mut d, reg::QUEUE_NOTIFY, 1);
        assert_eq!(r(&mut d, reg::INTERRUPT_STATUS), INT_USED_RING);
        assert_eq!(d.irq_evt().read().unwrap(), 1);
        w(&mut d, reg::INTERRUPT_ACK, INT_USED_RING);
        assert_eq!(r(&mut d, reg::INTERRUPT_STATUS), 0);

        // A ready queue's size and addresses are fixed; unready, they change.
        w(&mut d, reg::QUEUE_SEL, 0);
        w(&mut d, reg::QUEUE_NUM, 16);
        w(&mut d, reg::QUEUE_DESC_LOW, 0xdead_0000);
        assert_eq!(d.queues[0].size(), 4);
        assert_eq!(d.queues[0].desc_table(), 0x1_0000);
        w(&mut d, reg::QUEUE_READY, 0);
        w(&mut d, reg::QUEUE_DESC_LOW, 0xdead_0000);
        w(&mut d, reg::QUEUE_NUM, 3);
        assert_eq!(d.queues[0].size(), 4, "not a power of two");
        w(&mut d, reg::QUEUE_READY, 1);
        // Rings outside guest memory: the kick is dropped, nothing panics.
        w(&mut d, reg::QUEUE_NOTIFY, 0);
        assert_eq!(d.device().kicks, vec![0, 1]);

        w(&mut d, reg::STATUS, 0);
        assert_eq!(d.device().resets, 1);
        assert_eq!(r(&mut d, reg::STATUS), 0);
        assert_eq!(r(&mut d, reg::QUEUE_READY), 0);
        assert_eq!(d.queues[0].desc_table(), 0);
        w(&mut d, reg::QUEUE_NOTIFY, 1);
        assert_eq!(d.device().kicks, vec![0, 1]);
        // A queue beyond guest memory's end is never handed to the device.
        bring_up(&mut d, 4, &[(0, 0xff000)]);
        assert!(d.live_queue(0).is_none());
    }
}
