//! hyperpod-init end to end: the static init as PID 1 of a real kernel under QEMU TCG, one boot
//! per scenario, the app and image made of busybox-static and shell scripts.
//!
//! Needs qemu-system-x86_64, mkfs.ext4, cpio, busybox-static, debugfs and the guest kernel
//! (`kernel-fragments/build-kernel.sh`, built on first use). Run as root (device nodes, chown).

use hyperpod_tests::init_fixture::{
    Boot, BootConfig, ImageFile, append_overrides, boot, initramfs, rootfs,
};
use pod::spec::{Overrides, RunSpec};
use sha2::{Digest, Sha256};
use std::process::Command;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn sh(script: &str) -> RunSpec {
    RunSpec {
        cmd: strings(&["sh", "-c", script]),
        ..RunSpec::default()
    }
}

/// Console lines without the tty's carriage returns.
fn lines(boot: &Boot) -> Vec<&str> {
    boot.console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect()
}

/// Everything a scenario varies.
#[derive(Default)]
struct Scenario<'a> {
    spec: RunSpec,
    overrides: Option<Overrides>,
    files: &'a [ImageFile<'a>],
    cmdline: &'a str,
    no_control: bool,
    signal_on: Option<(&'a str, i32)>,
    extra_disk: bool,
}

struct Ran {
    boot: Boot,
    work: tempfile::TempDir,
    /// sha256 of the rootfs image before the boot.
    image_before: String,
}

fn run(s: Scenario<'_>) -> Ran {
    let work = tempfile::tempdir().unwrap();
    let image = rootfs(work.path(), s.files);
    let image_before = sha256(&image);
    let mut initrd = initramfs(work.path(), &s.spec);
    if let Some(ov) = &s.overrides {
        append_overrides(work.path(), &mut initrd, ov);
    }
    let disk = work.path().join("upper.ext4");
    if s.extra_disk {
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&disk)
            .arg("16M")
            .output()
            .expect("mkfs.ext4 installed");
        assert!(out.status.success());
    }
    let boot = boot(&BootConfig {
        work: work.path(),
        initrd: &initrd,
        rootfs: &image,
        cmdline: s.cmdline,
        control: !s.no_control,
        signal_on: s.signal_on,
        extra_disk: s.extra_disk.then_some(disk.as_path()),
    });
    Ran {
        boot,
        work,
        image_before,
    }
}

/// Asserts the pod's status `code` came through both the control channel and the exit port.
fn assert_exit(boot: &Boot, code: u8) {
    // Shown with --nocapture (and on failure).
    eprintln!("control: {:?}\nconsole:\n{}", boot.control, boot.console);
    assert_eq!(
        boot.exit_code(),
        Some(code),
        "control lines {:?}; console:\n{}",
        boot.control,
        boot.console
    );
    assert_eq!(boot.control.first().map(String::as_str), Some("T init"));
    assert_eq!(
        boot.control.last().map(String::as_str),
        Some(&*format!("X {code}"))
    );
    // isa-debug-exit: QEMU exits with (value << 1) | 1.
    assert_eq!(
        boot.qemu_status,
        ((code as i32) << 1 | 1) & 0xff,
        "qemu status"
    );
}

#[test]
fn exit_zero_with_marks_and_timing() {
    let ran = run(Scenario {
        spec: sh("echo hello from the app"),
        cmdline: "hyperpod.debug",
        ..Scenario::default()
    });
    let boot = &ran.boot;
    assert_exit(boot, 0);
    assert_eq!(boot.control, ["T init", "T exec", "X 0"]);
    // Without `-t` the console is raw: the app's "\n" arrives as is.
    assert!(
        boot.console.contains("hello from the app\n"),
        "{}",
        boot.console
    );
    assert!(
        !boot.console.contains("hello from the app\r"),
        "console not raw"
    );
    let us: u64 = boot
        .console
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("hyperpod: init->exec "))
        .and_then(|rest| rest.split_once(" us, clock "))
        .filter(|(_, rest)| {
            rest.split_once(" us, tsc ").is_some_and(|(clock, tsc)| {
                clock.parse::<u64>().is_ok() && tsc.parse::<u64>().is_ok()
            })
        })
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no init->exec line:\n{}", boot.console));
    let steps = lines(boot)
        .into_iter()
        .find(|l| l.starts_with("hyperpod: steps: mounts="))
        .unwrap_or_else(|| panic!("no steps line:\n{}", boot.console));
    eprintln!("init->exec inside the guest (QEMU TCG): {us} us; {steps}");
}

