/* Drives the network device (virtio-net v2 at VNET: receiveq 0, transmitq 1) itself.
 * Every frame it sends starts with a 12-byte virtio_net_hdr_v1 of zeros; each receive buffer is
 * RXLEN bytes (header + frame).
 * default (ECHO=n): prints the MAC and MTU from the configuration space, sends three frames
 *   (60 bytes, 1518 bytes over three descriptors with the header apart, 14 bytes), then receives
 *   n frames from the host, checks each one's header, and sends each back unchanged.
 * HOSTILE: malformed transmit chains between marker frames (each must come back with used length
 *   0), then posts malformed and small receive buffers before a good one, says "R?" and checks
 *   which buffers the host's frames used.
 * NOREFILL=n: posts NRX receive buffers once and never again, says "R?", then sends n rounds of
 *   one malformed chain and one good frame while the host floods the receive side.
 * ARP: asks who has GW_IP (tell GUEST_IP) and waits for the ARP reply among the frames it
 *   receives (a real passt as the backend answers), prints it; with UDP_PORT, then sends a UDP
 *   datagram "ping from the guest" from GUEST_IP:40000 to GW_IP:UDP_PORT to that MAC and waits
 *   for the answer to port 40000, which it prints; exits 0.
 * BENCH_TX=n: sends n frames of 1514 bytes (header and frame in one buffer), BATCH per kick.
 * BENCH_RX=n: posts NRX receive buffers, receives n frames, reposting each buffer at once.
 * Exits 0 when the device behaved; otherwise prints "PROBE FAIL: why" and exits 98. */
#include "probe.h"

#define QSZ 16
#define RXQ 0x300000u
#define TXQ 0x304000u
#define RXBUF 0x310000u /* receive buffers, 4 KiB apart */
#define TXBUF 0x330000u /* transmit data, 4 KiB per slot */
#define F_NEXT 1
#define F_WRITE 2
#define HDR 12
#ifndef NRX
#define NRX 8
#endif
#ifndef RXLEN
#define RXLEN 1530
#endif

struct desc { u64 addr; u32 len; u16 flags, next; };
struct avail { u16 flags, idx, ring[QSZ]; };
struct used { u16 flags, idx; struct { u32 id, len; } ring[QSZ]; };
struct vq { u32 base, sel; u16 avail, used; };

static struct vq rxq = { RXQ, 0, 0, 0 }, txq = { TXQ, 1, 0, 0 };

static volatile u32 *reg(u32 off) { return (volatile u32 *)(VNET + off); }
static volatile u8 *cfg8(u32 off) { return (volatile u8 *)(VNET + 0x100 + off); }
static volatile struct desc *D(struct vq *q) { return (volatile struct desc *)q->base; }
static volatile struct avail *A(struct vq *q) { return (volatile struct avail *)(q->base + 0x1000); }
static volatile struct used *U(struct vq *q) { return (volatile struct used *)(q->base + 0x2000); }
static volatile u8 *B(u32 addr) { return (volatile u8 *)addr; }

static void fail(const char *why) { puts("PROBE FAIL: "); puts(why); puts("\n"); probe_exit(98); }

static void set_desc(struct vq *q, u16 i, u64 addr, u32 len, u16 flags, u16 next) {
    volatile struct desc *d = D(q) + i;
    d->addr = addr; d->len = len; d->flags = flags; d->next = next;
}

static void queue_setup(struct vq *q) {
    for (u32 i = 0; i < 0x3000; i++) B(q->base)[i] = 0;
    q->avail = q->used = 0;
    *reg(0x030) = q->sel;
    if (*reg(0x034) < QSZ) fail("queue too small");
    *reg(0x038) = QSZ;
    *reg(0x080) = q->base; *reg(0x084) = 0;
    *reg(0x090) = q->base + 0x1000; *reg(0x094) = 0;
    *reg(0x0a0) = q->base + 0x2000; *reg(0x0a4) = 0;
    *reg(0x044) = 1;
}

