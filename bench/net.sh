#!/usr/bin/env bash
# bench/net.sh: TCP throughput through a pod's network, beside the same transfer on the host's
# loopback. One command: builds the web image (tests/fixtures/web-image.sh) into a pod, boots it
# with `hyperlaunch --engine qemu -p PORT:5001` (passt, the default network) running
#   dd if=/dev/zero bs=64k count=N | nc -l -p 5001      (busybox)
# and reads the stream on the host from 127.0.0.1:PORT, timing first byte to end of stream; then
# the same dd | busybox nc on the host itself, read the same way. Prints MiB/s for both.
# Under TCG (this machine's engine) the guest's dd, TCP stack and virtio-net driver run
# emulated, so the pod figure measures TCG as much as passt; on a KVM host it measures passt.
#
# Usage: bench/net.sh [MIB]    (default 256 MiB per transfer)
# Needs: qemu-system-x86, passt, umoci, busybox-static, python3 (scripts/setup), cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mib=${1:-256}
case "$mib" in '' | *[!0-9]*) echo "net.sh: not a number of MiB: $mib" >&2; exit 2 ;; esac
for tool in qemu-system-x86_64 passt busybox python3; do
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
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --quiet -p init --target x86_64-unknown-linux-gnu
image=$(bash tests/fixtures/web-image.sh "$work/oci")
target/release/hyperbuild --quiet "$image" -o "$work/web.pod" --kernel "$kernel" \
  --init "$root/target/x86_64-unknown-linux-gnu/release/hyperpod-init" >&2

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }

# Reads 127.0.0.1:PORT until a stream of the expected size has arrived (a connection made before
# the server listens ends early and is retried); prints MiB/s from first byte to end.
read_stream() {
  python3 - "$1" "$mib" <<'PY'
import socket, sys, time
port, mib = int(sys.argv[1]), int(sys.argv[2])
want = mib << 20
deadline = time.monotonic() + 600
buf = bytearray(1 << 20)
while time.monotonic() < deadline:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
    except OSError:
        time.sleep(0.2)
        continue
    got, first = 0, None
    while True:
        try:
            n = s.recv_into(buf)
        except OSError:
            break
        if n == 0:
            break
        if first is None:
            first = time.monotonic()
        got += n
    end = time.monotonic()
    s.close()
    if got >= want:
        print(f"{got / (1 << 20) / (end - first):.1f}")
        sys.exit(0)
    time.sleep(0.2)
sys.exit("net.sh: no complete stream within 600 s")
PY
}

count=$((mib * 16))
port=$(free_port)
target/release/hyperlaunch --engine qemu --timeout 900 -q -p "$port:5001" \
  --entrypoint /bin/sh "$work/web.pod" -- \
  -c "dd if=/dev/zero bs=64k count=$count 2>/dev/null | nc -l -p 5001" >/dev/null 2>"$work/pod.err" &
pids+=($!)
pod_rate=$(read_stream "$port")

port=$(free_port)
sh -c "dd if=/dev/zero bs=64k count=$count 2>/dev/null | busybox nc -l -p $port" >/dev/null &
pids+=($!)
sleep 0.5
host_rate=$(read_stream "$port")

echo "== bench/net.sh $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'), passt $(dpkg-query -W -f '${Version}' passt 2>/dev/null || echo '?'), $mib MiB per transfer"
printf '%-52s %10s\n' "path" "MiB/s"
printf '%-52s %10s\n' "pod (TCG) -> passt -> host, dd | nc -l, -p PORT:5001" "$pod_rate"
printf '%-52s %10s\n' "host loopback, dd | busybox nc -l" "$host_rate"
