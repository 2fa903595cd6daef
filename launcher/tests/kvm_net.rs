//! The network device (virtio-net) on this machine's /dev/kvm: probe guests (probes/net.c) drive
//! it through the real VM built by `build_vm`, with one end of a socketpair as the network
//! backend and the test at the other end playing passt (length-prefixed frames). The vCPU runs
//! on a minimal loop over `handle_exit`, the backend thread is `virtio_net::serve`; in the
//! first test both run under the launcher's seccomp filters for their kinds.
//! Linux cannot boot on this host's KVM (kvm_pvm), so the device is proven with probe guests.

mod probes;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use launcher::devices::Devices;
use launcher::devices::virtio_net::{NetBackend, NetCounters, NetLink, serve};
use launcher::layout;
use launcher::sandbox::{self, ThreadKind};
use launcher::vmm::exit::StopReason;
use launcher::vmm::run::Marks;
use launcher::vmm::{BootInputs, Vm, build_vm};
use probes::direct::{Captured, vcpu_loop};

/// The MAC address the tests give the guest.
const MAC: [u8; 6] = [0x02, 0x68, 0x79, 0x70, 0x64, 0x01];

/// A probe VM with a network device, its vCPU and backend threads running.
struct Probe {
    _vm: Vm,
    devices: Arc<Mutex<Devices>>,
    serial: Captured,
    done: mpsc::Receiver<StopReason>,
    stop: Arc<AtomicBool>,
    net_thread: Option<JoinHandle<()>>,
}

/// Installs `kind`'s seccomp filter on the calling thread when `sandboxed`.
fn filter(kind: ThreadKind, sandboxed: bool) {
    if sandboxed {
        let prog = sandbox::compile(kind).unwrap();
        sandbox::install_on_this_thread(kind, &prog).unwrap();
    }
}

/// Builds probe `net` with `defines` into a 64 MiB, 1-vCPU VM whose network backend is one end
/// of a socketpair, starts its vCPU and backend threads; returns it and the other end.
fn start(dir: &std::path::Path, defines: &[&str], sandboxed: bool) -> (Probe, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (
        start_on(dir, defines, sandboxed, NetLink::Stream(ours)),
        theirs,
    )
}

