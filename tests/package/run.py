#!/usr/bin/env python3
"""The release package and templates/, checked as a user would meet them (run by
scripts/test-package, which builds the package and this script's Python tools first).

Each check boots real things: a fresh Debian 12 root made by mmdebstrap (its tarball cached under
~/.cache/hyperpod/debian-root/) with the package installed, entered with chroot in a private
mount namespace; a docker-registry on 127.0.0.1 with a password; QEMU TCG for the launches.
Templates are read with their ecosystems' parsers and validators, and the commands they hold are
run as written, with only the values a user is told to set (URLs, references, secrets) filled in.
A template step whose command this build does not have is reported NOT VERIFIED, never run as
something else, and fails the run like a failed check. Prints one line per check and
`N passed, N failed` at the end.
"""

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import hcl2
import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"
SUITE = "bookworm"
# The base root: Debian's apt variant plus what the templates' hosts and runners bring (QEMU for
# launches where KVM cannot run guests natively, curl and sudo as CI runners have them, systemd
# for the unit, udev for the kvm group hosts have). The hyperpod package is never in it: each check installs it.
BASE_INCLUDE = ["ca-certificates", "curl", "qemu-system-x86", "sudo", "systemd", "udev"]
REG_USER, REG_PASS = "ci", "s3cret-for-tests"
BOOT_TIMEOUT = 300


