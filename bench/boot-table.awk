# bench/boot-table.awk: the per-step table of bench/boot.sh, from one guest console (the kernel
# log as `dmesg` printed it, init's `hyperpod.debug` lines, the probe app's lines).
# Variable `check` (ms, may be empty): exit 1 when the KVM-equivalent time to the app exceeds it.
#
# Milestones are the first kernel line matching each pattern; a row is the guest time from the
# previous milestone found. Timestamps between sched_clock_init() and the late initcall that
# marks sched_clock stable advance at most one tick (4 ms at HZ=250) between ticks, and time
# they lose there is not made up: the kernel's clock at the app's execve was 4.4 ms behind the
# TSC's count of the same span (docs/BENCHMARKS.md). The rows "on the TSC" are the measure; the
# `check` budget uses them when init's line carries the TSC.

function ms(x) { return sprintf("%9.3f", x) }

BEGIN {
	# Each milestone is a kernel line; its row is the guest time since the previous milestone
	# (rows sorted by time: the initramfs is unpacked asynchronously, beside the initcalls).
	n = 0
	m[++n] = "Linux version";                           l[n] = "kernel clock 0: early setup_arch"
	m[++n] = "Kernel command line:";                    l[n] = "setup_arch: e820, page tables, memmap, percpu"
	m[++n] = "Dentry cache hash table";                 l[n] = "parameters parsed, RNG, early caches"
	m[++n] = "SLUB: HWalign";                           l[n] = "buddy allocator filled (mm_core_init)"
	m[++n] = "NR_IRQS:";                                l[n] = "RCU, scheduler"
	m[++n] = "printk: legacy console";                  l[n] = "IRQs, timers, console registered"
	m[++n] = "Calibrating delay loop";                  l[n] = "IO-APIC, TSC clocksource (late_time_init)"
	m[++n] = "x86/fpu: Enabled xstate";                 l[n] = "CPU identification, FPU/xsave"
	m[++n] = "Freeing SMP alternatives memory";         l[n] = "alternatives patching"
	m[++n] = "Mountpoint-cache hash table entries";     l[n] = "pid, creds, fork, vfs caches"
	m[++n] = "Calibrating APIC timer";                  l[n] = "rest_init, kernel_init, APIC setup"
	m[++n] = "smpboot: CPU0";                           l[n] = "APIC timer calibration + verification [TCG-only]"
	m[++n] = "smp: Brought up";                         l[n] = "secondary CPUs brought up"
	m[++n] = "devtmpfs: initialized";                   l[n] = "SMP done, devtmpfs"
	m[++n] = "clocksource: Switched to clocksource";    l[n] = "core/postcore/arch initcalls"
	m[++n] = "Unpacking initramfs";                     l[n] = "fs initcalls, network stack"
	m[++n] = "Freeing initrd memory";                   l[n] = "initramfs unpacked (async)"
	m[++n] = "Serial: 8250/16550 driver";               l[n] = "device initcalls up to the 8250 driver"
	m[++n] = "sched_clock: Marking stable";             l[n] = "device + late initcalls (8250, virtio, vsock...)"
	m[++n] = "Freeing unused kernel image \\(initmem\\)"; l[n] = "waiting for async work, freeing init memory"
	m[++n] = "Run /init as init process";               l[n] = "write-protecting rodata, freeing the gaps"
	nm = n
	RUN = nm
	CAL_START = 10
	CAL_END = 12
	ninit = 0
}

{ sub(/\r$/, "") }

/^\[ *[0-9]+\.[0-9]+\]/ {
	t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t); t = t * 1000
	line = $0; sub(/^\[ *[0-9.]+\] /, "", line)
	for (i = 1; i <= nm; i++) if (!(i in at) && line ~ m[i]) at[i] = t
	if (line == "bench-clock" && log_mark == "") log_mark = t
	if (line ~ /^\.\.\. APIC ID:/ && dump_start == "") dump_start = t
	if (dump_start != "" && dump_end == "" && dump_done) dump_end = t
	if (line ~ /^\.+ done\.$/ && dump_start != "") dump_done = 1
	if (match(line, /^initcall [^ ]+ returned -?[0-9]+ after [0-9]+ usecs/)) {
		name = line; sub(/^initcall /, "", name); sub(/\+.*/, "", name); sub(/ returned.*/, "", name)
		us = line; sub(/.* after /, "", us); sub(/ usecs.*/, "", us)
		ic_name[++nic] = name; ic_us[nic] = us + 0; ic_total += us
	}
	next
}
/^hyperpod: steps: / {
	s = $0; sub(/^hyperpod: steps: /, "", s)
	k = split(s, parts, " ")
	for (i = 1; i <= k; i++) {
		split(parts[i], kv, "="); v = kv[2]; sub(/us$/, "", v)
		init_name[++ninit] = kv[1]; init_us[ninit] = v + 0; init_sum += v
	}
	next
}
/^hyperpod: steps-cpu: / {
	s = $0; sub(/^hyperpod: steps-cpu: /, "", s)
	k = split(s, parts, " ")
	for (i = 1; i <= k; i++) {
		split(parts[i], kv, "="); v = kv[2]; sub(/us$/, "", v)
		init_cpu[kv[1]] = v + 0; init_cpu_sum += v
	}
	next
}
/^hyperpod: init->exec [0-9]+ us/ {
	init_exec = $3 + 0
	if ($5 == "clock") exec_at = $6 / 1000
	if ($8 == "tsc") exec_tsc = $9 / 1e6
	next
}
/^bench-app: now at [0-9]+ nsecs/ { app = $4 / 1e6; next }
/^bench-app-clock: now at [0-9]+ nsecs/ { app_clock = $4 / 1e6; next }
/^bench-cpu: / { cpu = $2; next }