/// [`start`] with the device on `link`.
fn start_on(dir: &std::path::Path, defines: &[&str], sandboxed: bool, link: NetLink) -> Probe {
    let mut all = vec![format!("VNET={:#x}u", layout::VIRTIO_NET_ADDR)];
    all.extend(defines.iter().map(|d| d.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let kernel = probes::build(dir, "net", &all);
    let serial = Captured::default();
    let inputs = BootInputs {
        kernel: &kernel,
        initramfs: Vec::new(),
        cmdline: "probe=1".into(),
        memory_mib: 64,
        vcpus: 1,
        disks: Vec::new(),
        console: Box::new(serial.clone()),
        stdio: Box::new(|_| {}),
        net: Some(NetBackend { link, mac: MAC }),
        use_pvh: true,
        backing: None,
        kernel_hz_known: false,
    };
    let mut vm = build_vm(inputs, &mut Marks::new(Instant::now(), "kvm")).unwrap();
    let vcpu = vm.runner.vcpus.pop().unwrap();
    let devices = vm.runner.devices.clone();
    let io = devices.lock().unwrap().net.as_ref().unwrap().io().unwrap();
    if sandboxed {
        sandbox::install_sigsys_reporter().unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (devices.clone(), stop.clone());
    let net_thread = std::thread::spawn(move || {
        filter(ThreadKind::Net, sandboxed);
        serve(io, &s, &*d);
    });
    let (tx, done) = mpsc::channel();
    let d = devices.clone();
    std::thread::spawn(move || {
        filter(ThreadKind::Vcpu, sandboxed);
        let _ = tx.send(vcpu_loop(vcpu, d));
    });
    Probe {
        _vm: vm,
        devices,
        serial,
        done,
        stop,
        net_thread: Some(net_thread),
    }
}

impl Probe {
    /// Waits (up to `limit`) for the guest to stop; asserts it exited with 0; stops the backend
    /// thread.
    fn expect_success(&mut self, limit: Duration) {
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
        self.stop.store(true, Ordering::SeqCst);
        self.net_thread.take().unwrap().join().unwrap();
    }

    fn counters(&self) -> NetCounters {
        self.devices
            .lock()
            .unwrap()
            .net
            .as_ref()
            .unwrap()
            .counters()
    }
}

/// Reads one length-prefixed frame from the backend's end.
fn read_frame(peer: &mut UnixStream) -> Vec<u8> {
    let mut p = [0u8; 4];
    peer.read_exact(&mut p).expect("a frame from the guest");
    let mut f = vec![0u8; u32::from_be_bytes(p) as usize];
    peer.read_exact(&mut f).unwrap();
    f
}

fn write_frame(peer: &mut UnixStream, f: &[u8]) {
    peer.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
    peer.write_all(f).unwrap();
}

/// The text a probe frame carries after its Ethernet header, up to the pattern.
fn text_of(f: &[u8]) -> String {
    assert_eq!(&f[..6], &[0xff; 6], "broadcast");
    assert_eq!(&f[6..12], &MAC, "from the configured MAC");
    assert_eq!(&f[12..14], &[0x88, 0xb5]);
    f[14..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b' ' || **b == b'?')
        .map(|&b| b as char)
        .collect()
}

/// A frame from the host: to the guest's MAC, `len` bytes, a pattern from `seed`.
fn host_frame(len: usize, seed: u32) -> Vec<u8> {
    let mut f = MAC.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]);
    f.extend((14..len as u32).map(|i| (i.wrapping_mul(31) ^ seed) as u8));
    f.truncate(len);
    f
}

#[test]
fn kvm_net_frames_flow_both_ways_under_the_seccomp_filters() {
    if !probes::kvm_available("kvm_net_frames_flow_both_ways") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let echoes = 40usize;
    let (mut p, mut peer) = start(dir.path(), &[&format!("ECHO={echoes}")], true);
    peer.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // The guest's three frames, with their length prefixes, in order.
    let a = read_frame(&mut peer);
    assert_eq!(
        (a.len(), text_of(&a).as_str()),
        (60, "hello from the guest")
    );
    let b = read_frame(&mut peer);
    assert_eq!((b.len(), text_of(&b).as_str()), (1518, "largest frame"));
    assert!(
        b[27..]
            .iter()
            .enumerate()
            .all(|(i, &x)| x == ((i + 27) * 7) as u8),
        "the bytes of all three descriptors, in order"
    );
    let c = read_frame(&mut peer);
    assert_eq!(c.len(), 14);
    // Frames injected by the backend reach the guest, which sends each back.
    let sizes: Vec<usize> = (0..echoes).map(|i| 14 + (i * 379) % 1505).collect();
    let mut sent = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let f = host_frame(n, i as u32);
        write_frame(&mut peer, &f);
        sent.push(f);
    }
    for (i, f) in sent.iter().enumerate() {
        assert_eq!(&read_frame(&mut peer), f, "echo {i}");
    }
    p.expect_success(Duration::from_secs(20));
    assert!(
        p.serial.text().contains("MAC 02:68:79:70:64:01 MTU 1500"),
        "{}",
        p.serial.text()
    );
    let k = p.counters();
    assert_eq!(
        (k.tx_frames, k.rx_frames),
        (3 + echoes as u64, echoes as u64)
    );
    assert_eq!(k.rx_bytes, sizes.iter().sum::<usize>() as u64);
    assert_eq!((k.tx_refused, k.rx_refused, k.rx_bad_length), (0, 0, 0));
}

