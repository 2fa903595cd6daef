/* Drives the stdio console (virtio-console v2 at VCON: receiveq 0, transmitq 1) itself.
 * default: sends a known text on the transmitq in chains of several shapes.
 * ECHO=n: posts NRX receive buffers of RXLEN bytes, collects n bytes from the host (reposting each
 *   buffer once read), then sends them all back on the transmitq.
 * HOSTILE: malformed chains on both queues, a queue reconfigured after DRIVER_OK, a reset and a
 *   second set-up; well-formed markers between them on the transmitq. REPEAT=n: all of it n
 *   times; NO_RX: without the receiveq part (it needs the host to push "hello" on "R?").
 * RX_HOSTILE: plays init's marks ("T init", "T exec"), then reads its stdin (the launcher's -i
 *   frames) through receive batches that mix malformed chains (loops, next or head outside the
 *   queue, MMIO hole, across RAM's end (RAM_END), overflowing, empty, device-readable, indirect,
 *   6 MiB, and chains whose first buffer is good but a later one is not) with good ones of odd
 *   shapes (1, 2 and 3 bytes: shorter than a frame header, a header spread over three
 *   descriptors, chains out of table order); every JUMP_EVERY batches the avail index jumps
 *   past the queue size for ~25 M TSC cycles (nothing may be served) and is then put right;
 *   every RESET_EVERY batches the device is reset and set up again in mid-stream.
 *   Checks: used elements in offer order, refused ones with length 0 and their buffers
 *   untouched, no byte written past a used length, and the payload equal to the host's
 *   pattern byte for byte ((p * 2654435761) >> 24 at stream offset p). At end of file prints
 *   "RX OK bytes=N fnv=H refused=R jumps=J resets=S" and exits 0. JUMP_FOREVER=n: at batch n the index
 *   jumps for good; after SPIN_MCYCLES M cycles of kicks with nothing served, prints
 *   "RX QUEUE STOPPED after N bytes" and halts (only --timeout ends it).
 * BENCH_MIB=n: sends n MiB in 4 KiB chains, BATCH chains per kick.
 * RELAY: plays init's part of the stdio protocol: "T init" and "T exec" on the control port,
 *   collects stdin frames until the end-of-file frame, then sends their payload back as one
 *   stdout frame and a fixed line as a stderr frame.
 * Exits 0 when the device behaved; otherwise prints "PROBE FAIL: why" and exits 98. */
#include "probe.h"

#define QSZ 16
#define RXQ 0x300000u
#define TXQ 0x304000u
#define RXBUF 0x310000u /* receive buffers, 4 KiB apart */
#define TXBUF 0x330000u /* transmit data, 4 KiB per chain */
#define STORE 0x400000u /* bytes received */
#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4
#ifndef NRX
#define NRX 4
#endif
#ifndef RXLEN
#define RXLEN 64
#endif
#ifndef BATCH
#define BATCH 1
#endif

struct desc { u64 addr; u32 len; u16 flags, next; };
struct avail { u16 flags, idx, ring[QSZ]; };
struct used { u16 flags, idx; struct { u32 id, len; } ring[QSZ]; };
struct vq { u32 base, sel; u16 avail, used; };

static struct vq rxq = { RXQ, 0, 0, 0 }, txq = { TXQ, 1, 0, 0 };

static volatile u32 *reg(u32 off) { return (volatile u32 *)(VCON + off); }
static volatile struct desc *D(struct vq *q) { return (volatile struct desc *)q->base; }
static volatile struct avail *A(struct vq *q) { return (volatile struct avail *)(q->base + 0x1000); }
static volatile struct used *U(struct vq *q) { return (volatile struct used *)(q->base + 0x2000); }

static void fail(const char *why) { puts("PROBE FAIL: "); puts(why); puts("\n"); probe_exit(98); }

static void set_desc(struct vq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next) {
    volatile struct desc *d = D(q) + i;
    d->addr = addr; d->len = len; d->flags = flags; d->next = next;
}

static void copy(u32 to, const void *from, u32 n) {
    for (u32 i = 0; i < n; i++) ((volatile u8 *)to)[i] = ((const u8 *)from)[i];
}

