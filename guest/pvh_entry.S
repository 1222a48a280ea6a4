/*
 * The PVH entry (x86/HVM direct boot ABI, as QEMU's microvm uses it with -kernel): the Xen ELF note that names the
 * 32-bit physical entry, and the stub that goes from there to the state docs/guest-abi.md promises at CPL3.
 *
 * PVH starts us in 32-bit protected mode, paging off, CPL0, EBX = physical address of struct hvm_start_info. CPL0
 * code is instruction-emulated on our hosts (PVM), so the stub does only what needs CPL0 and nothing slow:
 * identity page tables (1 GiB pages when CPUID has pdpe1gb, else 2 MiB pages), kvmclock's TSC scale (the only
 * source of the TSC frequency that needs CPL0), then long mode and an iretq to CPL3 with IOPL=3. Everything else
 * (reading start_info and the memory map, the command line, the devices) is C at CPL3: pvh.c. From `_start` on,
 * the code is the same as under Ferry.
 *
 * Ferry never runs any of this: it enters at the ELF e_entry (`_start`, entry.S), and ignores the PT_NOTE.
 */
#include "config.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define HVM_START_MAGIC 0x336ec578

/* struct hvm_start_info and struct hvm_memmap_table_entry (xen/include/public/arch-x86/hvm/start_info.h). */
#define SI_MAGIC 0
#define SI_VERSION 4
#define SI_MEMMAP_PADDR 40
#define SI_MEMMAP_ENTRIES 48
#define MM_ADDR 0
#define MM_SIZE 8
#define MM_TYPE 16
#define MM_ENTRY_SIZE 24
#define MM_TYPE_RAM 1
#define MM_MAX_SCANNED 128

/* Page-table entry bits: present, writable, user, accessed, dirty, page size; PWT|PCD = uncached. */
#define PTE_TABLE 0x27  /* P | RW | US | A (the D bit means nothing in a non-leaf entry) */
#define PTE_LARGE 0xe7  /* P | RW | US | A | D | PS */
#define PTE_LARGE_UC 0xff /* the same with PWT | PCD */

#define CR0_BITS 0x80050033 /* PE | MP | ET | NE | WP | AM | PG, as Ferry sets it */
#define CR4_BITS 0x620      /* PAE | OSFXSR | OSXMMEXCPT */
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define KVM_FEATURE_CLOCKSOURCE2 (1 << 3)

#define SEL_CODE0 0x08
#define SEL_DATA0 0x10
#define SEL_CODE3 0x1b
#define SEL_DATA3 0x23

/* Without 1 GiB pages the stub maps at most this many GiB with 2 MiB pages (one page directory each, in .bss,
 * untouched otherwise); pvh.c clamps RAM to what is mapped. */
#define FALLBACK_MAX_GIB 64
/* With 2 MiB pages, the device window is the top 32 MiB below 4 GiB: QEMU microvm's virtio-mmio transports
 * (0xfeb00000), IOAPIC (0xfec00000) and local APIC (0xfee00000). With 1 GiB pages it is all of [3 GiB, 4 GiB). */
#define WINDOW_2M_PAGES 16
#define PDPT_MAX_GIB 512

/* ---- the ELF note (alignment 4: QEMU computes the padding after the name from the segment's p_align) ---- */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                         /* namesz: "Xen\0" */
    .long 8                         /* descsz: QEMU reads a size_t, as Linux writes it (a .quad) */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .quad pvh_start32

/* ---- 32-bit entry, CPL0 ---- */
    .section .text.pvh, "ax"
    .code32
    .globl pvh_start32
    .type pvh_start32, @function
pvh_start32:
    cli
    cld
    movl %ebx, pvh_start_info
    movl $0, pvh_start_info + 4

    /* Highest end of a RAM entry in the memory map (EDX:EAX scratch, EBP:EDI = top), and whether RAM reaches
     * into the 3-4 GiB window (then that GiB is mapped write-back; else uncached, it only holds devices). */
    xorl %edi, %edi
    xorl %ebp, %ebp
    movl $0, pvh_gib3_ram
    cmpl $HVM_START_MAGIC, SI_MAGIC(%ebx)
    jne .Lscan_done
    cmpl $1, SI_VERSION(%ebx)
    jb .Lscan_done
    cmpl $0, SI_MEMMAP_PADDR + 4(%ebx)
    jne .Lscan_done
    movl SI_MEMMAP_PADDR(%ebx), %esi
    movl SI_MEMMAP_ENTRIES(%ebx), %ecx
    cmpl $MM_MAX_SCANNED, %ecx
    jbe .Lscan_next
    movl $MM_MAX_SCANNED, %ecx
