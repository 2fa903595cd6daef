/* The 64-bit part of the probe bzImage (entered at startup_64, bzstart.S). It checks what the
 * x86 64-bit boot protocol (Documentation/arch/x86/boot.rst) says a boot loader hands over,
 * prints what it found on the console, and exits with EXIT_CODE, or with 90 + n when check n
 * fails ("BZ FAIL: ..." says which).
 *
 * Built with -DBZ_LOAD (the link address = the header's code32_start and pref_address),
 * -DHDR_VERSION and -DSETUP_SECTS (what the test's setup header says) and -DEXIT_CODE. */
#include "probe.h"

extern char startup_32[], startup_64[];
extern char _end[];

#ifdef BSS_BYTES
/* A large bss: a kernel whose init_size is most of RAM. */
u8 bz_big_bss[BSS_BYTES] __attribute__((used));
#endif

/* boot_params (the "zero page") offsets. */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_SETUP_SECTS 0x1f1
#define BP_BOOT_FLAG 0x1fe
#define BP_HEADER 0x202
#define BP_VERSION 0x206
#define BP_TYPE_OF_LOADER 0x210
#define BP_LOADFLAGS 0x211
#define BP_CODE32_START 0x214
#define BP_RAMDISK_IMAGE 0x218
#define BP_RAMDISK_SIZE 0x21c
#define BP_CMD_LINE_PTR 0x228
#define BP_INITRD_ADDR_MAX 0x22c
#define BP_KERNEL_ALIGNMENT 0x230
#define BP_RELOCATABLE 0x234
#define BP_XLOADFLAGS 0x236
#define BP_PREF_ADDRESS 0x258
#define BP_INIT_SIZE 0x260
#define BP_E820_TABLE 0x2d0
#define E820_ENTRY_SIZE 20
#define E820_RAM 1

static u64 rd(const u8 *p, u32 off, int bytes) {
    u64 v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = (v << 8) | p[off + i];
    return v;
}

static void puthex64(u64 v) {
    int digits = 1;
    while (digits < 16 && (v >> (4 * digits))) digits++;
    puts("0x");
    for (int i = digits - 1; i >= 0; i--) uart_putc(CONSOLE, "0123456789abcdef"[(v >> (4 * i)) & 15]);
}

static void __attribute__((noreturn)) fail(u8 check, const char *why) {
    puts("BZ FAIL: "); puts(why); puts("\n");
    probe_exit((u8)(90 + check));
}

/* Is [addr, addr + size) inside one usable RAM entry of the e820 table? */
static int in_ram(const u8 *bp, u64 addr, u64 size) {
    u32 n = (u32)rd(bp, BP_E820_ENTRIES, 1);
    for (u32 i = 0; i < n; i++) {
        const u8 *e = bp + BP_E820_TABLE + i * E820_ENTRY_SIZE;
        u64 a = rd(e, 0, 8), s = rd(e, 8, 8);
        if (rd(e, 16, 4) == E820_RAM && addr >= a && addr + size <= a + s) return 1;
    }
    return 0;
}

static int overlaps(u64 a, u64 alen, u64 b, u64 blen) { return a < b + blen && b < a + alen; }

