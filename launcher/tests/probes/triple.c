/* Loads an empty IDT and raises an exception (divide error): the CPU cannot deliver it, nor
 * the double fault that follows, and triple-faults. (int3 is not used: this host's kvm_pvm
 * cannot emulate it and reports an emulation failure instead.) */
#include "probe.h"

void probe_main(struct hvm_start_info *si) {
    (void)si;
    struct __attribute__((packed)) { u16 limit; u32 base; } idt = { 0, 0 };
    puts("about to triple-fault\n");
    __asm__ volatile("lidt %0; xorl %%ecx, %%ecx; divl %%ecx" : : "m"(idt) : "eax", "ecx", "edx");
    puts("still alive?\n");
    probe_exit(1);
}