static u32 len_of(const char *s) { u32 n = 0; while (s[n]) n++; return n; }

static void queue_setup(struct vq *q) {
    /* The descriptor table and both rings (the rest of their pages is unused). */
    for (u32 i = 0; i < QSZ * 16; i++) ((volatile u8 *)q->base)[i] = 0;
    for (u32 i = 0; i < 6 + 2 * QSZ; i++) ((volatile u8 *)q->base)[0x1000 + i] = 0;
    for (u32 i = 0; i < 6 + 8 * QSZ; i++) ((volatile u8 *)q->base)[0x2000 + i] = 0;
    q->avail = q->used = 0;
    *reg(0x030) = q->sel;
    if (*reg(0x034) < QSZ) fail("queue too small");
    if (*reg(0x044) != 0) fail("queue ready before set-up");
    *reg(0x038) = QSZ;
    *reg(0x080) = q->base; *reg(0x084) = 0;
    *reg(0x090) = q->base + 0x1000; *reg(0x094) = 0;
    *reg(0x0a0) = q->base + 0x2000; *reg(0x0a4) = 0;
    *reg(0x044) = 1;
}

static void setup(void) {
    if (*reg(0x000) != 0x74726976 || *reg(0x004) != 2 || *reg(0x008) != 3) fail("no virtio console v2");
    *reg(0x070) = 0;
    *reg(0x070) = 1;
    *reg(0x070) = 3;
    *reg(0x014) = 0; if (*reg(0x010) != 0) fail("features beyond VERSION_1");
    *reg(0x014) = 1; if (*reg(0x010) != 1) fail("no VERSION_1");
    *reg(0x024) = 1; *reg(0x020) = 1;
    *reg(0x024) = 0; *reg(0x020) = 0;
    *reg(0x070) = 3 | 8;
    if (!(*reg(0x070) & 8)) fail("FEATURES_OK refused");
    queue_setup(&rxq);
    queue_setup(&txq);
    *reg(0x070) = 1 | 2 | 4 | 8;
}

/* Makes the chains at `heads` available in one step and kicks the queue. */
static void offer(struct vq *q, const u16 *heads, u32 n) {
    for (u32 i = 0; i < n; i++) A(q)->ring[(u16)(q->avail + i) % QSZ] = heads[i];
    barrier();
    q->avail = (u16)(q->avail + n);
    A(q)->idx = q->avail;
    barrier();
    *reg(0x050) = q->sel;
}

/* Waits for the next used element; returns its length and stores its id. */
static u32 wait_used(struct vq *q, u32 *id) {
    while (U(q)->idx == q->used) barrier();
    *id = U(q)->ring[q->used % QSZ].id;
    u32 len = U(q)->ring[q->used % QSZ].len;
    q->used++;
    return len;
}

static u32 next_used(struct vq *q, u16 head) {
    u32 id, len = wait_used(q, &id);
    if (id != head) fail("used element is not the chain's head");
    return len;
}

/* Sends `n` bytes at `at` as one single-buffer chain (descriptor 0). */
static void send_at(u32 at, u32 n) {
    u16 h = 0;
    set_desc(&txq, 0, at, n, 0, 0);
    offer(&txq, &h, 1);
    if (next_used(&txq, 0) != 0) fail("transmit used length is not 0");
}

static void send(const char *s) {
    copy(TXBUF, s, len_of(s));
    send_at(TXBUF, len_of(s));
}