#[test]
fn kvm_net_malformed_chains_and_oversized_frames_are_refused_or_dropped() {
    if !probes::kvm_available("kvm_net_malformed_chains") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, mut peer) = start(dir.path(), &["HOSTILE=1"], false);
    peer.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Only the marker frames get through the transmit side.
    for want in ["M1", "M2", "R?"] {
        assert_eq!(text_of(&read_frame(&mut peer)), want);
    }
    // The guest has posted three malformed buffers, a 60-byte one and a good one. A frame over
    // the maximum (passt's largest) and a runt are skipped before any buffer; the first 100-byte
    // frame passes the malformed buffers and does not fit the small one: dropped; the second
    // lands in the good buffer.
    write_frame(&mut peer, &vec![0x55; 65_550]);
    write_frame(&mut peer, &[0x66; 10]);
    write_frame(&mut peer, &host_frame(100, 1));
    let good = host_frame(100, 2);
    write_frame(&mut peer, &good);
    assert_eq!(
        read_frame(&mut peer),
        good,
        "the guest's copy of the good frame"
    );
    assert_eq!(text_of(&read_frame(&mut peer)), "M3");
    p.expect_success(Duration::from_secs(20));
    let k = p.counters();
    assert_eq!(k.tx_refused, 12, "{k:?}");
    assert_eq!(k.tx_frames, 5, "M1, M2, R?, the copy, M3");
    assert_eq!(
        (k.rx_refused, k.rx_no_room, k.rx_bad_length, k.rx_frames),
        (3, 1, 2, 1),
        "{k:?}"
    );
}

/// A real passt (Debian's `passt`) as the backend, handed its end of the socketpair with
/// `--fd`, as the launcher's network code will: the guest's ARP request for its gateway goes
/// out through the device and passt's reply comes back through it; then a UDP datagram from the
/// guest reaches a socket of this test on the host's loopback and the answer reaches the guest.
/// The stream protocol and frame sizes of the device are passt's.
#[test]
fn kvm_net_a_real_passt_answers_the_guest_through_the_device() {
    if !probes::kvm_available("kvm_net_a_real_passt") {
        return;
    }
    let Ok(passt) = which_passt() else {
        hyperpod_tests::skip::skipped(
            "kvm_net_a_real_passt",
            "no passt binary (Debian package passt)",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A UDP server on the host's loopback: passt maps the gateway's address to the host.
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let port = server.local_addr().unwrap().port();
    let answer = std::thread::spawn(move || {
        let mut b = [0u8; 256];
        let (n, from) = server.recv_from(&mut b).expect("the guest's datagram");
        server.send_to(b"pong from the host", from).unwrap();
        b[..n].to_vec()
    });
    // 10.0.2.15/24, gateway 10.0.2.2.
    let udp_port = format!("UDP_PORT={port}");
    let (mut p, peer) = start(
        dir.path(),
        &[
            "ARP=1",
            "GUEST_IP=0x0a00020fu",
            "GW_IP=0x0a000202u",
            &udp_port,
        ],
        false,
    );
    let fd = peer.as_raw_fd();
    let mut cmd = std::process::Command::new(passt);
    cmd.args([
        "--foreground",
        "--quiet",
        "--fd",
        "3",
        "--mtu",
        "1500",
        "--address",
        "10.0.2.15",
        "--netmask",
        "24",
        "--gateway",
        "10.0.2.2",
    ]);
    // SAFETY: between fork and exec the child only calls dup2, which is async-signal-safe; the
    // copy at 3 has no close-on-exec flag, so passt inherits it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start passt");
    drop(peer);
    let done = p.done.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let why = done.unwrap_or_else(|_| panic!("no ARP reply; serial: {}", p.serial.text()));
    assert_eq!(why, StopReason::ExitPort(0), "serial: {}", p.serial.text());
    p.stop.store(true, Ordering::SeqCst);
    p.net_thread.take().unwrap().join().unwrap();
    let text = p.serial.text();
    assert!(text.contains("ARP REPLY "), "{text}");
    assert_eq!(answer.join().unwrap(), b"ping from the guest");
    assert!(text.contains("UDP REPLY pong from the host\n"), "{text}");
    let k = p.counters();
    eprintln!("{text}{k:?}");
    assert!(k.tx_frames >= 2 && k.rx_frames >= 2, "{k:?}");
    assert_eq!(
        (k.tx_refused, k.rx_refused, k.rx_bad_length),
        (0, 0, 0),
        "{k:?}"
    );
}

fn which_passt() -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("passt"))
        .find(|p| p.is_file())
        .ok_or(())
}

