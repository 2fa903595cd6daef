/* A hostile virtio-blk driver: sends malformed requests to the rootfs device and prints the
 * status byte the device left for each ("CASE <n> STATUS <s> USED <u>": s = 255 means the
 * device wrote no status, u = whether the request came back on the used ring), then exits 0.
 * Cases: 1 descriptor loop, 2 buffer outside guest memory, 3 address that overflows, 4 zero-
 * length data buffer, 5 zero-length status, 6 read past the disk's end, 7 queue registers
 * rewritten after DRIVER_OK (ignored) then a good read, 8 write to the read-only rootfs. With
 * REPEAT=n the eight cases are sent n times (reported once, the last time). */
#include "probe.h"

#define MMIO 0xd0000000u
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

static void setup(void) {
    *reg(0x070) = 0; *reg(0x070) = 1; *reg(0x070) = 3;
    *reg(0x024) = 1; *reg(0x020) = 1; *reg(0x024) = 0; *reg(0x020) = 0;
    *reg(0x070) = 3 | 8;
    *reg(0x030) = 0; *reg(0x038) = QSZ;
    *reg(0x080) = DESC; *reg(0x084) = 0;
    *reg(0x090) = AVAIL; *reg(0x094) = 0;
    *reg(0x0a0) = USED; *reg(0x0a4) = 0;
    *reg(0x044) = 1;
    *reg(0x070) = 1 | 2 | 4 | 8;
}

/* Submits the chain already in the table (head 0); returns whether it came back. */
static int submit(void) {
    volatile struct avail *a = (volatile struct avail *)AVAIL;
    volatile struct used *u = (volatile struct used *)USED;
    a->ring[a->idx % QSZ] = 0;
    barrier();
    a->idx = (u16)(a->idx + 1);
    barrier();
    *reg(0x050) = 0;
    /* The device serves a kick synchronously: the used index has moved, or never will. */
    int back = u->idx != next_used;
    if (back) next_used = u->idx;
    *reg(0x064) = *reg(0x060);
    return back;
}

static void set(int i, u64 addr, u32 len, u16 flags, u16 next) {
    volatile struct desc *d = (volatile struct desc *)DESC;
    d[i].addr = addr; d[i].len = len; d[i].flags = flags; d[i].next = next;
}

static void header(u32 type, u64 sector) {
    volatile u32 *h = (volatile u32 *)HDR;
    h[0] = type; h[1] = 0; h[2] = (u32)sector; h[3] = (u32)(sector >> 32);
    *(volatile u8 *)STATUS = 0xff;
}

#ifndef REPEAT
#define REPEAT 1
#endif
static int last_round;

static void report(int n, int back) {
    if (!last_round) return;
    puts("CASE "); putdec((u64)n); puts(" STATUS "); putdec(*(volatile u8 *)STATUS);
    puts(" USED "); putdec((u64)back); puts("\n");
}

static void good_read(u64 sector) {
    header(0, sector);
    set(0, HDR, 16, 1, 1); set(1, DATA, 512, 1 | 2, 2); set(2, STATUS, 1, 2, 0);
}

void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    u64 sectors = *reg(0x100) | ((u64)*reg(0x104) << 32);
    for (int round = 0; round < REPEAT; round++) {
    last_round = round == REPEAT - 1;
    /* 1: header -> data -> header -> ... */
    header(0, 0); set(0, HDR, 16, 1, 1); set(1, DATA, 512, 1 | 2, 0);
    report(1, submit());
    /* 2: a data buffer far outside guest memory */
    good_read(0); set(1, 0xfff00000000ull, 512, 1 | 2, 2);
    report(2, submit());
    /* 3: a data buffer whose end overflows the address space */
    good_read(0); set(1, 0xfffffffffffffe00ull, 4096, 1 | 2, 2);
    report(3, submit());
    /* 4: a zero-length data buffer */
    good_read(0); set(1, DATA, 0, 1 | 2, 2);
    report(4, submit());
    /* 5: a zero-length status buffer */
    good_read(0); set(2, STATUS, 0, 2, 0);
    report(5, submit());
    /* 6: one sector past the end */
    good_read(sectors);
    report(6, submit());
    /* 7: queue registers rewritten while live (must be ignored), then a good read */
    *reg(0x038) = 2; *reg(0x080) = 0xdead0000u; *reg(0x090) = 0xdead1000u; *reg(0x0a0) = 0xdead2000u;
    good_read(1);
    report(7, submit());
    /* 8: a write to the read-only rootfs */
    header(1, 0); set(0, HDR, 16, 1, 1); set(1, DATA, 512, 1, 2); set(2, STATUS, 1, 2, 0);
    report(8, submit());
    }
    probe_exit(0);
}
