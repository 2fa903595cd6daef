//! Boots a Linux kernel and initramfs on the KVM engine with a network device whose backend (the
//! other end of a socketpair, speaking passt's stream protocol) answers ARP requests and ICMP
//! echo requests for 10.0.2.2, as a gateway would. The guest's console goes to stdout; at the end
//! it prints `OUTCOME <code>` and the device's counters (`NETCOUNTERS ...`).
//!
//! `scripts/nested-net-check` runs it inside a QEMU TCG VM whose emulated SVM gives it a real
//! KVM (this host's `kvm_pvm` cannot run Linux), so Linux's own virtio-net driver meets the
//! device. Usage: `net_ping_backend KERNEL INITRAMFS`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use launcher::devices::virtio_net::{DEFAULT_MAC, NetBackend, NetLink};
use launcher::vmm::run::{Marks, RunOptions};
use launcher::vmm::{BootInputs, build_vm};

/// The gateway's MAC and IPv4 address.
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GW_IP: [u8; 4] = [10, 0, 2, 2];

/// The Internet checksum of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| (u32::from(c[0]) << 8) | u32::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The gateway's answer to frame `f`, if it has one.
fn answer(f: &[u8]) -> Option<Vec<u8>> {
    if f.len() < 42 {
        return None;
    }
    let mut r = f.to_vec();
    r[..6].copy_from_slice(&f[6..12]);
    r[6..12].copy_from_slice(&GW_MAC);
    if f[12..14] == [8, 6] && f[20..22] == [0, 1] && f[38..42] == GW_IP {
        // ARP request for the gateway: the reply.
        r.truncate(42);
        r[21] = 2;
        r[22..28].copy_from_slice(&GW_MAC);
        r[28..32].copy_from_slice(&GW_IP);
        r[32..38].copy_from_slice(&f[22..28]);
        r[38..42].copy_from_slice(&f[28..32]);
        return Some(r);
    }
    let ihl = usize::from(f[14] & 15) * 4;
    let icmp = 14 + ihl;
    if f[12..14] == [8, 0] && f[23] == 1 && f[30..34] == GW_IP && f.get(icmp) == Some(&8) {
        // ICMP echo request to the gateway: the echo reply.
        r[26..30].copy_from_slice(&f[30..34]);
        r[30..34].copy_from_slice(&f[26..30]);
        r[icmp] = 0;
        r[icmp + 2..icmp + 4].fill(0);
        let c = checksum(&r[icmp..]);
        r[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
        return Some(r);
    }
    None
}

/// Reads length-prefixed frames from `s` until it closes, writing back the answers.
fn gateway(mut s: UnixStream) -> (u64, u64) {
    let (mut seen, mut answered) = (0, 0);
    loop {
        let mut p = [0u8; 4];
        if s.read_exact(&mut p).is_err() {
            return (seen, answered);
        }
        let mut f = vec![0u8; u32::from_be_bytes(p) as usize];
        if s.read_exact(&mut f).is_err() {
            return (seen, answered);
        }
        seen += 1;
        if let Some(r) = answer(&f) {
            answered += 1;
            let prefix = (r.len() as u32).to_be_bytes();
            if s.write_all(&prefix).and_then(|()| s.write_all(&r)).is_err() {
                return (seen, answered);
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, kernel, initramfs] = &args[..] else {
        eprintln!("usage: net_ping_backend KERNEL INITRAMFS");
        std::process::exit(2);
    };
    let kernel = std::fs::read(kernel).expect("read the kernel");
    let initramfs = std::fs::read(initramfs).expect("read the initramfs");
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    std::thread::spawn(move || {
        let (seen, answered) = gateway(theirs);
        println!("GATEWAY: {seen} frames, {answered} answered");
    });
    let inputs = BootInputs {
        kernel: &kernel,
        initramfs: vec![&initramfs],
        cmdline: "panic=-1 reboot=k".into(),
        memory_mib: 256,
        vcpus: 1,
        disks: Vec::new(),
        console: Box::new(std::io::stdout()),
        stdio: Box::new(|_| {}),
        net: Some(NetBackend {
            link: NetLink::Stream(ours),
            mac: DEFAULT_MAC,
        }),
        use_pvh: true,
        backing: None,
        kernel_hz_known: false,
    };
    let mut marks = Marks::new(Instant::now(), "kvm");
    let vm = build_vm(inputs, &mut marks).expect("build the VM");
    let devices = vm.runner.devices.clone();
    let opts = RunOptions {
        timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    };
    // The run installs the launcher's seccomp filters, this thread's among them.
    let outcome = launcher::vmm::run::run(vm.runner, &opts, &mut marks);
    let counters = devices
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .net
        .as_ref()
        .map(|n| n.counters());
    println!("OUTCOME {} {:?}", outcome.code, outcome.message);
    println!("NETCOUNTERS {counters:?}");
    std::process::exit(0);
}
