/* The 64-bit entry point of every vCPU: picks this vCPU's stack and calls guest_main(boot_info, cpu_index). */
#include "config.h"

    .section .text.entry, "ax"
    .globl _start
    .type _start, @function
/* In: RDI = boot-info GPA, RSI = vCPU index, RSP = 0 (docs/guest-abi.md). CPL3, no IDT: nothing may fault. */
_start:
    cmpq $MAX_CPUS, %rsi
    jae no_stack_for_cpu
    /* RSP = top of stack[index] = __stacks_start + (index + 1) * STACK_SIZE, 16-byte aligned as the ABI wants
     * before a call. */
    leaq 1(%rsi), %rax
    shlq $16, %rax
    .if STACK_SIZE != 0x10000
    .error "the shift above assumes STACK_SIZE = 64 KiB"
    .endif
    leaq __stacks_start(%rax), %rsp
    xorl %ebp, %ebp
    call guest_main
    movl $PANIC_CODE_MAIN_RETURNED, %eax
    jmp power_port_exit

no_stack_for_cpu:
    movl $PANIC_CODE_BAD_CPU_INDEX, %eax
power_port_exit:
    movw $POWER_PORT, %dx
    outl %eax, %dx
1:  pause
    jmp 1b
    .size _start, . - _start

    /* The stacks: the last part of .bss (see linker.ld). A stack page is written only if its vCPU uses it. */
    .section .stacks, "aw", @nobits
    .balign 4096
    .globl cpu_stacks
cpu_stacks:
    .skip MAX_CPUS * STACK_SIZE