#if defined(ECHO)
void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    u16 heads[NRX];
    for (u16 i = 0; i < NRX; i++) {
        set_desc(&rxq, i, RXBUF + 0x1000u * i, RXLEN, F_WRITE, 0);
        heads[i] = i;
    }
    offer(&rxq, heads, NRX);
    u32 got = 0;
    while (got < ECHO) {
        u32 id, len = wait_used(&rxq, &id);
        if (id >= NRX || len == 0 || len > RXLEN) fail("bad receive element");
        for (u32 i = 0; i < len && got < ECHO; i++, got++)
            ((volatile u8 *)STORE)[got] = ((volatile u8 *)(RXBUF + 0x1000u * id))[i];
        u16 h = (u16)id;
        offer(&rxq, &h, 1);
    }
    for (u32 off = 0; off < ECHO; off += 1000) send_at(STORE + off, ECHO - off < 1000 ? ECHO - off : 1000);
    probe_exit(0);
}
#elif defined(RELAY)
void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    uart_puts(CONTROL, "T init\n");
    uart_puts(CONTROL, "T exec\n");
    u16 heads[NRX];
    for (u16 i = 0; i < NRX; i++) {
        set_desc(&rxq, i, RXBUF + 0x1000u * i, RXLEN, F_WRITE, 0);
        heads[i] = i;
    }
    offer(&rxq, heads, NRX);
    volatile u8 *in = (volatile u8 *)STORE, *out = (volatile u8 *)TXBUF;
    u32 got = 0, pos = 0, n = 3;
    for (;;) {
        u32 id, len = wait_used(&rxq, &id);
        if (id >= NRX || len > RXLEN || got + len > 0x8000) fail("bad receive element");
        for (u32 i = 0; i < len; i++) in[got++] = ((volatile u8 *)(RXBUF + 0x1000u * id))[i];
        u16 h = (u16)id;
        offer(&rxq, &h, 1);
        while (pos + 3 <= got) {
            u32 kind = in[pos], flen = in[pos + 1] | (u32)in[pos + 2] << 8;
            if (pos + 3 + flen > got) break;
            if (kind == 4) {
                out[0] = 1; out[1] = (u8)(n - 3); out[2] = (u8)((n - 3) >> 8);
                send_at(TXBUF, n);
                copy(TXBUF, "\x02\x0f\x00stderr of probe", 18);
                send_at(TXBUF, 18);
                probe_exit(0);
            }
            if (kind != 3) fail("not a stdin frame");
            if (n + flen > 0xf00) fail("too much stdin");
            for (u32 i = 0; i < flen; i++) out[n++] = in[pos + 3 + i];
            pos += 3 + flen;
        }
    }
}
#elif defined(HOSTILE)
/* Offers the malformed transmit chain at descriptor 0: it must come back with length 0. */
static void refused_tx(void) {
    u16 h = 0;
    offer(&txq, &h, 1);
    if (next_used(&txq, 0) != 0) fail("malformed chain used length is not 0");
}

#ifndef REPEAT
#define REPEAT 1
#endif

