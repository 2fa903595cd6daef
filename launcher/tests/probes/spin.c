/* Never exits: interrupts off, halted forever (only --timeout ends it). */
#include "probe.h"

void probe_main(struct hvm_start_info *si) {
    (void)si;
    puts("spinning\n");
    for (;;) __asm__ volatile("cli; hlt");
}
