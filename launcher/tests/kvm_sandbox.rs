//! The seccomp sandbox on a whole KVM launch (launcher/src/sandbox.rs): a probe guest runs to its
//! end under the filters, and while it runs every thread of the launcher is filtered.

mod probes;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `Seccomp:` (2 = filter mode) and `Seccomp_filters:` of every thread of `pid`, by name.
fn thread_seccomp(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = match std::fs::read_to_string(t.unwrap().path().join("status")) {
            Ok(s) => s,
            Err(_) => continue, // the thread ended meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((
            field("Name:"),
            field("Seccomp:").parse().unwrap_or(0),
            field("Seccomp_filters:").parse().unwrap_or(0),
        ));
    }
    out.sort();
    out
}

/// A spinning probe with 2 vCPUs, stdin attached and the default network (passt, which
/// `scripts/setup` installs): main (vCPU 0), vcpu1, the supervisor, both forwarders and the
/// network backend thread must each run one filter of their own once the guest prints; the run
/// then ends by its timeout (124), not by a SIGSYS (125).
#[test]
fn kvm_every_launcher_thread_runs_under_its_seccomp_filter() {
    if !probes::kvm_available("kvm_every_launcher_thread_runs_under_its_seccomp_filter") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = probes::build(dir.path(), "spin", &[]);
    let pod = dir.path().join("spin.pod");
    probes::seal_pod(&pod, &kernel, b"x", &[0u8; 4096], "probe=1 quiet");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
        .args(["--engine", "kvm", "--vcpus", "2", "-i", "--timeout", "3"])
        .arg(&pod)
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Until the guest prints (on the console: the launcher's stderr), the run threads may
    // still be starting.
    let mut stdout = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("spinning") {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut stdout, &mut buf).unwrap();
        assert!(
            n > 0 && start.elapsed() < Duration::from_secs(20),
            "no output"
        );
        seen.extend_from_slice(&buf[..n]);
    }
    // KVM's own kernel worker (`kvm-nx-lpage-recovery`) is listed among the tasks too.
    let threads: Vec<_> = thread_seccomp(pid)
        .into_iter()
        .filter(|(name, _, _)| !name.starts_with("kvm-"))
        .collect();
    eprintln!("threads: {threads:?}");
    assert_eq!(threads.len(), 6, "{threads:?}");
    assert!(
        threads.iter().any(|(name, _, _)| name == "net"),
        "no network thread (is passt installed?): {threads:?}"
    );
    for (name, mode, filters) in &threads {
        assert_eq!(*mode, 2, "thread {name} is not in seccomp filter mode");
        assert_eq!(*filters, 1, "thread {name} has {filters} filters");
    }
    std::io::Read::read_to_end(&mut stdout, &mut seen).unwrap();
    let status = child.wait().unwrap();
    let err = String::from_utf8_lossy(&seen);
    assert_eq!(status.code(), Some(124), "{err}");
    assert!(!err.contains("sandbox"), "{err}");
}

/// `--network tap` with published ports: the port forwarder runs on a `forward` thread under its
/// own filter, and serving a TCP connection and a UDP datagram (accept, a socket connected to
/// the guest, which does not answer) stays inside it: the run ends by its timeout (124).
#[test]
fn kvm_the_tap_port_forwarder_runs_under_its_seccomp_filter() {
    let test = "kvm_the_tap_port_forwarder_runs_under_its_seccomp_filter";
    if !probes::kvm_available(test) {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    if !std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        hyperpod_tests::skip::skipped(test, "--network tap needs root (CAP_NET_ADMIN)");
        return;
    }
    let free = || {
        std::net::TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (tcp, udp) = (free(), free());
    let dir = tempfile::tempdir().unwrap();
    let kernel = probes::build(dir.path(), "spin", &[]);
    let pod = dir.path().join("spin.pod");
    probes::seal_pod(&pod, &kernel, b"x", &[0u8; 4096], "probe=1 quiet");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hyperlaunch"))
        .args(["--engine", "kvm", "--network", "tap", "--timeout", "3"])
        .args(["-p", &format!("{tcp}:80"), "-p", &format!("{udp}:53/udp")])
        .arg(&pod)
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let start = Instant::now();
    while !String::from_utf8_lossy(&seen).contains("spinning") {
        let mut buf = [0u8; 256];
        let n = std::io::Read::read(&mut stderr, &mut buf).unwrap();
        assert!(
            n > 0 && start.elapsed() < Duration::from_secs(20),
            "no output: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let threads = thread_seccomp(pid);
    assert!(
        threads
            .iter()
            .any(|(n, m, f)| n == "forward" && *m == 2 && *f == 1),
        "{threads:?}"
    );
    let _c = std::net::TcpStream::connect(("127.0.0.1", tcp)).unwrap();
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.send_to(b"query", ("127.0.0.1", udp)).unwrap();
    std::io::Read::read_to_end(&mut stderr, &mut seen).unwrap();
    let status = child.wait().unwrap();
    let err = String::from_utf8_lossy(&seen);
    assert_eq!(status.code(), Some(124), "{err}");
    assert!(!err.contains("sandbox"), "{err}");
}
