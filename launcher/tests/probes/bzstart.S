/* Protected-mode part of the probe bzImage (see bz.c): what a bzImage's boot loader loads at
 * `code32_start`. Like a real kernel it has two entries:
 *   +0x000 startup_32: the 32-bit boot protocol entry. The launcher must never use it; if it
 *          jumps here anyway (the wrong offset), these bytes run the same in 32- and 64-bit
 *          mode: they print "BZ: entered at startup_32" on the console and stop the VM
 *          through the exit port without an X line (the launcher then reports 122).
 *   +0x200 startup_64: the 64-bit entry (xloadflags XLF_KERNEL_64). Long mode, identity
 *          mapped, %rsi = boot_params. */
    .section .text.startup_32, "ax"
    .code32
    .globl startup_32
startup_32:
    cli
    movl $wrong_entry, %esi         /* BE imm32: same bytes and effect in both modes */
1:  movb (%esi), %al                /* 64-bit mode reads this as (%rsi), zero-extended esi */
    testb %al, %al
    jz 2f
    movw $CONSOLE, %dx
    outb %al, %dx
    addl $1, %esi                   /* not incl: 0x46 is a REX prefix in 64-bit mode */
    jmp 1b
2:  movb $0xee, %al
    outb %al, $EXIT_PORT
3:  hlt
    jmp 3b
wrong_entry:
    .asciz "BZ: entered at startup_32\n"

    .section .text.startup_64, "ax"
    .code64
    .globl startup_64
startup_64:
    cli
    movq %rsi, %rdi                 /* bz_main(boot_params, runtime address of startup_64) */
    leaq startup_64(%rip), %rsi
    leaq stack_top(%rip), %rsp
    call bz_main
4:  hlt
    jmp 4b

    .section .bss.stack, "aw", @nobits
    .balign 16
    .space 16384
stack_top:
