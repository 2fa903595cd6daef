//! A virtio-blk device behind a virtio-mmio (version 2) register window: the rootfs, served in
//! place from its section of the pod file, and `--disk` extras.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::blk_request::{
    self, Desc, HEADER_LEN, ID_LEN, Request, RequestKind, S_IOERR, S_OK, S_UNSUPP, SECTOR_SIZE,
};
use super::virtio_mmio::{F_VERSION_1, VirtioDevice, VirtioMmio, VirtioMmioError};

/// virtio device ID of a block device.
const DEVICE_ID_BLOCK: u32 = 2;
/// Largest queue the device offers.
const QUEUE_MAX: u16 = 256;
/// `VIRTIO_BLK_F_RO`.
const F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`.
const F_FLUSH: u64 = 1 << 9;
/// Largest bounce buffer a request uses: data moves between the file and guest memory in pieces
/// of at most this many bytes, whatever length the guest's descriptors claim.
const BOUNCE_MAX: u64 = 64 << 10;

/// Why a disk could not be set up.
#[derive(Debug, Error)]
pub enum VirtioBlkError {
    #[error("disk size {0} is not a multiple of 512 bytes")]
    NotSectors(u64),
    #[error(transparent)]
    Transport(#[from] VirtioMmioError),
}

/// Where a disk's bytes live: a window of a host file.
#[derive(Clone, Debug)]
pub struct DiskBackend {
    pub file: Arc<File>,
    /// Byte offset of sector 0 in `file`.
    pub offset: u64,
    /// Length of the disk in bytes.
    pub len: u64,
    pub read_only: bool,
}

/// One virtio-mmio block device.
pub struct VirtioBlk(VirtioMmio<Blk>);

/// The block device behind the transport.
struct Blk {
    backend: DiskBackend,
    id: [u8; ID_LEN as usize],
    mem: GuestMemoryMmap,
}

impl VirtioBlk {
    /// A device serving `backend`, named `id` (truncated to 20 bytes), raising `irq`.
    pub fn new(
        backend: DiskBackend,
        id: &str,
        mem: GuestMemoryMmap,
    ) -> Result<VirtioBlk, VirtioBlkError> {
        if backend.len % SECTOR_SIZE != 0 {
            return Err(VirtioBlkError::NotSectors(backend.len));
        }
        let mut id_bytes = [0u8; ID_LEN as usize];
        let n = id.len().min(id_bytes.len());
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        let blk = Blk {
            backend,
            id: id_bytes,
            mem: mem.clone(),
        };
        Ok(VirtioBlk(VirtioMmio::new(blk, mem)?))
    }

    /// The eventfd to register as this device's irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        self.0.irq_evt()
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }

    /// A guest write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data);
    }
}

impl VirtioDevice for Blk {
    fn device_id(&self) -> u32 {
        DEVICE_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let rw = if self.backend.read_only {
            F_RO
        } else {
            F_FLUSH
        };
        F_VERSION_1 | rw
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_MAX]
    }

    /// `struct virtio_blk_config`: only `capacity` (in sectors); the rest reads as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = (self.backend.len / SECTOR_SIZE).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *b = usize::try_from(at)
                .ok()
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    /// Serves every available request.
    fn queue_notify(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut served = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let descs: Vec<Desc> = chain
                .take(blk_request::MAX_DESCRIPTORS + 1)
                .map(|d| Desc {
                    addr: d.addr().0,
                    len: d.len(),
                    write_only: d.is_write_only(),
                })
                .collect();
            let used_len = self.serve(&descs);
            if queue.add_used(mem, head, used_len).is_err() {
                break;
            }
            served = true;
        }
        served
    }
}

impl Blk {
    /// Serves one chain; returns the number of bytes written into guest buffers.
    fn serve(&self, descs: &[Desc]) -> u32 {
        let mut header = [0u8; HEADER_LEN as usize];
        let Some(first) = descs.first() else {
            return 0;
        };
        if self
            .mem
            .read_slice(&mut header, GuestAddress(first.addr))
            .is_err()
        {
            return 0;
        }
        let Ok(req) = blk_request::parse_request(descs, &header) else {
            return 0;
        };
        let (status, written) = self.execute(&req);
        if self
            .mem
            .write_obj(status, GuestAddress(req.status_addr))
            .is_err()
        {
            return 0;
        }
        written.saturating_add(1)
    }

    /// Calls `step(guest address, file position, length)` for each piece (at most
    /// [`BOUNCE_MAX`] bytes) of the request's data buffers, in order, from file position `pos`;
    /// stops at the first error. Returns the bytes done and whether all were.
    fn each_piece(
        req: &Request,
        mut pos: u64,
        mut step: impl FnMut(GuestAddress, u64, usize) -> bool,
    ) -> (u32, bool) {
        let mut done = 0u32;
        for d in &req.data {
            let mut off = 0u64;
            while off < u64::from(d.len) {
                let n = (u64::from(d.len) - off).min(BOUNCE_MAX);
                let Some(addr) = d.addr.checked_add(off) else {
                    return (done, false);
                };
                if !step(GuestAddress(addr), pos, n as usize) {
                    return (done, false);
                }
                pos += n;
                off += n;
                done = done.saturating_add(n as u32);
            }
        }
        (done, true)
    }

    /// Runs a parsed request against the backend: (status, bytes written to the guest).
    fn execute(&self, req: &Request) -> (u8, u32) {
        let b = &self.backend;
        let in_range = |len: u64| {
            req.sector
                .checked_mul(SECTOR_SIZE)
                .and_then(|start| start.checked_add(len))
                .is_some_and(|end| end <= b.len)
        };
        match req.kind {
            RequestKind::In => {
                if !in_range(req.data_len) {
                    return (S_IOERR, 0);
                }
                let mut buf = vec![0u8; req.data_len.min(BOUNCE_MAX) as usize];
                let start = b.offset + req.sector * SECTOR_SIZE;
                let (written, ok) = Self::each_piece(req, start, |addr, pos, n| {
                    b.file.read_exact_at(&mut buf[..n], pos).is_ok()
                        && self.mem.write_slice(&buf[..n], addr).is_ok()
                });
                (if ok { S_OK } else { S_IOERR }, written)
            }
            RequestKind::Out => {
                if b.read_only || !in_range(req.data_len) {
                    return (S_IOERR, 0);
                }
                let mut buf = vec![0u8; req.data_len.min(BOUNCE_MAX) as usize];
                let start = b.offset + req.sector * SECTOR_SIZE;
                let (_, ok) = Self::each_piece(req, start, |addr, pos, n| {
                    self.mem.read_slice(&mut buf[..n], addr).is_ok()
                        && b.file.write_all_at(&buf[..n], pos).is_ok()
                });
                (if ok { S_OK } else { S_IOERR }, 0)
            }
            RequestKind::Flush => {
                if b.read_only {
                    return (S_OK, 0);
                }
                match b.file.sync_data() {
                    Ok(()) => (S_OK, 0),
                    Err(_) => (S_IOERR, 0),
                }
            }
            RequestKind::GetId => {
                let mut written = 0u32;
                let mut left: &[u8] = &self.id;
                for d in &req.data {
                    let n = left.len().min(d.len as usize);
                    if self
                        .mem
                        .write_slice(&left[..n], GuestAddress(d.addr))
                        .is_err()
                    {
                        return (S_IOERR, written);
                    }
                    written += n as u32;
                    left = &left[n..];
                }
                (S_OK, written)
            }
            RequestKind::Unsupported(_) => (S_UNSUPP, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio_mmio::{INT_USED_RING, MAGIC};
    use std::io::Write;

    fn device(read_only: bool) -> (VirtioBlk, GuestMemoryMmap, tempfile::NamedTempFile) {
        device_of(read_only, 4096)
    }

    /// A device whose disk is the last `len` bytes (from offset 4096) of a file of pattern bytes.
    fn device_of(
        read_only: bool,
        len: u32,
    ) -> (VirtioBlk, GuestMemoryMmap, tempfile::NamedTempFile) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..4096 + len).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let backend = DiskBackend {
            file: Arc::new(f.reopen().unwrap()),
            offset: 4096,
            len: u64::from(len),
            read_only,
        };
        (
            VirtioBlk::new(backend, "rootfs", mem.clone()).unwrap(),
            mem,
            f,
        )
    }

    fn w(dev: &mut VirtioBlk, off: u64, v: u32) {
        dev.write(off, &v.to_le_bytes());
    }

    fn r(dev: &mut VirtioBlk, off: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Drives the transport like a driver: one request with the given type and one 512-byte
    /// data buffer at 0x6000.
    fn one_request(dev: &mut VirtioBlk, mem: &GuestMemoryMmap, kind: u32, sector: u64) -> u8 {
        request(dev, mem, kind, sector, &[(0x6000, 512)])
    }

    /// One request with the given type and data buffers (address, length); returns its status.
    fn request(
        dev: &mut VirtioBlk,
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        data: &[(u64, u32)],
    ) -> u8 {
        assert_eq!(r(dev, 0), MAGIC);
        w(dev, 0x070, 1 | 2);
        w(dev, 0x024, 1);
        w(dev, 0x020, 1); // VERSION_1
        w(dev, 0x070, 1 | 2 | 8);
        assert_eq!(r(dev, 0x070) & 8, 8);
        w(dev, 0x030, 0);
        assert_eq!(r(dev, 0x034), u32::from(QUEUE_MAX));
        w(dev, 0x038, 8);
        w(dev, 0x080, 0x1000);
        w(dev, 0x090, 0x2000);
        w(dev, 0x0a0, 0x3000);
        w(dev, 0x044, 1);
        w(dev, 0x070, 1 | 2 | 4 | 8);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(0x5000)).unwrap();
        let data_flags: u16 = if kind == 0 { 2 | 1 } else { 1 };
        let mut descs: Vec<(u64, u32, u16, u16)> = vec![(0x5000, 16, 1, 1)];
        for (i, (a, l)) in data.iter().enumerate() {
            descs.push((*a, *l, data_flags, i as u16 + 2));
        }
        descs.push((0x7000, 1, 2, 0));
        for (i, (a, l, f, n)) in descs.iter().enumerate() {
            let base = 0x1000 + 16 * i as u64;
            mem.write_obj(*a, GuestAddress(base)).unwrap();
            mem.write_obj(*l, GuestAddress(base + 8)).unwrap();
            mem.write_obj(*f, GuestAddress(base + 12)).unwrap();
            mem.write_obj(*n, GuestAddress(base + 14)).unwrap();
        }
        mem.write_obj(0u16, GuestAddress(0x2004)).unwrap(); // ring[0] = head 0
        mem.write_obj(1u16, GuestAddress(0x2002)).unwrap(); // avail idx
        mem.write_obj(0xffu8, GuestAddress(0x7000)).unwrap();
        w(dev, 0x050, 0);
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 1);
        assert_eq!(r(dev, 0x060), INT_USED_RING);
        mem.read_obj::<u8>(GuestAddress(0x7000)).unwrap()
    }

    #[test]
    fn reads_sectors_from_the_window() {
        let (mut dev, mem, _f) = device(true);
        assert_eq!(r(&mut dev, 0x100), 8); // capacity in sectors
        assert_eq!(one_request(&mut dev, &mem, 0, 2), S_OK);
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(0x6000)).unwrap();
        let want: Vec<u8> = (4096 + 1024..4096 + 1536u32)
            .map(|i| (i % 251) as u8)
            .collect();
        assert_eq!(&got[..], &want[..]);
    }

    #[test]
    fn read_only_disk_refuses_writes_and_bounds_reads() {
        let (mut dev, mem, f) = device(true);
        assert_eq!(one_request(&mut dev, &mem, 1, 0), S_IOERR);
        let on_disk = std::fs::read(f.path()).unwrap();
        let original: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(on_disk, original);
        let (mut dev, mem, _f) = device(true);
        assert_eq!(one_request(&mut dev, &mem, 0, 8), S_IOERR);
        let (mut dev, mem, _f) = device(true);
        assert_eq!(one_request(&mut dev, &mem, 42, 0), S_UNSUPP);
    }

    #[test]
    fn big_buffers_move_in_bounded_pieces() {
        // Two buffers, one of them several bounce buffers long, the other crossing a piece
        // boundary: every byte lands where it belongs, both ways.
        let len = 3 * BOUNCE_MAX as u32 + 4096;
        let (mut dev, mem, _f) = device_of(true, len);
        let bufs = [(0x1_0000, 2 * BOUNCE_MAX as u32 + 512), (0x8_0000, 3584)];
        assert_eq!(request(&mut dev, &mem, 0, 1, &bufs), S_OK);
        let mut got = vec![0u8; bufs[0].1 as usize];
        mem.read_slice(&mut got, GuestAddress(bufs[0].0)).unwrap();
        let at = |disk_off: u32| ((4096 + 512 + disk_off) % 251) as u8;
        assert!(got.iter().enumerate().all(|(i, b)| *b == at(i as u32)));
        let mut tail = vec![0u8; 3584];
        mem.read_slice(&mut tail, GuestAddress(bufs[1].0)).unwrap();
        assert!(
            tail.iter()
                .enumerate()
                .all(|(i, b)| *b == at(bufs[0].1 + i as u32))
        );
        // The used length counts every byte written plus the status byte.
        let used_len: u32 = mem.read_obj(GuestAddress(0x3008)).unwrap();
        assert_eq!(used_len, bufs[0].1 + bufs[1].1 + 1);

        let (mut dev, mem, f) = device_of(false, len);
        let pattern: Vec<u8> = (0..bufs[0].1).map(|i| (i % 13) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(bufs[0].0)).unwrap();
        mem.write_slice(&[0xcd; 3584], GuestAddress(bufs[1].0))
            .unwrap();
        assert_eq!(request(&mut dev, &mem, 1, 2, &bufs), S_OK);
        let on_disk = std::fs::read(f.path()).unwrap();
        let start = 4096 + 1024;
        assert_eq!(&on_disk[start..start + pattern.len()], &pattern[..]);
        let rest = start + pattern.len();
        assert!(on_disk[rest..rest + 3584].iter().all(|&b| b == 0xcd));
        assert_eq!(on_disk[rest + 3584], ((rest + 3584) % 251) as u8);
    }

    #[test]
    fn writable_disk_takes_writes() {
        let (mut dev, mem, f) = device(false);
        mem.write_slice(&[0xab; 512], GuestAddress(0x6000)).unwrap();
        assert_eq!(one_request(&mut dev, &mem, 1, 1), S_OK);
        let on_disk = std::fs::read(f.path()).unwrap();
        assert!(on_disk[4096 + 512..4096 + 1024].iter().all(|&b| b == 0xab));
        assert_eq!(on_disk[4096 + 1024], ((4096 + 1024) % 251) as u8);
    }
}
