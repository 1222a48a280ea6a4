/*
 * The buddy page allocator (orders 0..10, 4 KiB .. 4 MiB) over the usable RAM ranges of the boot-info page.
 *
 * Its metadata is a separate per-page array (like Linux's mem_map), never the free pages themselves: allocating
 * and freeing write only these entries (and, with free_mode=zero|poison, the freed page), so a page that was never
 * used stays never written and the host can skip it when migrating.
 */
#ifndef FERRY_BUDDY_H
#define FERRY_BUDDY_H

#include <stdbool.h>
#include <stdint.h>

#include "bootinfo.h"

#define BUDDY_MAX_ORDER 10
#define BUDDY_ORDER_COUNT (BUDDY_MAX_ORDER + 1)
#define PFN_NONE UINT32_MAX

/* page_meta.flags. All-zero metadata means "not free, not allocated": memory reads as zero at boot, so only the
 * entries that matter are ever written. */
#define PAGE_FREE_HEAD 0x01 /* first page of a free block of `order`, linked in that order's free list */
#define PAGE_ALLOCATED 0x02 /* first page of an allocated block of `order` */
#define PAGE_WORKLOAD 0x04  /* the page holds the workload pattern of `generation` (workload.c) */

struct page_meta {
    /* Page-frame-number links. For a free head: the free list of its order. For an allocated head: owned by
     * whoever allocated the block (the workload keeps its block lists here). PFN_NONE ends a list. */
    uint32_t next;
    uint32_t prev;
    uint32_t generation; /* workload pattern generation (PAGE_WORKLOAD pages only) */
    uint8_t order;       /* block order (head pages only) */
    uint8_t flags;
    uint16_t unused;
};

_Static_assert(sizeof(struct page_meta) == 16, "page_meta is 16 bytes");

/* Indexed by pfn, covering pfn 0 .. the highest RAM pfn (entries of holes are never touched). */
extern struct page_meta *page_meta;

struct buddy_stats {
    uint64_t total_pages; /* pages the allocator manages */
    uint64_t free_pages;
    uint64_t free_blocks[BUDDY_ORDER_COUNT]; /* number of free blocks per order */
};

/*
 * Places the metadata array in the first usable RAM at or after image_end, then frees every usable page except
 * [0, 1 MiB), the image [image_start, image_end) and the metadata. Returns NULL or an error message.
 */
const char *buddy_init(const struct boot_info *info, uint64_t image_start, uint64_t image_end,
                       enum free_mode free_mode, uint8_t poison);

/* Allocates a block of 2^order pages; returns its first pfn, or PFN_NONE if no block of that order is free. */
uint32_t buddy_alloc(unsigned order);

/* Frees an allocated block (given by its first pfn); applies the free mode and coalesces with its buddies. */
void buddy_free(uint32_t pfn);

/* Splits an allocated block of order k > 0 into two allocated blocks of order k-1; returns the upper half's pfn. */
uint32_t buddy_split_allocated(uint32_t pfn);

unsigned buddy_block_order(uint32_t pfn); /* order of an allocated block, by its first pfn */
uint64_t buddy_free_pages(void);
void buddy_get_stats(struct buddy_stats *stats);
uint64_t buddy_meta_start(void); /* physical address range of the metadata array */
uint64_t buddy_meta_end(void);

#endif