.Lscan_next:
    testl %ecx, %ecx
    jz .Lscan_done
    cmpl $MM_TYPE_RAM, MM_TYPE(%esi)
    jne .Lscan_skip
    movl MM_ADDR(%esi), %eax
    movl MM_ADDR + 4(%esi), %edx
    addl MM_SIZE(%esi), %eax
    adcl MM_SIZE + 4(%esi), %edx    /* EDX:EAX = end */
    jc .Lscan_skip                  /* wraps: nonsense, ignore */
    /* RAM in [3 GiB, 4 GiB)? start < 4 GiB and end > 3 GiB. */
    cmpl $0, MM_ADDR + 4(%esi)
    jne 1f
    testl %edx, %edx
    jnz 2f
    cmpl $0xc0000000, %eax
    jbe 1f
2:  movl $1, pvh_gib3_ram
1:  cmpl %ebp, %edx                 /* end > top? */
    jb .Lscan_skip
    ja 3f
    cmpl %edi, %eax
    jbe .Lscan_skip
3:  movl %eax, %edi
    movl %edx, %ebp
.Lscan_skip:
    addl $MM_ENTRY_SIZE, %esi
    decl %ecx
    jmp .Lscan_next
.Lscan_done:

    movl %edi, pvh_ram_top
    movl %ebp, pvh_ram_top + 4

    /* CPUID.80000001H:EDX[26]: 1 GiB pages. (Under PVM, CPUID at CPL0 is the VM's CPUID; at CPL3 it runs
     * natively and shows the host's, which may differ: here it has pdpe1gb and the VM does not.) */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb .Lmap_2m
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 26), %edx
    jz .Lmap_2m

    /* 1 GiB pages: PDPT[g] for g < max(ceil(top / 1 GiB), 4), at most one PDPT's 512; GiB 3 (the device
     * window) uncached unless RAM reaches into it. */
    movl pvh_ram_top + 4, %edx
    movl pvh_ram_top, %eax
    movl $PDPT_MAX_GIB, %ebp
    cmpl $(PDPT_MAX_GIB >> 2), %edx
    jae 4f
    movl %eax, %ebp
    shrl $30, %ebp
    shll $2, %edx
    orl %edx, %ebp                  /* whole GiBs below top */
    testl $0x3fffffff, %eax
    jz 4f
    incl %ebp
4:  cmpl $4, %ebp
    jae 5f
    movl $4, %ebp
5:  movl %ebp, %eax
    shrl $2, %eax
    movl %eax, pvh_map_end + 4
    movl %ebp, %eax
    shll $30, %eax
    movl %eax, pvh_map_end          /* mapped from 0: EBP GiBs */
    movl $0xc0000000, pvh_window_start
    movl $1, pvh_map_1g
    xorl %ecx, %ecx                 /* g */
    movl $pvh_pdpt, %edi
.Lmap_1g_next:
    movl %ecx, %eax
    shll $30, %eax
    movl %ecx, %edx
    shrl $2, %edx                   /* EDX:EAX = g << 30 */
    orl $PTE_LARGE, %eax
    cmpl $3, %ecx
    jne 6f
    cmpl $0, pvh_gib3_ram
    jne 6f
    orl $PTE_LARGE_UC, %eax
6:  movl %eax, (%edi)
    movl %edx, 4(%edi)
    addl $8, %edi
    incl %ecx
    cmpl %ebp, %ecx
    jb .Lmap_1g_next
    jmp .Lmap_done

    /* 2 MiB pages, in FALLBACK_MAX_GIB page directories that follow each other, so PDE i maps i << 21:
     * RAM up to its top (at most FALLBACK_MAX_GIB), and the top WINDOW_2M_PAGES of the 4 GiB (uncached). */
