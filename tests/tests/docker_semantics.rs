//! What an app sees in a pod, checked the way a Docker user would: the probe image (its own
//! `/etc/hosts`, files under `/tmp` and `/run`, a directory only root may enter) built with
//! `hyperbuild` and booted with `hyperlaunch --engine qemu` (TCG here), one boot per scenario.
//! The same probe against runc is `runc_diff.rs`.

use std::path::PathBuf;
use std::sync::OnceLock;

use hyperpod_tests::probe;

/// The probe pod, built once per test process.
fn pod() -> &'static PathBuf {
    static POD: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &POD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let image = probe::image(dir.path());
        let pod = probe::build_pod(&image, dir.path());
        (dir, pod)
    })
    .1
}

/// Runs the probe followed by `extra` (shell) and parses everything it printed.
fn probe_with(args: &[&str], extra: &str) -> std::collections::BTreeMap<String, String> {
    let script = format!("/probe.sh && {extra}");
    let mut all = vec!["--entrypoint", "/bin/sh"];
    all.extend_from_slice(args);
    probe::parse(&probe::launch_ok(pod(), &all, &["-c", &script]))
}

fn get<'a>(p: &'a std::collections::BTreeMap<String, String>, key: &str) -> &'a str {
    p.get(key)
        .unwrap_or_else(|| panic!("probe printed no {key}: {p:#?}"))
}

#[test]
fn image_files_stay_visible_hostname_resolves_and_dev_is_dockers() {
    let p = probe_with(
        &[],
        "echo \"pid1-cmdline=$(tr '\\0' ' ' < /proc/1/cmdline)\"; \
         echo \"statfs-root=$(stat -f -c '%b*%S' /)\"; \
         echo \"mem-total=$(awk '/^MemTotal/ { print $2 }' /proc/meminfo)\"",
    );
    // No tmpfs over /tmp or /run: what the image ships there is visible, writes work.
    assert_eq!(get(&p, "mount:/tmp"), "none");
    assert_eq!(get(&p, "mount:/run"), "none");
    assert_eq!(get(&p, "tmp-shipped"), "shipped by the image");
    assert_eq!(get(&p, "run-lock"), "dir");
    assert_eq!(get(&p, "var-lock"), "resolves");
    assert_eq!(get(&p, "tmp-writable"), "yes");
    // /dev/ptmx is the devpts instance's, /dev/mqueue is mounted.
    assert_eq!(get(&p, "dev:ptmx"), "link:pts/ptmx");
    assert_eq!(get(&p, "mount:/dev/mqueue"), "mqueue");
    assert_eq!(get(&p, "mount:/dev/pts"), "devpts");
    // The image ships /etc/hosts without our name: the pod's own hosts file names it anyway.
    assert_eq!(get(&p, "hostname"), "hyperpod");
    assert_eq!(get(&p, "hosts-names-hostname"), "yes");
    assert_eq!(get(&p, "hosts-localhost"), "yes");
    assert_eq!(get(&p, "etc-hostname"), "hyperpod");
    // The kernel has DNOTIFY: fcntl(F_NOTIFY) works.
    assert_eq!(get(&p, "dnotify"), "ok");
    // PID 1's command line carries no kernel arguments.
    assert_eq!(get(&p, "pid1-cmdline"), "/init ");
    // The writable layer has a size: by default half the guest's memory, which statfs reports.
    assert_eq!(get(&p, "root-statfs"), "sized,used");
    let (blocks, bsize) = get(&p, "statfs-root").split_once('*').unwrap();
    let total: u64 = blocks.parse::<u64>().unwrap() * bsize.parse::<u64>().unwrap();
    let mem_kib: u64 = get(&p, "mem-total").parse().unwrap();
    // tmpfs takes half of all RAM pages; MemTotal excludes the kernel's own.
    let pod_mib = pod::Pod::open(pod())
        .unwrap()
        .manifest()
        .resources
        .memory_mib as u64;
    assert!(
        total <= (pod_mib << 20) / 2 && total >= mem_kib * 1024 / 2,
        "root is {total} bytes; guest has {pod_mib} MiB ({mem_kib} KiB usable)"
    );
}

#[test]
fn a_user_without_passwd_entry_runs_in_a_directory_only_root_can_enter() {
    // /secret is root's, mode 0700: Docker enters it before dropping privileges.
    let out = probe::launch_ok(pod(), &["--user", "4242:4343", "--workdir", "/secret"], &[]);
    let p = probe::parse(&out);
    assert_eq!(get(&p, "uid"), "4242");
    assert_eq!(get(&p, "gid"), "4343");
    assert_eq!(get(&p, "groups"), "4343");
    assert_eq!(get(&p, "cwd"), "/secret");
    assert_eq!(get(&p, "home"), "/");
}

#[test]
fn storage_opt_sizes_the_writable_layer_and_the_minimum_memory_boots() {
    let min = pod::manifest::MEMORY_MIB_RANGE.start().to_string();
    let p = probe_with(
        &["--storage-opt", "size=96m", "--memory", &min],
        "echo \"statfs-root=$(stat -f -c '%b*%S' /)\"; \
         head -c 200000 /dev/zero > /big && echo \"statfs-free=$(stat -f -c '%a*%S' /)\"",
    );
    let bytes = |key: &str| -> u64 {
        let (n, size) = get(&p, key).split_once('*').unwrap();
        n.parse::<u64>().unwrap() * size.parse::<u64>().unwrap()
    };
    assert_eq!(bytes("statfs-root"), 96 << 20);
    assert!(bytes("statfs-free") < (96 << 20) - 200_000, "{p:?}");
}
