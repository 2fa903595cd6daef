#!/usr/bin/env bash
# bench/boot-kvm.sh: pod start time on a real KVM host, the seed's table (min/avg/max, p50/p99
# over >= 100 launches of exec -> app running) for hyperlaunch, QEMU microvm (-accel kvm) and
# Firecracker (when `firecracker` is on PATH), all booting the same kernel, command line,
# initramfs and rootfs: the demo pod (scripts/make-demo-image + hyperbuild) whose app prints a
# marker as its first action. 1 vCPU, 128 MiB.
#
# Usage: bench/boot-kvm.sh [--runs N]   (N >= 100, default 100)
# Runs only where `hyperlaunch doctor` exits 0 (KVM runs guest code natively); elsewhere it says
# why it cannot run and exits 3. Results go to stdout with the machine and the date.
#
# What is timed: from just before the VMM process is spawned to the marker on its stdout (the
# console). hyperlaunch gets the pod file; QEMU the kernel and initramfs extracted from it and the
# rootfs served from the pod file through the raw driver's offset window (as `--engine qemu`
# does); Firecracker the kernel, initramfs and the rootfs extracted to a file (it has no offset
# window), with no control channel (it has one serial port; init then ends the VM through the
# i8042 reset, `reboot=k`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
host=x86_64-unknown-linux-gnu
runs=100
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:?--runs needs a number}; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "boot-kvm.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$runs" in '' | *[!0-9]*) echo "boot-kvm.sh: --runs: not a number: $runs" >&2; exit 2 ;; esac
[ "$runs" -ge 100 ] || { echo "boot-kvm.sh: --runs must be at least 100" >&2; exit 2; }

kernel=$(bash kernel-fragments/build-kernel.sh | tail -n 1)
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --profile ship -p launcher --bin hyperlaunch --target "$host" >&2
launch="$CARGO_TARGET_DIR/$host/ship/hyperlaunch"

set +e
doctor=$("$launch" doctor 2>&1)
verdict=$?
set -e
if [ "$verdict" != 0 ]; then
  echo "boot-kvm.sh: cannot run here: this benchmark needs a host whose KVM runs guest code natively," >&2
  echo "and \`hyperlaunch doctor\` exits $verdict on this one:" >&2
  printf '%s\n' "$doctor" | sed 's/^/  /' >&2
  exit 3
fi

cargo build --release -p builder >&2
cargo build --release -p launcher --example qemu_argv >&2
init=$(./scripts/build-init)
cargo test --release -p launcher --test kvm_vmm_compare --no-run >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
marker=hyperpod-app-running
image=$(./scripts/make-demo-image "$work/oci")
pod=$work/demo.pod
HYPERPOD_INIT="$init" \
  "$CARGO_TARGET_DIR/release/hyperbuild" -q "$image" -o "$pod" --kernel "$kernel" \
  --entrypoint "[\"/bin/echo\",\"$marker\"]" >&2

# Sections and the command line, from `hyperbuild inspect --json`.
"$CARGO_TARGET_DIR/release/hyperbuild" inspect --json "$pod" >"$work/inspect.json"
field() { tr -d '\n ' <"$work/inspect.json" | grep -o "\"$1\":{\"offset\"[^}]*}" | grep -o "\"$2\":[0-9]*" | cut -d: -f2; }
cut_section() {
  dd if="$pod" of="$2" iflag=skip_bytes,count_bytes skip="$(field "$1" offset)" \
    count="$(field "$1" size)" bs=1M status=none
}
cut_section kernel "$work/vmlinux"
cut_section initramfs "$work/initramfs"
cmdline=$(tr -d '\n' <"$work/inspect.json" | grep -o '"kernel_cmdline": *"[^"]*"' | sed 's/^"kernel_cmdline": *"//; s/"$//')
r_off=$(field "rootfs\\.ext4" offset) r_len=$(field "rootfs\\.ext4" size)
# The guest's disk is the rootfs through the end of its dm-verity tree when the pod has one
# (`Pod::rootfs_disk`): the manifest's `dm-mod.create=` finds the tree there.
v_off=$(field "rootfs\\.verity" offset) v_len=$(field "rootfs\\.verity" size)
if [ -n "$v_off" ]; then r_len=$((v_off + v_len - r_off)); fi
# Firecracker has no offset window: the same disk bytes as a file.
dd if="$pod" of="$work/rootfs.ext4" iflag=skip_bytes,count_bytes skip="$r_off" count="$r_len" \
  bs=1M status=none

tab=$'\t'
{
  printf 'hyperlaunch%s%s%s--engine%skvm%s%s\n' "$tab" "$launch" "$tab" "$tab" "$tab" "$pod"
  if command -v qemu-system-x86_64 >/dev/null; then
    # hyperlaunch's QEMU engine command line on KVM, from the launcher's own builder
    # (launcher/examples/qemu_argv.rs), the control channel to /dev/null.
    mapfile -d '' -t qemu < <("$CARGO_TARGET_DIR/release/examples/qemu_argv" "$pod" --accel kvm \
      --kernel "$work/vmlinux" --initrd "$work/initramfs" --memory 128 --vcpus 1 --control /dev/null)
    qemu[0]=$(command -v qemu-system-x86_64)
    printf 'qemu-microvm'
    printf "${tab}%s" "${qemu[@]}"
    printf '\n'
  fi
  if command -v firecracker >/dev/null; then
    cat >"$work/fc.json" <<JSON
{
  "boot-source": {
    "kernel_image_path": "$work/vmlinux",
    "initrd_path": "$work/initramfs",
    "boot_args": "$cmdline console=ttyS0"
  },
  "drives": [
    { "drive_id": "rootfs", "path_on_host": "$work/rootfs.ext4", "is_root_device": false, "is_read_only": true }
  ],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 }
}
JSON
    printf 'firecracker%s%s%s--no-api%s--config-file%s%s\n' "$tab" "$(command -v firecracker)" "$tab" "$tab" "$tab" "$work/fc.json"
  else
    echo "boot-kvm.sh: firecracker not on PATH: its row is left out" >&2
  fi
} >"$work/vmms.tsv"

echo "== bench/boot-kvm.sh $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
echo "pod: demo image, app \`echo $marker\`; guest kernel $(basename "$(dirname "$kernel")"); cmdline: $cmdline console=ttyS0"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
HYPERPOD_COMPARE="$work/vmms.tsv" HYPERPOD_COMPARE_MARKER="$marker" HYPERPOD_COMPARE_RUNS="$runs" \
  cargo test --release -p launcher --test kvm_vmm_compare -- --ignored --nocapture --test-threads=1 2>&1 |
  grep -E '^(VMM|hyperlaunch|qemu-microvm|firecracker|SKIPPED)'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
