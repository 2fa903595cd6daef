//! A virtio-blk device driven through its virtio-mmio registers, with guest memory (descriptor
//! table, rings, headers, buffers) taken from the input: walking the chains, parsing and serving
//! the requests must never panic, and must never touch the backing file outside the disk's
//! window.
//!
//! Input: byte 0 picks the queue size (a power of two up to 16) and whether the disk is
//! read-only; the rest is copied into guest memory from 0x1000: the descriptor table (0x1000),
//! the available ring (0x1100), then bytes for headers and buffers. The used ring is at 0x1200.
//! Unseeded, the fuzzer takes long to find an available ring index within the queue size; a
//! seed holding one well-formed request in this layout reaches the request paths at once.
#![no_main]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};

use launcher::devices::virtio_blk::{DiskBackend, VirtioBlk};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x1_0000;
const WINDOW: u64 = 4096;
const FILE_LEN: usize = 3 * 4096;
const FILL: u8 = 0x5a;

/// One backing file for the whole run, unlinked at once; refilled before every input.
fn backing() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("virtio-blk-fuzz-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    })
}

fn w(dev: &mut VirtioBlk, off: u64, v: u32) {
    dev.write(off, &v.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, guest)) = data.split_first() else {
        return;
    };
    let file = backing();
    file.write_all_at(&[FILL; FILE_LEN], 0).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = guest.len().min(MEM - 0x1000);
    mem.write_slice(&guest[..n], GuestAddress(0x1000)).unwrap();
    let backend = DiskBackend {
        file: Arc::new(file.try_clone().unwrap()),
        offset: WINDOW,
        len: WINDOW,
        read_only: size & 0x80 != 0,
    };
    let mut dev = VirtioBlk::new(backend, "fuzz", mem.clone()).unwrap();
    w(&mut dev, 0x070, 1 | 2);
    w(&mut dev, 0x024, 1);
    w(&mut dev, 0x020, 1); // VIRTIO_F_VERSION_1
    w(&mut dev, 0x070, 1 | 2 | 8);
    w(&mut dev, 0x030, 0);
    w(&mut dev, 0x038, 1 << (size % 5));
    w(&mut dev, 0x080, 0x1000);
    w(&mut dev, 0x090, 0x1100);
    w(&mut dev, 0x0a0, 0x1200);
    w(&mut dev, 0x044, 1);
    w(&mut dev, 0x070, 1 | 2 | 4 | 8);
    w(&mut dev, 0x050, 0);
    // A second kick sees the rings as the first one left them.
    w(&mut dev, 0x050, 0);

    let mut after = vec![0u8; FILE_LEN];
    file.read_exact_at(&mut after, 0).unwrap();
    let window = WINDOW as usize..2 * WINDOW as usize;
    for (i, b) in after.iter().enumerate() {
        if !window.contains(&i) {
            assert_eq!(*b, FILL, "byte {i} outside the disk window was written");
        }
    }
});