#[test]
fn exit_three() {
    let ran = run(Scenario {
        spec: sh("exit 3"),
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 3);
    assert!(
        !ran.boot.console.contains("init->exec"),
        "timing printed without hyperpod.debug"
    );
}

#[test]
fn missing_binary_is_127() {
    let ran = run(Scenario {
        spec: RunSpec {
            entrypoint: strings(&["/no/such/app"]),
            ..RunSpec::default()
        },
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 127);
    assert!(
        ran.boot
            .console
            .contains("hyperpod: app: /no/such/app: not found"),
        "{}",
        ran.boot.console
    );
}

#[test]
fn not_executable_is_126() {
    let files = [ImageFile {
        path: "/apps/noexec.sh",
        contents: "#!/bin/sh\necho should not run\n",
        mode: 0o644,
    }];
    let ran = run(Scenario {
        spec: RunSpec {
            cmd: strings(&["/apps/noexec.sh"]),
            ..RunSpec::default()
        },
        files: &files,
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 126);
    assert!(
        ran.boot.console.contains("/apps/noexec.sh: not executable"),
        "{}",
        ran.boot.console
    );
    assert!(!ran.boot.console.contains("should not run"));
}

#[test]
fn signal_death_is_128_plus_signal() {
    let ran = run(Scenario {
        spec: sh("kill -KILL $$"),
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 137);
}

#[test]
fn orphans_are_reaped() {
    // Five orphans (re-parented to init) exit while the app sleeps; the app then counts
    // zombies. Without reaping they would all be in state Z.
    let files = [ImageFile {
        path: "/apps/zombies.sh",
        contents: "#!/bin/sh\n\
            for i in 1 2 3 4 5; do (sleep 0.5 &); done\n\
            sleep 0.2\n\
            echo ORPHANS=$(grep -l '^PPid:[[:space:]]*1$' /proc/[0-9]*/status | wc -l)\n\
            sleep 2\n\
            echo ZOMBIES=$(grep -l '^State:[[:space:]]*Z' /proc/[0-9]*/status | wc -l)\n",
        mode: 0o755,
    }];
    let ran = run(Scenario {
        spec: RunSpec {
            entrypoint: strings(&["/apps/zombies.sh"]),
            ..RunSpec::default()
        },
        files: &files,
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 0);
    let out = lines(&ran.boot);
    let orphans: u32 = out
        .iter()
        .find_map(|l| l.strip_prefix("ORPHANS="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}", ran.boot.console));
    // The five sleeps plus the app itself (its parent is init).
    assert!(orphans >= 6, "only {orphans} processes had init as parent");
    assert!(out.contains(&"ZOMBIES=0"), "{}", ran.boot.console);
}

#[test]
fn sigterm_from_the_control_channel_reaches_the_app() {
    let files = [ImageFile {
        path: "/apps/term.sh",
        contents: "#!/bin/sh\ntrap 'echo GOT-TERM; exit 42' TERM\necho READY\n\
                   while :; do sleep 0.2; done\n",
        mode: 0o755,
    }];
    let ran = run(Scenario {
        spec: RunSpec {
            entrypoint: strings(&["/apps/term.sh"]),
            ..RunSpec::default()
        },
        files: &files,
        signal_on: Some(("READY", 15)),
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 42);
    assert!(
        lines(&ran.boot).contains(&"GOT-TERM"),
        "{}",
        ran.boot.console
    );
}

#[test]
fn signals_sent_to_init_are_forwarded_to_the_app() {
    // The app signals PID 1; init must pass SIGUSR1 on to the app.
    let files = [ImageFile {
        path: "/apps/usr1.sh",
        contents: "#!/bin/sh\ntrap 'echo GOT-USR1; exit 43' USR1\nkill -USR1 1\n\
                   while :; do sleep 0.2; done\n",
        mode: 0o755,
    }];
    let ran = run(Scenario {
        spec: RunSpec {
            entrypoint: strings(&["/apps/usr1.sh"]),
            ..RunSpec::default()
        },
        files: &files,
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 43);
    assert!(
        lines(&ran.boot).contains(&"GOT-USR1"),
        "{}",
        ran.boot.console
    );
}

#[test]
fn runs_as_the_image_user_with_groups_workdir_and_terminal() {
    let ran = run(Scenario {
        spec: RunSpec {
            cmd: strings(&[
                "sh",
                "-c",
                "id; pwd; echo HOME=$HOME; echo TTY=$(cut -d' ' -f7 /proc/self/stat); \
                 echo SID=$(cut -d' ' -f6 /proc/self/stat) PID=$$; hostname",
            ]),
            user: "app".into(),
            working_dir: "/srv/work".into(),
            hostname: "podhost".into(),
            ..RunSpec::default()
        },
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 0);
    let out = lines(&ran.boot);
    assert!(
        out.contains(&"uid=1000(app) gid=1000(app) groups=10(wheel),29(audio)"),
        "{}",
        ran.boot.console
    );
    assert!(out.contains(&"/srv/work"));
    assert!(out.contains(&"HOME=/home/app"));
    assert!(out.contains(&"podhost"));
    // A controlling terminal (tty_nr != 0), and the app leads its own session.
    assert!(!out.contains(&"TTY=0"), "{}", ran.boot.console);
    assert!(out.iter().any(|l| l.starts_with("TTY=")));
    let sid_line = out.iter().find(|l| l.starts_with("SID=")).unwrap();
    let (sid, pid) = sid_line.split_once(' ').unwrap();
    assert_eq!(
        &sid[4..],
        &pid[4..],
        "app is not a session leader: {sid_line}"
    );
}

#[test]
fn missing_user_is_125() {
    let mut spec = sh("echo should not run");
    spec.user = "nosuch".into();
    let ran = run(Scenario {
        spec,
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 125);
    assert_eq!(ran.boot.control, ["T init", "X 125"]);
    assert!(
        ran.boot.console.contains("unable to find user nosuch"),
        "{}",
        ran.boot.console
    );
}

fn sha256(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn writes_go_to_the_overlay_and_the_image_is_unchanged() {
    let ran = run(Scenario {
        spec: sh(
            "echo tmpdata > /tmp/t && cat /tmp/t && echo rootdata > /rootfile && cat /rootfile \
             && echo extra:x:5:5::/:/bin/sh >> /etc/passwd && tail -n1 /etc/passwd \
             && rm /bin/ls && mkdir -p /var/new && grep -c localhost /etc/hosts \
             && echo WRITES-OK",
        ),
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 0);
    let out = lines(&ran.boot);
    for want in ["tmpdata", "rootdata", "extra:x:5:5::/:/bin/sh", "WRITES-OK"] {
        assert!(out.contains(&want), "missing {want}:\n{}", ran.boot.console);
    }
    let image = ran.work.path().join("rootfs.ext4");
    assert_eq!(sha256(&image), ran.image_before, "the rootfs image changed");
    let listing = Command::new("debugfs")
        .args(["-R", "ls -l /"])
        .arg(&image)
        .output()
        .expect("debugfs installed");
    assert!(!String::from_utf8_lossy(&listing.stdout).contains("rootfile"));
}

#[test]
fn persistent_upper_disk_keeps_writes() {
    let ran = run(Scenario {
        spec: sh("echo kept-data > /kept && echo DONE"),
        cmdline: "hyperpod.upper=/dev/vdb",
        extra_disk: true,
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 0);
    let out = Command::new("debugfs")
        .args(["-R", "cat /upper/kept"])
        .arg(ran.work.path().join("upper.ext4"))
        .output()
        .expect("debugfs installed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept-data\n");
}

const SHOW: ImageFile<'static> = ImageFile {
    path: "/apps/show.sh",
    contents: "#!/bin/sh\necho \"ARGS=$*\"\necho \"ENV A=$A B=$B C=$C\"\n",
    mode: 0o755,
};

fn show_spec() -> RunSpec {
    RunSpec {
        entrypoint: strings(&["/apps/show.sh"]),
        cmd: strings(&["from-spec"]),
        env: strings(&["A=1", "B=2"]),
        ..RunSpec::default()
    }
}

#[test]
fn env_and_args_overrides() {
    let ran = run(Scenario {
        spec: show_spec(),
        overrides: Some(Overrides {
            env: strings(&["B=20", "C=3"]),
            args: Some(strings(&["x", "y"])),
            tty: true,
            ..Overrides::default()
        }),
        files: &[SHOW],
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 0);
    let out = lines(&ran.boot);
    assert!(out.contains(&"ARGS=x y"), "{}", ran.boot.console);
    assert!(out.contains(&"ENV A=1 B=20 C=3"), "{}", ran.boot.console);
    // With `-t` the console stays cooked: "\n" becomes "\r\n".
    assert!(
        ran.boot.console.contains("ARGS=x y\r\n"),
        "{:?}",
        ran.boot.console
    );
}

#[test]
fn entrypoint_override_resets_cmd_and_path_comes_from_env() {
    // `show.sh` is only found through the overridden PATH.
    let ran = run(Scenario {
        spec: show_spec(),
        overrides: Some(Overrides {
            env: strings(&["PATH=/apps:/bin"]),
            entrypoint: Some(strings(&["show.sh"])),
            ..Overrides::default()
        }),
        files: &[SHOW],
        ..Scenario::default()
    });
    assert_exit(&ran.boot, 0);
    let out = lines(&ran.boot);
    assert!(out.contains(&"ARGS="), "{}", ran.boot.console);
    assert!(out.contains(&"ENV A=1 B=2 C="), "{}", ran.boot.console);
}

#[test]
fn without_control_channel_status_goes_to_the_console() {
    let ran = run(Scenario {
        spec: sh("exit 3"),
        no_control: true,
        ..Scenario::default()
    });
    assert!(ran.boot.control.is_empty());
    assert!(
        lines(&ran.boot).contains(&"hyperpod: exit 3"),
        "{}",
        ran.boot.console
    );
    assert_eq!(ran.boot.qemu_status, 7);
}