def cache_root():
    if os.environ.get("HYPERPOD_CACHE"):
        return Path(os.environ["HYPERPOD_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "hyperpod"


class NotVerified(Exception):
    """A command a template runs does not exist in this build."""


RESULTS = []
TIMES = {}


def run_check(name, fn, *args):
    start = time.monotonic()
    try:
        fn(*args)
        status = "ok"
    except NotVerified as e:
        status = f"NOT VERIFIED: {e}"
    except Exception as e:  # noqa: BLE001 - every failure is reported, with its cause
        status = f"FAILED: {type(e).__name__}: {e}"
    took = time.monotonic() - start
    TIMES[name] = took
    RESULTS.append((name, status))
    print(f"package check {name}: {status} ({took:.1f} s)", flush=True)


def sh(cmd, **kw):
    kw.setdefault("check", True)
    kw.setdefault("text", True)
    kw.setdefault("capture_output", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        raise AssertionError(
            f"{shlex.join(map(str, cmd))} exited {e.returncode}: {e.stderr or ''}{e.stdout or ''}"
        ) from None


# ---------------------------------------------------------------------------------------------
# The Debian root


def base_tarball():
    """The mmdebstrap tarball, made once per suite, package set and mirror."""
    mirror = os.environ.get("HYPERPOD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    key = hashlib.sha256(
        "\0".join([SUITE, "apt", mirror, *sorted(BASE_INCLUDE)]).encode()
    ).hexdigest()[:16]
    path = cache_root() / "debian-root" / f"{SUITE}-{key}.tar"
    if path.is_file():
        print(f"package: base root {path} (cached)", flush=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.tar")
    start = time.monotonic()
    sh(
        [
            "mmdebstrap", "--quiet", "--format=tar", "--variant=apt", f"--include={','.join(BASE_INCLUDE)}",
            SUITE, str(tmp), mirror,
        ]
    )
    os.replace(tmp, path)
    TIMES["mmdebstrap"] = time.monotonic() - start
    print(f"package: base root {path} made in {TIMES['mmdebstrap']:.0f} s", flush=True)
    return path


class Root:
    """A fresh Debian root extracted from the base tarball, entered with chroot in a private
    mount namespace (its /dev, /proc and /sys bound there, gone when the command ends)."""

    def __init__(self, base, scratch, name):
        self.path = Path(scratch) / name
        self.path.mkdir()
        sh(["tar", "-xf", str(base), "-C", str(self.path)])

    def put(self, src, dest):
        target = self.path / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_dir():
            shutil.copytree(src, target, symlinks=True)
        else:
            shutil.copy(src, target)
        return dest

    def popen(self, argv, env=None, user=None, readonly=False, **kw):
        """Runs argv in the root. `user` (uid, gids) drops to that user with no new privileges
        and no capabilities; `readonly` makes the root read-only except /var/cache/hyperpod,
        with a private /tmp and no network (as the unit's hardening would)."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
               **(env or {})}
        setup = ['R="$1"; shift', "mount --make-rprivate /"]
        if readonly:
            setup += ['mount --bind "$R" "$R"', 'mount -o remount,bind,ro "$R"']
        setup += [
            'mount --rbind /dev "$R/dev"',
            'mount -t proc proc "$R/proc"',
            'mount --rbind /sys "$R/sys"',
        ]
        if readonly:
            setup += [
                'mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"',
                'mount --bind "$R/var/cache/hyperpod" "$R/var/cache/hyperpod"',
                'mount -o remount,bind,rw "$R/var/cache/hyperpod"',
            ]
        inner = ["/usr/bin/env", "-i", *[f"{k}={v}" for k, v in env.items()]]
        if user is not None:
            uid, gids = user
            inner += [
                "setpriv", f"--reuid={uid}", f"--regid={uid}",
                f"--groups={','.join(map(str, gids))}" if gids else "--clear-groups",
                "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all",
            ]
        setup.append('exec chroot "$R" "$@"')
        unshare = ["unshare", "--mount"] + (["--net"] if readonly else [])
        cmd = unshare + ["sh", "-ec", "; ".join(setup), "sh", str(self.path), *inner, *argv]
        return subprocess.Popen(cmd, text=True, **kw)

    def run(self, script, env=None, check=True, timeout=BOOT_TIMEOUT, **kw):
        p = self.popen(["/bin/bash", "-ec", script], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, **kw)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"timed out after {timeout} s: {script}\n{err}") from None
        if check and p.returncode != 0:
            raise AssertionError(f"exit {p.returncode}: {script}\nstdout: {out}\nstderr: {err}")
        return subprocess.CompletedProcess(script, p.returncode, out, err)

    def remove(self):
        mounts = Path("/proc/self/mounts").read_text()
        if f" {self.path}/" in mounts or f" {self.path} " in mounts:
            raise AssertionError(f"{self.path} still has mounts; not removing it")
        shutil.rmtree(self.path)


def install_package(root, deb):
    root.put(deb, "/tmp/" + Path(deb).name)
    root.run(f"dpkg -i /tmp/{Path(deb).name} && rm /tmp/{Path(deb).name}")


# ---------------------------------------------------------------------------------------------
# A registry with a password on 127.0.0.1


class Registry:
    def __init__(self, scratch):
        self.dir = Path(tempfile.mkdtemp(dir=scratch, prefix="registry-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        htpasswd = sh(["htpasswd", "-Bbn", REG_USER, REG_PASS]).stdout
        (self.dir / "htpasswd").write_text(htpasswd)
        (self.dir / "config.yml").write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.dir}/storage\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            f"auth:\n  htpasswd:\n    realm: hyperpod-test\n    path: {self.dir}/htpasswd\n"
        )
        self.log = open(self.dir / "log", "w")
        self.proc = subprocess.Popen(
            ["/usr/bin/docker-registry", "serve", str(self.dir / "config.yml")],
            stdout=self.log, stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError("docker-registry did not start") from None
                time.sleep(0.1)
        self.host = f"127.0.0.1:{self.port}"

    def push_oci(self, layout, ref):
        sh(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
            f"--dest-creds={REG_USER}:{REG_PASS}", f"oci:{layout}:demo", f"docker://{ref}"])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


# ---------------------------------------------------------------------------------------------
# What this build has (the sign/push/pull commands come with issue 12)


def hyperbuild_has(root, command):
    # `help CMD` fails for a command clap does not know (`CMD --help` would be read as an image).
    return root.run(f"hyperbuild help {command}", check=False).returncode == 0


def hyperlaunch_has(root, flag):
    return flag in root.run("hyperlaunch --help", check=False).stdout


def need(root, *, build=(), launch=()):
    missing = [f"hyperbuild {c}" for c in build if not hyperbuild_has(root, c)]
    missing += [f"hyperlaunch {f}" for f in launch if not hyperlaunch_has(root, f)]
    if missing:
        raise NotVerified(f"this build has no {', '.join(missing)}")


def make_keypair(root, where):
    """`hyperbuild keygen` in the root; returns (private key path, public key path) there."""
    need(root, build=["keygen"])
    root.run(f"mkdir -p {where} && cd {where} && hyperbuild keygen")
    keys = sorted(p.name for p in (root.path / where.lstrip("/")).iterdir())
    pub = [k for k in keys if k.endswith(".pub")]
    key = [k for k in keys if not k.endswith(".pub")]
    assert len(pub) == 1 and len(key) == 1, f"keygen made {keys}"
    return f"{where}/{key[0]}", f"{where}/{pub[0]}"


# ---------------------------------------------------------------------------------------------
# The checks


def check_package_files(deb, tarball):
    """The .deb holds the promised files; the tarball holds the same tree under PREFIX/."""
    listing = sh(["dpkg-deb", "--contents", deb]).stdout
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for want in [
        "/usr/bin/hyperbuild", "/usr/bin/hyperlaunch", "/usr/lib/hyperpod/hyperpod-init",
        "/usr/lib/hyperpod/vmlinux", "/usr/lib/hyperpod/vmlinux.fragments",
        "/usr/lib/systemd/system/hyperlaunch@.service", "/usr/share/man/man1/hyperbuild.1.gz",
        "/usr/share/man/man1/hyperlaunch.1.gz", "/usr/share/doc/hyperpod/copyright",
        "/usr/share/hyperpod/templates/hosts/hyperlaunch@.service",
    ]:
        assert want in files, f"{want} not in the .deb"
    fields = sh(["dpkg-deb", "--field", deb]).stdout
    assert re.search(r"^Depends: libc6 \(>= [0-9.]+\)", fields, re.M), fields
    assert "Architecture: amd64" in fields
    with tarfile.open(tarball) as t:
        names = t.getnames()
    top = {n.split("/")[0] for n in names}
    assert len(top) == 1, f"tarball has several top directories: {top}"
    prefix = top.pop()
    in_tar = {"/usr" + n[len(prefix):] for n in names}
    in_deb_usr = {f.rstrip("/") for f in files if f.startswith("/usr")}
    assert {f.rstrip("/") for f in in_tar} == in_deb_usr, (
        f"differ: {sorted(in_deb_usr ^ {f.rstrip('/') for f in in_tar})[:10]}"
    )
    fsys = sh(["dpkg-deb", "--fsys-tarfile", deb], text=False).stdout
    with tarfile.open(fileobj=io.BytesIO(fsys)) as t:
        man = gzip.decompress(t.extractfile("./usr/share/man/man1/hyperlaunch.1.gz").read()).decode()
    assert "\\-\\-grace" in man and ".SH" in man, "hyperlaunch.1 lacks its options"


def check_reproducible(deb, tarball, out2):
    """A second `scripts/package --no-build` gives byte-identical files."""
    deb2, tar2 = sh([str(REPO / "scripts/package"), "--no-build", "--out", out2]).stdout.split()
    for a, b in [(deb, deb2), (tarball, tar2)]:
        ha, hb = (hashlib.sha256(Path(x).read_bytes()).hexdigest() for x in (a, b))
        assert ha == hb, f"{Path(a).name} differs between two runs"


def check_tarball_anywhere(tarball, scratch, demo_oci):
    """The tarball unpacked at an odd prefix, run by a user with an empty home: hyperbuild finds
    its kernel and init there (no cache, no repository) and the pod boots."""
    prefix = Path(scratch) / "opt with space"
    prefix.mkdir()
    sh(["tar", "-xzf", tarball, "-C", str(prefix), "--strip-components=1"])
    home = Path(scratch) / "empty-home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    version = sh([str(prefix / "bin/hyperbuild"), "--version"], env=env).stdout
    assert f"kernel: {prefix}/lib/hyperpod/vmlinux (installed, Linux 6." in version, version
    assert f"init: {prefix}/lib/hyperpod/hyperpod-init" in version, version
    pod = Path(scratch) / "anywhere.pod"
    sh([str(prefix / "bin/hyperbuild"), f"oci:{demo_oci}:demo", "-o", str(pod), "-q"], env=env)
    inspect = sh([str(prefix / "bin/hyperbuild"), "inspect", str(pod)], env=env).stdout
    key = (prefix / "lib/hyperpod/vmlinux.fragments").read_text().strip()
    assert re.search(rf"^kernel +Linux 6\.\S+, fragments {key}$", inspect, re.M), inspect
    run = sh([str(prefix / "bin/hyperlaunch"), str(pod)], env=env, check=False)
    assert run.returncode == 0 and "hello from a hyperpod micro-VM" in run.stdout, run


def check_debian_root(base, deb, scratch, demo_oci):
    """Point 4 of issue 13: a fresh Debian 12 root with only the package installed (QEMU and
    systemd are in the base): hyperbuild builds the demo image into a pod, hyperlaunch boots it
    and returns its exit code. No repository, no cache, no Rust in there."""
    root = Root(base, scratch, "debian")
    try:
        t = time.monotonic()
        install_package(root, deb)
        TIMES["install .deb"] = time.monotonic() - t
        assert not (root.path / "root/.cache/hyperpod").exists()
        assert not (root.path / "usr/bin/cargo").exists()
        root.put(demo_oci, "/demo")
        version = root.run("hyperbuild --version").stdout
        assert "kernel: /usr/lib/hyperpod/vmlinux (installed, Linux 6." in version, version
        t = time.monotonic()
        root.run("hyperbuild oci:/demo:demo -o /root/demo.pod -q")
        TIMES["chroot hyperbuild"] = time.monotonic() - t
        inspect = root.run("hyperbuild inspect /root/demo.pod").stdout
        assert re.search(r"^kernel +Linux 6\.\S+, fragments [0-9a-f]{16}$", inspect, re.M), inspect
        t = time.monotonic()
        run = root.run("hyperlaunch /root/demo.pod", check=False)
        TIMES["chroot hyperlaunch"] = time.monotonic() - t
        assert run.returncode == 0, run
        assert "hello from a hyperpod micro-VM" in run.stdout, run.stdout
        root.run("""hyperbuild oci:/demo:demo --entrypoint '["/bin/sh","-c","exit 7"]' \
                    -o /root/seven.pod -q""")
        seven = root.run("hyperlaunch /root/seven.pod", check=False)
        assert seven.returncode == 7, seven
    finally:
        root.remove()


# --- templates: validators --------------------------------------------------------------------


def check_validators(base, deb, scratch):
    venv_bin = Path(sys.executable).parent
    cj = str(venv_bin / "check-jsonschema")
    sh([cj, "--builtin-schema", "vendor.github-workflows",
        str(TEMPLATES / "ci/github-actions.yml")])
    sh([cj, "--builtin-schema", "vendor.gitlab-ci", str(TEMPLATES / "ci/gitlab-ci.yml")])
    with open(TEMPLATES / "fleets/nomad/hyperpod.nomad.hcl") as f:
        job = hcl2.load(f)
    assert job["job"], "no job block"
    kv = sh([str(venv_bin / "kubernetes-validate"), "--strict", "--kubernetes-version", "1.30",
             str(TEMPLATES / "fleets/kubernetes/job.yaml")], check=False)
    assert kv.returncode == 0, kv.stdout + kv.stderr
    # The unit, as installed by the package, in a root that has systemd.
    root = Root(base, scratch, "verify")
    try:
        install_package(root, deb)
        v = sh(["systemd-analyze", "verify", f"--root={root.path}", "--man=no",
                "hyperlaunch@demo.service"], check=False)
        assert v.returncode == 0 and not v.stderr.strip(), v.stdout + v.stderr
    finally:
        root.remove()


# --- templates: hosts (systemd) ---------------------------------------------------------------


def parse_unit(path):
    """`[Section]` → key → list of values (a key may repeat); comments and blanks skipped."""
    unit, section = {}, None
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        k, _, v = line.partition("=")
        section.setdefault(k.strip(), []).append(v.strip())
    return unit


def unit_argv(unit, instance, overrides=None):
    """ExecStart with systemd's expansions: %i, ${VAR} as one word, $VAR split on whitespace."""
    env = {}
    for e in unit["Service"].get("Environment", []):
        k, _, v = e.partition("=")
        env[k] = v
    env.update(overrides or {})
    (exec_start,) = unit["Service"]["ExecStart"]
    argv = []
    for word in shlex.split(exec_start.replace("%i", instance)):
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env[m[1]], word))
    return argv, {k: v for k, v in env.items() if k not in ("GRACE", "HYPERLAUNCH_ARGS")}


def seconds(value):
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    return int(m[1]) * (60 if m[2] == "min" else 1)


def check_systemd_unit(base, deb, scratch, demo_oci):
    """hyperlaunch@.service's ExecStart run as a dynamic user would run it: an unprivileged uid
    (no capabilities, no new privileges), a read-only root but for its cache directory, a
    private /tmp, no network. Exit codes checked against the unit's success and restart
    rules; SIGTERM as systemd's stop sends it (to hyperlaunch alone: KillMode=mixed)."""
    unit = parse_unit(TEMPLATES / "hosts/hyperlaunch@.service")
    svc = unit["Service"]
    assert svc["KillMode"] == ["mixed"] and svc["KillSignal"] == ["SIGTERM"]
    success = {0, *map(int, " ".join(svc["SuccessExitStatus"]).split())}
    no_restart = set(map(int, " ".join(svc["RestartPreventExitStatus"]).split()))
    assert svc["Restart"] == ["on-failure"]
    stop_timeout = seconds(svc["TimeoutStopSec"][0])
    root = Root(base, scratch, "host")
    try:
        install_package(root, deb)
        root.put(demo_oci, "/demo")
        build_service_pods(root)
        root.run("mkdir -p /var/cache/hyperpod && chown 61873:61873 /var/cache/hyperpod "
                 "&& chmod 0700 /var/cache/hyperpod")
        kvm = [int(line.split(":")[2]) for line in (root.path / "etc/group").read_text().splitlines()
               if line.startswith("kvm:")]
        user = (61873, kvm)

        def start(instance, overrides=None):
            argv, env = unit_argv(unit, instance, overrides)
            return root.popen(argv, env=env, user=user, readonly=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)

        # Runs to completion: the app's 0 is success.
        p = start("demo")
        out, err = p.communicate(timeout=BOOT_TIMEOUT)
        assert p.returncode == 0 and "hello from a hyperpod micro-VM" in out, (p.returncode, err)
        assert p.returncode in success

        def stop(instance, overrides=None):
            p = start(instance, overrides)
            line = p.stdout.readline()
            assert line == "up\n", (line, p.stderr.read() if p.poll() is not None else "")
            t = time.monotonic()
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=stop_timeout + 30)
            return p.returncode, time.monotonic() - t

        # `systemctl stop`: the app ends on its stop signal → 143, a success, well in time.
        code, took = stop("sleeper")
        assert code == 143 and code in success, code
        assert took < stop_timeout, took
        # An app that ignores it: killed after --grace (here GRACE=2) → 137, a failure that is
        # not restarted only because the unit is stopping; within TimeoutStopSec.
        code, took = stop("stubborn", {"GRACE": "2"})
        assert code == 137 and code not in success, code
        assert 2 <= took < 2 + 5, took
        # A missing pod: hyperlaunch's own failure, 125, which the unit does not restart.
        p = start("missing")
        _, err = p.communicate(timeout=60)
        assert p.returncode == 125 and p.returncode in no_restart, (p.returncode, err)
        assert "missing.pod" in err, err
    finally:
        root.remove()


UNIT_CHECK = r"""#!/bin/bash
# Runs inside the booted root (systemd as PID 1): the unit as systemd runs it.
set -u
exec >/var/log/unit-check 2>&1
# Each run's end as systemd saw it, written by the check's ExecStopPost (a successful unit is
# unloaded when it ends, so `systemctl show` would no longer know).
show() { tr '\n' ';' < "/run/unit-check-$1"; echo; }
wait_inactive() {
  for _ in $(seq 600); do
    case "$(systemctl is-active "hyperlaunch@$1")" in
      active|activating|deactivating|reloading) sleep 0.5 ;;
      *) return 0 ;;
    esac
  done
}
wait_up() {
  for _ in $(seq 600); do
    journalctl -q -u "hyperlaunch@$1" -o cat | grep -qx up && return 0
    sleep 0.5
  done
}
systemctl start hyperlaunch@demo; wait_inactive demo
echo "demo: $(show demo)"
journalctl -q -u hyperlaunch@demo -o cat | grep -q 'hello from a hyperpod micro-VM' \
  && echo "demo output: in the journal"
systemctl start hyperlaunch@sleeper; wait_up sleeper
echo "sleeper uid: $(stat -c %u "/proc/$(systemctl show -p MainPID --value hyperlaunch@sleeper)")"
t=$(date +%s%N); systemctl stop hyperlaunch@sleeper
echo "sleeper: $(show sleeper) stop_ms=$(( ($(date +%s%N) - t) / 1000000 ))"
systemctl start hyperlaunch@stubborn; wait_up stubborn
t=$(date +%s%N); systemctl stop hyperlaunch@stubborn
echo "stubborn: $(show stubborn) stop_ms=$(( ($(date +%s%N) - t) / 1000000 ))"
systemctl start hyperlaunch@failing
for _ in $(seq 600); do
  [ "$(systemctl show -p NRestarts --value hyperlaunch@failing)" -ge 1 ] && break
  sleep 0.5
done
systemctl stop hyperlaunch@failing
echo "failing: $(show failing)"
systemctl start hyperlaunch@missing; wait_inactive missing; sleep 3
echo "missing: $(show missing)"
echo "end: done"
systemctl --no-block poweroff
"""

UNIT_CHECK_SERVICE = """[Unit]
Description=hyperlaunch@.service checks
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/unit-check
[Install]
WantedBy=multi-user.target
"""


def check_systemd_boot(base, deb, scratch, demo_oci):
    """hyperlaunch@.service run by systemd itself: the package's root booted with
    systemd-nspawn (systemd as PID 1) and a check unit starting and stopping instances, so
    DynamicUser, the hardening directives, the stop path and the exit-code rules are systemd's
    own, not an imitation."""
    if shutil.which("systemd-nspawn") is None:
        raise AssertionError("systemd-nspawn missing (package systemd-container)")
    root = Root(base, scratch, "booted")
    try:
        install_package(root, deb)
        root.put(demo_oci, "/demo")
        build_service_pods(root)
        root.run(r"""hyperbuild oci:/demo:demo --entrypoint '["/bin/sh","-c","exit 3"]' \
                -o /var/lib/hyperpod/failing.pod -q
            chmod 0644 /var/lib/hyperpod/*.pod
            mkdir -p /etc/systemd/system/hyperlaunch@stubborn.service.d
            printf '[Service]\nEnvironment=GRACE=2\nTimeoutStopSec=7\n' \
                > /etc/systemd/system/hyperlaunch@stubborn.service.d/grace.conf
            mkdir -p /etc/systemd/system/hyperlaunch@.service.d
            printf '%s\n' '[Service]' \
                "ExecStopPost=+/bin/sh -c 'echo \"\$SERVICE_RESULT \$EXIT_CODE \$EXIT_STATUS\" >> /run/unit-check-%i'" \
                > /etc/systemd/system/hyperlaunch@.service.d/check.conf""")
        (root.path / "etc/systemd/system/unit-check.service").write_text(UNIT_CHECK_SERVICE)
        script = root.path / "usr/local/sbin/unit-check"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(UNIT_CHECK)
        script.chmod(0o755)
        root.run("systemctl enable unit-check.service")
        Path("/run/systemd/nspawn/propagate").mkdir(parents=True, exist_ok=True)
        boot = subprocess.run(
            ["timeout", "900", "systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
             "-D", str(root.path), "--boot", "--console=pipe"],
            capture_output=True, text=True,
            env=dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="0"),
        )
        log_path = root.path / "var/log/unit-check"
        log = log_path.read_text() if log_path.exists() else ""
        assert "end: done" in log, f"nspawn exit {boot.returncode}: {boot.stderr[-2000:]}\n{log}"
        for line in log.splitlines():
            print(f"  booted: {line}", flush=True)
        lines = dict(line.split(": ", 1) for line in log.splitlines() if ": " in line)
        assert lines["demo"] == "success exited 0;", lines["demo"]
        assert lines.get("demo output") == "in the journal", log
        assert int(lines["sleeper uid"]) >= 61184, f"not a dynamic user: {lines['sleeper uid']}"
        # systemctl stop: the app ends on the stop signal hyperlaunch forwards; 143 is success.
        assert lines["sleeper"].startswith("success exited 143;"), lines["sleeper"]
        stubborn = lines["stubborn"]
        assert stubborn.startswith("exit-code exited 137;"), stubborn
        stop_ms = int(stubborn.split("stop_ms=")[1])
        assert 2000 <= stop_ms < 7000, f"stubborn stopped in {stop_ms} ms"
        runs = lines["failing"].strip(";").split(";")
        # Exit 3 is a failure: restarted (the run after it is the one the stop ended).
        assert len(runs) >= 2 and runs[0] == "exit-code exited 3", runs
        assert lines["missing"] == "exit-code exited 125;", lines["missing"]
    finally:
        root.remove()


