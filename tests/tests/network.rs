//! Pods on the network, the way a Docker user publishes a web server: the web image
//! (`tests/fixtures/web-image.sh`: `busybox httpd -f -p 80 -h /www`, port 80/tcp exposed) built
//! with `hyperbuild` and booted with `hyperlaunch --engine qemu` (TCG here) on passt, the
//! default network; the page fetched from the host through the published port.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hyperpod_tests::web::{
    PAGE, Running, can_create_tap, free_port, have_passt, http_get, launcher, pod, port_released,
    wait_for_page,
};
use hyperpod_tests::{probe, skip};

#[test]
fn published_ports_serve_http_with_p_and_with_publish_all_side_by_side() {
    if !have_passt("published_ports_serve_http_with_p_and_with_publish_all_side_by_side") {
        return;
    }
    let pod = pod();
    // Two pods at once: one with -p on a port the test picked, one with -P (the image exposes
    // 80/tcp) on a port the launcher picks and prints.
    let fixed = free_port();
    // Pod a also publishes 80 on the host's ::1 only, and a UDP port.
    let only_v6 = free_port();
    let mut a = Running::start(
        launcher()
            .args(["-p", &format!("{fixed}:80")])
            .args(["-p", &format!("[::1]:{only_v6}:80")])
            .args(["-p", &format!("{fixed}:53/udp")])
            .arg(pod),
    );
    let mut b = Running::start(launcher().args(["-P", "--timing"]).arg(pod));
    let mapping = b.line_after("hyperlaunch: published ");
    let chosen: u16 = mapping
        .strip_prefix("80/tcp -> 0.0.0.0:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("-P mapping line {mapping:?}"));
    assert_ne!(chosen, fixed);

    let localhost = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert_eq!(wait_for_page(localhost(fixed), &mut a), PAGE);
    assert_eq!(wait_for_page(localhost(chosen), &mut b), PAGE);
    // Published on every address, IPv6 too (passt binds [::] as Docker does).
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, fixed));
    assert_eq!(http_get(v6).as_deref(), Some(PAGE), "GET [::1]:{fixed}");
    // An address given: that address only.
    let v6_only = SocketAddr::from((Ipv6Addr::LOCALHOST, only_v6));
    assert_eq!(http_get(v6_only).as_deref(), Some(PAGE), "GET {v6_only}");
    assert!(
        TcpStream::connect(localhost(only_v6)).is_err(),
        "{only_v6} on IPv4 too"
    );
    // The UDP port is held by passt.
    assert!(std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, fixed)).is_err());

    // SIGKILL of the launcher: QEMU dies with it, and passt once its socket's other ends are
    // closed, releasing the port.
    let (code_a, err_a) = a.stop_with("KILL");
    assert_eq!(code_a, None, "{err_a}");
    // SIGTERM reaches httpd as its stop signal: it dies of it, as under Docker.
    let (code_b, err_b) = b.stop_with("TERM");
    assert_eq!(code_b, Some(143), "{err_b}");
    // -P's mapping is in the --timing report too, for scripts.
    assert!(
        err_b.contains(&format!(
            "hyperlaunch timing: port 80/tcp -> 0.0.0.0:{chosen}"
        )),
        "{err_b}"
    );
    assert!(
        port_released(fixed) && port_released(chosen),
        "passt left running"
    );
}

