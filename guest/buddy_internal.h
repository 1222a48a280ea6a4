/* The allocator's private state and free-list primitives, shared by buddy.c and buddy_report.c only. */
#ifndef FERRY_BUDDY_INTERNAL_H
#define FERRY_BUDDY_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "buddy.h"
#include "spinlock.h"

struct buddy_state {
    struct spinlock lock;
    uint32_t free_head[BUDDY_ORDER_COUNT];
    uint64_t free_blocks[BUDDY_ORDER_COUNT];
    uint64_t free_pages;
    uint64_t total_pages;
    uint64_t meta_entries; /* highest RAM pfn + 1 */
    uint64_t meta_start, meta_end;
    enum free_mode free_mode;
    uint8_t poison;
    unsigned report_kick_order; /* > BUDDY_MAX_ORDER: never kick */
    uint64_t boot_tsc, tsc_khz;
};

extern struct buddy_state buddy;

/* All of these run with buddy.lock held. */
void free_list_link(uint32_t pfn, unsigned order, uint32_t after, uint8_t extra_flags, uint32_t since_ms);
void free_list_remove(uint32_t pfn, unsigned order);
void free_block_coalescing(uint32_t pfn, unsigned order, bool reported, uint32_t since_ms);

#endif
