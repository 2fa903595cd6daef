//! The stdio console (virtio-console) on this machine's /dev/kvm: probe guests
//! (tests/probes/vcon.c) drive it through the real VM built by `build_vm`, run here by a minimal
//! vCPU loop over `handle_exit`, with the test as the console's owner (sink and `push_rx`).

mod probes;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use launcher::devices::Devices;
use launcher::devices::virtio_console::ConsoleSink;
use launcher::layout;
use launcher::vmm::exit::StopReason;
use launcher::vmm::run::Marks;
use launcher::vmm::{BootInputs, Vm, build_vm};
use probes::direct::{Captured, vcpu_loop};

/// A probe VM started on its own vCPU thread.
struct Probe {
    /// Keeps the VM (memory, KVM handles) alive while the vCPU runs.
    _vm: Vm,
    devices: Arc<Mutex<Devices>>,
    serial: Captured,
    done: mpsc::Receiver<StopReason>,
}

/// Builds probe `vcon` with `defines` into a 64 MiB, 1-vCPU VM whose stdio output goes to
/// `sink`, and starts it.
fn start(dir: &std::path::Path, defines: &[&str], sink: ConsoleSink) -> Probe {
    let mut all = vec![format!("VCON={:#x}u", layout::VIRTIO_CONSOLE_ADDR)];
    all.extend(defines.iter().map(|d| d.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let kernel = probes::build(dir, "vcon", &all);
    let serial = Captured::default();
    let inputs = BootInputs {
        kernel: &kernel,
        initramfs: Vec::new(),
        cmdline: "probe=1".into(),
        memory_mib: 64,
        vcpus: 1,
        disks: Vec::new(),
        console: Box::new(serial.clone()),
        stdio: sink,
        net: None,
        use_pvh: true,
        backing: None,
        kernel_hz_known: false,
    };
    let mut vm = build_vm(inputs, &mut Marks::new(Instant::now(), "kvm")).unwrap();
    let vcpu = vm.runner.vcpus.pop().unwrap();
    let devices = vm.runner.devices.clone();
    let (tx, done) = mpsc::channel();
    let d = devices.clone();
    std::thread::spawn(move || {
        let _ = tx.send(vcpu_loop(vcpu, d));
    });
    Probe {
        _vm: vm,
        devices,
        serial,
        done,
    }
}

impl Probe {
    /// Waits (up to `limit`) for the guest to stop; asserts it exited with 0.
    fn expect_success(&self, limit: Duration) {
        let why = self
            .done
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("the probe did not finish; serial: {}", self.serial.text()));
        assert_eq!(
            why,
            StopReason::ExitPort(0),
            "serial: {}",
            self.serial.text()
        );
    }
}

fn capture() -> (Captured, ConsoleSink) {
    let c = Captured::default();
    let inner = c.0.clone();
    (
        c,
        Box::new(move |b: &[u8]| inner.lock().unwrap().extend_from_slice(b)),
    )
}

/// Waits up to `limit` for `evt` to be readable, then clears it.
fn wait_evt(evt: &vmm_sys_util::eventfd::EventFd, limit: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, limit.as_millis() as i32) };
    if n == 1 {
        let _ = evt.read();
    }
    n == 1
}

#[test]
fn kvm_console_transmitq_bytes_reach_the_sink() {
    if !probes::kvm_available("kvm_console_transmitq") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, sink) = capture();
    let p = start(dir.path(), &[], sink);
    p.expect_success(Duration::from_secs(20));
    assert_eq!(
        out.text(),
        "one chain, one buffer\nthree buffers in one chain\nfirst of two\nsecond of two\n\
         top of RAM here\n"
    );
    assert_eq!(p.devices.lock().unwrap().stdio.refused_chains(), 0);
}

