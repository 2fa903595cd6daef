/* Drives virtio-mmio block device DEV (default 0, the rootfs) itself: reads the sectors listed in SECTORS and
 * prints an FNV-1a checksum of their bytes ("SUM xxxxxxxx"); with WRITE_TEST, writes sector 0
 * and exits with 40 + the request's status byte. */
#include "probe.h"

#ifndef DEV
#define DEV 0
#endif
#define MMIO (0xd0000000u + 0x1000u * DEV)
#define QSZ 8
#define DESC 0x300000u
#define AVAIL 0x301000u
#define USED 0x302000u
#define HDR 0x303000u
#define STATUS 0x303100u
#define DATA 0x304000u

struct desc { u64 addr; u32 len; u16 flags, next; };
struct avail { u16 flags, idx, ring[QSZ]; };
struct used { u16 flags, idx; struct { u32 id, len; } ring[QSZ]; };

static volatile u32 *reg(u32 off) { return (volatile u32 *)(MMIO + off); }
static u16 next_used;

static void fail(const char *why) { puts("PROBE FAIL: "); puts(why); puts("\n"); probe_exit(98); }

static void setup(void) {
    if (*reg(0x000) != 0x74726976 || *reg(0x004) != 2 || *reg(0x008) != 2) fail("no virtio-blk v2");
    *reg(0x070) = 0;
    *reg(0x070) = 1;
    *reg(0x070) = 3;
    *reg(0x024) = 1; *reg(0x020) = 1;   /* VIRTIO_F_VERSION_1 */
    *reg(0x024) = 0; *reg(0x020) = 0;
    *reg(0x070) = 3 | 8;
    if (!(*reg(0x070) & 8)) fail("FEATURES_OK refused");
    *reg(0x030) = 0;
    if (*reg(0x034) < QSZ) fail("queue too small");
    *reg(0x038) = QSZ;
    *reg(0x080) = DESC; *reg(0x084) = 0;
    *reg(0x090) = AVAIL; *reg(0x094) = 0;
    *reg(0x0a0) = USED; *reg(0x0a4) = 0;
    *reg(0x044) = 1;
    *reg(0x070) = 1 | 2 | 4 | 8;
}

static u8 request(u32 type, u64 sector, u32 len) {
    volatile struct desc *d = (volatile struct desc *)DESC;
    volatile struct avail *a = (volatile struct avail *)AVAIL;
    volatile struct used *u = (volatile struct used *)USED;
    volatile u32 *h = (volatile u32 *)HDR;
    h[0] = type; h[1] = 0; h[2] = (u32)sector; h[3] = (u32)(sector >> 32);
    *(volatile u8 *)STATUS = 0xff;
    d[0].addr = HDR; d[0].len = 16; d[0].flags = 1; d[0].next = 1;
    d[1].addr = DATA; d[1].len = len; d[1].flags = (u16)(1 | (type == 0 ? 2 : 0)); d[1].next = 2;
    d[2].addr = STATUS; d[2].len = 1; d[2].flags = 2; d[2].next = 0;
    a->ring[a->idx % QSZ] = 0;
    barrier();
    a->idx = (u16)(a->idx + 1);
    barrier();
    *reg(0x050) = 0;
    next_used++;
    while (u->idx != next_used) barrier();
    *reg(0x064) = *reg(0x060);
    return *(volatile u8 *)STATUS;
}

void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    puts("CAPACITY: "); putdec(*reg(0x100) | ((u64)*reg(0x104) << 32)); puts("\n");
#ifdef WRITE_TEST
    for (u32 i = 0; i < 512; i++) ((volatile u8 *)DATA)[i] = 0xee;
    u8 st = request(1, 0, 512);
    puts("WRITE STATUS: "); putdec(st); puts("\n");
    probe_exit((u8)(40 + st));
#else
    static const u32 sectors[] = { SECTORS };
    u32 h = 2166136261u;
    for (u32 i = 0; i < sizeof(sectors) / sizeof(sectors[0]); i++) {
        u8 st = request(0, sectors[i], 512);
        if (st != 0) { puts("READ STATUS: "); putdec(st); puts("\n"); probe_exit(97); }
        for (u32 j = 0; j < 512; j++) { h ^= ((volatile u8 *)DATA)[j]; h *= 16777619u; }
    }
    puts("SUM "); puthex(h, 8); puts("\n");
    probe_exit(0);
#endif
}
