//! Writes the seed corpus of every fuzz target into `OUT/<target>/`: small well-formed inputs
//! (and a few near misses) that reach each parser's deep paths at once. Deterministic, so
//! `scripts/fuzz` can check the committed `fuzz/corpus/` is what this makes; rewrite it with
//! `scripts/fuzz --update-corpus`. Not a fuzz target (it has its own `main`).

use std::io::Write;
use std::path::{Path, PathBuf};

use pod::SectionInfo;
use pod::manifest::{Manifest, Resources, Sections, Source};

const BLOCK: usize = 512;

/// One ustar header block: `name`, type flag, size, mode, link name, with its checksum.
fn header(name: &str, kind: u8, size: usize, mode: u32, link: &str) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |b: &mut [u8; BLOCK], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        b[at..at + width].copy_from_slice(s.as_bytes());
    };
    octal(&mut b, 100, 8, u64::from(mode));
    octal(&mut b, 108, 8, 0);
    octal(&mut b, 116, 8, 0);
    octal(&mut b, 124, 12, size as u64);
    octal(&mut b, 136, 12, 1_700_000_000);
    b[156] = kind;
    b[157..157 + link.len()].copy_from_slice(link.as_bytes());
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    b
}

/// A tar entry: header, data, padding to the block.
fn entry(out: &mut Vec<u8>, name: &str, kind: u8, data: &[u8], mode: u32, link: &str) {
    out.extend_from_slice(&header(name, kind, data.len(), mode, link));
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(BLOCK), 0);
}

/// One PAX record `"<len> key=value\n"`.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

/// A small layer: directories, files, a symlink, a hardlink, a PAX long name, a whiteout and
/// an opaque marker.
fn layer(second: bool) -> Vec<u8> {
    let mut t = Vec::new();
    entry(&mut t, "etc/", b'5', &[], 0o755, "");
    entry(&mut t, "etc/hostname", b'0', b"pod\n", 0o644, "");
    entry(&mut t, "bin/", b'5', &[], 0o755, "");
    entry(&mut t, "bin/sh", b'0', &[0x7f, b'E', b'L', b'F'], 0o755, "");
    entry(&mut t, "bin/ash", b'1', &[], 0o755, "bin/sh");
    entry(&mut t, "usr/", b'5', &[], 0o755, "");
    entry(&mut t, "usr/sh", b'2', &[], 0o777, "/bin/sh");
    let long = format!("usr/{}", "n".repeat(120));
    let pax = pax_record("path", &long) + &pax_record("mtime", "1700000000.5");
    entry(&mut t, "PaxHeaders/x", b'x', pax.as_bytes(), 0o644, "");
    entry(&mut t, "placeholder", b'0', &[7u8; 600], 0o600, "");
    if second {
        entry(&mut t, "etc/.wh.hostname", b'0', &[], 0o644, "");
        entry(&mut t, "usr/.wh..wh..opq", b'0', &[], 0o644, "");
        entry(&mut t, "etc/motd", b'0', b"hi\n", 0o644, "");
    }
    t.extend_from_slice(&[0u8; 2 * BLOCK]);
    t
}

