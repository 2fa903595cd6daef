#!/usr/bin/env bash
# bench/launcher.sh: the KVM engine's own costs on this host, with a probe guest
# (launcher/tests/probes/hello.c) sealed in a real .pod:
#   - spawn -> first guest instruction (first VM exit of vCPU 0), p50/p90/p99/max of 120 runs
#   - the launcher's RSS beyond guest memory while a guest runs
#   - size of the stripped release binary
# and beside it the same launcher with the real demo pod (scripts/make-demo-image + hyperbuild:
# the 15 MB vmlinux and the initramfs): spawn -> first KVM_RUN, with the marks on the way
# (pod opened, VM created, kernel loaded), p50/p90/p99/max of 120 runs.
# for two builds of hyperlaunch:
#   - static: static-pie, size-optimised, as scripts/setup --release builds it for shipping
#     (profile `ship` + crt-static: target/x86_64-unknown-linux-gnu/ship/hyperlaunch)
#   - dynamic: plain `cargo build --release -p launcher` (target/release/hyperlaunch)
# Needs /dev/kvm, gcc and binutils. Results go to stdout, with the load average and time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
host=x86_64-unknown-linux-gnu

cargo build --release -p launcher --bin hyperlaunch >&2
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --profile ship -p launcher --bin hyperlaunch --target "$host" >&2
# Build the benchmark itself before measuring anything.
cargo test --release -p launcher --test kvm_bench --no-run >&2

# The real pod: the demo image built with the cached kernel and the static init.
kernel=$(bash kernel-fragments/build-kernel.sh | tail -n 1)
cargo build --release -p builder >&2
init=$(./scripts/build-init)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
image=$(./scripts/make-demo-image "$work/oci")
HYPERPOD_INIT="$init" \
  "$CARGO_TARGET_DIR/release/hyperbuild" -q "$image" -o "$work/demo.pod" --kernel "$kernel" >&2
export HYPERPOD_BENCH_POD="$work/demo.pod"

for variant in static dynamic; do
  case $variant in
    static) bin="$CARGO_TARGET_DIR/$host/ship/hyperlaunch" ;;
    dynamic) bin="$CARGO_TARGET_DIR/release/hyperlaunch" ;;
  esac
  echo "== $variant build: $(file -b "$bin" | cut -d, -f1-2,4 | tr -s ' ')"
  echo "stripped release binary: $(stat -c %s "$bin") bytes ($bin)"
  echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  HYPERLAUNCH="$bin" cargo test --release -p launcher --test kvm_bench -- --ignored --nocapture --test-threads=1 2>&1 \
    | grep -E '^(hyperlaunch KVM|spawn|main|real pod|launcher RSS|SKIPPED)'
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
done