static u64 rdcr0(void) { u64 v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static u64 rdmsr(u32 msr) {
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}
static u16 cs_selector(void) { u16 v; __asm__ volatile("mov %%cs, %0" : "=r"(v)); return v; }
static u16 ds_selector(void) { u16 v; __asm__ volatile("mov %%ds, %0" : "=r"(v)); return v; }
static u16 ss_selector(void) { u16 v; __asm__ volatile("mov %%ss, %0" : "=r"(v)); return v; }

void bz_main(const u8 *bp, u64 entry) {
    /* 0: entered at load address + 0x200, where this image was linked to run. */
    if (entry != (u64)startup_64) fail(0, "startup_64 runs away from its link address");
    puts("BZ: startup_64 at "); puthex64(entry); puts("\n");

    /* 1: long mode with paging (we run 64-bit code, so check the registers agree). */
    u64 efer = rdmsr(0xc0000080);
    if (!(efer & (1 << 10)) || !(rdcr0() & 0x80000000u)) fail(1, "not in long mode with paging");
    puts("BZ: long mode, cs "); puthex64(cs_selector());
    puts(" ds "); puthex64(ds_selector()); puts(" ss "); puthex64(ss_selector()); puts("\n");
    /* The protocol's selectors: CS = __BOOT_CS (0x10), DS = SS = __BOOT_DS (0x18). */
    if (cs_selector() != 0x10 || ds_selector() != 0x18 || ss_selector() != 0x18)
        fail(1, "segments are not __BOOT_CS/__BOOT_DS");

    /* 2: %rsi points at a boot_params holding the kernel's setup header. */
    puts("BZ: boot_params at "); puthex64((u64)bp); puts("\n");
    if (bp == 0 || (u64)bp >= (1ull << 32)) fail(2, "no boot_params in %rsi");
    if (rd(bp, BP_HEADER, 4) != 0x53726448 || rd(bp, BP_BOOT_FLAG, 2) != 0xaa55)
        fail(2, "boot_params has no HdrS setup header");
    puts("SETUP: HdrS version "); puthex64(rd(bp, BP_VERSION, 2));
    puts(" setup_sects "); putdec(rd(bp, BP_SETUP_SECTS, 1));
    puts(" xloadflags "); puthex64(rd(bp, BP_XLOADFLAGS, 2));
    puts(" code32_start "); puthex64(rd(bp, BP_CODE32_START, 4));
    puts(" init_size "); puthex64(rd(bp, BP_INIT_SIZE, 4));
    puts(" loader "); puthex64(rd(bp, BP_TYPE_OF_LOADER, 1)); puts("\n");

    /* 3: the header is this image's (copied from the file), code32_start is where we run,
     * and the header does offer the 64-bit entry we were entered at. */
    u64 init_size = rd(bp, BP_INIT_SIZE, 4);
    if (rd(bp, BP_VERSION, 2) != HDR_VERSION || rd(bp, BP_SETUP_SECTS, 1) != SETUP_SECTS ||
        !(rd(bp, BP_LOADFLAGS, 1) & 1) || rd(bp, BP_PREF_ADDRESS, 8) != BZ_LOAD ||
        init_size < (u64)(_end - startup_32))
        fail(3, "setup header is not the image's");
    if (!(rd(bp, BP_XLOADFLAGS, 2) & 1)) fail(3, "entered at 0x200 but xloadflags has no XLF_KERNEL_64");
    if (rd(bp, BP_CODE32_START, 4) != entry - 0x200) fail(3, "code32_start is not the load address");

    /* 4: the loader says who it is. */
    if (rd(bp, BP_TYPE_OF_LOADER, 1) == 0) fail(4, "type_of_loader not set");

    /* 5: the command line. */
    u64 cmdline = rd(bp, BP_CMD_LINE_PTR, 4) | (rd(bp, BP_EXT_CMD_LINE_PTR, 4) << 32);
    if (cmdline == 0) fail(5, "no cmd_line_ptr");
    puts("CMDLINE: "); puts((const char *)cmdline); puts("\n");

    /* 6: the memory map, and the kernel's memory window (boot.rst, init_size) in RAM. */
    u32 n = (u32)rd(bp, BP_E820_ENTRIES, 1);
    if (n == 0 || n > 128) fail(6, "no e820 table");
    u64 top = 0;
    for (u32 i = 0; i < n; i++) {
        const u8 *e = bp + BP_E820_TABLE + i * E820_ENTRY_SIZE;
        u64 a = rd(e, 0, 8), s = rd(e, 8, 8);
        if (rd(e, 16, 4) == E820_RAM && a + s > top) top = a + s;
    }
    puts("E820: "); putdec(n); puts(" entries\n");
    puts("RAMTOP: "); putdec(top); puts("\n");
    u64 window = BZ_LOAD; /* relocatable_kernel is 0: runtime_start = pref_address */
    if (rd(bp, BP_RELOCATABLE, 1)) fail(6, "image claims to be relocatable");
    if (!in_ram(bp, window, init_size)) fail(6, "kernel memory window (init_size) not in RAM");
    if (!in_ram(bp, (u64)bp, 4096)) fail(6, "boot_params not in RAM");

    /* 7: the initramfs, outside the kernel's window and below initrd_addr_max. */
    u64 rd_addr = rd(bp, BP_RAMDISK_IMAGE, 4) | (rd(bp, BP_EXT_RAMDISK_IMAGE, 4) << 32);
    u64 rd_size = rd(bp, BP_RAMDISK_SIZE, 4) | (rd(bp, BP_EXT_RAMDISK_SIZE, 4) << 32);
    if (rd_size) {
        puts("INITRAMFS: "); putdec(rd_size); puts(" at "); puthex64(rd_addr);
        if (rd_size <= 65536) { /* every guest instruction is emulated here: hash small ones */
            u32 h = 2166136261u;
            for (u64 i = 0; i < rd_size; i++) h = (h ^ ((const u8 *)rd_addr)[i]) * 16777619u;
            puts(" fnv "); puthex(h, 8);
        }
        puts("\n");
        if (!in_ram(bp, rd_addr, rd_size)) fail(7, "initramfs not in RAM");
        if (overlaps(rd_addr, rd_size, window, init_size))
            fail(7, "initramfs inside the kernel memory window (init_size)");
        if (rd_addr + rd_size - 1 > rd(bp, BP_INITRD_ADDR_MAX, 4))
            fail(7, "initramfs above initrd_addr_max");
    }
    if (overlaps(cmdline, 1, window, init_size)) fail(7, "command line inside the kernel window");

    uart_puts(CONTROL, "T init\n");
    puts("BZ: all checks passed\n");
    probe_exit(EXIT_CODE);
}
