#!/usr/bin/env python3
"""bench/boot-profile.py: a sampling profiler for a guest booting under QEMU TCG (bench/boot.sh
--profile). Two modes:

  boot-profile.py sample MONITOR_SOCKET OUT   asks QEMU's human monitor for every vCPU's
                                              registers in a loop until QEMU goes away, one
                                              "CPU RIP" line per vCPU and round
  boot-profile.py report VMLINUX SAMPLES [N]  maps the RIPs to the kernel's symbols (`nm -n`)
                                              and prints the N (default 40) functions with the
                                              most samples, user-space samples as one row;
                                              with several vCPUs, one table per vCPU

Samples are taken in host time, so a function's share is its share of TCG execution time, not
of guest instructions: use it to find where to look, and bench/boot.sh's table (guest clock)
to measure. Samples in the TCG-only APIC timer calibration are counted apart.
"""
import bisect
import collections
import os
import re
import socket
import subprocess
import sys
import time

# The calibration loop and what it spins on (TCG-only: no TSC-deadline timer, bench/boot.sh).
CALIBRATION = {"setup_boot_APIC_clock", "calibrate_APIC_clock", "lapic_cal_handler", "__setup_APIC_LVTT"}


def sample(sock_path, out):
    for _ in range(1000):
        if os.path.exists(sock_path):
            break
        time.sleep(0.01)
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    s.settimeout(10)

    def command(c):
        s.sendall(c.encode() + b"\n")
        buf = b""
        while b"(qemu)" not in buf:
            d = s.recv(65536)
            if not d:
                raise EOFError
            buf += d
        return buf.decode(errors="replace")

    command("")
    with open(out, "w") as f:
        try:
            while True:
                # `-a`: every vCPU, each block headed "CPU#N".
                for cpu, rip in re.findall(r"CPU#(\d+).*?RIP=([0-9a-f]+)", command("info registers -a"), re.S):
                    f.write(f"{cpu} {rip}\n")
        except (EOFError, OSError):
            pass


def report(vmlinux, samples, top):
    nm = subprocess.run(["nm", "-n", vmlinux], capture_output=True, text=True, check=True)
    addrs, names = [], []
    for line in nm.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            addrs.append(int(parts[0], 16))
            names.append(parts[2])

    def symbol(rip):
        if rip < 0xFFFF800000000000:
            return "(user space)"
        i = bisect.bisect_right(addrs, rip) - 1
        return names[i] if i >= 0 else "(unknown)"

    by_cpu = collections.defaultdict(list)
    for line in open(samples):
        fields = line.split()
        if fields:
            # "CPU RIP"; a bare RIP (older sample files) is vCPU 0's.
            cpu, rip = (fields[0], fields[1]) if len(fields) > 1 else ("0", fields[0])
            by_cpu[cpu].append(symbol(int(rip, 16)))
    for cpu in sorted(by_cpu, key=int):
        if len(by_cpu) > 1:
            print(f"\n== vCPU {cpu}")
        report_one(by_cpu[cpu], top)


def report_one(seq, top):
    cal = [i for i, name in enumerate(seq) if name in CALIBRATION]
    first, last = (cal[0], cal[-1]) if cal else (len(seq), len(seq) - 1)
    print(f"samples: {len(seq)}, in the APIC timer calibration (TCG-only): {len(cal)}")
    for title, part in (("before the calibration", seq[:first]),
                        ("after the calibration", [n for n in seq[first:] if n not in CALIBRATION])):
        counts = collections.Counter(part)
        print(f"\n{title}: {len(part)} samples")
        print(f"{'function':<44} {'samples':>8} {'share':>7}")
        for name, n in counts.most_common(top):
            print(f"{name:<44} {n:>8} {100.0 * n / max(len(part), 1):>6.1f}%")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 40)
    else:
        sys.exit(__doc__)
