//! A pod against runc on the same image: the probe image (`tests/fixtures/probe-image.sh`) run
//! by `hyperlaunch --engine qemu` and by `runc` from `umoci unpack`'s bundle, made Docker-like
//! (the settings `docker run` gives: environment, hosts/hostname files, rlimits, capabilities,
//! no `no_new_privs`), with the same overrides. Every line `/probe.sh` prints must be the same,
//! or be one of [`DIFFERENCES`], each with its reason (and each must still differ, so a fixed
//! difference is noticed). Needs root, runc, umoci and QEMU; reports a skip otherwise.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use hyperpod_tests::probe;
use serde_json::{Value, json};

/// Probe keys that differ between a pod and runc on purpose, with the reason.
const DIFFERENCES: &[(&str, &str)] = &[
    (
        "mount:/",
        "the pod's root is an overlay (the read-only image under a tmpfs writable layer), as with \
         Docker's overlay2; runc here runs in the unpacked bundle directory",
    ),
    (
        "mount:/dev",
        "/dev is the VM kernel's devtmpfs (the VM's own devices), where Docker mounts a tmpfs and \
         copies a fixed set of host nodes in; the probed entries are the same",
    ),
    (
        "stdin",
        "`runc run` in the foreground without a terminal always hands the container a pipe as \
         stdin (it copies its own stdin in), even from /dev/null; `docker run` without -i gives \
         /dev/null, as the pod does",
    ),
    (
        "caps",
        "root in a pod keeps every capability: the VM, not a capability set, is the boundary",
    ),
    (
        "seccomp",
        "the guest kernel has no seccomp (the VM is the boundary), so /proc shows no Seccomp \
         field; Docker applies its default profile (mode 2), runc here none (0)",
    ),
    (
        "pid",
        "init is PID 1 of the pod and reaps and forwards signals, as with `docker run --init`; \
         without --init Docker runs the app as PID 1",
    ),
];

/// One launch, as `hyperlaunch` flags and their meaning for the runc bundle.
struct Scenario {
    name: &'static str,
    args: &'static [&'static str],
    /// uid, gid, supplementary gids (what Docker resolves from the image's passwd/group).
    user: (u32, u32, &'static [u32]),
    cwd: &'static str,
    hostname: &'static str,
    /// `-e` values, after the image's env.
    env: &'static [&'static str],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "defaults",
        args: &[],
        user: (0, 0, &[]),
        cwd: "/",
        hostname: "hyperpod",
        env: &[],
    },
    Scenario {
        name: "named user, env, hostname",
        args: &["--user", "app", "-e", "EXTRA=1", "--hostname", "probe-host"],
        user: (1000, 1000, &[29]),
        cwd: "/",
        hostname: "probe-host",
        env: &["EXTRA=1"],
    },
    Scenario {
        name: "ids without passwd entry in a root-only directory",
        args: &["--user", "4242:4343", "--workdir", "/secret"],
        user: (4242, 4343, &[]),
        cwd: "/secret",
        hostname: "hyperpod",
        env: &[],
    },
];

