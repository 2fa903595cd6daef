# The probe app of bench/boot.sh and tests/tests/boot_budget.rs, run as `sh -c "<last line>"`
# in place of the demo pod's app. First it reads the kernel's CLOCK_MONOTONIC (ns, the "now at"
# line of /proc/timer_list) with the shell's builtin `read` (no fork, so the reading is as close
# to the app's execve as a shell gets), then it prints the kernel log and whether the CPU has a
# TSC-deadline timer. It runs as root (/proc/timer_list is mode 0400). Only the last line is
# the command.
{ read -r a; read -r b; read -r now; } </proc/timer_list; echo "bench-app: $now"; busybox dmesg; echo "bench-cpu: $(busybox grep -m1 -o -w tsc_deadline_timer /proc/cpuinfo || echo no-tsc-deadline)"
