#!/usr/bin/env bash
# bench/stdio.sh: throughput of the app's stdio through hyperlaunch, both ways:
#   - out: the app writes 100 MiB to its stdout (`head -c 100M /dev/zero`), the host counts it
#     (`wc -c`: every byte must arrive);
#   - in:  the host pipes 100 MiB (`yes | head -c 100M`) into `hyperlaunch -i`, the app counts
#     it (`wc -c`).
# Each is timed against the same launch moving 0 bytes, so the boot is taken out:
# MiB/s = 100 / (t(100 MiB) - t(0)). Runs the demo pod (scripts/demo's image) on the engine
# given as $1 (default: qemu; `kvm` needs a host where `hyperlaunch doctor` exits 0). Prints the
# machine, the date and the load.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:-qemu}
kernel=$(./scripts/setup --release | tail -n 1)
launch=target/x86_64-unknown-linux-gnu/ship/hyperlaunch
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
image=$(./scripts/make-demo-image "$work/oci")
HYPERPOD_INIT="$PWD/target/x86_64-unknown-linux-gnu/guest/hyperpod-init" \
  target/release/hyperbuild "$image" -o "$work/demo.pod" --kernel "$kernel" >/dev/null

seconds() { # seconds of wall time of "$@"
  local t0 t1
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
run() { "$launch" --engine "$engine" --timeout 600 --entrypoint /bin/sh "$work/demo.pod" -- -c "$1"; }
out_zero() { run 'head -c 0 /dev/zero' >/dev/null; }
out_big() { run 'head -c 104857600 /dev/zero' | wc -c >"$work/out"; }
in_zero() { head -c 0 /dev/zero | "$launch" --engine "$engine" -i --timeout 600 --entrypoint /bin/sh "$work/demo.pod" -- -c 'wc -c' >"$work/in0"; }
in_big() { yes | head -c 104857600 | "$launch" --engine "$engine" -i --timeout 600 --entrypoint /bin/sh "$work/demo.pod" -- -c 'wc -c' >"$work/in"; }

echo "== hyperlaunch stdio throughput, engine $engine"
echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB"
echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(seconds out_zero); t1=$(seconds out_big)
got=$(tr -d ' ' <"$work/out")
[ "$got" = 104857600 ] || { echo "stdout: the host got $got bytes, not 104857600" >&2; exit 1; }
printf 'guest -> host: 100 MiB in %.2f s beyond a %.2f s empty run: %.1f MiB/s (all bytes arrived)\n' \
  "$(echo "$t1 - $t0" | bc -l)" "$t0" "$(echo "100 / ($t1 - $t0)" | bc -l)"
t0=$(seconds in_zero); t1=$(seconds in_big)
got=$(tr -d ' ' <"$work/in")
[ "$got" = 104857600 ] || { echo "stdin: the app counted $got bytes, not 104857600" >&2; exit 1; }
printf 'host -> guest: 100 MiB in %.2f s beyond a %.2f s empty run: %.1f MiB/s (the app counted all %s bytes)\n' \
  "$(echo "$t1 - $t0" | bc -l)" "$t0" "$(echo "100 / ($t1 - $t0)" | bc -l)" "$got"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
