//! The web pod for the network tests (`tests/fixtures/web-image.sh`: `busybox httpd -f -p 80 -h
//! /www`, port 80/tcp exposed) built once per test process, a `hyperlaunch` running it with its
//! stderr read as it comes, and the HTTP and port checks the tests make from the host.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::{kernel, probe, skip};

/// What `/www/index.html` of the web image holds.
pub const PAGE: &str = "hello from a pod\n";
/// How long a pod may take to boot and serve under TCG on a loaded machine.
pub const SERVE_WITHIN: Duration = Duration::from_secs(180);

/// Whether passt is installed; the test is reported skipped otherwise.
pub fn have_passt(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("passt").is_file()));
    if !found {
        skip::skipped(test, "passt is not installed (apt-get install passt)");
    }
    found
}

/// The web pod, built once per test process (world-readable, for the rootless test).
pub fn pod() -> &'static PathBuf {
    static POD: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &POD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let script = kernel::workspace_root().join("tests/fixtures/web-image.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(dir.path().join("oci"))
            .output()
            .expect("run tests/fixtures/web-image.sh (needs umoci)");
        assert!(
            out.status.success(),
            "web-image.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let pod = probe::build_pod(&image, dir.path());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&pod, std::fs::Permissions::from_mode(0o644)).unwrap();
        (dir, pod)
    })
    .1
}

/// A free TCP port on all addresses (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `hyperlaunch`, its stderr lines arriving on a channel.
pub struct Running {
    pub child: Child,
    pub stderr: Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn start(cmd: &mut Command) -> Running {
        Running::start_with(cmd, Stdio::null())
    }

    /// As [`Running::start`], with `stdin` as the launcher's standard input.
    pub fn start_with(cmd: &mut Command, stdin: Stdio) -> Running {
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hyperlaunch");
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line starting with `prefix`; returns the rest of it.
    pub fn line_after(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + SERVE_WITHIN;
        while let Ok(line) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
        panic!(
            "no {prefix:?} line; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Sends `signal` (SIGTERM is forwarded to the app as its stop signal), waits for the end;
    /// returns the exit code and all of stderr.
    pub fn stop_with(self, signal: &str) -> (Option<i32>, String) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        self.wait_end()
    }

    /// Waits for the launcher to exit; returns the exit code and all of stderr.
    pub fn wait_end(mut self) -> (Option<i32>, String) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        // To the end of its stderr (the reader's channel closes with the pipe).
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let mut rest = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut rest);
        }
        (status.code(), self.seen.join("\n"))
    }
}

pub fn launcher() -> Command {
    let mut cmd = Command::new(probe::sibling_binary("hyperlaunch"));
    cmd.args(["--engine", "qemu", "--timeout", "600"]);
    cmd
}

/// `GET /` on `addr` as HTTP/1.0; the body, or `None` if the server did not answer in full.
pub fn http_get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

/// Polls `GET /` on `addr` until it answers or the pod had time enough to boot.
pub fn wait_for_page(addr: SocketAddr, pod: &mut Running) -> String {
    let deadline = Instant::now() + SERVE_WITHIN;
    loop {
        if let Some(body) = http_get(addr) {
            return body;
        }
        if let Ok(Some(status)) = pod.child.try_wait() {
            pod.seen.extend(pod.stderr.try_iter());
            panic!(
                "hyperlaunch ended ({status}) before serving {addr}:\n{}",
                pod.seen.join("\n")
            );
        }
        assert!(
            Instant::now() < deadline,
            "{addr} did not serve the page within {SERVE_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `port` can be bound again: the launcher's passt is gone.
pub fn port_released(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Whether this process may create TAP devices (root here); the test is reported skipped
/// otherwise.
pub fn can_create_tap(test: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to this process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root || !Path::new("/dev/net/tun").exists() {
        skip::skipped(test, "--network tap needs root and /dev/net/tun");
        return false;
    }
    true
}
