#!/usr/bin/env bash
# bench/boot.sh: where a pod's boot spends its guest time, step by step, from the guest's own
# clock. One command: builds the demo pod (scripts/make-demo-image + hyperbuild, its app replaced
# by a probe that reads the kernel clock and prints the kernel log), boots it under
#   qemu-system-x86_64 -M microvm -accel tcg -cpu max -icount shift=0,sleep=on
# with the argv `hyperlaunch --engine qemu` uses, built by the launcher's own builder
# (launcher/examples/qemu_argv.rs: same machine, serial ports, exit port, sandbox, rootfs window of
# the pod file and kernel command line; the kernel and initramfs from files, the console and the
# control channel to files, no stdio console: the app runs on the console), and prints the
# per-step table:
#   - kernel steps from dmesg timestamps (`printk.time=1`),
#   - init's steps from its `hyperpod.debug` marks (`steps:` and `init->exec`, which gives the
#     clock at the app's `execve`: the issue's measure, "kernel clock 0 -> app's execve"),
#   - the app's first reading of CLOCK_MONOTONIC (/proc/timer_list "now at"), moved onto the
#     kernel log's clock (the probe brackets a /dev/kmsg line with two readings; the two clocks
#     were 0.43 ms apart here).
# --check compares the larger "app running" figure (the `execve` plus the app's own start).
# Under icount one guest instruction is 1 ns of guest time and idle time warps, so the figures are
# the same on any host: run it before and after a change.
#
# Usage: bench/boot.sh [--vcpus N] [--memory MIB] [--kernel VMLINUX] [--diagnostic]
#                      [--append WORDS] [--pod FILE] [--verity] [--check MS] [--keep DIR] [--net]
#                      [--cpu MODEL] [--profile] [--icount-sleep on|off] [--no-lpj]
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
#   --cpu MODEL              QEMU's -cpu (default max); e.g. max,-erms,-fsrm to see how much
#                            string instructions weigh under icount (measured: 0.9 ms)
#   --profile                sample the vCPU through QEMU's monitor and list the kernel
#                            functions it was found in (bench/boot-profile.py; host time)
#   --reps                   count the iterations of REP string instructions (rep movs/stos)
#                            with a QEMU plugin (bench/boot-reps.c, built with gcc): icount
#                            charges each iteration 1 ns, a CPU with fast strings does 16-64
#                            bytes a cycle. Prints them up to `Run /init` and to the app's
#                            execve, and the sites with the most (not with --net)
#   --icount-sleep on|off    icount's sleep mode (default on, see below)
#   --no-lpj                 with several vCPUs, let each secondary vCPU calibrate its delay
#                            loop as it does under TCG (see "TCG-only costs"); by default the
#                            command line gets lpj= for icount's 1 GHz TSC and the kernel's HZ
#                            (from the `config` beside its vmlinux in the kernel cache)
#   --net                    with the network `hyperlaunch` gives by default: passt on a
#                            socketpair, a virtio-net device on it, and the overrides archive
#                            carrying the guest's addressing (launcher/src/net.rs), so init
#                            configures eth0; needs passt and python3
# Needs: qemu-system-x86, umoci, busybox-static (scripts/setup installs them), cargo; gcc for --reps.
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
# The second TCG-only cost is per secondary vCPU: TCG's CPU (AMD family 0xf) has no constant
# TSC, so each secondary CPU calibrates its delay loop over several ticks (calibrate_delay ->
# calibrate_delay_direct: 82.1 ms of guest time for the second CPU, sampled with --profile). On
# KVM the CPU has a constant TSC (Intel family 6, or the invariant-TSC bit KVM passes on) and
# calibrate_delay_is_known() gives it CPU 0's value at once; `lpj=` does the same here.
#
# icount sleep=on (default): guest instructions advance the clock 1 ns each, idle time passes in
# real time. With sleep=off an idle guest warps to its next timer, and every disk read that
# finds the vCPU idle is charged up to that timer (seen: the app's exec 27 ms, /etc 8 s).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

