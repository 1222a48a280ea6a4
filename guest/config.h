/* Build-time limits and constants shared by the C code and entry.S (so: preprocessor definitions only). */
#ifndef FERRY_CONFIG_H
#define FERRY_CONFIG_H

#define MAX_CPUS 64
#define STACK_SIZE 0x10000 /* 64 KiB per vCPU, in .bss */
#define PAGE_SHIFT 12
#define PAGE_SIZE 4096

/* Port 0xF4: 0 = power off, N > 0 = panic with code N (see docs/guest-abi.md). */
#define POWER_PORT 0xF4
#define PANIC_CODE_GENERAL 1
#define PANIC_CODE_BAD_CPU_INDEX 2 /* written by entry.S: vCPU index >= MAX_CPUS, no stack for it */
#define PANIC_CODE_MAIN_RETURNED 3 /* written by entry.S: guest_main returned */

#endif
