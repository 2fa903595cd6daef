#!/usr/bin/env bash
# bench/net.sh: TCP throughput through a pod's network, beside the same transfer on the host's
# loopback. One command: builds the web image (tests/fixtures/web-image.sh) into a pod, boots it
# with `hyperlaunch --engine qemu -p PORT:80 --memory 512m` (passt, the default network)
# running busybox httpd over a MIB-sized file it writes to /tmp first, and fetches the file with
# curl from 127.0.0.1:PORT; then the same file from busybox httpd on the host itself, fetched the
# same way. Prints curl's average download speed (MiB/s) for both, best of three fetches each.
# Under TCG (this machine's engine) the guest's TCP stack and virtio-net driver run emulated, so
# the pod figure measures TCG as much as passt; on a KVM host it measures passt.
# As root (with /dev/net/tun) the same pod is measured again with `--network tap` (the TAP
# backend, its port forwarded by the launcher), after the passt pod has been stopped.
#
# Usage: bench/net.sh [MIB]    (default 128 MiB per transfer, at most 200)
# Needs: qemu-system-x86, passt, umoci, busybox-static, curl (scripts/setup), cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mib=${1:-128}
case "$mib" in '' | *[!0-9]*) echo "net.sh: not a number of MiB: $mib" >&2; exit 2 ;; esac
[ "$mib" -ge 1 ] && [ "$mib" -le 200 ] || { echo "net.sh: MIB from 1 to 200 (the file lives in the pod's RAM)" >&2; exit 2; }
for tool in qemu-system-x86_64 passt busybox curl python3; do
  command -v "$tool" >/dev/null || { echo "net.sh: $tool not found (scripts/setup installs it)" >&2; exit 2; }
done
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

kernel=$(bash kernel-fragments/build-kernel.sh | tail -n 1)
cargo build --release --quiet -p builder -p launcher
init=$(./scripts/build-init --quiet)
image=$(bash tests/fixtures/web-image.sh "$work/oci")
target/release/hyperbuild --quiet "$image" -o "$work/web.pod" --kernel "$kernel" \
  --init "$init" >&2

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }

# Fetches http://127.0.0.1:PORT/big until it arrives whole (the pod boots meanwhile), then two
# more times; prints the best average speed in MiB/s.
fetch() {
  local port=$1 best=0 got speed deadline=$((SECONDS + 600)) n=0
  while [ "$n" -lt 3 ]; do
    if out=$(curl -s -m 300 -o /dev/null -w '%{size_download} %{speed_download}' "http://127.0.0.1:$port/big"); then
      read -r got speed <<<"$out"
      if [ "${got%.*}" -eq $((mib << 20)) ]; then
        n=$((n + 1))
        best=$(awk -v a="$best" -v b="$speed" 'BEGIN { print (b > a) ? b : a }')
        continue
      fi
    fi
    [ "$SECONDS" -lt "$deadline" ] || { echo "net.sh: no whole transfer from port $port within 600 s" >&2; exit 1; }
    sleep 0.5
  done
  awk -v b="$best" 'BEGIN { printf "%.1f", b / 1048576 }'
}

# Boots the pod serving the file with the extra launch options given; prints the best rate.
pod_fetch() {
  local port pid rate
  port=$(free_port)
  target/release/hyperlaunch --engine qemu --timeout 900 -q --memory 512m -p "$port:80" "$@" \
    --entrypoint /bin/sh "$work/web.pod" -- \
    -c "mkdir /tmp/w && dd if=/dev/zero of=/tmp/w/big bs=1M count=$mib 2>/dev/null && exec httpd -f -p 80 -h /tmp/w" \
    >/dev/null 2>>"$work/pod.err" &
  pid=$!
  pids+=("$pid")
  rate=$(fetch "$port")
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "$rate"
}

pod_rate=$(pod_fetch)
tap_rate=
if [ "$(id -u)" = 0 ] && [ -e /dev/net/tun ]; then
  tap_rate=$(pod_fetch --network tap)
fi

mkdir "$work/host"
dd if=/dev/zero of="$work/host/big" bs=1M count="$mib" 2>/dev/null
port=$(free_port)
busybox httpd -f -p "127.0.0.1:$port" -h "$work/host" &
pids+=($!)
host_rate=$(fetch "$port")

echo "== bench/net.sh $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), passt $(dpkg-query -W -f '${Version}' passt 2>/dev/null || echo '?'), $mib MiB per transfer, best of 3"
printf '%-60s %10s\n' "path (curl of a busybox httpd file)" "MiB/s"
printf '%-60s %10s\n' "pod (QEMU TCG) -> virtio-net -> passt -> host, -p PORT:80" "$pod_rate"
if [ -n "$tap_rate" ]; then
  printf '%-60s %10s\n' "pod (QEMU TCG) -> virtio-net -> TAP -> forwarder, -p PORT:80" "$tap_rate"
else
  echo "(TAP backend not measured: needs root and /dev/net/tun)"
fi
printf '%-60s %10s\n' "host loopback" "$host_rate"