void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    for (u32 round = 0; round < REPEAT; round++) {
    for (u32 i = 0; i < 0x1000; i++) ((volatile u8 *)TXBUF)[0x1000 + i] = 'X';
    u32 bad = TXBUF + 0x1000;
    send("M1");
    /* transmitq */
    set_desc(&txq, 0, bad, 4, F_NEXT, 0); refused_tx();                 /* a loop */
    set_desc(&txq, 0, bad, 4, F_NEXT, 1); set_desc(&txq, 1, bad, 4, F_NEXT, 0); refused_tx();
    set_desc(&txq, 0, bad, 4, F_NEXT, QSZ + 3); refused_tx();           /* next outside the queue */
    set_desc(&txq, 0, 0xe0000000ull, 16, 0, 0); refused_tx();           /* MMIO hole, not RAM */
    set_desc(&txq, 0, 0x3fffff0ull, 0x100, 0, 0); refused_tx();         /* across RAM's end */
    set_desc(&txq, 0, 0xfffffffffffffff0ull, 0x100, 0, 0); refused_tx(); /* address overflow */
    set_desc(&txq, 0, bad, 0, 0, 0); refused_tx();                      /* empty */
    set_desc(&txq, 0, bad, 4, F_WRITE, 0); refused_tx();                /* writable on the transmitq */
    set_desc(&txq, 0, bad, 16, F_INDIRECT, 0); refused_tx();            /* indirect, not negotiated */
    set_desc(&txq, 0, 0x1000000, 3u << 20, F_NEXT, 1);                  /* 6 MiB in one chain */
    set_desc(&txq, 1, 0x1400000, 3u << 20, 0, 0); refused_tx();
    /* A head outside the queue is never returned; the good chain after it is. */
    copy(TXBUF, "M2", 2);
    set_desc(&txq, 0, TXBUF, 2, 0, 0);
    u16 two[2] = { 999, 0 };
    offer(&txq, two, 2);
    if (next_used(&txq, 0) != 0) fail("M2 used length");

#ifndef NO_RX
    /* receiveq: readable, empty, outside RAM, a loop, overflowing, then one good buffer. */
    for (u32 i = 0; i < 64; i++) ((volatile u8 *)RXBUF)[i] = 0;
    set_desc(&rxq, 0, RXBUF, 16, 0, 0);
    set_desc(&rxq, 1, RXBUF, 0, F_WRITE, 0);
    set_desc(&rxq, 2, 0xe0000000ull, 16, F_WRITE, 0);
    set_desc(&rxq, 3, RXBUF, 16, F_WRITE | F_NEXT, 3);
    set_desc(&rxq, 4, 0xfffffffffffffff0ull, 0x100, F_WRITE, 0);
    set_desc(&rxq, 5, RXBUF + 32, 16, F_WRITE, 0);
    u16 six[6] = { 0, 1, 2, 3, 4, 5 };
    offer(&rxq, six, 6);
    send("R?");
    for (u16 i = 0; i < 5; i++)
        if (next_used(&rxq, i) != 0) fail("malformed receive buffer was used");
    if (next_used(&rxq, 5) != 5) fail("good receive buffer did not get 5 bytes");
    for (u32 i = 0; i < 32; i++)
        if (((volatile u8 *)RXBUF)[i]) fail("a refused receive buffer was written");
    const char *hello = "hello";
    for (u32 i = 0; i < 5; i++)
        if (((volatile u8 *)RXBUF)[32 + i] != (u8)hello[i]) fail("wrong bytes received");
    send("M3");
#endif

    /* While ready, a queue's size and addresses are fixed. */
    *reg(0x030) = 1; *reg(0x080) = 0xdead0000u; *reg(0x038) = 2;
    send("M4");
    /* Unready, moved outside RAM, ready again: kicks are dropped. */
    *reg(0x030) = 1; *reg(0x044) = 0; *reg(0x080) = 0xfff00000u; *reg(0x044) = 1;
    u16 h = 0;
    set_desc(&txq, 0, bad, 4, 0, 0);
    offer(&txq, &h, 1);
    if (U(&txq)->idx != txq.used) fail("a queue outside RAM was served");
    /* Selectors, sizes and notifications that name nothing. */
    *reg(0x030) = 7; *reg(0x044) = 1; *reg(0x038) = 1024;
    *reg(0x050) = 7; *reg(0x050) = 0xffffffffu;
    *reg(0x030) = 0; *reg(0x044) = 0; *reg(0x038) = 3; *reg(0x038) = 0; *reg(0x044) = 1;
    *reg(0x050) = 0;
    /* Reset and set up again: the console works as new. */
    setup();
    send("END");
    }
    probe_exit(0);
}
#elif defined(RX_HOSTILE)
/* The receive side against a hostile driver, fed by the launcher's -i: see the header. */
#ifndef RAM_END
#define RAM_END 0x2000000u /* --memory 32 */
#endif
#ifndef JUMP_EVERY
#define JUMP_EVERY 8
#endif
#ifndef RESET_EVERY
#define RESET_EVERY 50
#endif
#define SENTINEL 0xee
#define PAGE(i) (RXBUF + 0x1000u * (i))
#define HUGE_A 0x1000000u /* the two halves of a 6 MiB chain */
#define HUGE_B 0x1400000u

static inline u64 rdtsc(void) { u32 lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); return (u64)hi << 32 | lo; }

/* One batch: the heads offered in order, which are well-formed, and the RAM outside the
 * receive pages that refused chains point into (must stay SENTINEL). */
static u16 heads[QSZ];
static u8 good[QSZ];
static u32 nheads;
static u32 far_at[4], far_len[4], nfar;

static void add(u16 head, u8 ok) { heads[nheads] = head; good[nheads] = ok; nheads++; }
static void far_region(u32 at, u32 len) {
    for (u32 i = 0; i < len; i++) ((volatile u8 *)at)[i] = SENTINEL;
    far_at[nfar] = at; far_len[nfar] = len; nfar++;
}
/* A device-writable buffer on receive page `i`, `len` bytes, optionally chained to `next`. */
static void wbuf(u16 i, u32 len, int more, u16 next) {
    set_desc(&rxq, i, PAGE(i), len, (u16)(F_WRITE | (more ? F_NEXT : 0)), next);
}