def build_service_pods(root):
    """/var/lib/hyperpod/{demo,sleeper,stubborn}.pod from the demo image in the root."""
    root.run(r"""mkdir -p /var/lib/hyperpod
        hyperbuild oci:/demo:demo -o /var/lib/hyperpod/demo.pod -q
        hyperbuild oci:/demo:demo --entrypoint '["/bin/sh","-c","echo up; exec sleep 600"]' \
            -o /var/lib/hyperpod/sleeper.pod -q
        hyperbuild oci:/demo:demo \
            --entrypoint '["/bin/sh","-c","trap \"\" TERM; echo up; while :; do sleep 1; done"]' \
            -o /var/lib/hyperpod/stubborn.pod -q
        chmod 0644 /var/lib/hyperpod/*.pod""")


# --- templates: CI ----------------------------------------------------------------------------


def demo_in_registry(registry, demo_oci, repo):
    ref = f"{registry.host}/{repo}:0123abc"
    registry.push_oci(demo_oci, ref)
    return ref


def check_github(base, deb, scratch, demo_oci, registry):
    wf = yaml.safe_load((TEMPLATES / "ci/github-actions.yml").read_text())
    (job,) = wf["jobs"].values()
    image = demo_in_registry(registry, demo_oci, "team/app")
    root = Root(base, scratch, "github")
    try:
        root.put(deb, "/srv/hyperpod.deb")
        ctx = {"github.repository": "team/app", "github.sha": "0123abc", "github.actor": REG_USER,
               "secrets.GITHUB_TOKEN": REG_PASS}
        env = {k: str(v) for k, v in wf["env"].items()}
        # What the workflow's header says to set.
        assert {"HYPERPOD_DEB_URL", "IMAGE", "POD_REF"} <= env.keys()
        env.update(HYPERPOD_DEB_URL="file:///srv/hyperpod.deb", IMAGE=f"docker://{image}",
                   POD_REF=f"{registry.host}/team/app/pod:0123abc", RUNNER_TEMP="/tmp/runner",
                   CI="true")
        root.run("mkdir -p /tmp/runner /work")
        keys = None
        for step in job["steps"]:
            if "uses" in step:
                # GitHub's own action: it uploads what `path` names; that file must be there.
                assert step["uses"].startswith("actions/upload-artifact@")
                assert (root.path / "work" / step["with"]["path"]).is_file()
                continue
            script = step["run"]
            if "hyperbuild sign" in script or "hyperbuild push" in script:
                need(root, build=["sign", "push", "keygen"])
                if keys is None:
                    keys = make_keypair(root, "/srv/keys")
                    ctx["secrets.HYPERPOD_SIGNING_KEY"] = (root.path / keys[0].lstrip("/")).read_text()
            step_env = dict(env, **{k: str(v) for k, v in step.get("env", {}).items()})
            step_env = {k: expand_github(v, ctx) for k, v in step_env.items()}
            root.run(f"cd /work\n{expand_github(script, ctx)}", env=step_env)
        pulled = root.run(f"hyperbuild pull {env['POD_REF']} --creds {REG_USER}:{REG_PASS} "
                          f"-o /tmp/pulled.pod && hyperbuild verify --pubkey {keys[1]} /tmp/pulled.pod")
        assert pulled.returncode == 0
    finally:
        root.remove()