fn tar_header(out: &Path) {
    let seeds: [(&str, [u8; BLOCK]); 6] = [
        ("file", header("etc/passwd", b'0', 1234, 0o644, "")),
        ("dir", header("var/lib/", b'5', 0, 0o755, "")),
        ("symlink", header("lib64", b'2', 0, 0o777, "usr/lib")),
        ("hardlink", header("bin/ls", b'1', 0, 0o755, "bin/busybox")),
        ("chardev", header("dev/null", b'3', 0, 0o666, "")),
        (
            "gnu_longname",
            header("././@LongLink", b'L', 200, 0o644, ""),
        ),
    ];
    for (name, block) in seeds {
        write(out, name, &block);
    }
    // A base-256 size, as GNU tar writes sizes of 8 GiB and more.
    let mut big = header("big", b'0', 0, 0o644, "");
    big[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
    write(out, "base256_size", &big);
}

fn pax_records(out: &Path) {
    let all = [
        ("path", pax_record("path", &"d/".repeat(80))),
        ("linkpath", pax_record("linkpath", "../target")),
        (
            "times",
            pax_record("mtime", "1700000000.123456789") + &pax_record("atime", "-1.5"),
        ),
        (
            "ids",
            pax_record("uid", "100000") + &pax_record("gid", "100000"),
        ),
        ("size", pax_record("size", "8589934592")),
        ("xattr", pax_record("SCHILY.xattr.user.k", "value")),
        (
            "names",
            pax_record("uname", "root") + &pax_record("gname", "root"),
        ),
    ];
    for (name, data) in all {
        write(out, name, data.as_bytes());
    }
}

fn apply_tar(out: &Path) {
    let (one, two) = (layer(false), layer(true));
    // First byte: the split between the two layers, in blocks.
    let split = u8::try_from(one.len() / BLOCK).unwrap();
    let mut both = vec![split];
    both.extend_from_slice(&one);
    both.extend_from_slice(&two);
    write(out, "two_layers", &both);
    let mut single = vec![0xff];
    single.extend_from_slice(&one);
    write(out, "one_layer", &single);
}

fn layer_stream(out: &Path) {
    let tar = layer(true);
    let mut plain = vec![0u8];
    plain.extend_from_slice(&tar);
    write(out, "plain", &plain);
    let mut gz = flate2::write::GzEncoder::new(vec![1u8], flate2::Compression::best());
    gz.write_all(&tar).unwrap();
    write(out, "gzip", &gz.finish().unwrap());
    let mut zst = vec![2u8];
    zst.extend_from_slice(&zstd::encode_all(&tar[..], 19).unwrap());
    write(out, "zstd", &zst);
    // Highly compressible: reaches the expansion-ratio cap.
    let mut bomb = flate2::write::GzEncoder::new(vec![1u8], flate2::Compression::best());
    bomb.write_all(&vec![0u8; 4 << 20]).unwrap();
    write(out, "gzip_ratio", &bomb.finish().unwrap());
}

fn pod_layout(out: &Path, scratch: &Path) {
    let (kernel, initramfs, rootfs) = (vec![0x11u8; 3000], vec![0x22u8; 100], vec![0x33u8; 4096]);
    let manifest = Manifest {
        format_version: pod::manifest::FORMAT_VERSION,
        builder: "fuzz corpus".into(),
        created: "2024-01-01T00:00:00Z".into(),
        source: Source::default(),
        sections: Sections {
            kernel: SectionInfo::of_bytes(&kernel),
            initramfs: SectionInfo::of_bytes(&initramfs),
            rootfs: SectionInfo::of_bytes(&rootfs),
            verity: None,
        },
        run: Default::default(),
        resources: Resources {
            memory_mib: 64,
            vcpus: 1,
        },
        kernel_cmdline: "quiet".into(),
        kernel: None,
        verity: None,
    };
    let path = scratch.join("seed.pod");
    pod::seal(
        &path,
        &manifest,
        &mut &kernel[..],
        &mut &initramfs[..],
        &mut &rootfs[..],
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    write(out, "whole", &bytes);
    // Cut inside the rootfs section, and after the manifest only.
    write(out, "truncated", &bytes[..bytes.len() - 6000]);
    write(out, "manifest_only", &bytes[..4096]);
}

/// `addr u64, len u32, flags u8` as blk_request's input encodes a descriptor.
fn flat_desc(out: &mut Vec<u8>, addr: u64, len: u32, write_only: bool) {
    out.extend_from_slice(&addr.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.push(u8::from(write_only));
}

fn blk_header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

fn blk_request(out: &Path) {
    use launcher::devices::blk_request::{T_FLUSH, T_GET_ID, T_IN, T_OUT};
    let seeds: [(&str, u32, u64, &[(u32, bool)]); 5] = [
        ("read", T_IN, 3, &[(16, false), (1024, true), (1, true)]),
        (
            "write",
            T_OUT,
            7,
            &[(16, false), (512, false), (512, false), (1, true)],
        ),
        ("flush", T_FLUSH, 0, &[(16, false), (1, true)]),
        ("get_id", T_GET_ID, 0, &[(16, false), (20, true), (1, true)]),
        (
            "overflow",
            T_IN,
            u64::MAX,
            &[(16, false), (512, true), (1, true)],
        ),
    ];
    for (name, kind, sector, descs) in seeds {
        let mut b = blk_header(kind, sector).to_vec();
        for (i, &(len, w)) in descs.iter().enumerate() {
            flat_desc(&mut b, 0x10_000 * (i as u64 + 1), len, w);
        }
        write(out, name, &b);
    }
}

/// Guest memory for virtio_blk_queue from 0x1000: descriptor table at 0x1000, available ring at
/// 0x1100, used ring at 0x1200; headers and buffers above. Each request is a chain
/// (addr, len, flags); `size` is the target's first byte (queue size, read-only bit).
fn queue_seed(size: u8, requests: &[(u32, u64, &[(u64, u32, u16)])]) -> Vec<u8> {
    const BASE: u64 = 0x1000;
    let mut mem = vec![0u8; 0x1000];
    let mut put = |addr: u64, bytes: &[u8]| {
        let at = (addr - BASE) as usize;
        mem[at..at + bytes.len()].copy_from_slice(bytes);
    };
    let mut d = 0u16;
    let mut heads = Vec::new();
    for (r, &(kind, sector, bufs)) in requests.iter().enumerate() {
        let header_at = 0x1300 + 0x20 * r as u64;
        put(header_at, &blk_header(kind, sector));
        heads.push(d);
        let chain: Vec<(u64, u32, u16)> = std::iter::once((header_at, 16, 0))
            .chain(bufs.iter().copied())
            .collect();
        for (i, &(addr, len, flags)) in chain.iter().enumerate() {
            let last = i + 1 == chain.len();
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&len.to_le_bytes());
            let next_flag = if last { 0 } else { 1 };
            desc[12..14].copy_from_slice(&(flags | next_flag).to_le_bytes());
            desc[14..16].copy_from_slice(&(d + 1).to_le_bytes());
            put(BASE + 16 * u64::from(d), &desc);
            d += 1;
        }
    }
    put(0x1102, &(heads.len() as u16).to_le_bytes());
    for (i, h) in heads.iter().enumerate() {
        put(0x1104 + 2 * i as u64, &h.to_le_bytes());
    }
    let mut out = vec![size];
    out.extend_from_slice(&mem);
    // Trailing zeros carry nothing the target reads; keep the seeds small.
    while out.len() > 1 && out.last() == Some(&0) {
        out.pop();
    }
    out
}

fn virtio_blk_queue(out: &Path) {
    use launcher::devices::blk_request::{T_FLUSH, T_GET_ID, T_IN, T_OUT};
    const W: u16 = 2; // VIRTQ_DESC_F_WRITE
    let read: &[(u64, u32, u16)] = &[(0x1400, 1024, W), (0x1c00, 1, W)];
    let write_req: &[(u64, u32, u16)] = &[(0x1800, 512, 0), (0x1c01, 1, W)];
    let get_id: &[(u64, u32, u16)] = &[(0x1a00, 20, W), (0x1c02, 1, W)];
    let flush: &[(u64, u32, u16)] = &[(0x1c03, 1, W)];
    let past_end: &[(u64, u32, u16)] = &[(0x1400, 512, W), (0x1c04, 1, W)];
    write(out, "read", &queue_seed(3, &[(T_IN, 1, read)]));
    write(out, "write", &queue_seed(3, &[(T_OUT, 2, write_req)]));
    write(
        out,
        "write_read_only",
        &queue_seed(0x80 | 3, &[(T_OUT, 2, write_req)]),
    );
    write(
        out,
        "four_kinds",
        &queue_seed(
            3,
            &[
                (T_IN, 0, read),
                (T_OUT, 4, write_req),
                (T_GET_ID, 0, get_id),
                (T_FLUSH, 0, flush),
            ],
        ),
    );
    write(out, "past_end", &queue_seed(3, &[(T_IN, 8, past_end)]));
}

fn cpuid_entry(out: &Path) {
    let key = b"boot-id microcode leaf7";
    let table: Vec<kvm_bindings::kvm_cpuid_entry2> = (0..4u32)
        .map(|i| kvm_bindings::kvm_cpuid_entry2 {
            function: i,
            index: 0,
            flags: 0,
            eax: 0x1000 + i,
            ebx: 0x2000 + i,
            ecx: 0x3000 + i,
            edx: 0x4000 + i,
            padding: [0; 3],
        })
        .collect();
    let entry = launcher::vmm::cpuid_cache::encode_entry(key, &table);
    let mut valid = vec![key.len() as u8];
    valid.extend_from_slice(key);
    valid.extend_from_slice(&entry);
    write(out, "valid", &valid);
    // The same file asked with another key.
    let mut other = vec![3u8];
    other.extend_from_slice(b"xyz");
    other.extend_from_slice(&entry);
    write(out, "other_key", &other);
}

/// One 16-byte `struct virtq_desc`.
fn virtq_desc(b: &mut Vec<u8>, addr: u64, len: u32, flags: u16, next: u16) {
    b.extend_from_slice(&addr.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&next.to_le_bytes());
}

fn console_chain(out: &Path) {
    use launcher::devices::console_chain::{F_INDIRECT, F_NEXT, F_WRITE};
    // (name, queue size, head, receiveq, descriptors)
    type Seed<'a> = (&'a str, u8, u8, u8, &'a [(u64, u32, u16, u16)]);
    let seeds: [Seed; 6] = [
        (
            "transmit_two",
            8,
            0,
            0,
            &[(0x100, 3, F_NEXT, 1), (0x200, 64, 0, 0)],
        ),
        (
            "receive_one",
            8,
            1,
            1,
            &[(0, 0, 0, 0), (0x400, 256, F_WRITE, 0)],
        ),
        ("high_ram", 4, 0, 1, &[(0x1_0000_0000, 0x1000, F_WRITE, 0)]),
        (
            "loop",
            4,
            0,
            0,
            &[(0x100, 8, F_NEXT, 1), (0x200, 8, F_NEXT, 0)],
        ),
        ("indirect", 4, 0, 0, &[(0x100, 16, F_INDIRECT, 0)]),
        ("past_ram", 4, 0, 0, &[(0xfff0, 0x20, 0, 0)]),
    ];
    for (name, size, head, dir, descs) in seeds {
        let mut b = vec![size, head, dir];
        for &(addr, len, flags, next) in descs {
            virtq_desc(&mut b, addr, len, flags, next);
        }
        write(out, name, &b);
    }
}

/// A minimal vmlinux: one `PT_LOAD` at 1 MiB and a `PT_NOTE` holding the PVH entry note.
fn elf_vmlinux(out: &Path) {
    let mut b = vec![0u8; 0x300];
    b[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\0");
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b[24..32].copy_from_slice(&0x100_000u64.to_le_bytes()); // e_entry
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
    let phdr = |b: &mut Vec<u8>,
                at: usize,
                kind: u32,
                offset: u64,
                paddr: u64,
                filesz: u64,
                memsz: u64| {
        b[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        b[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
        b[at + 16..at + 24].copy_from_slice(&paddr.to_le_bytes());
        b[at + 24..at + 32].copy_from_slice(&paddr.to_le_bytes());
        b[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
        b[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
    };
    phdr(&mut b, 64, 1, 0x200, 0x100_000, 0x100, 0x1000); // PT_LOAD
    phdr(&mut b, 120, 4, 0x180, 0, 20, 20); // PT_NOTE
    // Note: namesz 4, descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", the entry.
    let note: Vec<u8> = [4u32, 4, 18]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain(*b"Xen\0")
        .chain(0x100_010u32.to_le_bytes())
        .collect();
    b[0x180..0x180 + note.len()].copy_from_slice(&note);
    b[0x200..0x210].copy_from_slice(&[0xf4; 16]); // hlt
    write(out, "pvh", &b);
    // Without the note, and with a segment below high memory.
    let mut no_note = b.clone();
    no_note[56..58].copy_from_slice(&1u16.to_le_bytes());
    write(out, "no_note", &no_note);
    let mut low = b;
    low[64 + 24..64 + 32].copy_from_slice(&0x1000u64.to_le_bytes());
    write(out, "low_segment", &low);
}

fn pod_artifact(out: &Path) {
    use builder::artifact::{ENTRIES, Entry, build};
    let entry = |i: usize, size: u64, fill: char| Entry {
        media_type: ENTRIES[i].0,
        name: ENTRIES[i].1,
        size,
        sha256: fill.to_string().repeat(64),
    };
    let four: Vec<Entry> = (0..4)
        .map(|i| entry(i, 4096 * (i as u64 + 1), 'a'))
        .collect();
    let all: Vec<Entry> = (0..ENTRIES.len())
        .map(|i| entry(i, 512 + i as u64, 'b'))
        .collect();
    let sha = "c".repeat(64);
    write(
        out,
        "four_entries",
        &build(&four, 40960, &sha, "2024-01-01T00:00:00Z"),
    );
    write(
        out,
        "all_entries",
        &build(&all, 81920, &sha, "2024-01-01T00:00:00Z"),
    );
    let mut wrong_order = four;
    wrong_order.swap(1, 2);
    write(
        out,
        "wrong_order",
        &build(&wrong_order, 40960, &sha, "2024-01-01T00:00:00Z"),
    );
}

/// Guest memory for virtio_console_queue from 0x1000 (its layout): one receive buffer and one
/// transmitted chain holding a stdout frame and a stderr frame, split across two descriptors.
fn virtio_console_queue(out: &Path) {
    use pod::protocol::stdio::{Kind, encode};
    const BASE: usize = 0x1000;
    let mut mem = vec![0u8; 0x1000];
    let mut put = |addr: usize, bytes: &[u8]| {
        mem[addr - BASE..addr - BASE + bytes.len()].copy_from_slice(bytes);
    };
    let mut rx = Vec::new();
    virtq_desc(&mut rx, 0x1800, 256, 2, 0); // device-writable
    put(0x1000, &rx);
    put(0x1100, &[0, 0, 1, 0, 0, 0]); // flags, idx 1, ring[0] = 0
    let mut frames = Vec::new();
    encode(Kind::Stdout, b"hello from the app\n", &mut frames);
    encode(Kind::Stderr, b"oops\n", &mut frames);
    let mut tx = Vec::new();
    virtq_desc(&mut tx, 0x1900, 10, 1, 1);
    virtq_desc(&mut tx, 0x190a, frames.len() as u32 - 10, 0, 0);
    put(0x1400, &tx);
    put(0x1500, &[0, 0, 1, 0, 0, 0]);
    put(0x1900, &frames);
    write(out, "frames", &[&[3u8][..], &mem].concat());
    // The same with a frame header that claims more than the chain holds.
    let mut short = mem.clone();
    short[0x1902 - BASE] = 0xff; // the first frame's length, high byte
    write(out, "short_frame", &[&[3u8][..], &short].concat());
    // A receiveq of 8 whose ring mixes refused chains (a loop, a device-readable buffer, a head
    // outside the queue, a buffer outside RAM, an empty one) with good ones of 1, 2+40 and 64
    // bytes; and the same ring with its avail index 30 (more than the queue size ahead).
    let mut rx = Vec::new();
    virtq_desc(&mut rx, 0x2000, 16, 2 | 1, 0);
    virtq_desc(&mut rx, 0x2100, 1, 2, 0);
    virtq_desc(&mut rx, 0x2200, 16, 0, 0);
    virtq_desc(&mut rx, 0x2300, 2, 2 | 1, 4);
    virtq_desc(&mut rx, 0x2400, 40, 2, 0);
    virtq_desc(&mut rx, 0x2_0000, 16, 2, 0);
    virtq_desc(&mut rx, 0x2600, 0, 2, 0);
    virtq_desc(&mut rx, 0x2700, 64, 2, 0);
    let mut hostile = vec![0u8; 0x1000];
    hostile[..rx.len()].copy_from_slice(&rx);
    let ring: Vec<u8> = [0u16, 8, 0, 1, 2, 999, 3, 5, 6, 7]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    hostile[0x100..0x100 + ring.len()].copy_from_slice(&ring);
    write(out, "rx_hostile", &[&[3u8][..], &hostile].concat());
    hostile[0x102] = 30;
    write(out, "rx_index_ahead", &[&[3u8][..], &hostile].concat());
}

/// A net_chain input: queue size, head, direction, then the descriptors `(addr, len, flags,
/// next)`, padded with zeros to 0x200 bytes so the guest bytes at 0x100..0x10c (where the
/// transmit seeds put their header) read as a zeroed virtio-net header.
fn net_chain_seed(size: u8, receive: bool, descs: &[(u64, u32, u16, u16)]) -> Vec<u8> {
    let mut b = vec![size, 0, u8::from(receive)];
    for &(addr, len, flags, next) in descs {
        virtq_desc(&mut b, addr, len, flags, next);
    }
    b.resize(0x200, 0);
    b
}

fn net_chain(out: &Path) {
    const N: u16 = 1; // VIRTQ_DESC_F_NEXT
    const W: u16 = 2; // VIRTQ_DESC_F_WRITE
    let seeds: [(&str, bool, &[(u64, u32, u16, u16)]); 6] = [
        ("tx_one_buffer", false, &[(0x100, 12 + 60, 0, 0)]),
        (
            "tx_header_apart",
            false,
            &[(0x100, 12, N, 1), (0x2000, 1000, N, 2), (0x3000, 518, 0, 0)],
        ),
        ("tx_too_long", false, &[(0x100, 12 + 1519, 0, 0)]),
        ("rx_one_buffer", true, &[(0x1000, 1530, W, 0)]),
        ("rx_header_apart", true, &[(0x1000, 12, W | N, 1), (0x2000, 1518, W, 0)]),
        ("rx_too_small", true, &[(0x1000, 25, W, 0)]),
    ];
    for (name, receive, descs) in seeds {
        write(out, name, &net_chain_seed(4, receive, descs));
    }
}

fn net_stream(out: &Path) {
    let framed = |lens: &[u32]| {
        let mut b = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            b.extend_from_slice(&len.to_be_bytes());
            b.extend((0..len).map(|j| (i as u32 * 31 + j) as u8));
        }
        b
    };
    let seeds: [(&str, u8, &[u32]); 3] = [
        ("frames", 6, &[60, 1518, 14]),
        ("bad_lengths", 255, &[1519, 60, 13, 0, 14]),
        ("byte_by_byte", 0, &[64, 64]),
    ];
    for (name, step, lens) in seeds {
        let mut b = vec![step];
        b.extend(framed(lens));
        write(out, name, &b);
    }
}

fn stdio_frames(out: &Path) {
    use pod::protocol::stdio::{Kind, encode};
    let mut frames = Vec::new();
    encode(Kind::Stdout, b"hello\n", &mut frames);
    encode(Kind::Stderr, b"err\n", &mut frames);
    encode(Kind::Stdout, &[b'x'; 40_000], &mut frames);
    encode(Kind::StdinEof, b"", &mut frames);
    // An unknown kind, an end of file with a payload, and a frame cut short.
    let odd = [9, 2, 0, b'a', b'b', 4, 1, 0, b'z', 1, 200, 0, b'c'];
    let seeds: [(&str, u8, u8, &[u8]); 3] = [
        ("frames", 6, 0, &frames),
        ("odd_kinds_and_cut", 0, 60, &odd),
        ("large_window", 255, 255, &frames),
    ];
    for (name, step, window, stream) in seeds {
        let mut b = vec![step, window];
        b.extend_from_slice(stream);
        write(out, name, &b);
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: make_corpus OUT_DIR"),
    );
    let scratch = out.join(".scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    type Gen = fn(&Path);
    let gens: [(&str, Gen); 14] = [
        ("tar_header", tar_header),
        ("pax_records", pax_records),
        ("apply_tar", apply_tar),
        ("layer_stream", layer_stream),
        ("blk_request", blk_request),
        ("virtio_blk_queue", virtio_blk_queue),
        ("cpuid_entry", cpuid_entry),
        ("console_chain", console_chain),
        ("elf_vmlinux", elf_vmlinux),
        ("pod_artifact", pod_artifact),
        ("virtio_console_queue", virtio_console_queue),
        ("net_chain", net_chain),
        ("net_stream", net_stream),
        ("stdio_frames", stdio_frames),
    ];
    for (target, generate) in gens {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        generate(&dir);
    }
    let dir = out.join("pod_layout");
    std::fs::create_dir_all(&dir).unwrap();
    pod_layout(&dir, &scratch);
    std::fs::remove_dir(&scratch).unwrap();
}