.Lmap_2m:
    movl pvh_ram_top + 4, %edx
    movl pvh_ram_top, %eax
    movl $(FALLBACK_MAX_GIB * 512), %ebp
    cmpl $(FALLBACK_MAX_GIB >> 2), %edx
    jae 7f
    movl %eax, %ebp
    shrl $21, %ebp
    shll $11, %edx
    orl %edx, %ebp                  /* whole 2 MiB pages below top */
    testl $0x1fffff, %eax
    jz 7f
    incl %ebp
7:  testl %ebp, %ebp
    jnz 8f
    movl $512, %ebp                 /* no memory map: the first GiB, so pvh.c can report it */
8:  movl %ebp, %eax
    shrl $11, %eax
    movl %eax, pvh_map_end + 4
    movl %ebp, %eax
    shll $21, %eax
    movl %eax, pvh_map_end
    movl $(0x100000000 - WINDOW_2M_PAGES * 0x200000), pvh_window_start
    movl $0, pvh_map_1g
    /* PDEs 0 .. EBP-1: write-back. Four per round (each emulated instruction costs about a microsecond): the
     * count is rounded up to 4, and the page directories are whole pages, so the extra PDEs stay inside them
     * (pvh_map_end says what is mapped). */
    movl %ebp, %ecx
    addl $3, %ecx
    shrl $2, %ecx
    movl $PTE_LARGE, %eax
    xorl %edx, %edx
    movl $pvh_pd, %edi
9:  movl %eax, (%edi)
    movl %edx, 4(%edi)
    addl $0x200000, %eax
    adcl $0, %edx
    movl %eax, 8(%edi)
    movl %edx, 12(%edi)
    addl $0x200000, %eax
    adcl $0, %edx
    movl %eax, 16(%edi)
    movl %edx, 20(%edi)
    addl $0x200000, %eax
    adcl $0, %edx
    movl %eax, 24(%edi)
    movl %edx, 28(%edi)
    addl $0x200000, %eax
    adcl $0, %edx
    addl $32, %edi
    decl %ecx
    jnz 9b
    /* The window: the last WINDOW_2M_PAGES PDEs of GiB 3, uncached. */
    movl $(0x100000000 - WINDOW_2M_PAGES * 0x200000 + PTE_LARGE_UC), %eax
    movl $(pvh_pd + (2048 - WINDOW_2M_PAGES) * 8), %edi
    movl $WINDOW_2M_PAGES, %ecx
10: movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $0x200000, %eax
    addl $8, %edi
    decl %ecx
    jnz 10b
    /* PDPT entries: the page directories in use, GiB 3's always. */
    addl $511, %ebp
    shrl $9, %ebp                   /* page directories holding RAM */
    xorl %ecx, %ecx
11: cmpl %ebp, %ecx
    jb 12f
    cmpl $3, %ecx
    jne 13f
12: movl %ecx, %eax
    shll $12, %eax
    addl $(pvh_pd + PTE_TABLE), %eax
    movl %eax, pvh_pdpt(,%ecx,8)
    movl $0, pvh_pdpt + 4(,%ecx,8)
13: incl %ecx
    cmpl $FALLBACK_MAX_GIB, %ecx
    jb 11b

.Lmap_done:
    movl $pvh_pdpt, %eax
    orl $PTE_TABLE, %eax
    movl %eax, pvh_pml4
    movl $0, pvh_pml4 + 4

    /* kvmclock: the TSC's scale against nanoseconds gives its frequency (pvh.c computes it). Enable the clock
     * on a 32-byte structure in .bss, wait for the hypervisor to fill it (it does on the way back into the
     * guest), disable it again. */
    movl $0x40000000, %eax
    cpuid
    cmpl $0x4b4d564b, %ebx          /* "KVMKVMKVM\0\0\0" */
    jne .Lclock_done
    cmpl $0x564b4d56, %ecx
    jne .Lclock_done
    cmpl $0x0000004d, %edx
    jne .Lclock_done
    movl $0x40000001, %eax
    cpuid
    testl $KVM_FEATURE_CLOCKSOURCE2, %eax
    jz .Lclock_done
    movl $MSR_KVM_SYSTEM_TIME_NEW, %ecx
    movl $pvh_pvclock, %eax
    orl $1, %eax
    xorl %edx, %edx
    wrmsr
    movl $1000, %esi