#[test]
fn pod_resolves_its_hostname_serves_on_its_addresses_and_reaches_a_host_server() {
    if !have_passt("pod_resolves_its_hostname_serves_on_its_addresses_and_reaches_a_host_server") {
        return;
    }
    // A TCP server on the host's loopback: the pod reaches it through its gateway, which passt
    // maps to the host. (IPv4 only: passt 0.0~git20230309 delivers a guest's IPv6 connection to
    // the host's ::1 but not its end, so the guest's side never closes; see docs/BENCHMARKS.md.)
    let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = v4.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in v4.incoming().map_while(Result::ok) {
            let _ = c.write_all(b"host server v4\n");
        }
    });
    let script = format!(
        "httpd -p 80 -h /www && sleep 1; \
         echo \"own=$(wget -q -O- http://$(hostname)/)\"; \
         echo \"lo6=$(wget -q -O- 'http://[::1]/')\"; \
         echo \"host4=$(timeout 60 nc 10.0.2.2 {port} </dev/null)\"; \
         echo \"own6=$(wget -q -O- 'http://[fd00:0:0:2::15]/')\"; \
         echo \"hosts=$(grep -w web1 /etc/hosts | tr '\\t\\n' ' ')\"; \
         echo \"resolv=$(grep nameserver /etc/resolv.conf)\"; \
         echo \"mtu=$(cat /sys/class/net/eth0/mtu)\""
    );
    let out = probe::launch(
        pod(),
        &["--hostname", "web1", "--entrypoint", "/bin/sh"],
        &["-c", &script],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let p = probe::parse(&stdout);
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
    // The hostname resolves (through /etc/hosts) to the pod's own address, where httpd listens.
    assert_eq!(get("own"), PAGE.trim(), "{stdout}");
    assert_eq!(get("lo6"), PAGE.trim(), "{stdout}");
    assert_eq!(get("host4"), "host server v4", "{stdout}\n{stderr}");
    assert_eq!(get("own6"), PAGE.trim(), "{stdout}");
    assert_eq!(
        get("hosts"),
        "10.0.2.15 web1 fd00:0:0:2::15 web1 ",
        "{stdout}"
    );
    assert_eq!(get("resolv"), "nameserver 10.0.2.3", "{stdout}");
    assert_eq!(get("mtu"), "65520", "{stdout}");
}

#[test]
fn network_none_has_loopback_only() {
    let out = probe::launch(
        pod(),
        &["--network", "none", "--entrypoint", "/bin/sh"],
        &["-c", "ls /sys/class/net | tr '\\n' ' '; echo"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.trim(), "lo", "interfaces: {stdout}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Without passt, a launch that asked for no network boots without one, with a notice.
    let bin = tempfile::tempdir().unwrap();
    let qemu = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("qemu-system-x86_64"))
                .find(|q| q.is_file())
        })
        .expect("qemu-system-x86_64 on PATH");
    std::os::unix::fs::symlink(qemu, bin.path().join("qemu-system-x86_64")).unwrap();
    let out = Command::new(probe::sibling_binary("hyperlaunch"))
        .args([
            "--engine",
            "qemu",
            "--timeout",
            "300",
            "--entrypoint",
            "/bin/sh",
        ])
        .arg(pod())
        .args(["--", "-c", "ls /sys/class/net | tr '\\n' ' '; echo"])
        .env("PATH", bin.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "lo", "interfaces: {stdout}");
    assert_eq!(
        stderr.trim(),
        "hyperlaunch: passt not found, so this pod has no network (apt-get install passt; --network none silences this)"
    );
}

#[test]
fn rootless_launch_as_nobody_publishes_a_port() {
    if !have_passt("rootless_launch_as_nobody_publishes_a_port") {
        return;
    }
    let pod = pod();
    let home = tempfile::tempdir().unwrap();
    let setpriv = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .status();
    if !setpriv.is_ok_and(|s| s.success()) {
        skip::skipped(
            "rootless_launch_as_nobody_publishes_a_port",
            "cannot switch to uid 65534 with setpriv (needs root)",
        );
        return;
    }
    std::process::Command::new("chown")
        .args(["65534:65534"])
        .arg(home.path())
        .status()
        .unwrap();
    let port = free_port();
    let launcher = probe::sibling_binary("hyperlaunch");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&launcher)
        .args(["--engine", "qemu", "--timeout", "600", "-p"])
        .arg(format!("127.0.0.1:{port}:80"))
        .arg(pod)
        .env("HOME", home.path())
        .env_remove("XDG_RUNTIME_DIR");
    let mut running = Running::start(&mut cmd);
    assert_eq!(
        wait_for_page(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), &mut running),
        PAGE
    );
    // Only on 127.0.0.1, as asked: not on IPv6.
    assert!(TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_err());
    assert!(TcpStream::connect((Ipv6Addr::LOCALHOST, port)).is_err());
    let (code, err) = running.stop_with("TERM");
    assert_eq!(code, Some(143), "{err}");
    assert!(port_released(port), "passt left running");
}

