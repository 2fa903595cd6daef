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
  boot-profile.py reps VMLINUX LOG [TABLE]    the REP string iterations counted by
                                              bench/boot-reps.c (bench/boot.sh --reps): up to
                                              `Run /init` and to the app's execve, the sites
                                              with the most by function, an instruction
                                              profile of each part (kernel, exec of init, init)
                                              by function, and, given boot.sh's TABLE, the
                                              KVM-equivalent time with each REP counted once

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


def symbols(vmlinux):
    """A function mapping an address to the kernel function holding it (`nm -n`)."""
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

    return symbol


def report(vmlinux, samples, top):
    symbol = symbols(vmlinux)
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


def reps(vmlinux, log, table=None, top=15):
    symbol = symbols(vmlinux)
    # "reps mark ADDR HIT insns N movs N stos N other N bytes N instances N" and
    # "reps site MARK HIT SITE KIND WIDTH ITERATIONS", marks in bench/boot.sh's order.
    counts, sites, order = {}, collections.defaultdict(list), []
    blocks = collections.defaultdict(dict)
    for line in open(log):
        f = line.split()
        if f[:2] == ["reps", "mark"] and f[3] == "1":
            counts[f[2]] = dict(zip(f[4::2], map(int, f[5::2])))
            order.append(f[2])
        elif f[:2] == ["reps", "site"] and f[3] == "1":
            sites[f[2]].append((int(f[4], 16), f[5], int(f[6]), int(f[7])))
        elif f[:2] == ["reps", "block"] and f[3] == "1":
            blocks[f[2]][int(f[4], 16)] = int(f[5])
    if len(order) < 4:
        sys.exit(f"boot-profile.py: {log}: the guest did not reach every mark "
                 "(start_kernel, Run /init, init's entry, execve)")
    start, run_init, init_entry, execve = order[:4]

    def between(a, b, *keys):
        return sum(counts[b][k] - counts[a][k] for k in keys)

    # icount's charge (an iteration is 1 ns), the charge with each REP instruction counted once,
    # and with a CPU that moves 32 bytes a cycle at icount's 1 GHz.
    print("REP string instructions (bench/boot-reps.c): icount charges every iteration 1 ns")
    print(f"  {'part':<34} {'iterations':>10} {'REP insns':>9} {'MB':>6} {'icount ms':>9} {'once ms':>8} {'32 B/ns':>8}")
    parts = (("kernel: start_kernel -> Run /init", start, run_init),
             ("exec of init", run_init, init_entry),
             ("init's part: entry -> app's execve", init_entry, execve),
             ("all: start_kernel -> app's execve", start, execve))
    extra = {}
    for title, a, b in parts:
        it = between(a, b, "movs", "stos", "other")
        n = between(a, b, "instances")
        mb = between(a, b, "bytes") / 1e6
        extra[title] = (it / 1e6, (it - n) / 1e6, (it - mb * 1e6 / 32) / 1e6)
        print(f"  {title:<34} {it:>10} {n:>9} {mb:>6.2f} {it / 1e6:>9.3f} {n / 1e6:>8.3f} {mb * 1e6 / 32 / 1e6:>8.3f}")
    before = {site: n for site, _, _, n in sites[start]}
    by_function = collections.Counter()
    kinds = {}
    for site, kind, width, n in sites[execve]:
        name = symbol(site)
        by_function[name] += n - before.get(site, 0)
        kinds.setdefault(name, set()).add(f"{kind}{'bwdq'[[1, 2, 4, 8].index(width)]}")
    print(f"  {'the most, by function':<40} {'kind':>12} {'icount ms':>9}")
    for name, n in by_function.most_common(top):
        print(f"  {name:<40} {','.join(sorted(kinds[name])):>12} {n / 1e6:9.3f}")
    # Where icount's time went in each part: instructions of the blocks run, by function, and how
    # much of it was REP iterations.
    for title, a, b in parts[:3]:
        per_fn, rep_fn = collections.Counter(), collections.Counter()
        for addr, n in blocks[b].items():
            per_fn[symbol(addr)] += n - blocks[a].get(addr, 0)
        sites_a = {site: n for site, _, _, n in sites[a]}
        for site, _, _, n in sites[b]:
            rep_fn[symbol(site)] += n - sites_a.get(site, 0)
        total = sum(per_fn.values())
        print(f"\n  {title}: {total / 1e6:.3f} ms of instructions (blocks counted whole), the most:")
        print(f"    {'function':<40} {'icount ms':>9} {'REP ms':>7}")
        for name, n in per_fn.most_common(top):
            print(f"    {name:<40} {n / 1e6:9.3f} {rep_fn[name] / 1e6:7.3f}")
    if not table:
        return
    rows = {}
    for line in open(table):
        for key in ("KVM-equivalent: kernel clock 0 -> app's execve", "init entry -> it calls the app's execve"):
            if line.startswith(key):
                rows[key] = float(line.split()[len(key.split())])
    for key, part in (("KVM-equivalent: kernel clock 0 -> app's execve", "all: start_kernel -> app's execve"),
                      ("init entry -> it calls the app's execve", "init's part: entry -> app's execve")):
        if key in rows:
            icount, once, model = extra[part]
            print(f"{key}: icount {rows[key]:.3f} ms; each REP instruction counted once "
                  f"{rows[key] - once:.3f}; REP at 32 bytes/ns {rows[key] - model:.3f}")


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 4 and sys.argv[1] == "reps":
        reps(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    elif len(sys.argv) >= 4 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 40)
    else:
        sys.exit(__doc__)
