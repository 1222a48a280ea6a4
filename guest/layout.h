/* Addresses of the guest image's parts, defined by linker.ld (and the stacks by entry.S). */
#ifndef FERRY_LAYOUT_H
#define FERRY_LAYOUT_H

extern char __image_start[]; /* first byte of the image (0x100000) */
extern char __data_start[];  /* first page of .data/.bss: everything the guest writes at run time */
extern char __stacks_start[]; /* MAX_CPUS stacks of STACK_SIZE bytes, the last part of .bss */
extern char __stacks_end[];
extern char _end[]; /* end of the image, page aligned */

#endif