def expand_github(text, ctx):
    def one(m):
        name = m[1].strip()
        if name not in ctx:
            raise AssertionError(f"the test has no value for ${{{{ {name} }}}}")
        return ctx[name]

    return re.sub(r"\$\{\{(.*?)\}\}", one, text)


def check_gitlab(base, deb, scratch, demo_oci, registry):
    ci = yaml.safe_load((TEMPLATES / "ci/gitlab-ci.yml").read_text())
    job = ci["pod"]
    image_repo = f"{registry.host}/group/project"
    demo_in_registry(registry, demo_oci, "group/project")
    root = Root(base, scratch, "gitlab")
    try:
        root.put(deb, "/srv/hyperpod.deb")
        predefined = {"CI": "true", "CI_REGISTRY_IMAGE": image_repo, "CI_COMMIT_SHORT_SHA": "0123abc",
                      "CI_REGISTRY_USER": REG_USER, "CI_REGISTRY_PASSWORD": REG_PASS,
                      "HYPERPOD_DEB_URL": "file:///srv/hyperpod.deb"}
        script = job["before_script"] + job["script"]
        if any("hyperbuild sign" in s or "hyperbuild push" in s for s in script):
            try:
                install_package(root, deb)
                need(root, build=["sign", "push", "keygen"])
                predefined["HYPERPOD_SIGNING_KEY"] = make_keypair(root, "/srv/keys")[0]
            finally:
                root.run("dpkg --purge hyperpod")
        # GitLab expands job variables with the predefined ones, then runs the lines in one shell.
        lines = [f"export {k}={shlex.quote(v)}" for k, v in predefined.items()]
        lines += [f'export {k}="{v}"' for k, v in job["variables"].items()]
        lines += ["mkdir -p /builds/group/project", "cd /builds/group/project", *script]
        root.run("\n".join(lines), timeout=900)
        for path in job["artifacts"]["paths"]:
            assert (root.path / "builds/group/project" / path).is_file(), path
        root.run(f"hyperbuild pull {image_repo}/pod:0123abc --creds {REG_USER}:{REG_PASS} "
                 "-o /tmp/pulled.pod")
    finally:
        root.remove()