/* Three batch shapes in turn; every bad chain sits between good ones. */
static void make_batch(u32 kind) {
    nheads = nfar = 0;
    if (kind == 0) {
        set_desc(&rxq, 0, PAGE(0), 16, F_WRITE | F_NEXT, 0); add(0, 0);      /* a loop */
        wbuf(1, 1, 0, 0); add(1, 1);                                        /* 1 byte: no header fits */
        wbuf(2, 16, 1, 3); wbuf(3, 16, 1, 2); add(2, 0);                    /* a loop through two */
        wbuf(4, 2, 0, 0); add(4, 1);                                        /* 2 bytes */
        wbuf(5, 16, 1, QSZ + 3); add(5, 0);                                 /* next outside the queue */
        wbuf(6, 1, 1, 7); wbuf(7, 1, 1, 8); wbuf(8, 1, 0, 0); add(6, 1);    /* a header in three */
        set_desc(&rxq, 9, 0xe0000000ull, 16, F_WRITE, 0); add(9, 0);        /* MMIO hole, not RAM */
        wbuf(10, 256, 0, 0); add(10, 1);
        add(999, 0);                                                        /* head outside the queue */
        wbuf(11, 4096, 0, 0); add(11, 1);
    } else if (kind == 1) {
        set_desc(&rxq, 0, RAM_END - 16, 0x100, F_WRITE, 0); add(0, 0);      /* across RAM's end */
        far_region(RAM_END - 16, 16);
        wbuf(1, 61, 0, 0); add(1, 1);
        set_desc(&rxq, 2, 0xfffffffffffffff0ull, 0x100, F_WRITE, 0); add(2, 0); /* overflow */
        wbuf(3, 0, 0, 0); add(3, 0);                                        /* empty */
        wbuf(6, 7, 1, 4); wbuf(4, 100, 1, 5); wbuf(5, 1000, 0, 0); add(6, 1); /* out of table order */
        set_desc(&rxq, 7, PAGE(7), 16, 0, 0); add(7, 0);                    /* device-readable only */
        wbuf(8, 1, 0, 0); add(8, 1);
        set_desc(&rxq, 9, PAGE(9), 16, F_WRITE | F_INDIRECT, 0); add(9, 0); /* indirect */
        wbuf(10, 2048, 0, 0); add(10, 1);
    } else {
        wbuf(0, 16, 1, 1); set_desc(&rxq, 1, PAGE(1), 16, 0, 0); add(0, 0); /* writable, then readable */
        wbuf(2, 3, 0, 0); add(2, 1);                                        /* exactly a header */
        wbuf(3, 16, 1, 4); wbuf(4, 0, 0, 0); add(3, 0);                     /* then an empty one */
        wbuf(5, 512, 0, 0); add(5, 1);
        wbuf(6, 16, 1, 7); set_desc(&rxq, 7, 0xe0000000ull, 16, F_WRITE, 0); add(6, 0); /* then MMIO */
        set_desc(&rxq, 8, HUGE_A, 3u << 20, F_WRITE | F_NEXT, 9);          /* 6 MiB in one chain */
        set_desc(&rxq, 9, HUGE_B, 3u << 20, F_WRITE, 0); add(8, 0);
        far_region(HUGE_A, 256); far_region(HUGE_B, 256);
        wbuf(10, 1, 1, 11); wbuf(11, 2, 0, 0); add(10, 1);
        wbuf(12, 16, 1, 13); set_desc(&rxq, 13, PAGE(13), 16, F_WRITE | F_INDIRECT, 0); add(12, 0);
        wbuf(14, 4096, 0, 0); add(14, 1);
    }
}

/* The stdin stream as the guest sees it: frames split anywhere across buffers. */
static u32 hdr_n, left, total, fnv = 2166136261u, bad_seen, jumps, resets;
static u8 hdr[3];
static int eof;

