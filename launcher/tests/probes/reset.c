/* Resets the machine through the i8042 (0xfe to port 0x64), as Linux's reboot=k does; with
 * WITH_STATUS it first reports "X 9" on the control channel. */
#include "probe.h"

void probe_main(struct hvm_start_info *si) {
    (void)si;
#ifdef WITH_STATUS
    uart_puts(CONTROL, "X 9\n");
#endif
    puts("resetting\n");
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("cli; hlt");
}
