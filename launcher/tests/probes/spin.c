/* Never exits: interrupts off, halted forever (only --timeout ends it). Built with -DCHATTY
 * it prints to the console forever instead. */
#include "probe.h"

void probe_main(struct hvm_start_info *si) {
    (void)si;
    puts("spinning\n");
#ifdef CHATTY
    for (;;) puts("chatter chatter chatter chatter chatter chatter chatter chatter\n");
#endif
    for (;;) __asm__ volatile("cli; hlt");
}
