/* Tiny freestanding helpers shared by the probe guests (32-bit, no libc). */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

/* The guest protocol's ports come from pod::protocol, passed by the probe build (probes/mod.rs,
 * `protocol_defines`) as -D CONSOLE=, CONTROL=, EXIT_PORT=: no port number is written here. */
#if !defined(CONSOLE) || !defined(CONTROL) || !defined(EXIT_PORT)
#error "build the probes through launcher/tests/probes/mod.rs (it defines the protocol's ports)"
#endif

struct hvm_start_info {
    u32 magic, version, flags, nr_modules;
    u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    u32 memmap_entries, reserved;
};
struct hvm_modlist_entry { u64 paddr, size, cmdline_paddr, reserved; };
struct hvm_memmap_entry { u64 addr, size; u32 type, reserved; };

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline void barrier(void) { __asm__ volatile("" : : : "memory"); }

static void uart_putc(u16 base, char c) {
    while (!(inb(base + 5) & 0x20)) {}
    outb(base, (u8)c);
}
static void uart_puts(u16 base, const char *s) { while (*s) uart_putc(base, *s++); }
static void puts(const char *s) { uart_puts(CONSOLE, s); }
static void puthex(u32 v, int digits) {
    for (int i = digits - 1; i >= 0; i--) uart_putc(CONSOLE, "0123456789abcdef"[(v >> (4 * i)) & 15]);
}
static void putdec(u64 v) {
    char b[24]; int n = 0;
    do { b[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) uart_putc(CONSOLE, b[--n]);
}

/* Reports `code` on the control channel ("X <code>") and ends the VM through the exit port. */
static void __attribute__((noreturn)) probe_exit(u8 code) {
    char line[8]; int n = 0;
    line[n++] = 'X'; line[n++] = ' ';
    if (code >= 100) line[n++] = (char)('0' + code / 100);
    if (code >= 10) line[n++] = (char)('0' + code / 10 % 10);
    line[n++] = (char)('0' + code % 10);
    line[n++] = '\n'; line[n] = 0;
    uart_puts(CONTROL, line);
    outb(EXIT_PORT, code);
    for (;;) __asm__ volatile("cli; hlt");
}
