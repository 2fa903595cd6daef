#!/usr/bin/env bash
# bench/boot.sh: where a pod's boot spends its guest time, step by step, from the guest's own
# clock. One command: builds the demo pod (scripts/make-demo-image + hyperbuild, its app replaced
# by a probe that reads the kernel clock and prints the kernel log), boots it under
#   qemu-system-x86_64 -M microvm -accel tcg -cpu max -icount shift=0,sleep=on
# with the argv `hyperlaunch --engine qemu` uses (same kernel, initramfs, rootfs window of the pod
# file, serial ports, exit port), and prints the per-step table:
#   - kernel steps from dmesg timestamps (`printk.time=1`),
#   - init's steps from its `hyperpod.debug` marks (`steps:` and `init->exec`),
#   - the app's first reading of CLOCK_MONOTONIC (/proc/timer_list "now at").
# Under icount one guest instruction is 1 ns of guest time and idle time warps, so the figures are
# the same on any host: run it before and after a change.
#
# Usage: bench/boot.sh [--vcpus N] [--memory MIB] [--kernel VMLINUX] [--diagnostic]
#                      [--append WORDS] [--pod FILE] [--verity] [--check MS] [--keep DIR] [--net]
#   --vcpus N, --memory MIB  the VM's size (default: the pod's, 1 vCPU / 128 MiB)
#   --kernel VMLINUX         boot this kernel instead of the pod's (a variant being tried)
#   --diagnostic             boot the diagnostic kernel (build-kernel.sh --diagnostic) and add
#                            `initcall_debug`: the slowest initcalls are listed too
#   --append WORDS           more kernel command-line words
#   --pod FILE               use this pod instead of building one; its app must be the probe
#                            (bench/boot-probe.sh), else the app rows are missing
#   --verity                 keep the rootfs's dm-verity tree in the built pod (hyperbuild's
#                            default). Left out otherwise: TCG emulates the guest's sha256 at ~34
#                            instructions a byte, which icount counts as guest time, so verity's
#                            reads here say nothing about a KVM host (bench/verity.sh measures it)
#   --check MS               exit 1 when the KVM-equivalent time to the app exceeds MS
#   --keep DIR               keep the console, control channel and kernel log in DIR
#   --net                    with the network `hyperlaunch` gives by default: passt on a
#                            socketpair, a virtio-net device on it, and the overrides archive
#                            carrying the guest's addressing (launcher/src/net.rs), so init
#                            configures eth0; needs passt and python3
# Needs: qemu-system-x86, umoci, busybox-static (scripts/setup installs them), cargo.
#
# TCG-only costs. QEMU 7.2's TCG offers no TSC-deadline timer, x2APIC or invariant TSC (it says
# so when asked: `-cpu max,+tsc-deadline` warns "TCG doesn't support requested feature"). Without
# TSC-deadline, Linux calibrates the local APIC timer (100 ms) and verifies it (100 ms more).
# A KVM guest of hyperlaunch is told TSC-deadline exists (launcher/src/vmm/cpu.rs) and so is a
# QEMU/KVM guest (QEMU sets it): there, calibrate_APIC_clock returns at its first line. The
# table reports the total both as measured and without the window between the kernel's lines
# "Mountpoint-cache hash table entries" and "smpboot: CPU0" ("KVM-equivalent"); that window also
# holds ~0.25 ms of other work (rest_init, APIC setup: measured with --append apic=verbose,
# whose extra IO-APIC dump the table then also leaves out).
#
# icount sleep=on (default): guest instructions advance the clock 1 ns each, idle time passes in
# real time. With sleep=off an idle guest warps to its next timer, and every disk read that
# finds the vCPU idle is charged up to that timer (seen: the app's exec 27 ms, /etc 8 s).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

icount_sleep=on vcpus="" memory="" kernel="" diagnostic=0 append="" pod="" check="" keep="" net=0
verity=--no-verity
while [ $# -gt 0 ]; do
  case "$1" in
    --vcpus) vcpus=${2:?--vcpus needs a number}; shift 2 ;;
    --memory) memory=${2:?--memory needs MiB}; shift 2 ;;
    --kernel) kernel=${2:?--kernel needs a file}; shift 2 ;;
    --diagnostic) diagnostic=1; shift ;;
    --append) append=${2:?--append needs words}; shift 2 ;;
    --pod) pod=${2:?--pod needs a file}; shift 2 ;;
    --verity) verity=""; shift ;;
    --check) check=${2:?--check needs milliseconds}; shift 2 ;;
    --keep) keep=${2:?--keep needs a directory}; shift 2 ;;
    --net) net=1; shift ;;
    --icount-sleep)
      icount_sleep=${2:?--icount-sleep needs on or off}; shift 2
      case "$icount_sleep" in on | off) ;; *) echo "boot.sh: --icount-sleep: on or off" >&2; exit 2 ;; esac ;;
    -h | --help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "boot.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