/// Docker's default capability set for a container.
const DOCKER_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Why this test cannot run here, if it cannot.
fn missing() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Some("runc needs root".into());
    }
    for tool in ["runc", "umoci", "qemu-system-x86_64"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// Docker's env for the image's `Env` plus `-e`: PATH when missing, HOSTNAME; HOME is runc's to
/// add (from the image's passwd, `/` without an entry), as under Docker.
fn docker_env(image_env: &[String], s: &Scenario) -> Vec<String> {
    let mut env: Vec<String> = image_env.to_vec();
    for e in s.env {
        let key = e.split('=').next().unwrap();
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.to_string());
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    env.push(format!("HOSTNAME={}", s.hostname));
    env
}

/// `umoci unpack`'s config.json made what `docker run` would give for `s`.
fn docker_like(config: &mut Value, bundle: &Path, s: &Scenario, nofile: u64) {
    let image_env: Vec<String> = config["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        // umoci adds TERM=xterm (Docker does only with -t) and HOME (Docker leaves HOME to runc,
        // which takes it from the image's passwd, `/` without an entry).
        .filter(|e| !e.starts_with("TERM=") && !e.starts_with("HOME="))
        .map(String::from)
        .collect();
    let files = bundle.join("etc-files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("hosts"),
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            s.hostname
        ),
    )
    .unwrap();
    std::fs::write(files.join("hostname"), format!("{}\n", s.hostname)).unwrap();
    std::fs::write(files.join("resolv.conf"), "").unwrap();
    let (uid, gid, groups) = s.user;
    let p = &mut config["process"];
    p["terminal"] = json!(false);
    p["args"] = json!(["/probe.sh"]);
    p["env"] = json!(docker_env(&image_env, s));
    p["cwd"] = json!(s.cwd);
    p["user"] = json!({ "uid": uid, "gid": gid, "additionalGids": groups });
    p["noNewPrivileges"] = json!(false);
    let caps = json!(DOCKER_CAPS);
    p["capabilities"] = json!({ "bounding": caps, "effective": caps, "permitted": caps });
    // Docker's default open-files limit (or what this host allows); the stack limit dockerd
    // (under systemd) passes on.
    p["rlimits"] = json!([
        { "type": "RLIMIT_NOFILE", "soft": nofile, "hard": nofile },
        { "type": "RLIMIT_STACK", "soft": 8388608u64, "hard": u64::MAX },
    ]);
    config["hostname"] = json!(s.hostname);
    let mounts = config["mounts"].as_array_mut().unwrap();
    for name in ["hosts", "hostname", "resolv.conf"] {
        mounts.push(json!({
            "destination": format!("/etc/{name}"),
            "type": "bind",
            "source": files.join(name),
            "options": ["rbind", "rprivate"],
        }));
    }
}

/// Docker's open-files limit (1048576, what init gives the app), or this process's hard limit
/// when it is lower: without CAP_SYS_RESOURCE (a sandboxed root) runc cannot raise it.
fn runc_nofile() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|h| h.parse::<u64>().ok())
        .unwrap_or(DOCKER_NOFILE);
    hard.min(DOCKER_NOFILE)
}

/// Docker's default open-files limit for a container.
const DOCKER_NOFILE: u64 = 1 << 20;

/// `umoci unpack` of `image` and `runc run` of the probe for `s`.
fn run_runc(image: &str, work: &Path, s: &Scenario, n: usize) -> String {
    let bundle = work.join(format!("bundle-{n}"));
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(image.trim_start_matches("oci:"))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    docker_like(&mut config, &bundle, s, runc_nofile());
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let id = format!("hyperpod-runc-diff-{}-{n}", std::process::id());
    let out = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("runc")
        .args(["delete", "--force", &id])
        .output();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "runc ({}): {stdout}\n{}",
        s.name,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_probe_sees_the_same_in_a_pod_as_in_runc() {
    if let Some(why) = missing() {
        hyperpod_tests::skip::skipped("the_probe_sees_the_same_in_a_pod_as_in_runc", &why);
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let image = probe::image(work.path());
    let pod = probe::build_pod(&image, work.path());
    let mut report = Vec::new();
    let mut seen_differences: BTreeMap<String, usize> = BTreeMap::new();
    for (n, s) in SCENARIOS.iter().enumerate() {
        let in_runc = probe::parse(&run_runc(&image, work.path(), s, n));
        let in_pod = probe::parse(&probe::launch_ok(&pod, s.args, &[]));
        let keys: std::collections::BTreeSet<&String> =
            in_runc.keys().chain(in_pod.keys()).collect();
        for key in keys {
            let (r, p) = (in_runc.get(key), in_pod.get(key));
            // A host that cannot give runc Docker's limit: the pod's must still be Docker's.
            let host_limited = key == "nofile" && runc_nofile() < DOCKER_NOFILE;
            if host_limited {
                let want = format!("{DOCKER_NOFILE}:{DOCKER_NOFILE}");
                assert_eq!(p, Some(&want), "{}: the pod's open-files limit", s.name);
                eprintln!(
                    "note: this host's hard open-files limit is below Docker's; runc has {r:?}"
                );
                continue;
            }
            let expected = DIFFERENCES.iter().any(|(k, _)| k == key);
            if r != p {
                *seen_differences.entry(key.clone()).or_default() += 1;
            }
            if r != p && !expected {
                report.push(format!("{}: {key}: runc {r:?}, pod {p:?}", s.name));
            }
        }
    }
    for (key, why) in DIFFERENCES {
        if !seen_differences.contains_key(*key) {
            report.push(format!(
                "{key} is listed as a difference ({why}) but is the same in every scenario: \
                 remove it from DIFFERENCES"
            ));
        }
    }
    assert!(report.is_empty(), "pod vs runc:\n{}", report.join("\n"));
}