lpj=1 icount_sleep=on cpu=max vcpus="" memory="" kernel="" diagnostic=0 append="" pod="" check="" keep="" net=0 profile=0 reps=0
verity=--no-verity
while [ $# -gt 0 ]; do
  case "$1" in
    --vcpus) vcpus=${2:?--vcpus needs a number}; shift 2 ;;
    --memory) memory=${2:?--memory needs MiB}; shift 2 ;;
    --kernel) kernel=${2:?--kernel needs a file}; shift 2 ;;
    --cpu) cpu=${2:?--cpu needs a QEMU CPU model}; shift 2 ;;
    --diagnostic) diagnostic=1; shift ;;
    --append) append=${2:?--append needs words}; shift 2 ;;
    --pod) pod=${2:?--pod needs a file}; shift 2 ;;
    --verity) verity=""; shift ;;
    --check) check=${2:?--check needs milliseconds}; shift 2 ;;
    --keep) keep=${2:?--keep needs a directory}; shift 2 ;;
    --net) net=1; shift ;;
    --profile) profile=1; shift ;;
    --reps) reps=1; shift ;;
    --no-lpj) lpj=0; shift ;;
    --icount-sleep)
      icount_sleep=${2:?--icount-sleep needs on or off}; shift 2
      case "$icount_sleep" in on | off) ;; *) echo "boot.sh: --icount-sleep: on or off" >&2; exit 2 ;; esac ;;
    -h | --help) sed -n '2,/^# Needs:/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "boot.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done
for n in "$vcpus" "$memory" "$check"; do
  case "$n" in '' | [0-9] | [0-9]*[0-9]) ;; *) echo "boot.sh: not a number: $n" >&2; exit 2 ;; esac
