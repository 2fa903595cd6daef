#!/usr/bin/env bash
# bench/console.sh: guest -> host throughput of the KVM engine's stdio console (virtio-console
# transmitq), with a probe guest (launcher/tests/probes/vcon.c) sending CONSOLE_BENCH_MIB MiB
# (default 64) in 4 KiB chains to a sink that counts and discards, kicking after every chain
# (as Linux's hvc does) and after every 16. Time is from the first byte at the sink to the last.
# Needs /dev/kvm, gcc and binutils. Results go to stdout, with the load average and time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

cargo test --release -p launcher --test kvm_console --no-run >&2
echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo test --release -p launcher --test kvm_console -- --ignored --nocapture --test-threads=1 \
  bench_console_transmit_throughput 2>&1 | grep -oE '(console transmitq|SKIPPED).*'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
