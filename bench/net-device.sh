#!/usr/bin/env bash
# bench/net-device.sh: throughput of the KVM engine's network device (virtio-net) with a probe guest
# (launcher/tests/probes/net.c) and a socketpair as the backend (the test plays passt: 4-byte
# big-endian length + frame): guest -> backend with NET_BENCH_FRAMES (default 50000) frames of
# 1514 bytes, kicking after every frame and after every 16; backend -> guest with 16 receive
# buffers the guest reposts at once. Device and stream protocol only: no passt, no guest TCP.
# Needs /dev/kvm, gcc and binutils. Results go to stdout, with the load average and time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

cargo test --release -p launcher --test kvm_net --no-run >&2
echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo test --release -p launcher --test kvm_net -- --ignored --nocapture --test-threads=1 \
  bench_net_throughput 2>&1 | grep -oE '(virtio-net .*|SKIPPED.*)'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
