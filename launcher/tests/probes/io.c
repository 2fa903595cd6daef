/* Waits for a host line on the control channel ("S <signo>") and exits with <signo>. */
#include "probe.h"

static int getline_from(u16 base, char *buf, int max) {
    int n = 0;
    for (;;) {
        while (!(inb(base + 5) & 1)) {}
        char c = (char)inb(base);
        if (c == '\n' || c == '\r') break;
        if (n < max - 1) buf[n++] = c;
    }
    buf[n] = 0;
    return n;
}

void probe_main(struct hvm_start_info *si) {
    (void)si;
    char line[64];
    /* As init does: the launcher sends host lines only after this mark. */
    uart_puts(CONTROL, "T init\n");
    puts("waiting for a signal\n");
    getline_from(CONTROL, line, sizeof line);
    puts("CONTROL: "); puts(line); puts("\n");
    if (line[0] != 'S' || line[1] != ' ') probe_exit(96);
    u32 sig = 0;
    for (int i = 2; line[i]; i++) sig = sig * 10 + (u32)(line[i] - '0');
    probe_exit((u8)sig);
}