20: movl pvh_pvclock, %eax          /* version: non-zero and even once written */
    testl %eax, %eax
    jz 21f
    testl $1, %eax
    jz 22f
21: pause
    decl %esi
    jnz 20b
22: xorl %eax, %eax
    xorl %edx, %edx
    wrmsr                           /* ECX is still the MSR */
    movl $1, pvh_pvclock_used
.Lclock_done:

    /* Long mode: PAE, CR3, EFER.LME, then paging; a far jump loads the 64-bit code segment. */
    movl $pvh_pml4, %eax
    movl %eax, %cr3
    movl $CR4_BITS, %eax
    movl %eax, %cr4
    movl $MSR_EFER, %ecx
    movl $EFER_LME, %eax
    xorl %edx, %edx
    wrmsr
    lgdt pvh_gdt_pointer
    movl $CR0_BITS, %eax
    movl %eax, %cr0
    ljmp $SEL_CODE0, $pvh_start64
    .size pvh_start32, . - pvh_start32

/* ---- 64-bit, CPL0: segments, then iretq to CPL3 with IOPL=3 on vCPU 0's stack ---- */
    .code64
pvh_start64:
    movl $SEL_DATA3, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movl $SEL_DATA0, %eax
    movw %ax, %ss
    leaq __stacks_start + STACK_SIZE, %rsp
    movq %rsp, %rax
    pushq $SEL_DATA3                /* SS */
    pushq %rax                      /* RSP: the top of vCPU 0's stack again */
    pushq $0x3002                   /* RFLAGS: IOPL=3, IF=0 */
    pushq $SEL_CODE3                /* CS */
    pushq $pvh_user_entry           /* RIP */
    iretq

/* ---- 64-bit, CPL3: build the boot-info page from start_info, then the Ferry entry as vCPU 0 ---- */
pvh_user_entry:
    call pvh_boot_info              /* RSP is 16-byte aligned here, as the ABI wants before a call */
    movq %rax, %rdi
    xorl %esi, %esi
    jmp _start

/* ---- the GDT: Ferry's selectors (0x1b code, 0x23 data, DPL3) plus DPL0 ones for the stub. Accessed bits preset
 * so loading a segment never writes it. ---- */
    .section .rodata.pvh, "a"
    .balign 16
pvh_gdt:
    .quad 0
    .quad 0x00af9b000000ffff        /* 0x08: 64-bit code, DPL0 */
    .quad 0x00cf93000000ffff        /* 0x10: data, DPL0 */
    .quad 0x00affb000000ffff        /* 0x18: 64-bit code, DPL3 */
    .quad 0x00cff3000000ffff        /* 0x20: data, DPL3 */
pvh_gdt_end:
    .balign 4
    .word 0
pvh_gdt_pointer:                    /* lgdt in 32-bit mode: limit, 32-bit base */
    .word pvh_gdt_end - pvh_gdt - 1
    .long pvh_gdt

/* ---- the stub's memory: in .bss, so part of the image (which the allocator never hands out); under Ferry
 * these pages are never touched. ---- */
    .section .bss.pvh, "aw", @nobits
    .balign 4096
pvh_pml4:
    .skip 4096
pvh_pdpt:
    .skip 4096
pvh_pd:
    .skip 4096 * FALLBACK_MAX_GIB
    .balign 64
    .globl pvh_pvclock
pvh_pvclock:                        /* struct pvclock_vcpu_time_info */
    .skip 32
    .globl pvh_start_info, pvh_ram_top, pvh_map_end, pvh_window_start, pvh_map_1g, pvh_gib3_ram, pvh_pvclock_used
pvh_start_info:
    .skip 8
pvh_ram_top:                        /* highest end of a RAM entry in the memory map */
    .skip 8
pvh_map_end:                        /* [0, pvh_map_end) is identity-mapped */
    .skip 8
pvh_window_start:                   /* and so is [pvh_window_start, 4 GiB) */
    .skip 4
pvh_map_1g:                         /* 1: 1 GiB pages, 0: 2 MiB pages */
    .skip 4
pvh_gib3_ram:                       /* RAM reaches into [3 GiB, 4 GiB): mapped write-back */
    .skip 4
pvh_pvclock_used:                   /* 1: pvh_pvclock was filled by the hypervisor */
    .skip 4
