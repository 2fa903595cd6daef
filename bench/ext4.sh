#!/usr/bin/env bash
# bench/ext4.sh: ext4 image writer throughput and peak RSS on a synthetic tree whose file
# contents are generated in memory (so the disk write of the image is what is measured).
# EXT4_BENCH_MIB sets the data size (default 2048). Needs e2fsprogs (the image is checked).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo test --release -p builder --test ext4_bench -- --ignored --nocapture --test-threads=1 2>&1 \
  | grep -E '^(ext4 write|thread|test result)'