# --- templates: fleets ------------------------------------------------------------------------


def push_signed_demo(root, registry, ref, demo_oci):
    """A signed demo pod in the registry, made in `root`; returns the public key's path there."""
    need(root, build=["keygen", "sign", "push", "pull"], launch=["--require-signature"])
    key, pub = make_keypair(root, "/srv/keys")
    root.put(demo_oci, "/demo")
    root.run(f"""hyperbuild oci:/demo:demo -o /srv/demo.pod -q
        hyperbuild sign --key {key} /srv/demo.pod
        hyperbuild push --creds {REG_USER}:{REG_PASS} /srv/demo.pod {ref}""")
    return pub


def hcl_values(obj):
    """python-hcl2 keeps HCL strings quoted ("\"raw_exec\""): unquote keys and values."""
    if isinstance(obj, dict):
        return {hcl_values(k): hcl_values(v) for k, v in obj.items() if not k.startswith("__")}
    if isinstance(obj, list):
        return [hcl_values(v) for v in obj]
    if isinstance(obj, str) and len(obj) >= 2 and obj[0] == obj[-1] == '"':
        return json.loads(obj)
    return obj


def docker_config(root, registry):
    """~/.docker/config.json with the registry's password, as `docker login` writes it."""
    auth = base64.b64encode(f"{REG_USER}:{REG_PASS}".encode()).decode()
    path = root.path / "root/.docker/config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    path.chmod(0o600)