/// One launch that must fail before the guest starts: exit 125 and one stderr line.
fn refused(args: &[&str], path: Option<&Path>, why: &str) {
    let mut cmd = Command::new(probe::sibling_binary("hyperlaunch"));
    cmd.args(["--engine", "qemu"]).args(args).arg(pod());
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line, got {stderr}"
    );
    assert!(
        stderr.starts_with("hyperlaunch: ") && stderr.contains(why),
        "{args:?}: {stderr:?} should say {why:?}"
    );
    // Refused before any boot (a boot takes seconds under TCG).
    assert!(started.elapsed() < Duration::from_secs(5), "{args:?}");
}

#[test]
fn network_errors_exit_125_with_one_line_before_boot() {
    let busy = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = busy.local_addr().unwrap().port();
    refused(
        &["-p", "80:http"],
        None,
        "-p \"80:http\": invalid guest port",
    );
    refused(&["-p", "1.2.3:8080:80"], None, "invalid IP address");
    refused(&["-p", "8080:80/sctp"], None, "invalid protocol");
    refused(
        &["-p", &format!("{port}:80")],
        None,
        &format!("port 80/tcp -> 0.0.0.0:{port} is already in use"),
    );
    refused(&["--network", "none", "-p", "80"], None, "--network none");
    refused(&["--network", "host"], None, "passt, tap[:NAME] or none");
    // No passt on PATH (QEMU is there): named, with the package to install.
    let bin = tempfile::tempdir().unwrap();
    let qemu = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("qemu-system-x86_64"))
                .find(|q| q.is_file())
        })
        .expect("qemu-system-x86_64 on PATH");
    std::os::unix::fs::symlink(qemu, bin.path().join("qemu-system-x86_64")).unwrap();
    refused(&["-p", "80"], Some(bin.path()), "passt not found");
    refused(
        &["--network", "passt"],
        Some(bin.path()),
        "apt-get install passt, or --network none",
    );
    // A passt that fails at start: its own last line (not its syslog noise) is the reason.
    let fake = bin.path().join("passt");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'Failed to send 20 bytes to syslog' >&2\necho 'Invalid port: 99999' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    refused(
        &["-p", "80"],
        Some(bin.path()),
        "passt failed: Invalid port: 99999",
    );
    // A passt that starts but does not bind a published port (passt skips a port it cannot
    // bind without failing): caught before the guest starts.
    std::fs::write(
        &fake,
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --pid ] && echo $$ > \"$2\"; shift; done\nexec /bin/sleep 30\n",
    )
    .unwrap();
    refused(&["-p", "80"], Some(bin.path()), "passt did not bind it");
}

/// A TAP device name for one test: unique per test process, checked under `/sys/class/net`.
fn tap_name(tag: &str) -> String {
    format!("hpt{tag}{}", std::process::id() % 100_000)
}

fn device_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Waits until the TAP device `name` is gone (the launcher and QEMU have closed it).
fn device_gone(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !device_exists(name) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A TCP server on all the host's addresses (so on the TAP's host side too) answering `text`.
fn host_server(text: &'static str) -> u16 {
    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().map_while(Result::ok) {
            let _ = c.write_all(text.as_bytes());
        }
    });
    port
}

/// The guest's shell line that finds its gateway (the TAP's host side).
const GATEWAY: &str = "gw=$(route -n | awk '$1==\"0.0.0.0\" {print $2}')";

