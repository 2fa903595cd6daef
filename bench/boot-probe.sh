# The probe app of bench/boot.sh and tests/tests/boot_budget.rs, run as `sh -c "<last line>"`
# in place of the demo pod's app. First it reads the kernel's CLOCK_MONOTONIC (ns, the "now at"
# line of /proc/timer_list) with the shell's builtin `read` (no fork, so the reading is as close
# to the app's execve as a shell gets), then it prints the kernel log and whether the CPU has a
# TSC-deadline timer. It runs as root (/proc/timer_list is mode 0400). Only the last line is
# the command.
# The kernel log's clock (local_clock) and CLOCK_MONOTONIC (the app's and init's readings) are
# not the same clock: here the second ran ~0.43 ms behind. So after its first reading the probe
# writes "bench-clock" to /dev/kmsg (a line on the log's clock) and reads CLOCK_MONOTONIC again;
# bench/boot-table.awk puts CLOCK_MONOTONIC readings on the log's clock with the midpoint of the
# two readings around that line (error: half their distance, ~0.1 ms).
{ read -r a; read -r b; read -r now; } </proc/timer_list; echo bench-clock >/dev/kmsg; { read -r a; read -r b; read -r now2; } </proc/timer_list; echo "bench-app: $now"; echo "bench-app-clock: $now2"; busybox dmesg; echo "bench-cpu: $(busybox grep -m1 -o -w tsc_deadline_timer /proc/cpuinfo || echo no-tsc-deadline)"