#[test]
fn kvm_console_push_rx_reaches_a_guest_that_posts_buffers() {
    if !probes::kvm_available("kvm_console_push_rx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // 4 buffers of 64 bytes for 20000 bytes: the host waits for the guest to repost many times.
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let (out, sink) = capture();
    let p = start(
        dir.path(),
        &[&format!("ECHO={}", data.len()), "NRX=4", "RXLEN=64"],
        sink,
    );
    let ready = p
        .devices
        .lock()
        .unwrap()
        .stdio
        .rx_ready_evt()
        .try_clone()
        .unwrap();
    let mut rest = &data[..];
    let mut step = 1usize;
    let mut waits = 0;
    let start = Instant::now();
    while !rest.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} bytes not taken; serial: {}",
            rest.len(),
            p.serial.text()
        );
        // Uneven pieces: some fit in one buffer, some span several.
        step = step * 37 % 301 + 1;
        let n = step.min(rest.len());
        let taken = p.devices.lock().unwrap().stdio.push_rx(&rest[..n]);
        rest = &rest[taken..];
        if taken < n {
            wait_evt(&ready, Duration::from_millis(500));
            waits += 1;
        }
    }
    p.expect_success(Duration::from_secs(20));
    assert!(waits > 10, "the guest's buffers ran out and were reposted");
    assert_eq!(out.bytes(), data, "the guest echoed every byte in order");
}

#[test]
fn kvm_console_malformed_chains_reconfiguration_and_reset_are_survived() {
    if !probes::kvm_available("kvm_console_hostile") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, sink) = capture();
    let p = start(dir.path(), &["HOSTILE=1"], sink);
    let ready = p
        .devices
        .lock()
        .unwrap()
        .stdio
        .rx_ready_evt()
        .try_clone()
        .unwrap();
    // The guest posts five malformed receive buffers and a good one, then says "R?".
    let start = Instant::now();
    loop {
        let taken = p.devices.lock().unwrap().stdio.push_rx(b"hello");
        if taken > 0 {
            assert_eq!(taken, 5);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serial: {}",
            p.serial.text()
        );
        wait_evt(&ready, Duration::from_millis(200));
    }
    p.expect_success(Duration::from_secs(20));
    assert_eq!(out.text(), "M1M2R?M3M4END");
    let mut d = p.devices.lock().unwrap();
    // 11 malformed transmit chains (the head outside the queue among them), 5 receive buffers.
    assert_eq!(d.stdio.refused_chains(), 16);
    // The guest never refills its receiveq: nothing is taken, however often the host offers.
    for _ in 0..10_000 {
        assert_eq!(d.stdio.push_rx(&[0x55; 4096]), 0);
    }
}

/// Guest → host throughput through the transmitq (ignored: a benchmark, run by
/// `bench/console.sh`). Prints results; asserts only that every byte arrived.
#[test]
#[ignore]
fn bench_console_transmit_throughput() {
    if !probes::kvm_available("bench_console_transmit_throughput") {
        return;
    }
    let mib: u64 = std::env::var("CONSOLE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    for batch in [1u32, 16] {
        let dir = tempfile::tempdir().unwrap();
        let count = Arc::new(Mutex::new((0u64, None::<Instant>, None::<Instant>)));
        let c = count.clone();
        let sink = Box::new(move |b: &[u8]| {
            let now = Instant::now();
            let mut g = c.lock().unwrap();
            g.0 += b.len() as u64;
            g.1.get_or_insert(now);
            g.2 = Some(now);
        });
        let p = start(
            dir.path(),
            &[&format!("BENCH_MIB={mib}"), &format!("BATCH={batch}")],
            sink,
        );
        p.expect_success(Duration::from_secs(300));
        let (bytes, first, last) = *count.lock().unwrap();
        assert_eq!(bytes, mib << 20);
        let secs = (last.unwrap() - first.unwrap()).as_secs_f64();
        println!(
            "console transmitq: {mib} MiB in 4 KiB chains, {batch} chain(s) per kick: \
             {secs:.3} s, {:.0} MiB/s",
            mib as f64 / secs
        );
    }
}
