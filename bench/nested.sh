#!/usr/bin/env bash
# bench/nested.sh: the whole stack (launcher + guest kernel + init) timed deterministically on
# the nested KVM of this machine: Debian 12's kernel under `qemu-system-x86_64 -accel tcg -cpu
# max -icount shift=0,sleep=off` runs kvm-amd (one outer CPU: -icount with -smp 2 hangs in QEMU 7.2), and the static hyperlaunch launches a busybox pod
# there N times per vCPU count (1 and 2), caches emptied first (cold), then warm. Prints the
# table of exec -> init entered and exec -> app execve (min/avg/max, ms of outer-guest time,
# from `hyperlaunch --timing`). Emulated time: the same on every machine, not a real-hardware
# figure (VM exits are cheap in emulation, memory is not).
#
# --stdio [MiB]: instead, stdio throughput in the same nested machine (no -icount), with both
# engines on its KVM (the QEMU engine's qemu-system-x86_64 copied in): the app writes MiB
# (default 16) to stdout (`head -c`), the launcher's stdout is /dev/null; and MiB piped into
# `hyperlaunch -i` counted by `wc -c`. Each launch is timed in outer-guest time against the
# same launch moving 0 bytes.
#
# --stalls N: instead, N outer boots in a row (no -icount, no retry), 4 KVM launches each,
# and how many stalled, with the outer CPU's state for each stall (tests/tests/nested_stalls.rs);
# --append 'WORDS' adds to the outer kernel's command line (kvm_amd.PARAM=V reaches the module),
# --rounds R runs the 4 launches R times per boot.
#
# Usage: bench/nested.sh [--runs N]   (N >= 2, default 10)
#        bench/nested.sh --stdio [MiB]
#        bench/nested.sh --stalls N [--rounds R] [--append 'WORDS']
# Needs qemu-system-x86, busybox-static, e2fsprogs and apt (scripts/setup; the outer kernel
# comes from scripts/nested-kernel). One outer VM, a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=10
stdio=''
stalls=''
append=''
rounds=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    --stdio)
      stdio=16
      shift
      case "${1:-}" in '' | -*) ;; *) stdio=$1; shift ;; esac
      case "$stdio" in *[!0-9]* | 0) echo "nested.sh: --stdio: not a MiB count: $stdio" >&2; exit 2 ;; esac
      ;;
    --stalls) stalls=${2:?--stalls needs a number}; shift 2 ;;
    --append) append=${2?--append needs words}; shift 2 ;;
    --rounds) rounds=${2:?--rounds needs a number}; shift 2 ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "nested.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$runs" in '' | *[!0-9]*) echo "nested.sh: --runs: not a number: $runs" >&2; exit 2 ;; esac
[ "$runs" -ge 2 ] || { echo "nested.sh: --runs must be at least 2" >&2; exit 2; }
case "$stalls" in *[!0-9]* | 0) echo "nested.sh: --stalls: not a boot count: $stalls" >&2; exit 2 ;; esac
case "$rounds" in '' | *[!0-9]* | 0) echo "nested.sh: --rounds: not a count: $rounds" >&2; exit 2 ;; esac
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
kernel=$(./scripts/setup | tail -n 1)
export HYPERPOD_KERNEL="$kernel"
export HYPERPOD_INIT="$PWD/target/x86_64-unknown-linux-gnu/guest/hyperpod-init"
echo "nested.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load $(cut -d' ' -f1-3 /proc/loadavg)"
file=nested_bench test=nested_kvm_launch_table
[ -z "$stdio" ] || test=nested_stdio_throughput
[ -z "$stalls" ] || { file=nested_stalls test=outer_machine_stalls; }
HYPERPOD_NESTED_RUNS=$runs HYPERPOD_NESTED_MIB=$stdio HYPERPOD_NESTED_BOOTS=$stalls \
  HYPERPOD_NESTED_APPEND=$append HYPERPOD_NESTED_ROUNDS=$rounds cargo test -q -p hyperpod-tests --test "$file" -- \
  --ignored --exact "$test" --nocapture 2>/tmp/nested-bench.$$.err | grep -v '^$' |
  grep -v -e '^running ' -e '^test ' -e '^test result' -e '^\.*$' || { cat /tmp/nested-bench.$$.err >&2; rm -f /tmp/nested-bench.$$.err; exit 1; }
rm -f /tmp/nested-bench.$$.err
