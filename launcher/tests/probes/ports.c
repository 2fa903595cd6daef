/* Odd accesses to the i8042 (0x60/0x64), the exit port and both UARTs' non-data
 * registers: every access size (1, 2, 4 bytes), reads and writes, and pseudo-random values,
 * none of which is a reset request or a byte sent on a line; then
 * the final act chosen by FINAL:
 * FINAL=1: reports "X 5", then a 4-byte write of 0x12345607 to the exit port (its low byte, 7,
 *          is what the port takes; the X line's 5 is the status);
 * FINAL=2: a 2-byte write of 0xfe34 to the exit port with no X line (the port takes 0x34);
 * FINAL=3: the i8042 reset command (0xfe to 0x64) as a 4-byte write, after "X 6". */
#include "probe.h"

static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

void probe_main(struct hvm_start_info *si) {
    (void)si;
    uart_puts(CONTROL, "T init\n");
    u32 x = 0x9e3779b9, sum = 0;
    for (u32 i = 0; i < ROUNDS; i++) {
        x = x * 1103515245u + 12345u;
        u8 v = (u8)(x >> 16);
        /* Never the reset command: 0xfe to the command port pulses the reset line. */
        if (v == 0xfe) v = 0xfd;
        /* i8042 commands and data: read/write command byte, self tests, output port writes. */
        outb(0x64, v);
        outb(0x60, (u8)(x >> 8));
        outw(0x60, (u16)(x >> 4));
        outw(0x64, (u16)((x >> 12) & 0xff00) | v);
        outl(0x60, x);
        outl(0x64, (x & 0xffffff00u) | v);
        sum += inb(0x60) + inb(0x64) + inw(0x60) + inw(0x64) + inl(0x60) + inl(0x64);
        /* Reads of the exit port (never a stop). */
        sum += inb(EXIT_PORT) + inw(EXIT_PORT) + inl(EXIT_PORT);
        /* Both UARTs' registers other than the data register (IER, FCR, LCR, MCR, LSR, MSR,
         * scratch), with every size; then reads of all eight. Loopback, divisor latch and FIFO
         * settings come and go. */
        for (u16 base = CONTROL; base; base = base == CONTROL ? CONSOLE : 0) {
            u16 reg = (u16)(base + 1 + (x >> 3) % 7);
            outb(reg, (u8)(x >> 20));
            outw(reg, (u16)(x >> 9));
            outl(reg, x ^ 0xa5a5a5a5u);
            for (u16 r = 0; r < 8; r++) sum += inb((u16)(base + r)) + inw((u16)(base + r)) + inl((u16)(base + r));
        }
    }
    /* Back to a sane line: divisor latch off, 8N1, FIFO on, loopback off, no interrupts. */
    for (u16 base = CONTROL; base; base = base == CONTROL ? CONSOLE : 0) {
        outb((u16)(base + 3), 0x03);
        outb((u16)(base + 1), 0x00);
        outb((u16)(base + 2), 0x07);
        outb((u16)(base + 4), 0x03);
    }
    puts("PORTS DONE "); puthex(sum, 8); puts("\n");
#if FINAL == 1
    uart_puts(CONTROL, "X 5\n");
    outl(EXIT_PORT, 0x12345607u);
#elif FINAL == 2
    outw(EXIT_PORT, 0xfe34);
#else
    uart_puts(CONTROL, "X 6\n");
    outl(0x64, 0x000000feu);
#endif
    for (;;) __asm__ volatile("cli; hlt");
}