#[test]
fn tap_pod_reaches_a_host_server_and_its_device_goes_at_exit() {
    let test = "tap_pod_reaches_a_host_server_and_its_device_goes_at_exit";
    if !can_create_tap(test) {
        return;
    }
    let name = tap_name("a");
    let port = host_server("host server over tap\n");
    let script = format!(
        "{GATEWAY}; echo \"gw=$gw\"; \
         echo \"host=$(timeout 60 nc $gw {port} </dev/null)\"; \
         echo \"addr=$(ip -4 -o addr show eth0 | awk '{{print $4}}')\"; \
         echo \"mtu=$(cat /sys/class/net/eth0/mtu)\""
    );
    let out = probe::launch(
        pod(),
        &[
            "--network",
            &format!("tap:{name}"),
            "--entrypoint",
            "/bin/sh",
        ],
        &["-c", &script],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let p = probe::parse(&stdout);
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or_default();
    assert_eq!(get("host"), "host server over tap", "{stdout}\n{stderr}");
    // A /30 of 10.254.0.0/16: the guest is the second address, its gateway the first.
    let gw: Ipv4Addr = get("gw").parse().expect("gateway");
    let addr = get("addr");
    let guest = Ipv4Addr::from(u32::from(gw) + 1);
    assert_eq!(addr, format!("{guest}/30"), "{stdout}");
    assert_eq!(gw.octets()[..2], [10, 254], "{stdout}");
    assert_eq!(get("mtu"), "1500", "{stdout}");
    // Nothing left once the launcher has exited.
    assert!(!device_exists(&name), "{name} left after a normal exit");
}

#[test]
fn tap_publishes_a_port_and_its_device_goes_after_sigkill() {
    let test = "tap_publishes_a_port_and_its_device_goes_after_sigkill";
    if !can_create_tap(test) {
        return;
    }
    let name = tap_name("b");
    let port = host_server("reached the host\n");
    let fixed = free_port();
    // The pod serves its page, and what it fetched from the host server, on port 80.
    let script = format!(
        "{GATEWAY}; timeout 60 nc $gw {port} </dev/null > /www/host.txt; \
         exec httpd -f -p 80 -h /www"
    );
    let mut running = Running::start(
        launcher()
            .args(["--network", &format!("tap:{name}")])
            .args(["-p", &format!("{fixed}:80")])
            .args(["--entrypoint", "/bin/sh"])
            .arg(pod())
            .args(["--", "-c", &script]),
    );
    let at = SocketAddr::from((Ipv4Addr::LOCALHOST, fixed));
    assert_eq!(wait_for_page(at, &mut running), PAGE);
    let mut s = TcpStream::connect(at).unwrap();
    s.write_all(b"GET /host.txt HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.ends_with("\r\n\r\nreached the host\n"), "{resp}");
    assert!(device_exists(&name), "{name} while the pod runs");
    // The forwarder holds the port, on every IPv4 address.
    assert!(TcpListener::bind((Ipv4Addr::UNSPECIFIED, fixed)).is_err());
    let (code, err) = running.stop_with("KILL");
    assert_eq!(code, None, "{err}");
    // The device goes with the last descriptor (the launcher's, QEMU's), the port with the
    // launcher: nothing to clean.
    assert!(
        device_gone(&name),
        "{name} left after SIGKILL of the launcher"
    );
    assert!(port_released(fixed), "port {fixed} still held");
}

#[test]
fn tap_without_cap_net_admin_exits_125_with_one_line() {
    let test = "tap_without_cap_net_admin_exits_125_with_one_line";
    let setpriv = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "true"])
        .status();
    if !setpriv.is_ok_and(|s| s.success()) {
        skip::skipped(test, "cannot switch to uid 65534 with setpriv (needs root)");
        return;
    }
    let pod = pod();
    let started = Instant::now();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(probe::sibling_binary("hyperlaunch"))
        .args(["--engine", "qemu", "--network", "tap", "-p", "80"])
        .arg(pod)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "hyperlaunch: --network tap needs CAP_NET_ADMIN (run as root, or use the default passt network)"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    refused(
        &["--network", "tap:no/slash"],
        None,
        "not a valid interface name",
    );
}