def check_nomad(base, deb, scratch, demo_oci, registry):
    with open(TEMPLATES / "fleets/nomad/hyperpod.nomad.hcl") as f:
        spec = hcl_values(hcl2.load(f))
    variables = {name: body["default"] for v in spec["variable"] for name, body in v.items()}
    (job,) = [body for j in spec["job"] for body in j.values()]
    (group,) = [body for g in job["group"] for body in g.values()]
    tasks = {name: body for t in group["task"] for name, body in t.items()}
    prestart = [n for n, t in tasks.items() if t.get("lifecycle", [{}])[0].get("hook") == "prestart"]
    assert prestart == ["fetch"], prestart
    root = Root(base, scratch, "nomad")
    try:
        install_package(root, deb)
        variables["pod_ref"] = f"{registry.host}/team/app/pod:nomad"
        pub = push_signed_demo(root, registry, variables["pod_ref"], demo_oci)
        root.run(f"mkdir -p /etc/hyperpod /alloc && cp {pub} /etc/hyperpod/signing.pub")
        nomad_env = {"NOMAD_ALLOC_DIR": "/alloc", "NOMAD_TASK_DIR": "/local"}
        root.run("mkdir -p /local")

        def interpolate(s):
            s = re.sub(r"\$\{var\.(\w+)\}", lambda m: str(variables[m[1]]), s)
            return re.sub(r"\$\{(NOMAD_\w+)\}", lambda m: nomad_env[m[1]], s)

        for name in ["fetch", "app"]:
            task = tasks[name]
            assert task["driver"] in ("raw_exec", "exec"), task["driver"]
            config = task["config"][0] if isinstance(task["config"], list) else task["config"]
            argv = [config["command"], *map(interpolate, config["args"])]
            env = {k: interpolate(v) for e in task.get("env", [{}]) for k, v in e.items()}
            if name == "fetch":
                # raw_exec passes the agent's environment: a registry that wants a password gets
                # it from the agent's Docker config file, which hyperbuild reads.
                docker_config(root, registry)
            p = root.run(shlex.join(argv), env=env, check=False)
            assert p.returncode == 0, (name, p.returncode, p.stderr)
            if name == "app":
                assert "hello from a hyperpod micro-VM" in p.stdout, p.stdout
    finally:
        root.remove()


