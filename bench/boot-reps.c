/*
 * bench/boot-reps.c: a QEMU TCG plugin for `bench/boot.sh --reps`. It counts how many iterations
 * of REP-prefixed string instructions (rep movs, rep stos, ...) the guest executes, per
 * instruction site, and prints the counts each time the guest reaches a marked address.
 *
 * Why: under `-icount shift=0` QEMU ends a translation block after every iteration of a REP
 * string instruction, so icount charges one instruction (1 ns) per iteration: a `rep stosb` that
 * fills a 4 KiB page is 4096 ns of guest time, where a CPU with fast string operations (ERMS)
 * stores 16-64 bytes a cycle. The counts say how much of the boot's guest time is that.
 *
 * Arguments (QEMU: -plugin FILE,mark=0xADDR,mark=0xADDR -d plugin -D LOG):
 *   mark=0xADDR  a guest virtual address; each time an instruction there executes (at most 16
 *                times per mark) the plugin prints the counts so far:
 *                  reps mark ADDR HIT insns N movs N stos N other N bytes N instances N
 *                  reps site MARK-ADDR HIT SITE-ADDR KIND WIDTH ITERATIONS   (every site so far)
 *                  reps block MARK-ADDR HIT BLOCK-ADDR INSTRUCTIONS (every translation block
 *                  so far, by its first instruction's address: an instruction profile)
 *   at exit:     reps total insns N movs N stos N other N bytes N instances N
 * "insns" counts instructions of the translation blocks executed (an iteration is one); movs,
 * stos and other count iterations; instances counts REP instructions executed, each once.
 *
 * Built by bench/boot.sh with `gcc -shared -fPIC`. Debian ships QEMU with plugin support but
 * without its header, so the few functions and constants of QEMU's plugin API (version 1, as in
 * QEMU 7.2) used here are declared below; QEMU resolves them when it loads the plugin.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*udata_cb_t)(qemu_plugin_id_t id, void *userdata);
enum { PLUGIN_INLINE_ADD_U64 = 0 };
enum { PLUGIN_CB_NO_REGS = 0 };

extern void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
extern void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, udata_cb_t cb, void *userdata);
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
extern struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
extern void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, int op, void *ptr,
						     uint64_t imm);
extern const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
extern size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
extern uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
extern void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *insn, int op,
						       void *ptr, uint64_t imm);
extern void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn,
						   vcpu_udata_cb_t cb, int flags, void *userdata);
extern void qemu_plugin_outs(const char *string);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

enum kind { MOVS, STOS, OTHER, KINDS };
static const char *const kind_name[KINDS] = { "movs", "stos", "other" };

/* One REP string instruction site. icount runs one vCPU at a time, so plain adds do. */
struct site {
	uint64_t vaddr;
	uint64_t iters;
	uint8_t kind, width, used;
};

#define SITES 16384
static struct site sites[SITES];
/* instances: executions of REP instructions, each counted once however many iterations it runs
 * (what "one instruction = 1 ns" means for them); iterations: what icount counts. */
static uint64_t insns, iters[KINDS], bytes, instances;
static uint64_t last_vaddr, last_insns;

/* Instructions per translation block, keyed by its first instruction's address: a profile in
 * icount's own unit (a block is counted whole each time it runs). */
struct block {
	uint64_t vaddr;
	uint64_t insns;
};
#define BLOCKS (1u << 18)
static struct block blocks[BLOCKS];

#define MARKS 8
#define HITS 16
static uint64_t marks[MARKS];
static unsigned n_marks, hits[MARKS];

/* Decodes a REP string instruction: legacy prefixes (one of them F2/F3), an optional REX, then
 * one of the string opcodes. Returns 0 when `b` is not one. */
static int rep_string(const uint8_t *b, size_t n, uint8_t *kind, uint8_t *width)
{
	size_t i = 0;
	int rep = 0, opsize16 = 0, rexw = 0;

	for (; i < n; i++) {
		uint8_t c = b[i];
		if (c == 0xf2 || c == 0xf3)
			rep = 1;
		else if (c == 0x66)
			opsize16 = 1;
		else if (!(c == 0x67 || c == 0xf0 || c == 0x2e || c == 0x36 || c == 0x3e ||
			   c == 0x26 || c == 0x64 || c == 0x65))
			break;
	}
	if (i < n && (b[i] & 0xf0) == 0x40) {
		rexw = (b[i] & 0x08) != 0;
		i++;
	}
	if (!rep || i >= n)
		return 0;
	switch (b[i]) {
	case 0xa4: case 0xa5: *kind = MOVS; break;
	case 0xaa: case 0xab: *kind = STOS; break;
	case 0xa6: case 0xa7: case 0xae: case 0xaf: case 0xac: case 0xad:
	case 0x6c: case 0x6d: case 0x6e: case 0x6f: *kind = OTHER; break;
	default: return 0;
	}
	/* Even opcodes move bytes; odd ones words, dwords or (REX.W) qwords. */
	*width = (b[i] & 1) == 0 ? 1 : rexw ? 8 : opsize16 ? 2 : 4;
	return 1;
}

