#!/usr/bin/env bash
# bench/verity.sh: what dm-verity costs. Builds the demo image plus one 100 MiB file of random
# bytes into two pods, with and without `rootfs.verity`, and boots each under QEMU TCG, running
# `cat /data/big >/dev/null` (a cold read of 100 MiB through the verity device, or straight from
# /dev/vda) as the app:
# - with deterministic guest time (`-icount shift=0,sleep=off`, added by a qemu-system-x86_64
#   wrapper put first in PATH for hyperlaunch --engine qemu): guest uptime at app start, and the
#   guest's busy time (user+nice+system+irq+softirq of /proc/stat, all CPUs, kernel threads such
#   as kverityd included) spent by the read. Idle time is not deterministic under sleep=off
#   (the clock jumps while the vCPU waits for I/O), so the read is measured in busy time.
# - without icount (plain TCG): the guest's /proc/uptime across the read (wall time, noisy).
# Also times the two builds (and, with IMAGE=ref, builds that image both ways and runs
# `veritysetup verify` on its tree).
#
# Usage: [IMAGE=oci:DIR:TAG] bench/verity.sh [RUNS]   (default 3; needs umoci,
# qemu-system-x86_64, veritysetup, the cached kernel, release hyperbuild/hyperlaunch and the
# static init: ./scripts/setup --release)
set -euo pipefail
runs=${1:-3}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
hyperbuild=${HYPERBUILD:-$repo/target/release/hyperbuild}
hyperlaunch=${HYPERLAUNCH:-$repo/target/release/hyperlaunch}
init=${HYPERPOD_INIT:-$repo/target/x86_64-unknown-linux-gnu/guest/hyperpod-init}
kernel=$(bash "$repo/kernel-fragments/build-kernel.sh" | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The image: demo + /data/big (100 MiB, incompressible).
bash "$repo/scripts/make-demo-image" "$work/oci" >/dev/null
umoci unpack --image "$work/oci:demo" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/data"
head -c $((100 << 20)) /dev/urandom >"$work/bundle/rootfs/data/big"
umoci repack --image "$work/oci:big" "$work/bundle" >/dev/null

# A qemu that counts instructions for guest time.
real_qemu=$(command -v qemu-system-x86_64)
mkdir -p "$work/bin"
cat >"$work/bin/qemu-system-x86_64" <<EOF
#!/bin/sh
exec "$real_qemu" -icount shift=0,sleep=off "\$@"
EOF
chmod +x "$work/bin/qemu-system-x86_64"

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%F)"
script='busy() { read -r _ u n s _ _ i q _ </proc/stat; echo $((u + n + s + i + q)); }
read -r a _ </proc/uptime; b0=$(busy); cat /data/big >/dev/null; b1=$(busy); read -r b _ </proc/uptime
echo "result $a $b $b0 $b1"'
build() { # IMAGE OUT FLAG → seconds
  local start end
  start=$(date +%s.%N)
  "$hyperbuild" "$1" -o "$2" --kernel "$kernel" --init "$init" -q $3 >/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}
for mode in verity no-verity; do
  flag=""
  [[ $mode = no-verity ]] && flag=--no-verity
  t=$(build "oci:$work/oci:big" "$work/$mode.pod" "$flag")
  echo "$mode: build ${t} s, pod $(stat -c %s "$work/$mode.pod") bytes"
  for _ in $(seq "$runs"); do
    set -- $(PATH="$work/bin:$PATH" "$hyperlaunch" --engine qemu --memory 512 --entrypoint /bin/sh \
      "$work/$mode.pod" -- -c "$script" 2>&1 | grep '^result')
    echo "$mode: icount: uptime at app start $2 s; read 100 MiB: guest busy $((($5 - $4) * 10)) ms"
    set -- $("$hyperlaunch" --engine qemu --memory 512 --entrypoint /bin/sh \
      "$work/$mode.pod" -- -c "$script" 2>&1 | grep '^result')
    echo "$mode: plain TCG: read 100 MiB in $(echo "$3 - $2" | bc) s guest uptime"
  done
done
if [[ -n ${IMAGE:-} ]]; then
  for _ in $(seq "$runs"); do
    for flag in "" --no-verity; do
      echo "$IMAGE ${flag:-verity}: build $(build "$IMAGE" "$work/image.pod" "$flag") s"
    done
  done
  "$hyperbuild" "$IMAGE" -o "$work/image.pod" --kernel "$kernel" --init "$init" -q >/dev/null
  tar xf "$work/image.pod" -C "$work" rootfs.ext4 rootfs.verity
  read -r root blocks salt < <("$hyperbuild" inspect --json "$work/image.pod" |
    python3 -c 'import json,sys; v=json.load(sys.stdin)["manifest"]["verity"]; print(v["root_hash"], v["data_blocks"], v["salt"])')
  veritysetup verify "$work/rootfs.ext4" "$work/rootfs.verity" "$root" --no-superblock \
    --hash=sha256 --data-block-size=4096 --hash-block-size=4096 --format=1 \
    --data-blocks="$blocks" --salt="$salt" && echo "$IMAGE: veritysetup verify accepts the tree ($blocks data blocks)"
fi
