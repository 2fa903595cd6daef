/* PVH entry of the probe guests: 32-bit protected mode, paging off, %ebx = hvm_start_info. */
    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    cli
    movl $0x90000, %esp
    pushl %ebx
    call probe_main
1:  hlt
    jmp 1b
