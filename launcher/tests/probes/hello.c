/* Prints on the console what the VMM handed over (command line, memory map, initramfs
 * module), then exits with EXIT_CODE through the control channel and the exit port. */
#include "probe.h"

static int contains(const u8 *hay, u64 len, const char *needle) {
    u64 n = 0; while (needle[n]) n++;
    for (u64 i = 0; i + n <= len; i++) {
        u64 j = 0;
        while (j < n && hay[i + j] == (u8)needle[j]) j++;
        if (j == n) return 1;
    }
    return 0;
}

void probe_main(struct hvm_start_info *si) {
    uart_puts(CONTROL, "T init\n");
    puts("hello from probe\n");
    if (si->magic != 0x336ec578) { puts("bad start_info magic\n"); probe_exit(99); }
    puts("CMDLINE: "); puts((const char *)(u32)si->cmdline_paddr); puts("\n");
    struct hvm_memmap_entry *m = (struct hvm_memmap_entry *)(u32)si->memmap_paddr;
    u64 top = 0;
    for (u32 i = 0; i < si->memmap_entries; i++)
        if (m[i].type == 1 && m[i].addr + m[i].size > top) top = m[i].addr + m[i].size;
    puts("RAMTOP: "); putdec(top); puts("\n");
    if (si->nr_modules == 1) {
        struct hvm_modlist_entry *mod = (struct hvm_modlist_entry *)(u32)si->modlist_paddr;
        puts("INITRAMFS: "); putdec(mod->size); puts("\n");
        const u8 *p = (const u8 *)(u32)mod->paddr;
        if (contains(p, mod->size, "hyperpod/overrides.json")) puts("OVERRIDES: present\n");
    }
    uart_puts(CONTROL, "T exec\n");
    probe_exit(EXIT_CODE);
}