done
[ "$reps" = 0 ] || [ "$net" = 0 ] || { echo "boot.sh: --reps and --net do not go together" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || { echo "boot.sh: qemu-system-x86_64 not found (apt-get install qemu-system-x86)" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The probe app replacing the demo's (bench/boot-probe.sh, its last line).
PROBE=$(tail -n 1 bench/boot-probe.sh)

if [ -z "$pod" ]; then
  kernel_default=$(bash kernel-fragments/build-kernel.sh | tail -n 1)
  cargo build --release --quiet -p builder
  built_init=$(./scripts/build-init --quiet)
  image=$(./scripts/make-demo-image "$work/oci")
  pod=$work/demo.pod
  HYPERPOD_INIT="${HYPERPOD_INIT:-$built_init}" \
    target/release/hyperbuild --quiet ${verity:+"$verity"} "$image" -o "$pod" --kernel "$kernel_default" \
    --user root --entrypoint "$(printf '["/bin/sh","-c",%s]' "$(printf '%s' "$PROBE" | sed 's/\\/\\\\/g; s/"/\\"/g; s/^/"/; s/$/"/')")" >&2
fi
[ -f "$pod" ] || { echo "boot.sh: pod not found: $pod" >&2; exit 2; }
[ -x target/release/hyperbuild ] || cargo build --release --quiet -p builder
cargo build --release --quiet -p launcher --example qemu_argv
target/release/hyperbuild inspect --json "$pod" >"$work/inspect.json"

# Section offsets and sizes, the manifest's command line and resources, from
# `hyperbuild inspect --json` read by python3's json module (the command line can hold quoted
# words such as dm-mod.create="...", which no line-based scan gets right).
inspect() { # inspect KEY... -> the value under those keys (empty when absent)
  python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$work/inspect.json" "$@"
}
k_off=$(inspect sections kernel offset) k_len=$(inspect sections kernel size)
i_off=$(inspect sections initramfs offset) i_len=$(inspect sections initramfs size)
[ -n "$memory" ] || memory=$(inspect manifest resources memory_mib)
[ -n "$vcpus" ] || vcpus=$(inspect manifest resources vcpus)
cut_out() { dd if="$pod" of="$3" iflag=skip_bytes,count_bytes skip="$1" count="$2" bs=1M status=none; }
cut_out "$k_off" "$k_len" "$work/vmlinux"
cut_out "$i_off" "$i_len" "$work/initramfs"
if [ "$diagnostic" = 1 ]; then
  kernel=$(bash kernel-fragments/build-kernel.sh --diagnostic | tail -n 1)
  append="initcall_debug $append"
fi
# lpj= for the secondary vCPUs (above): icount's TSC runs at 1 GHz, lpj = TSC Hz / HZ.
if [ "$lpj" = 1 ] && [ "$vcpus" -gt 1 ]; then
  config=$(dirname "${kernel:-${kernel_default:-$(bash kernel-fragments/build-kernel.sh | tail -n 1)}}")/config
  hz=$(sed -n 's/^CONFIG_HZ=\([0-9]*\)$/\1/p' "$config" 2>/dev/null)
  [ -n "$hz" ] || { echo "boot.sh: no CONFIG_HZ in $config (the kernel's config; or --no-lpj)" >&2; exit 2; }
  append="lpj=$((1000000000 / hz)) $append"
fi
[ -n "$kernel" ] || kernel=$work/vmlinux

# The launcher's QEMU command line for this pod (qemu_argv: NUL-separated), icount added, the
# console and the control channel to files.
argv=(target/release/examples/qemu_argv "$pod" --kernel "$kernel" --initrd "$work/initramfs"
  --memory "$memory" --vcpus "$vcpus" --append "printk.time=1 hyperpod.debug $append"
  --console "$work/console" --control "$work/control" --icount-sleep "$icount_sleep")
mapfile -d '' -t qemu < <("${argv[@]}")
[ "${#qemu[@]}" -gt 1 ] || { echo "boot.sh: qemu_argv gave no command line" >&2; exit 2; }
full_cmdline=""
for i in "${!qemu[@]}"; do [ "${qemu[$i]}" != -append ] || full_cmdline=${qemu[$((i + 1))]}; done
# --cpu: the engine's `-cpu max` replaced; --profile: QEMU's monitor on a socket for the sampler.
for i in "${!qemu[@]}"; do [ "${qemu[$i]}" != -cpu ] || qemu[$((i + 1))]=$cpu; done
extra=()
if [ "$profile" = 1 ]; then
  extra=(-monitor "unix:$work/monitor,server=on,wait=off")
  python3 bench/boot-profile.py sample "$work/monitor" "$work/samples" &
  sampler=$!
fi
if [ "$reps" = 1 ]; then
  gcc -shared -fPIC -O2 -Wall -o "$work/reps.so" bench/boot-reps.c
  # Marks: clock 0 (near enough: start_kernel), `Run /init`, init's entry point (its ELF
  # header's; init is a static, non-PIE executable, and the first program to run), and the
  # app's execve (the first execve system call: the kernel starts /init with kernel_execve).
  marks=""
  for sym in start_kernel run_init_process @init __x64_sys_execve; do
    if [ "$sym" = @init ]; then
      (cd "$work" && cpio -i --quiet --to-stdout init <initramfs >init.elf)
      addr=$(readelf -h "$work/init.elf" | awk '/Entry point address/ { print $4 }')
    else
      addr=$(nm "$kernel" | awk -v s="$sym" '$3 == s && a == "" { a = "0x" $1 } END { print a }')
    fi
    [ -n "$addr" ] || { echo "boot.sh: --reps: no address for $sym" >&2; exit 2; }
    marks="$marks,mark=$addr"
  done
  extra+=(-plugin "$work/reps.so$marks" -d plugin -D "$work/reps.log")
fi

# --net: what the launcher does for its default network (launcher/src/net.rs, net/passt.rs):
# the guest's addressing in an overrides archive appended to the initramfs, passt on one end of
# a socketpair, QEMU's virtio-net on the other (qemu_argv --net-fd: `@NETFD@` becomes its
# descriptor, known once the socketpair exists).
start=$(date +%s.%N)
set +e
if [ "$net" = 1 ]; then
  command -v passt >/dev/null || { echo "boot.sh: passt not found (apt-get install passt)" >&2; exit 2; }
  mkdir -p "$work/ov/hyperpod"
  printf '%s' '{"network":{"mtu":65520,"ipv4":{"address":"10.0.2.15","prefix":24,"gateway":"10.0.2.2"},"ipv6":{"address":"fd00:0:0:2::15","prefix":64,"gateway":"fd00:0:0:2::2"},"dns":["10.0.2.3"],"search":[]}}' \
    >"$work/ov/hyperpod/overrides.json"
  size=$(stat -c %s "$work/initramfs")
  head -c $(((4 - size % 4) % 4)) /dev/zero >>"$work/initramfs"
  (cd "$work/ov" && find hyperpod | cpio -o -H newc --quiet) >>"$work/initramfs"
  BOOT_CPU=$cpu BOOT_MONITOR=${extra[1]-} python3 -c '
import os, socket, subprocess, sys
ours, theirs = socket.socketpair()
os.set_inheritable(ours.fileno(), True)
passt = subprocess.Popen(["passt", "--foreground", "--quiet", "--one-off", "--fd", str(theirs.fileno()),
    "--address", "10.0.2.15", "--netmask", "24", "--gateway", "10.0.2.2", "--address", "fd00:0:0:2::15",
    "--gateway", "fd00:0:0:2::2", "--mtu", "65520", "--dns-forward", "10.0.2.3",
    "--no-dhcp", "--no-dhcpv6", "--no-ra"], pass_fds=[theirs.fileno()], stderr=subprocess.DEVNULL)
theirs.close()
argv = subprocess.check_output([a.replace("@NETFD@", str(ours.fileno())) for a in sys.argv[1:]])
argv = [a.decode() for a in argv.split(b"\0")[:-1]]
argv = [os.environ["BOOT_CPU"] if i and argv[i - 1] == "-cpu" else a for i, a in enumerate(argv)]
if os.environ.get("BOOT_MONITOR"):
    argv += ["-monitor", os.environ["BOOT_MONITOR"]]
rc = subprocess.call(argv, pass_fds=[ours.fileno()])
ours.close()
passt.wait(timeout=10)
sys.exit(rc)
' "${argv[@]}" --net-fd @NETFD@ </dev/null >"$work/qemu.out" 2>&1
else
  "${qemu[@]}" ${extra[@]+"${extra[@]}"} </dev/null >"$work/qemu.out" 2>&1
fi
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
echo "kernel $(basename "$(dirname "$kernel")")/$(basename "$kernel"), -cpu $cpu, $vcpus vCPU, $memory MiB, icount shift=0 (1 insn = 1 ns), sleep=$icount_sleep, wall ${wall%.*} s"
echo "cmdline: $full_cmdline"
[ "$net" = 0 ] || echo "network: passt + virtio-net-device (--net)"
tr -d '\r' <"$work/console" | awk -v check="$check" -f bench/boot-table.awk | tee "$work/table"
if [ "$reps" = 1 ]; then
  echo
  python3 bench/boot-profile.py reps "$kernel" "$work/reps.log" "$work/table"
  [ -z "$keep" ] || cp "$work/reps.log" "$keep/"
fi
if [ "$profile" = 1 ]; then
  wait "$sampler" || true
  echo
  echo "where the vCPU was (sampled in host time, bench/boot-profile.py):"
  python3 bench/boot-profile.py report "$kernel" "$work/samples" 30
  [ -z "$keep" ] || cp "$work/samples" "$keep/"
fi