static void setup(void) {
    if (*reg(0x000) != 0x74726976 || *reg(0x004) != 2 || *reg(0x008) != 1) fail("no virtio-net v2");
    *reg(0x070) = 0;
    *reg(0x070) = 1;
    *reg(0x070) = 3;
    *reg(0x014) = 0; if (*reg(0x010) != ((1u << 3) | (1u << 5))) fail("features other than MTU and MAC");
    *reg(0x014) = 1; if (*reg(0x010) != 1) fail("no VERSION_1");
    *reg(0x024) = 1; *reg(0x020) = 1;
    *reg(0x024) = 0; *reg(0x020) = (1u << 3) | (1u << 5);
    *reg(0x070) = 3 | 8;
    if (!(*reg(0x070) & 8)) fail("FEATURES_OK refused");
    queue_setup(&rxq);
    queue_setup(&txq);
    *reg(0x070) = 1 | 2 | 4 | 8;
}

static void offer(struct vq *q, const u16 *heads, u32 n) {
    for (u32 i = 0; i < n; i++) A(q)->ring[(u16)(q->avail + i) % QSZ] = heads[i];
    barrier();
    q->avail = (u16)(q->avail + n);
    A(q)->idx = q->avail;
    barrier();
    *reg(0x050) = q->sel;
}

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

/* A frame of `n` bytes at `at`: broadcast, from the configured MAC, EtherType 0x88b5, then
 * `text` (and a pattern after it). */
static void make_frame(u32 at, u32 n, const char *text) {
    for (u32 i = 0; i < 6; i++) B(at)[i] = 0xff;
    for (u32 i = 0; i < 6; i++) B(at)[6 + i] = *cfg8(i);
    B(at)[12] = 0x88; B(at)[13] = 0xb5;
    u32 i = 14;
    for (; *text && i < n; i++) B(at)[i] = (u8)*text++;
    for (; i < n; i++) B(at)[i] = (u8)(i * 7);
}

/* Sends the chain at descriptor 0; it must come back with length 0. */
static void send_chain(u16 head) {
    offer(&txq, &head, 1);
    if (next_used(&txq, head) != 0) fail("transmit used length is not 0");
}

/* Sends header + `n` frame bytes at TXBUF + 0x1000 * slot as one buffer. */
static void send_slot(u32 slot, u32 n) {
    u32 at = TXBUF + 0x1000u * slot;
    for (u32 i = 0; i < HDR; i++) B(at)[i] = 0;
    set_desc(&txq, 0, at, HDR + n, 0, 0);
    send_chain(0);
}

static void send_text(const char *text) {
    u32 n = 0;
    while (text[n]) n++;
    make_frame(TXBUF + HDR, 14 + n, text);
    send_slot(0, 14 + n);
}

static void post_rx(u16 first, u16 n) {
    u16 heads[QSZ];
    for (u16 i = 0; i < n; i++) {
        set_desc(&rxq, first + i, RXBUF + 0x1000u * (first + i), RXLEN, F_WRITE, 0);
        heads[i] = first + i;
    }
    offer(&rxq, heads, n);
}

#ifndef BATCH
#define BATCH 1
#endif

#if defined(ARP)
static void put_ip(volatile u8 *at, u32 ip) {
    at[0] = (u8)(ip >> 24); at[1] = (u8)(ip >> 16); at[2] = (u8)(ip >> 8); at[3] = (u8)ip;
}

#ifdef UDP_PORT
/* Sends "ping from the guest" over UDP to GW_IP:UDP_PORT via `gw`; waits for the datagram to
 * port 40000 and prints its payload. */
