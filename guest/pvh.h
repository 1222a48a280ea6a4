/* PVH boot (QEMU microvm with -kernel): what the 32-bit stub in pvh_entry.S leaves behind, turned into the
 * boot-info page the rest of the guest reads under Ferry too. */
#ifndef FERRY_PVH_H
#define FERRY_PVH_H

#include "bootinfo.h"

/*
 * Called once, at CPL3 on vCPU 0's stack, by pvh_entry.S before it enters `_start` as vCPU 0. Reads
 * struct hvm_start_info (its memory map, command line and modules), the TSC frequency (command line
 * `tsc_khz=N`, else kvmclock as read by the stub, else CPUID) and the virtio-mmio devices (the command line's
 * `virtio_mmio.device=SIZE@ADDR:IRQ` words, else a probe of QEMU microvm's transports), and returns a boot-info
 * page in .bss. Panics (a JSON panic event, then port 0xF4) when there is no usable memory map or TSC frequency.
 */
const struct boot_info *pvh_boot_info(void);

#endif
