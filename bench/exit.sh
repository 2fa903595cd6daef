#!/usr/bin/env bash
# bench/exit.sh: the launcher's exit latency — from the run's end (the `exit` mark of
# `--timing`: the machine has stopped) to the launcher's process gone (its parent's waitpid
# returns) — with the default network publishing a port (passt ended on the way out) and with
# `--network none`, for each hyperlaunch binary given.
#   bench/exit.sh [-n RUNS] [--engine kvm|qemu] POD HYPERLAUNCH...
# KVM: each run ends by `--timeout 0.3` (a Linux guest here need not boot for it). QEMU: the
# app is `/bin/true` (`--entrypoint`, so POD needs one: the web image of tests/fixtures).
# Prints min/p50/p90/max in ms per binary and network, with the date and load average.
set -euo pipefail
runs=20
engine=kvm
while [ $# -gt 0 ]; do
  case $1 in
    -n) runs=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -ge 2 ] || { echo "usage: $0 [-n RUNS] [--engine kvm|qemu] POD HYPERLAUNCH..." >&2; exit 2; }
pod=$1; shift
echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), engine $engine, $runs runs each, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$engine" "$runs" "$pod" "$@" <<'EOF'
import re, socket, subprocess, sys, time

engine, runs, pod, binaries = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

def free_port():
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    port = s.getsockname()[1]
    s.close()
    return port

def one(binary, net):
    argv = [binary, "--engine", engine, "--timing"] + net
    argv += ["--timeout", "0.3", pod] if engine == "kvm" else ["--entrypoint", "/bin/true", pod]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    p.wait()
    gone = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    exec_at = re.search(r"exec at CLOCK_MONOTONIC (\d+) ns", err)
    end = re.search(r"timing: exit\s+([\d.]+) ms", err)
    if not (exec_at and end):
        sys.exit(f"{binary} {net}: no timing marks (exit {p.returncode}):\n{err}")
    return (gone - int(exec_at.group(1))) / 1e6 - float(end.group(1))

for binary in binaries:
    for label, net in (("-p PORT:80 (passt)", ["-p"]), ("--network none", ["--network", "none"])):
        got = []
        for _ in range(runs):
            args = ["-p", f"{free_port()}:80"] if net == ["-p"] else net
            got.append(one(binary, args))
        got.sort()
        q = lambda f: got[min(len(got) - 1, int(f * len(got)))]
        print(f"{binary}  {label:20} exit latency ms: min {got[0]:.3f}  p50 {q(0.5):.3f}  "
              f"p90 {q(0.9):.3f}  max {got[-1]:.3f}")
EOF
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