static u8 pattern(u32 p) { return (u8)((p * 2654435761u) >> 24); }

/* Takes the `n` bytes at `p` into the stream. Payload runs are checked in a tight loop on
 * locals: guest code is emulated here, and every instruction per byte counts. */
static void feed(const volatile u8 *p, u32 n) {
    for (u32 k = 0; k < n;) {
        if (eof) fail("a byte after the end-of-file frame");
        if (left) {
            u32 m = n - k < left ? n - k : left, t = total, h = fnv;
            for (u32 end = k + m; k < end; k++, t++) {
                u8 b = p[k];
                if (b != pattern(t)) {
                    puts("at stdin byte "); puthex(t, 8); puts(": ");
                    fail("lost, duplicated or reordered input");
                }
                h = (h ^ b) * 16777619u;
            }
            total = t;
            fnv = h;
            left -= m;
            continue;
        }
        hdr[hdr_n++] = p[k++];
        if (hdr_n < 3) continue;
        hdr_n = 0;
        u32 len = hdr[1] | (u32)hdr[2] << 8;
        if (hdr[0] == 4) {
            if (len) fail("end-of-file frame with a length");
            eof = 1;
        } else if (hdr[0] == 3) {
            left = len;
        } else {
            fail("not a stdin frame");
        }
    }
}

/* Publishes the batch with the available index `extra` entries ahead of the truth. */
static void publish(u32 extra) {
    for (u32 i = 0; i < nheads; i++) A(&rxq)->ring[(u16)(rxq.avail + i) % QSZ] = heads[i];
    barrier();
    A(&rxq)->idx = (u16)(rxq.avail + nheads + extra);
    barrier();
    *reg(0x050) = rxq.sel;
}

/* Kicks for `mcycles` million TSC cycles while the index is wrong: nothing may be served. */
static void stay_stopped(u32 mcycles) {
    u64 end = rdtsc() + (u64)mcycles * 1000000ull, kick = 0;
    while (rdtsc() < end) {
        if (rdtsc() >= kick) { *reg(0x050) = rxq.sel; kick = rdtsc() + 1000000ull; }
        if (U(&rxq)->idx != rxq.used) fail("a queue with an avail index past its size was served");
    }
}

/* Takes the batch's used elements in order; returns once all came back or at end of file. */
static void take_batch(const u32 *span) {
    u32 written[QSZ];
    for (u32 i = 0; i < QSZ; i++) written[i] = 0;
    for (u32 e = 0; e < nheads && !eof; e++) {
        if (heads[e] >= QSZ) continue; /* never comes back */
        u32 id, len = wait_used(&rxq, &id);
        if (id != heads[e]) fail("used elements out of order");
        if (!good[e]) {
            if (len) fail("a malformed receive chain has a used length");
            bad_seen++;
            continue;
        }
        if (len == 0) fail("a good receive chain came back empty");
        u16 i = (u16)id;
        for (;;) {
            volatile struct desc *d = D(&rxq) + i;
            u32 n = len < d->len ? len : d->len;
            feed((const volatile u8 *)PAGE(i), n);
            written[i] = n;
            len -= n;
            if (!(d->flags & F_NEXT)) break;
            i = d->next;
        }
        if (len) fail("used length beyond the chain");
    }
    /* Nothing but what was reported written may have changed. */
    for (u32 i = 0; i < QSZ; i++)
        for (u32 k = written[i]; k < span[i]; k++)
            if (((volatile u8 *)PAGE(i))[k] != SENTINEL) fail("a byte was written outside a used length");
    for (u32 f = 0; f < nfar; f++)
        for (u32 k = 0; k < far_len[f]; k++)
            if (((volatile u8 *)far_at[f])[k] != SENTINEL) fail("a refused chain's buffer was written");
}

