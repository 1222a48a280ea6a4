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
#define PAGE_REPORTED 0x08  /* free head: the block was reported free to the host and not allocated since */
#define PAGE_ISOLATED 0x10  /* first page of a free block taken off the free lists while it is being reported */

/* page_meta.owner of an allocated head: who holds the block besides the workload (which uses PAGE_WORKLOAD). */
#define OWNER_NONE 0
#define OWNER_DRIVER 1  /* virtqueues and device buffers: never freed, not counted as allocator memory */
#define OWNER_BALLOON 2 /* inflated into the virtio balloon */
#define OWNER_HINT 3    /* held for a free page hint run until the device says DONE */
#define OWNER_CACHE 4   /* reclaimable "cache" pages (cache.c) */
#define OWNER_INFLIGHT 0x80 /* or-ed in while a virtqueue buffer names the block */

struct page_meta {
    /* Page-frame-number links. For a free head: the free list of its order. For an allocated head: owned by
     * whoever allocated the block (the workload, the balloon, ... keep their block lists here). For an isolated
     * block: `prev` is its free-list predecessor when it was isolated. PFN_NONE ends a list. */
    uint32_t next;
    uint32_t prev;
    /* Workload pages: pattern generation. Free and isolated heads: when the block became free (buddy_now_ms). */
    uint32_t generation;
    uint8_t order; /* block order (head pages only) */
    uint8_t flags;
    uint8_t owner; /* OWNER_* (allocated heads only) */
    uint8_t unused;
};

_Static_assert(sizeof(struct page_meta) == 16, "page_meta is 16 bytes");

/* Indexed by pfn, covering pfn 0 .. the highest RAM pfn (entries of holes are never touched). */
extern struct page_meta *page_meta;

/* Set to 1 by the allocator when a free block of at least the report order (buddy_set_report_order) appears that
 * has not been reported; the free page reporter clears it. Read inline by the idle loop, so it is a plain word. */
extern uint32_t buddy_report_kick;

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

/* Allocates a block for a driver and takes it out of the managed memory for good (it counts as reserved, like
 * the image and the metadata). Returns PFN_NONE if no block of that order is free. */
uint32_t buddy_reserve(unsigned order);

/* Splits an allocated block of order k > 0 into two allocated blocks of order k-1; returns the upper half's pfn. */
uint32_t buddy_split_allocated(uint32_t pfn);

unsigned buddy_block_order(uint32_t pfn); /* order of an allocated block, by its first pfn */
uint64_t buddy_free_pages(void);
void buddy_get_stats(struct buddy_stats *stats);
uint64_t buddy_meta_start(void); /* physical address range of the metadata array */
uint64_t buddy_meta_end(void);
uint64_t buddy_pfn_end(void); /* highest RAM pfn + 1 */
uint32_t buddy_now_ms(void);  /* milliseconds since buddy_init (wraps after 49 days; compare with differences) */

/* ---- free page reporting and the free page bitmap (buddy_report.c) ---- */

/* Free blocks of at least this order that appear unreported raise buddy_report_kick (default: never). */
void buddy_set_report_order(unsigned order);

/*
 * Takes up to `max` unreported free blocks of order >= min_order that have been free for at least delay_ms off
 * the free lists, largest orders first and in list order, and marks them isolated: they are neither free nor
 * allocatable until buddy_putback_isolated. Stores their pfns in `pfns` and returns how many. *wait_ms gets the
 * time until the next unreported block of such an order becomes due (UINT32_MAX if there is none).
 */
unsigned buddy_isolate_for_report(unsigned min_order, uint32_t delay_ms, uint32_t *pfns, unsigned max,
                                  uint32_t *wait_ms);

/* Returns isolated blocks (in the order buddy_isolate_for_report gave them) to the place in the free lists they
 * were taken from, so reporting does not change which pages later allocations get; `reported` marks them. */
void buddy_putback_isolated(const uint32_t *pfns, unsigned count, bool reported);

/* Under the allocator lock: sets bit i of `bitmap` (byte i/8, bit i%8) for every free page start_pfn + i,
 * i < page_count. start_pfn must be a multiple of 2^BUDDY_MAX_ORDER; the caller has zeroed the bitmap. */
void buddy_mark_free_window(uint64_t start_pfn, uint64_t page_count, uint8_t *bitmap);

#endif