def check_kubernetes(base, deb, scratch, demo_oci, registry):
    docs = list(yaml.safe_load_all((TEMPLATES / "fleets/kubernetes/job.yaml").read_text()))
    (job,) = [d for d in docs if d["kind"] == "Job"]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    pod = job["spec"]["template"]["spec"]
    assert any(v.get("hostPath", {}).get("path") == "/dev/kvm" for v in pod["volumes"])
    root = Root(base, scratch, "kubernetes")
    try:
        # The image: Containerfile's steps, run as written in a fresh root.
        containerfile = (TEMPLATES / "fleets/kubernetes/Containerfile").read_text()
        text = re.sub(r"\\\n", " ", containerfile)
        for line in text.splitlines():
            if line.startswith("COPY "):
                src, dest = line.split()[1:]
                assert src == "hyperpod_*_amd64.deb" and dest.endswith("/")
                root.put(deb, dest + Path(deb).name)
            elif line.startswith("RUN "):
                root.run(line[4:], timeout=900)
        assert not list((root.path / "tmp").glob("hyperpod_*")), "the .deb was left in the image"
        ref = f"{registry.host}/team/app/pod:k8s"
        pub = push_signed_demo(root, registry, ref, demo_oci)
        # The ConfigMap's key, mounted where the Job mounts it.
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        key_name = next(iter(configmap["data"]))
        root.run(f"mkdir -p {mounts['signing']} && cp {pub} {mounts['signing']}/{key_name}")
        docker_config(root, registry)
        for c in pod["initContainers"] + pod["containers"]:
            env = {e["name"]: e["value"] for e in c.get("env", [])}
            if "POD_REF" in env:
                env["POD_REF"] = ref
            argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in c["command"] + c.get("args", [])]
            for m in c.get("volumeMounts", []):
                root.run(f"[ -e {m['mountPath']} ] || mkdir -p {m['mountPath']}")
            p = root.run(shlex.join(argv), env=env, check=False)
            assert p.returncode == 0, (c["name"], p.returncode, p.stderr)
        assert "hello from a hyperpod micro-VM" in p.stdout
    finally:
        root.remove()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deb", required=True)
    ap.add_argument("--tarball", required=True)
    ap.add_argument("--only", help="comma-separated check names")
    args = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="hyperpod-package-", dir="/var/tmp")
    demo_oci = Path(scratch) / "demo-oci"
    sh(["bash", str(REPO / "scripts/make-demo-image"), str(demo_oci)])
    only = set(args.only.split(",")) if args.only else None
    base = base_tarball()
    registry = Registry(scratch)
    checks = [
        ("package_files", check_package_files, args.deb, args.tarball),
        ("reproducible", check_reproducible, args.deb, args.tarball, str(Path(scratch) / "again")),
        ("tarball_anywhere", check_tarball_anywhere, args.tarball, scratch, demo_oci),
        ("debian_root", check_debian_root, base, args.deb, scratch, demo_oci),
        ("validators", check_validators, base, args.deb, scratch),
        ("systemd_unit", check_systemd_unit, base, args.deb, scratch, demo_oci),
        ("systemd_boot", check_systemd_boot, base, args.deb, scratch, demo_oci),
        ("github_actions", check_github, base, args.deb, scratch, demo_oci, registry),
        ("gitlab_ci", check_gitlab, base, args.deb, scratch, demo_oci, registry),
        ("nomad", check_nomad, base, args.deb, scratch, demo_oci, registry),
        ("kubernetes", check_kubernetes, base, args.deb, scratch, demo_oci, registry),
    ]
    try:
        for name, fn, *fargs in checks:
            if only is None or name in only:
                run_check(name, fn, *fargs)
    finally:
        registry.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    for k, v in TIMES.items():
        print(f"package time {k}: {v:.1f} s")
    failed = sum(s.startswith("FAILED") for _, s in RESULTS)
    unverified = [n for n, s in RESULTS if s.startswith("NOT VERIFIED")]
    passed = len(RESULTS) - failed - len(unverified)
    if unverified:
        print(f"package: not verified (commands missing from this build): {', '.join(unverified)}")
    print(f"{passed} passed, {failed} failed")
    # A template whose command this build lacks is a broken template: it fails too.
    return 1 if failed or unverified else 0


if __name__ == "__main__":
    sys.exit(main())