END {
	# CLOCK_MONOTONIC (app, exec_at) onto the kernel log's clock (see bench/boot-probe.sh).
	if (app > 0 && app_clock > 0 && log_mark != "") {
		offset = log_mark - (app + app_clock) / 2
		offset_err = (app_clock - app) / 2
		app += offset
		if (exec_at > 0) exec_at += offset
	}
	printf "\n%-52s %9s %9s\n", "step (guest time, ms)", "took", "at"
	# Found milestones in time order (a stable insertion sort on their times).
	k = 0
	for (i = 1; i <= nm; i++) {
		if (!(i in at)) continue
		j = ++k
		while (j > 1 && at[ord[j - 1]] > at[i]) { ord[j] = ord[j - 1]; j-- }
		ord[j] = i
	}
	prev = 0
	for (j = 1; j <= k; j++) {
		i = ord[j]
		printf "%-52s %s %s\n", l[i], ms(at[i] - prev), ms(at[i])
		prev = at[i]
	}
	run = (RUN in at) ? at[RUN] : prev
	if (ninit > 0) {
		printf "%-52s %9s %9s\n", "init (its own clock, from its entry):", "", (init_cpu_sum > 0 ? "init's CPU" : "")
		for (i = 1; i <= ninit; i++) {
			c = (init_name[i] in init_cpu) ? ms(init_cpu[init_name[i]] / 1000) : ""
			printf "  %-50s %s %s\n", init_name[i], ms(init_us[i] / 1000), c
		}
		if (init_exec > 0) printf "  %-50s %s\n", "spawn: clone (vfork), credentials, chdir, execve", ms((init_exec - init_sum) / 1000)
	}
	if (init_exec > 0) printf "%-52s %s\n", "init entry -> app execve (init's part)", ms(init_exec / 1000)
	if (app > 0 && exec_at > 0) {
		printf "%-52s %s %s\n", "exec of init (Run /init -> init's entry)", ms(exec_at - init_exec / 1000 - run), ms(exec_at - init_exec / 1000)
		printf "%-52s %s %s\n", "init entry -> it calls the app's execve", ms(init_exec / 1000), ms(exec_at)
		printf "%-52s %s %s\n", "the app's execve and start, until its first read", ms(app - exec_at), ms(app)
	} else if (app > 0) {
		printf "%-52s %s %s\n", "exec of init + of the app, until its first read", ms(app - run - init_exec / 1000), ms(app)
	}
	tcg = 0
	if ((CAL_END in at) && (CAL_START in at)) tcg += at[CAL_END] - at[CAL_START]
	if (dump_start != "" && dump_end != "") tcg += dump_end - dump_start
	print ""
	printf "%-52s %s\n", "kernel clock 0 -> Run /init", ms(run)
	printf "%-52s %s\n", "kernel clock 0 -> app running (upper bound of execve)", ms(app)
	printf "%-52s %s\n", "of which TCG-only (APIC timer calibration window)", ms(tcg)
	kvm = app - tcg
	if (exec_at > 0) printf "%-52s %s\n", "KVM-equivalent: kernel clock 0 -> app's execve", ms(exec_at - tcg)
	printf "%-52s %s\n", "KVM-equivalent: kernel clock 0 -> app running", ms(kvm)
	# The TSC counts icount's guest time from power-on (1 GHz: a count is a nanosecond). The
	# kernel's clock loses the ticks it misses before the TSC clocksource takes over (~4.4 ms
	# here), so these rows are the measure; they include the firmware's part before the kernel
	# (~0.7 ms of qboot, measured with --reps), which KVM launches do not have.
	if (exec_tsc > 0) {
		printf "%-52s %s\n", "TSC: power-on -> app's execve", ms(exec_tsc)
		printf "%-52s %s\n", "  of which the kernel's clock does not show", ms(exec_tsc - exec_at)
		printf "%-52s %s\n", "KVM-equivalent on the TSC: power-on -> app's execve", ms(exec_tsc - tcg)
		kvm = exec_tsc - tcg + (app - exec_at)
		printf "%-52s %s\n", "KVM-equivalent on the TSC: power-on -> app running", ms(kvm)
	}
	if (offset_err != "") printf "CLOCK_MONOTONIC + %.3f ms = the log's clock (+/- %.3f ms)\n", offset, offset_err
	else print "CLOCK_MONOTONIC taken as the log's clock (no bench-clock line)"
	printf "guest CPU: %s\n", (cpu == "" ? "(not reported)" : cpu)
	if (nic > 0) {
		printf "\ninitcalls (initcall_debug): %d, %.3f ms in all; the slowest:\n", nic, ic_total / 1000
		for (i = 1; i <= nic; i++) idx[i] = i
		for (i = 1; i <= nic; i++) for (j = i + 1; j <= nic; j++) if (ic_us[idx[j]] > ic_us[idx[i]]) { x = idx[i]; idx[i] = idx[j]; idx[j] = x }
		for (i = 1; i <= nic && i <= 20; i++) printf "  %-50s %s\n", ic_name[idx[i]], ms(ic_us[idx[i]] / 1000)
	}
	if (app <= 0) { print "no app mark" > "/dev/stderr"; exit 1 }
	if (check != "" && kvm > check + 0) {
		printf "boot budget exceeded: %.3f ms > %s ms\n", kvm, check > "/dev/stderr"
		exit 1
	}
}
