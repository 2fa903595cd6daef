#!/usr/bin/env bash
# bench/kvm-create.sh: the cost of each VM-creation ioctl the KVM engine makes (bench/kvm-create.c:
# /dev/kvm, KVM_CREATE_VM, the 128 MiB memory slot, irqchip, PIT, vCPU, irqfds, teardown) over
# RUNS (default 60) VMs, in the launcher's order (memory slot first) and with the irqchip and
# PIT first. Shows which steps wait for the host kernel's deferred work (SRCU grace periods, the
# PIT's kernel thread) and so grow with the host's load. Needs /dev/kvm and gcc. Results go to
# stdout, with the load average and time.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-60}
case "$runs" in '' | *[!0-9]*) echo "kvm-create.sh: not a number: $runs" >&2; exit 2 ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -Wall -o "$work/kvm-create" bench/kvm-create.c
echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== memory slot first (the launcher's order), $runs VMs"
"$work/kvm-create" m "$runs"
echo "== irqchip and PIT first, $runs VMs"
"$work/kvm-create" i "$runs"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