void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    uart_puts(CONTROL, "T init\n");
    uart_puts(CONTROL, "T exec\n");
    u32 span[QSZ];
    for (u32 batch = 0; !eof; batch++) {
        if (batch % RESET_EVERY == RESET_EVERY - 1) {
            /* Reset in mid-stream and set up again: the stream goes on where it was. */
            setup();
            resets++;
        }
        for (u16 i = 0; i < QSZ; i++) set_desc(&rxq, i, 0, 0, 0, 0);
        make_batch(batch % 3);
        /* Each receive page's buffer and 16 bytes past it start as SENTINEL, a word at a time
         * (guest code is emulated here: touching whole pages made 1 MiB take minutes). */
        for (u32 i = 0; i < QSZ; i++) {
            volatile struct desc *d = D(&rxq) + i;
            u32 n = d->addr == PAGE(i) ? (d->len + 16 + 3) & ~3u : 0;
            span[i] = n > 0x1000 ? 0x1000 : n;
            for (u32 k = 0; k < span[i]; k += 4) *(volatile u32 *)(PAGE(i) + k) = SENTINEL * 0x01010101u;
        }
#ifdef JUMP_FOREVER
        if (batch == JUMP_FOREVER) {
            publish(QSZ + 1);
            stay_stopped(SPIN_MCYCLES);
            puts("RX QUEUE STOPPED after "); putdec(total); puts(" bytes\n");
            for (;;) __asm__ volatile("cli; hlt");
        }
#endif
        if (batch % JUMP_EVERY == JUMP_EVERY - 1) {
            /* The batch's entries plus 17 to 21: 26 to 31 entries ahead of the device's next
             * one in a queue of 16, for ~25 M TSC cycles (~10 ms here); then put right. */
            publish(QSZ + 1 + batch % 5);
            stay_stopped(25);
            jumps++;
        }
        publish(0);
        rxq.avail = (u16)(rxq.avail + nheads);
        take_batch(span);
    }
    puts("RX OK bytes="); putdec(total);
    puts(" fnv="); puthex(fnv, 8);
    puts(" refused="); putdec(bad_seen);
    puts(" jumps="); putdec(jumps);
    puts(" resets="); putdec(resets); puts("\n");
    probe_exit(0);
}
#elif defined(BENCH_MIB)
void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    u16 heads[BATCH];
    for (u16 i = 0; i < BATCH; i++) {
        for (u32 j = 0; j < 4096; j++) ((volatile u8 *)(TXBUF + 4096u * i))[j] = (u8)(i + j);
        set_desc(&txq, i, TXBUF + 4096u * i, 4096, 0, 0);
        heads[i] = i;
    }
    u32 chains = (u32)BENCH_MIB * 256;
    for (u32 sent = 0; sent < chains; sent += BATCH) {
        offer(&txq, heads, BATCH);
        for (u16 i = 0; i < BATCH; i++) next_used(&txq, i);
    }
    probe_exit(0);
}
#else
void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    send("one chain, one buffer\n");
    /* Three buffers in one chain, linked out of table order: 5 -> 2 -> 9. */
    copy(TXBUF + 0x100, "three ", 6);
    copy(TXBUF + 0x200, "buffers ", 8);
    copy(TXBUF + 0x300, "in one chain\n", 13);
    set_desc(&txq, 5, TXBUF + 0x100, 6, F_NEXT, 2);
    set_desc(&txq, 2, TXBUF + 0x200, 8, F_NEXT, 9);
    set_desc(&txq, 9, TXBUF + 0x300, 13, 0, 0);
    u16 h = 5;
    offer(&txq, &h, 1);
    if (next_used(&txq, 5) != 0) fail("chain used length");
    if (!(*reg(0x060) & 1)) fail("no used-ring interrupt status");
    *reg(0x064) = 1;
    if (*reg(0x060) & 1) fail("interrupt status not acknowledged");
    /* Two chains in one kick. */
    copy(TXBUF + 0x400, "first of two\n", 13);
    copy(TXBUF + 0x500, "second of two\n", 14);
    set_desc(&txq, 3, TXBUF + 0x400, 13, 0, 0);
    set_desc(&txq, 4, TXBUF + 0x500, 14, 0, 0);
    u16 both[2] = { 3, 4 };
    offer(&txq, both, 2);
    next_used(&txq, 3);
    next_used(&txq, 4);
    /* A buffer ending at the last byte of RAM (64 MiB). */
    copy(0x3fffff0u, "top of RAM here\n", 16);
    send_at(0x3fffff0u, 16);
    probe_exit(0);
}
#endif