for n in "$vcpus" "$memory" "$check"; do
  case "$n" in '' | [0-9] | [0-9]*[0-9]) ;; *) echo "boot.sh: not a number: $n" >&2; exit 2 ;; esac
done
command -v qemu-system-x86_64 >/dev/null || { echo "boot.sh: qemu-system-x86_64 not found (apt-get install qemu-system-x86)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The probe app replacing the demo's (bench/boot-probe.sh, its last line).
PROBE=$(tail -n 1 bench/boot-probe.sh)

if [ -z "$pod" ]; then
  kernel_default=$(bash kernel-fragments/build-kernel.sh | tail -n 1)
  cargo build --release --quiet -p builder
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --quiet -p init --target x86_64-unknown-linux-gnu
  image=$(./scripts/make-demo-image "$work/oci")
  pod=$work/demo.pod
  HYPERPOD_INIT="$root/target/x86_64-unknown-linux-gnu/release/hyperpod-init" \
    target/release/hyperbuild --quiet ${verity:+"$verity"} "$image" -o "$pod" --kernel "$kernel_default" \
    --user root --entrypoint "$(printf '["/bin/sh","-c",%s]' "$(printf '%s' "$PROBE" | sed 's/\\/\\\\/g; s/"/\\"/g; s/^/"/; s/$/"/')")" >&2
fi
[ -f "$pod" ] || { echo "boot.sh: pod not found: $pod" >&2; exit 2; }
[ -x target/release/hyperbuild ] || cargo build --release --quiet -p builder
target/release/hyperbuild inspect --json "$pod" >"$work/inspect.json"

# Section offsets and sizes, the manifest's command line and resources (flat JSON scan; the
# format is ours, written by hyperbuild).
field() { # field SECTION KEY -> number
  tr -d '\n ' <"$work/inspect.json" | grep -o "\"$1\":{\"offset\"[^}]*}" | grep -o "\"$2\":[0-9]*" | cut -d: -f2
}
k_off=$(field kernel offset) k_len=$(field kernel size)
i_off=$(field initramfs offset) i_len=$(field initramfs size)
r_off=$(field "rootfs\\.ext4" offset) r_len=$(field "rootfs\\.ext4" size)
# The guest's disk is the rootfs through the end of its dm-verity tree when the pod has one
# (`Pod::rootfs_disk`): the manifest's `dm-mod.create=` finds the tree there.
# (No tree, no match: `field` fails, which must not end the script under `set -e`.)
v_off=$(field "rootfs\\.verity" offset || true) v_len=$(field "rootfs\\.verity" size || true)
if [ -n "$v_off" ]; then r_len=$((v_off + v_len - r_off)); fi
cmdline=$(tr -d '\n' <"$work/inspect.json" | grep -o '"kernel_cmdline": *"[^"]*"' | sed 's/^"kernel_cmdline": *"//; s/"$//')
[ -n "$memory" ] || memory=$(tr -d '\n ' <"$work/inspect.json" | grep -o '"memory_mib":[0-9]*' | cut -d: -f2)
[ -n "$vcpus" ] || vcpus=$(tr -d '\n ' <"$work/inspect.json" | grep -o '"vcpus":[0-9]*' | cut -d: -f2)
cut_out() { dd if="$pod" of="$3" iflag=skip_bytes,count_bytes skip="$1" count="$2" bs=1M status=none; }
cut_out "$k_off" "$k_len" "$work/vmlinux"
cut_out "$i_off" "$i_len" "$work/initramfs"
if [ "$diagnostic" = 1 ]; then
  kernel=$(bash kernel-fragments/build-kernel.sh --diagnostic | tail -n 1)
  append="initcall_debug $append"
fi
[ -n "$kernel" ] || kernel=$work/vmlinux

# --net: what the launcher does for its default network (launcher/src/net.rs, net/passt.rs):
# the guest's addressing in an overrides archive appended to the initramfs, passt on one end of
# a socketpair, QEMU's virtio-net on the other (`@NETFD@` below becomes its descriptor).
wrap=() netargs=()
if [ "$net" = 1 ]; then
  command -v passt >/dev/null || { echo "boot.sh: passt not found (apt-get install passt)" >&2; exit 2; }
  mkdir -p "$work/ov/hyperpod"
  printf '%s' '{"network":{"mtu":65520,"ipv4":{"address":"10.0.2.15","prefix":24,"gateway":"10.0.2.2"},"ipv6":{"address":"fd00:0:0:2::15","prefix":64,"gateway":"fd00:0:0:2::2"},"dns":["10.0.2.3"],"search":[]}}' \
    >"$work/ov/hyperpod/overrides.json"
  size=$(stat -c %s "$work/initramfs")
  head -c $(((4 - size % 4) % 4)) /dev/zero >>"$work/initramfs"
  (cd "$work/ov" && find hyperpod | cpio -o -H newc --quiet) >>"$work/initramfs"
  wrap=(python3 -c '
import os, socket, subprocess, sys
ours, theirs = socket.socketpair()
os.set_inheritable(ours.fileno(), True)
passt = subprocess.Popen(["passt", "--foreground", "--quiet", "--one-off", "--fd", str(theirs.fileno()),
    "--address", "10.0.2.15", "--netmask", "24", "--gateway", "10.0.2.2", "--address", "fd00:0:0:2::15",
    "--gateway", "fd00:0:0:2::2", "--mtu", "65520", "--dns-forward", "10.0.2.3",
    "--no-dhcp", "--no-dhcpv6", "--no-ra"], pass_fds=[theirs.fileno()], stderr=subprocess.DEVNULL)
theirs.close()
rc = subprocess.call([a.replace("@NETFD@", str(ours.fileno())) for a in sys.argv[1:]], pass_fds=[ours.fileno()])
ours.close()
passt.wait(timeout=10)
sys.exit(rc)
' )
  netargs=(-netdev "stream,id=net0,server=off,addr.type=fd,addr.str=@NETFD@"
    -device "virtio-net-device,netdev=net0,mac=02:68:70:00:00:01")
fi

# The launcher's QEMU command line (launcher/src/qemu.rs, Accel::Tcg) plus icount; the
# console and the control channel go to files.
full_cmdline="$cmdline console=ttyS0 printk.time=1 hyperpod.debug $append"
start=$(date +%s.%N)
set +e
${wrap[@]+"${wrap[@]}"} qemu-system-x86_64 -M microvm,acpi=off,isa-serial=off -accel tcg -cpu max \
  -icount "shift=0,sleep=$icount_sleep" -m "${memory}M" -smp "$vcpus" \
  -nodefaults -no-user-config -nographic -no-reboot \
  -chardev file,id=con,path="$work/console" \
  -device isa-serial,chardev=con,index=0,iobase=0x3f8,irq=4 \
  -chardev file,id=ctl,path="$work/control" \
  -device isa-serial,chardev=ctl,index=1,iobase=0x2f8,irq=3 \
  -device isa-debug-exit,iobase=0xf4,iosize=0x01 \
  -kernel "$kernel" -initrd "$work/initramfs" -append "$full_cmdline" \
  -drive "driver=raw,offset=$r_off,size=$r_len,file.driver=file,file.filename=$pod,if=none,id=rootfs,readonly=on" \
  -device virtio-blk-device,drive=rootfs ${netargs[@]+"${netargs[@]}"} </dev/null >"$work/qemu.out" 2>&1
status=$?
set -e
wall=$(echo "$(date +%s.%N) - $start" | bc)
if [ -n "$keep" ]; then
  mkdir -p "$keep"
  cp "$work/console" "$work/control" "$work/qemu.out" "$keep/"
fi
if ! grep -q '^bench-app: now at' "$work/console"; then
  echo "boot.sh: the probe app did not report (QEMU status $status); console:" >&2
  tail -n 30 "$work/console" >&2
  exit 1
fi

echo "== bench/boot.sh $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n), QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}')"
echo "kernel $(basename "$(dirname "$kernel")")/$(basename "$kernel"), $vcpus vCPU, $memory MiB, icount shift=0 (1 insn = 1 ns), sleep=$icount_sleep, wall ${wall%.*} s"
echo "cmdline: $full_cmdline"
[ "$net" = 0 ] || echo "network: passt + virtio-net-device (--net)"
tr -d '\r' <"$work/console" | awk -v check="$check" -f bench/boot-table.awk
