/* A hostile control channel: after "T init", writes an endless stream to the control UART.
 * MODE=1: one line that never ends ('A' forever, no newline);
 * MODE=2: valid-looking but unknown lines ("Q <n>\n") forever;
 * MODE=3: garbage (pseudo-random bytes, a newline every 1 to 48 of them) forever;
 * MODE=4: a valid line ("T init") forever: nothing to refuse, only --timeout ends it.
 * Those never stop by themselves: the launcher must end the run.
 * MODE=5: no flood and nothing on the console: three unknown lines (the launcher notes them),
 * then the status 7 and the exit port. */
#include "probe.h"

void probe_main(struct hvm_start_info *si) {
    (void)si;
    uart_puts(CONTROL, "T init\n");
#if MODE == 5
    uart_puts(CONTROL, "Q 1\nQ 2\nQ 3\n");
    probe_exit(7);
#endif
    puts("flooding the control channel\n");
    u32 x = 0x12345678, n = 0;
    (void)x; (void)n;
    for (;;) {
#if MODE == 1
        outb(CONTROL, 'A');
#elif MODE == 2
        char line[16]; int k = 0;
        line[k++] = 'Q'; line[k++] = ' ';
        u32 v = n++;
        char d[12]; int m = 0;
        do { d[m++] = (char)('0' + v % 10); v /= 10; } while (v);
        while (m) line[k++] = d[--m];
        line[k++] = '\n'; line[k] = 0;
        uart_puts(CONTROL, line);
#elif MODE == 4
        uart_puts(CONTROL, "T init\n");
#else
        x = x * 1103515245u + 12345u;
        u8 b = (u8)(x >> 16);
        if (b == '\n') b = 0xff;
        outb(CONTROL, b);
        if (++n >= 1 + (x >> 8) % 48) { outb(CONTROL, '\n'); n = 0; }
#endif
    }
}
