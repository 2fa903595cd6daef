/* A guest that never reads its stdin: it plays init's marks ("T init", "T exec", so the
 * launcher starts forwarding stdin) but never posts a receive buffer on the stdio console.
 * SPIN_MCYCLES=n: spins n million TSC cycles, then reports "X EXIT_CODE" and exits;
 * without it: halts forever (only --timeout ends it). */
#include "probe.h"

static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return (u64)hi << 32 | lo; }

void probe_main(struct hvm_start_info *si) {
    (void)si;
    uart_puts(CONTROL, "T init\n");
    uart_puts(CONTROL, "T exec\n");
    puts("not reading stdin\n");
#ifdef SPIN_MCYCLES
    u64 end = rdtsc() + (u64)SPIN_MCYCLES * 1000000ull;
    while (rdtsc() < end) {}
    probe_exit(EXIT_CODE);
#endif
    for (;;) __asm__ volatile("cli; hlt");
}