static void udp(const u8 *gw) {
    static const char ping[] = "ping from the guest";
    u32 n = sizeof ping - 1, total = 20 + 8 + n;
    volatile u8 *f = B(TXBUF + 0x1000 + HDR);
    for (u32 i = 0; i < HDR; i++) B(TXBUF + 0x1000)[i] = 0;
    for (u32 i = 0; i < 6; i++) { f[i] = gw[i]; f[6 + i] = *cfg8(i); }
    f[12] = 0x08; f[13] = 0x00;
    volatile u8 *ip = f + 14;
    ip[0] = 0x45; ip[1] = 0; ip[2] = (u8)(total >> 8); ip[3] = (u8)total;
    ip[4] = 0; ip[5] = 1; ip[6] = 0x40; ip[7] = 0; ip[8] = 64; ip[9] = 17; ip[10] = 0; ip[11] = 0;
    put_ip(ip + 12, GUEST_IP);
    put_ip(ip + 16, GW_IP);
    u32 sum = 0;
    for (u32 i = 0; i < 20; i += 2) sum += (u32)ip[i] << 8 | ip[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    sum = ~sum & 0xffff;
    ip[10] = (u8)(sum >> 8); ip[11] = (u8)sum;
    volatile u8 *u = ip + 20;
    u[0] = 40000 >> 8; u[1] = 40000 & 0xff; u[2] = (u8)(UDP_PORT >> 8); u[3] = (u8)UDP_PORT;
    u[4] = (u8)((8 + n) >> 8); u[5] = (u8)(8 + n); u[6] = 0; u[7] = 0; /* no checksum */
    for (u32 i = 0; i < n; i++) u[8 + i] = (u8)ping[i];
    set_desc(&txq, 0, TXBUF + 0x1000, HDR + 14 + total, 0, 0);
    send_chain(0);
    for (u32 k = 0; k < 64; k++) {
        u32 id, len = wait_used(&rxq, &id);
        if (id >= NRX) fail("receive element outside the posted buffers");
        volatile u8 *r = B(RXBUF + 0x1000u * id + HDR);
        volatile u8 *rip = r + 14, *ru = rip + 20;
        if (len >= HDR + 14 + 28 && r[12] == 0x08 && r[13] == 0x00 && rip[0] == 0x45 &&
            rip[9] == 17 && ru[2] == (40000 >> 8) && ru[3] == (40000 & 0xff)) {
            u32 plen = ((u32)ru[4] << 8 | ru[5]) - 8;
            if (plen > len - HDR - 42) fail("UDP length");
            puts("UDP REPLY ");
            for (u32 i = 0; i < plen; i++) uart_putc(CONSOLE, (char)ru[8 + i]);
            puts("\n");
            return;
        }
        u16 h = (u16)id;
        offer(&rxq, &h, 1);
    }
    fail("no UDP reply in 64 frames");
}
#endif

void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    post_rx(0, NRX);
    volatile u8 *f = B(TXBUF + HDR);
    for (u32 i = 0; i < HDR; i++) B(TXBUF)[i] = 0;
    for (u32 i = 0; i < 6; i++) { f[i] = 0xff; f[6 + i] = *cfg8(i); f[22 + i] = *cfg8(i); f[32 + i] = 0; }
    f[12] = 0x08; f[13] = 0x06;                 /* ARP */
    f[14] = 0; f[15] = 1; f[16] = 0x08; f[17] = 0; /* Ethernet, IPv4 */
    f[18] = 6; f[19] = 4; f[20] = 0; f[21] = 1;   /* request */
    put_ip(f + 28, GUEST_IP);
    put_ip(f + 38, GW_IP);
    send_slot(0, 42);
    for (u32 n = 0; n < 64; n++) {
        u32 id, len = wait_used(&rxq, &id);
        if (id >= NRX) fail("receive element outside the posted buffers");
        volatile u8 *r = B(RXBUF + 0x1000u * id + HDR);
        u32 ip = (u32)r[28] << 24 | (u32)r[29] << 16 | (u32)r[30] << 8 | r[31];
        if (len >= HDR + 42 && r[12] == 0x08 && r[13] == 0x06 && r[21] == 2 && ip == GW_IP) {
            for (u32 i = 0; i < 6; i++)
                if (r[i] != *cfg8(i) || r[32 + i] != *cfg8(i)) fail("ARP reply not to our MAC");
            puts("ARP REPLY ");
            for (u32 i = 0; i < 6; i++) { puthex(r[22 + i], 2); if (i < 5) puts(":"); }
            puts("\n");
#ifdef UDP_PORT
            u8 gw[6];
            for (u32 i = 0; i < 6; i++) gw[i] = r[22 + i];
            u16 h = (u16)id;
            offer(&rxq, &h, 1);
            udp(gw);
#endif
            probe_exit(0);
        }
        u16 h = (u16)id;
        offer(&rxq, &h, 1);
    }
    fail("no ARP reply in 64 frames");
}
#elif defined(BENCH_TX)
void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    u16 heads[BATCH];
    for (u16 i = 0; i < BATCH; i++) {
        u32 at = TXBUF + 0x1000u * i;
        for (u32 j = 0; j < HDR; j++) B(at)[j] = 0;
        make_frame(at + HDR, 1514, "bench");
        set_desc(&txq, i, at, HDR + 1514, 0, 0);
        heads[i] = i;
    }
    for (u32 sent = 0; sent < BENCH_TX; sent += BATCH) {
        offer(&txq, heads, BATCH);
        for (u16 i = 0; i < BATCH; i++) next_used(&txq, i);
    }
    send_text("END");
    probe_exit(0);
}
#elif defined(BENCH_RX)
void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    post_rx(0, NRX);
    send_text("R?");
    for (u32 n = 0; n < BENCH_RX; n++) {
        u32 id, len = wait_used(&rxq, &id);
        if (id >= NRX || len != HDR + 1514) fail("bench receive element");
        u16 h = (u16)id;
        offer(&rxq, &h, 1);
    }
    send_text("END");
    probe_exit(0);
}
#elif defined(HOSTILE)
void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    u32 bad = TXBUF + 0x1000;
    for (u32 i = 0; i < HDR; i++) B(bad)[i] = 0;
    make_frame(bad + HDR, 2000, "bad");
    send_text("M1");
    set_desc(&txq, 0, bad, HDR + 60, F_NEXT, 0); send_chain(0);          /* a loop */
    set_desc(&txq, 0, bad, HDR + 60, F_WRITE, 0); send_chain(0);         /* device-writable */
    set_desc(&txq, 0, bad, HDR + 1519, 0, 0); send_chain(0);             /* one byte too long */
    set_desc(&txq, 0, 0x1000000, HDR + 60000, 0, 0); send_chain(0);      /* 60000-byte frame */
    set_desc(&txq, 0, bad, HDR, 0, 0); send_chain(0);                    /* header, no frame */
    set_desc(&txq, 0, bad, HDR + 13, 0, 0); send_chain(0);               /* shorter than Ethernet */
    set_desc(&txq, 0, bad, 8, 0, 0); send_chain(0);                      /* shorter than the header */
    set_desc(&txq, 0, 0xe0000000ull, HDR + 60, 0, 0); send_chain(0);    /* MMIO hole */
    set_desc(&txq, 0, 0x3fffff0ull, HDR + 60, 0, 0); send_chain(0);     /* across RAM's end */
    set_desc(&txq, 0, bad, HDR + 60, F_NEXT, QSZ + 2); send_chain(0);   /* next outside the queue */
    B(bad)[0] = 1; set_desc(&txq, 0, bad, HDR + 60, 0, 0); send_chain(0); /* checksum offload */
    B(bad)[0] = 0; B(bad)[1] = 1; send_chain(0);                          /* TSO */
    B(bad)[1] = 0;
    send_text("M2");

    /* Receive buffers: readable, too small, a loop, valid but 60 bytes, then a good one. */
    for (u32 i = 0; i < 5 * 0x1000; i++) B(RXBUF)[i] = 0;
    set_desc(&rxq, 0, RXBUF, RXLEN, 0, 0);
    set_desc(&rxq, 1, RXBUF + 0x1000, 25, F_WRITE, 0);
    set_desc(&rxq, 2, RXBUF + 0x2000, RXLEN, F_WRITE | F_NEXT, 2);
    set_desc(&rxq, 3, RXBUF + 0x3000, HDR + 60, F_WRITE, 0);
    set_desc(&rxq, 4, RXBUF + 0x4000, RXLEN, F_WRITE, 0);
    u16 five[5] = { 0, 1, 2, 3, 4 };
    offer(&rxq, five, 5);
    send_text("R?");
    for (u16 i = 0; i < 4; i++)
        if (next_used(&rxq, i) != 0) fail("a refused or small receive buffer has a length");
    u32 len = next_used(&rxq, 4);
    for (u32 i = 0; i < 4 * 0x1000; i++)
        if (B(RXBUF)[i]) fail("a refused receive buffer was written");
    if (len != HDR + 100) fail("the good buffer did not get the 100-byte frame");
    for (u32 i = 0; i < HDR; i++)
        if (B(RXBUF + 0x4000)[i] != (i == 10 ? 1 : 0)) fail("received header is not zero, num_buffers 1");
    /* Send the frame back so the host can compare it. */
    for (u32 i = 0; i < HDR + 100; i++) B(TXBUF)[i] = B(RXBUF + 0x4000)[i];
    B(TXBUF)[10] = 0;
    send_slot(0, 100);
    send_text("M3");
    probe_exit(0);
}
#elif defined(NOREFILL)
void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    post_rx(0, NRX);
    send_text("R?");
    u32 bad = TXBUF + 0x1000;
    for (u32 i = 0; i < HDR; i++) B(bad)[i] = 0;
    make_frame(bad + HDR, 100, "bad");
    make_frame(TXBUF + 0x2000 + HDR, 60, "round");
    for (u32 i = 0; i < HDR; i++) B(TXBUF + 0x2000)[i] = 0;
    for (u32 r = 0; r < NOREFILL; r++) {
        set_desc(&txq, 0, bad, HDR + 3000, 0, 0);
        send_chain(0);
        set_desc(&txq, 0, TXBUF + 0x2000, HDR + 60, 0, 0);
        send_chain(0);
    }
    /* The receive buffers were used once each, never more. */
    u32 id;
    for (u32 i = 0; i < NRX; i++)
        if (wait_used(&rxq, &id) < HDR + 14) fail("a receive buffer got less than a frame");
    if (U(&rxq)->idx != NRX) fail("more receive buffers used than posted");
    send_text("END");
    probe_exit(0);
}
#else
void probe_main(struct hvm_start_info *si) {
    (void)si;
    setup();
    puts("MAC ");
    for (u32 i = 0; i < 6; i++) { puthex(*cfg8(i), 2); if (i < 5) puts(":"); }
    puts(" MTU ");
    putdec(*cfg8(10) | (u32)*cfg8(11) << 8);
    puts("\n");
    post_rx(0, NRX);
    /* 60 bytes, header and frame in one buffer. */
    make_frame(TXBUF + HDR, 60, "hello from the guest");
    send_slot(0, 60);
    /* 1518 bytes over three descriptors, linked out of table order: 5 -> 2 -> 9. */
    for (u32 i = 0; i < HDR; i++) B(TXBUF + 0x1000)[i] = 0;
    make_frame(TXBUF + 0x2000, 1518, "largest frame");
    for (u32 i = 0; i < 1518 - 1000; i++) B(TXBUF + 0x4000)[i] = B(TXBUF + 0x2000 + 1000)[i];
    set_desc(&txq, 5, TXBUF + 0x1000, HDR, F_NEXT, 2);
    set_desc(&txq, 2, TXBUF + 0x2000, 1000, F_NEXT, 9);
    set_desc(&txq, 9, TXBUF + 0x4000, 518, 0, 0);
    send_chain(5);
    /* The smallest frame: an Ethernet header alone. */
    make_frame(TXBUF + HDR, 14, "");
    send_slot(0, 14);
    /* Receive ECHO frames, send each back. */
    for (u32 n = 0; n < ECHO; n++) {
        u32 id, len = wait_used(&rxq, &id);
        if (id >= NRX) fail("receive element outside the posted buffers");
        if (len < HDR + 14 || len > RXLEN) fail("receive length");
        u32 at = RXBUF + 0x1000u * id;
        for (u32 i = 0; i < HDR; i++)
            if (B(at)[i] != (i == 10 ? 1 : 0)) fail("received header is not zero, num_buffers 1");
        u32 out = TXBUF + 0x8000;
        for (u32 i = HDR; i < len; i++) B(out)[i] = B(at)[i];
        for (u32 i = 0; i < HDR; i++) B(out)[i] = 0;
        set_desc(&txq, 0, out, len, 0, 0);
        send_chain(0);
        u16 h = (u16)id;
        offer(&rxq, &h, 1);
    }
    probe_exit(0);
}
#endif