static struct site *site_for(uint64_t vaddr)
{
	uint64_t h = (vaddr * 0x9e3779b97f4a7c15ull) >> 50;

	for (unsigned k = 0; k < SITES; k++) {
		struct site *s = &sites[(h + k) % SITES];
		if (!s->used || s->vaddr == vaddr)
			return s;
	}
	return NULL;
}

static struct block *block_for(uint64_t vaddr)
{
	uint64_t h = (vaddr * 0x9e3779b97f4a7c15ull) >> 46;

	for (unsigned k = 0; k < BLOCKS; k++) {
		struct block *b = &blocks[(h + k) % BLOCKS];
		if (!b->vaddr || b->vaddr == vaddr)
			return b;
	}
	return NULL;
}

static void print_counts(const char *head)
{
	char line[256];

	snprintf(line, sizeof line,
		 "%s insns %llu movs %llu stos %llu other %llu bytes %llu instances %llu\n", head,
		 (unsigned long long)insns, (unsigned long long)iters[MOVS],
		 (unsigned long long)iters[STOS], (unsigned long long)iters[OTHER],
		 (unsigned long long)bytes, (unsigned long long)instances);
	qemu_plugin_outs(line);
}

/* One iteration of a REP instruction: under icount each is a translation block of its own, so
 * the block counter moved by exactly one since the previous iteration of the same instruction;
 * anything else (another instruction ran, an interrupt came) starts a new instance. */
static void at_rep(unsigned int vcpu, void *userdata)
{
	struct site *s = userdata;

	(void)vcpu;
	if (s->vaddr != last_vaddr || insns != last_insns + 1)
		instances++;
	last_vaddr = s->vaddr;
	last_insns = insns;
	s->iters++;
	iters[s->kind]++;
	bytes += s->width;
}

static void at_mark(unsigned int vcpu, void *userdata)
{
	unsigned m = (unsigned)(uintptr_t)userdata;
	char head[96], line[160];

	(void)vcpu;
	if (hits[m] >= HITS)
		return;
	hits[m]++;
	snprintf(head, sizeof head, "reps mark 0x%llx %u", (unsigned long long)marks[m], hits[m]);
	print_counts(head);
	for (unsigned k = 0; k < SITES; k++) {
		const struct site *s = &sites[k];
		if (!s->used || !s->iters)
			continue;
		snprintf(line, sizeof line, "reps site 0x%llx %u 0x%llx %s %u %llu\n",
			 (unsigned long long)marks[m], hits[m], (unsigned long long)s->vaddr,
			 kind_name[s->kind], s->width, (unsigned long long)s->iters);
		qemu_plugin_outs(line);
	}
	for (unsigned k = 0; k < BLOCKS; k++) {
		const struct block *b = &blocks[k];
		if (!b->insns)
			continue;
		snprintf(line, sizeof line, "reps block 0x%llx %u 0x%llx %llu\n",
			 (unsigned long long)marks[m], hits[m], (unsigned long long)b->vaddr,
			 (unsigned long long)b->insns);
		qemu_plugin_outs(line);
	}
}

static void translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	size_t n = qemu_plugin_tb_n_insns(tb);

	(void)id;
	qemu_plugin_register_vcpu_tb_exec_inline(tb, PLUGIN_INLINE_ADD_U64, &insns, n);
	if (n) {
		struct block *b = block_for(qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, 0)));
		if (b) {
			b->vaddr = qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, 0));
			qemu_plugin_register_vcpu_tb_exec_inline(tb, PLUGIN_INLINE_ADD_U64, &b->insns, n);
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
		uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
		uint8_t kind, width;

		for (unsigned m = 0; m < n_marks; m++)
			if (marks[m] == vaddr)
				qemu_plugin_register_vcpu_insn_exec_cb(insn, at_mark, PLUGIN_CB_NO_REGS,
								       (void *)(uintptr_t)m);
		if (!rep_string(qemu_plugin_insn_data(insn), qemu_plugin_insn_size(insn), &kind,
				&width))
			continue;
		struct site *s = site_for(vaddr);
		if (!s)
			continue; /* table full: the totals below still count it */
		s->used = 1;
		s->vaddr = vaddr;
		s->kind = kind;
		s->width = width;
		qemu_plugin_register_vcpu_insn_exec_cb(insn, at_rep, PLUGIN_CB_NO_REGS, s);
	}
}

static void at_exit(qemu_plugin_id_t id, void *userdata)
{
	(void)id;
	(void)userdata;
	print_counts("reps total");
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
							       const void *info, int argc,
							       char **argv)
{
	(void)info;
	for (int i = 0; i < argc; i++) {
		char *end;
		if (strncmp(argv[i], "mark=", 5) != 0 || n_marks == MARKS) {
			fprintf(stderr, "boot-reps: unknown or extra argument %s\n", argv[i]);
			return -1;
		}
		marks[n_marks++] = strtoull(argv[i] + 5, &end, 0);
		if (*end) {
			fprintf(stderr, "boot-reps: not an address: %s\n", argv[i]);
			return -1;
		}
	}
	qemu_plugin_register_vcpu_tb_trans_cb(id, translate);
	qemu_plugin_register_atexit_cb(id, at_exit, NULL);
	return 0;
}
