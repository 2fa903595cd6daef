#!/usr/bin/env bash
# bench/launcher.sh: the KVM engine's own costs on this host, with a probe guest
# (launcher/tests/probes/hello.c) sealed in a real .pod:
#   - spawn -> first guest instruction (first VM exit of vCPU 0), p50/p90/p99/max of 120 runs
#   - the launcher's RSS beyond guest memory while a guest runs
#   - size of the stripped release binary
# Needs /dev/kvm, gcc and binutils. Results go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -p launcher --bin hyperlaunch >&2
bin="$CARGO_TARGET_DIR/release/hyperlaunch"
echo "stripped release binary: $(stat -c %s "$bin") bytes ($bin)"
HYPERLAUNCH="$bin" cargo test --release -p launcher --test kvm_bench -- --ignored --nocapture --test-threads=1 2>&1 \
  | grep -E '^(hyperlaunch KVM|spawn|main|launcher RSS|SKIPPED)' 