/// VmRSS of this process in KiB.
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `send(2)` without blocking; how many bytes the socket took.
fn try_send(s: &UnixStream, b: &[u8]) -> usize {
    // SAFETY: `b` is a valid buffer for the duration of the call.
    let n = unsafe {
        libc::send(
            s.as_raw_fd(),
            b.as_ptr().cast(),
            b.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    n.max(0) as usize
}

/// Set in the child process that runs the never-refilling guest alone, so that its RSS is its
/// own (other tests' VMs share a test process).
const CHILD_ENV: &str = "HYPERPOD_KVM_NET_RSS_CHILD";

#[test]
fn kvm_net_a_guest_that_never_refills_its_receive_queue_costs_no_host_memory() {
    if !probes::kvm_available("kvm_net_never_refills") {
        return;
    }
    if std::env::var_os(CHILD_ENV).is_none() {
        let name = "kvm_net_a_guest_that_never_refills_its_receive_queue_costs_no_host_memory";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        eprintln!("{text}");
        assert!(out.status.success(), "the child run failed");
        assert!(text.contains("1 passed"), "the child ran the test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rounds = 10_000u64;
    let (mut p, peer) = start(dir.path(), &[&format!("NOREFILL={rounds}"), "NRX=8"], false);
    // The backend drains what the guest sends, counting its frames.
    let mut reader = peer.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let drain = std::thread::spawn(move || {
        assert_eq!(text_of(&read_frame(&mut reader)), "R?");
        loop {
            let f = read_frame(&mut reader);
            match text_of(&f).as_str() {
                "round" => g.fetch_add(1, Ordering::SeqCst),
                "END" => return,
                other => panic!("unexpected frame {other:?}"),
            };
        }
    });
    // Meanwhile the backend offers frames as fast as the socket takes them.
    let mut frame = (1000u32).to_be_bytes().to_vec();
    frame.extend(host_frame(1000, 7));
    let (mut offered, mut at) = (0u64, 0usize);
    let mut mid = None;
    let start = Instant::now();
    while got.load(Ordering::SeqCst) < rounds {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "serial: {}",
            p.serial.text()
        );
        let n = try_send(&peer, &frame[at..]);
        offered += n as u64;
        at = (at + n) % frame.len();
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        if mid.is_none() && got.load(Ordering::SeqCst) >= rounds / 10 {
            mid = Some((rss_kib(), offered));
        }
    }
    drain.join().unwrap();
    p.expect_success(Duration::from_secs(20));
    let end = rss_kib();
    let (mid_rss, mid_offered) = mid.unwrap();
    let k = p.counters();
    eprintln!(
        "never refilled: {rounds} rounds; the backend got {offered} bytes into the socket \
         ({mid_offered} by round {}); RSS {mid_rss} KiB then {end} KiB; {k:?}",
        rounds / 10
    );
    assert_eq!(k.rx_frames, 8, "one frame per posted buffer, no more");
    assert_eq!(k.tx_refused, rounds);
    assert_eq!(k.tx_frames, rounds + 2, "R?, the rounds, END");
    // Backpressure: what the backend could write is the posted buffers plus the socket's
    // buffers, not the flood.
    assert!(offered < 4 << 20, "{offered} bytes taken");
    assert_eq!(
        offered, mid_offered,
        "nothing more was taken after round 300"
    );
    assert!(end <= mid_rss + 512, "RSS {mid_rss} KiB → {end} KiB");
}

/// Set in the child process that runs the launcher's own run loop (it installs seccomp filters
/// on the test's thread, which the test harness must not reuse).
const RUN_CHILD_ENV: &str = "HYPERPOD_KVM_NET_RUN_CHILD";

/// The launcher's run loop (`vmm::run::run`, as `hyperlaunch` runs a VM) with a network device:
/// it starts the `net` thread under its filter and counts it among the threads vCPU 0 waits
/// for; frames go both ways and the run ends with the guest's exit code. A system call outside
/// a filter would end the child with 125 and a `sandbox:` line.
#[test]
fn kvm_net_the_run_loop_serves_the_network_under_the_sandbox() {
    if !probes::kvm_available("kvm_net_the_run_loop") {
        return;
    }
    if std::env::var_os(RUN_CHILD_ENV).is_none() {
        let name = "kvm_net_the_run_loop_serves_the_network_under_the_sandbox";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(RUN_CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        eprintln!("{text}");
        assert!(out.status.success(), "the child run failed");
        assert!(text.contains("1 passed"), "the child ran the test");
        assert!(!text.contains("sandbox:"), "a filter stopped the run");
        return;
    }
    let kernel = {
        let dir = tempfile::tempdir().unwrap();
        let define = format!("VNET={:#x}u", layout::VIRTIO_NET_ADDR);
        probes::build(dir.path(), "net", &[&define, "ECHO=5"])
        // The directory goes now: nothing may unlink files once the filters are in.
    };
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let inputs = BootInputs {
        kernel: &kernel,
        initramfs: Vec::new(),
        cmdline: "probe=1".into(),
        memory_mib: 64,
        vcpus: 1,
        disks: Vec::new(),
        console: Box::new(Captured::default()),
        stdio: Box::new(|_| {}),
        net: Some(NetBackend {
            link: NetLink::Stream(ours),
            mac: MAC,
        }),
        use_pvh: true,
        backing: None,
        kernel_hz_known: false,
    };
    let mut marks = Marks::new(Instant::now(), "kvm");
    let vm = build_vm(inputs, &mut marks).unwrap();
    let devices = vm.runner.devices.clone();
    peer.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let backend = std::thread::spawn(move || {
        for len in [60, 1518, 14] {
            assert_eq!(read_frame(&mut peer).len(), len);
        }
        for i in 0..5u32 {
            let f = host_frame(100 + 200 * i as usize, i);
            write_frame(&mut peer, &f);
            assert_eq!(read_frame(&mut peer), f);
        }
    });
    let opts = launcher::vmm::run::RunOptions {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let outcome = launcher::vmm::run::run(vm.runner, &opts, &mut marks);
    // From here this thread runs under the main thread's filter.
    assert_eq!(outcome.code, 0, "{:?}", outcome.message);
    backend.join().unwrap();
    let k = devices.lock().unwrap().net.as_ref().unwrap().counters();
    assert_eq!((k.tx_frames, k.rx_frames), (8, 5), "{k:?}");
}

/// Throughput of the device with a probe guest on this KVM (ignored: a benchmark, run by
/// `bench/net-device.sh`): guest → backend (1514-byte frames, 1 and 16 per kick) and backend → guest
/// (16 receive buffers reposted at once). Time is from the first frame to the last at the far
/// end. Prints results; asserts only that every frame arrived.
#[test]
#[ignore]
fn bench_net_throughput() {
    if !probes::kvm_available("bench_net_throughput") {
        return;
    }
    let frames: u64 = std::env::var("NET_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000u64)
        .next_multiple_of(16);
    let mib = |n: u64, secs: f64| (n * 1514) as f64 / secs / f64::from(1 << 20);
    for batch in [1u64, 16] {
        let dir = tempfile::tempdir().unwrap();
        let defines = [format!("BENCH_TX={frames}"), format!("BATCH={batch}")];
        let defines: Vec<&str> = defines.iter().map(String::as_str).collect();
        let (mut p, mut peer) = start(dir.path(), &defines, false);
        peer.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut n = 0u64;
        let mut first = None;
        loop {
            let f = read_frame(&mut peer);
            first.get_or_insert_with(Instant::now);
            if f.len() != 1514 {
                assert_eq!(text_of(&f), "END");
                break;
            }
            n += 1;
        }
        let secs = first.unwrap().elapsed().as_secs_f64();
        p.expect_success(Duration::from_secs(20));
        assert_eq!(n, frames);
        println!(
            "virtio-net guest -> backend: {frames} frames of 1514 bytes, {batch} per kick: \
             {secs:.3} s, {:.0} frames/s, {:.1} MiB/s",
            frames as f64 / secs,
            mib(frames, secs)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, mut peer) = start(
        dir.path(),
        &[&format!("BENCH_RX={frames}"), "NRX=16"],
        false,
    );
    peer.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    assert_eq!(text_of(&read_frame(&mut peer)), "R?");
    let mut writer = peer.try_clone().unwrap();
    let f = host_frame(1514, 0);
    let mut framed = 1514u32.to_be_bytes().to_vec();
    framed.extend_from_slice(&f);
    let start_at = Instant::now();
    let feeder = std::thread::spawn(move || {
        for _ in 0..frames {
            writer.write_all(&framed).unwrap();
        }
    });
    assert_eq!(text_of(&read_frame(&mut peer)), "END");
    let secs = start_at.elapsed().as_secs_f64();
    feeder.join().unwrap();
    p.expect_success(Duration::from_secs(20));
    assert_eq!(p.counters().rx_frames, frames);
    println!(
        "virtio-net backend -> guest: {frames} frames of 1514 bytes, 16 buffers: {secs:.3} s, \
         {:.0} frames/s, {:.1} MiB/s",
        frames as f64 / secs,
        mib(frames, secs)
    );
}

#[test]
fn kvm_net_frames_flow_through_a_tap_device_under_the_seccomp_filters() {
    let test = "kvm_net_frames_flow_through_a_tap_device_under_the_seccomp_filters";
    if !probes::kvm_available(test) {
        return;
    }
    let name = format!("hpk{}", std::process::id() % 100_000);
    let tap = match launcher::net::tap::create(Some(&name)) {
        Ok(t) => t,
        Err(launcher::net::NetError::TapPermission) => {
            hyperpod_tests::skip::skipped(test, "creating a TAP device needs CAP_NET_ADMIN");
            return;
        }
        Err(e) => panic!("TAP device: {e}"),
    };
    // The guest echoes every frame it gets: no IPv6 autoconfiguration traffic on this link
    // (and no IPv4 address, so none of that either).
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    launcher::net::tap::bring_up(&name, 1500).unwrap();
    let host = probes::packet::PacketSocket::bind(&name);
    let dir = tempfile::tempdir().unwrap();
    let echoes = 40usize;
    let mut p = start_on(
        dir.path(),
        &[&format!("ECHO={echoes}")],
        true,
        NetLink::Tap(tap.fd),
    );
    // The guest's three frames, one per read of the device, without the virtio-net header.
    let a = host.recv();
    assert_eq!(
        (a.len(), text_of(&a).as_str()),
        (60, "hello from the guest")
    );
    let b = host.recv();
    assert_eq!((b.len(), text_of(&b).as_str()), (1518, "largest frame"));
    assert_eq!(host.recv().len(), 14);
    // Frames sent on the interface reach the guest, which sends each back (up to the link's
    // 1500-byte MTU plus the Ethernet header).
    let sizes: Vec<usize> = (0..echoes).map(|i| 14 + (i * 379) % 1501).collect();
    let mut sent = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let f = host_frame(n, i as u32);
        host.send(&f);
        sent.push(f);
    }
    for (i, f) in sent.iter().enumerate() {
        assert_eq!(&host.recv(), f, "echo {i}");
    }
    p.expect_success(Duration::from_secs(20));
    let k = p.counters();
    assert_eq!(
        (k.tx_frames, k.rx_frames),
        (3 + echoes as u64, echoes as u64)
    );
    assert_eq!(k.rx_bytes, sizes.iter().sum::<usize>() as u64);
    assert_eq!((k.tx_refused, k.rx_refused, k.rx_bad_length), (0, 0, 0));
    drop(p);
    // Not persistent: gone with the last descriptor.
    assert!(!std::path::Path::new("/sys/class/net").join(&name).exists());
}
