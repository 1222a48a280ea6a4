/* The allocator's side of free page reporting (isolate, put back) and of the free page bitmap (a window walk). */
#include "buddy.h"

#include "buddy_internal.h"
#include "lib.h"
#include "panic.h"

void buddy_set_report_order(unsigned order)
{
    spin_lock(&buddy.lock);
    buddy.report_kick_order = order;
    /* Blocks already free (all of memory, at boot) count as appearing now. */
    for (unsigned o = order; o < BUDDY_ORDER_COUNT; o++) {
        for (uint32_t pfn = buddy.free_head[o]; pfn != PFN_NONE; pfn = page_meta[pfn].next) {
            if ((page_meta[pfn].flags & PAGE_REPORTED) == 0) {
                buddy_report_kick = 1;
                break;
            }
        }
    }
    spin_unlock(&buddy.lock);
}

unsigned buddy_isolate_for_report(unsigned min_order, uint32_t delay_ms, uint32_t *pfns, unsigned max,
                                  uint32_t *wait_ms)
{
    uint32_t now_ms = buddy_now_ms();
    uint32_t wait = UINT32_MAX;
    unsigned count = 0;
    spin_lock(&buddy.lock);
    for (unsigned order = BUDDY_MAX_ORDER + 1; order-- > min_order;) {
        uint32_t pfn = buddy.free_head[order];
        uint32_t walk_prev = PFN_NONE; /* the list predecessor before anything in this walk was taken out */
        while (pfn != PFN_NONE) {
            struct page_meta *meta = &page_meta[pfn];
            uint32_t next = meta->next;
            if ((meta->flags & PAGE_REPORTED) == 0) {
                uint32_t age = now_ms - meta->generation;
                if (age < delay_ms) {
                    if (delay_ms - age < wait)
                        wait = delay_ms - age;
                } else if (count < max) {
                    /* Keep what putback needs: the predecessor (a free head, or an earlier block of this batch
                     * that will be back in the list by then), the order and the free time. */
                    uint32_t since_ms = meta->generation;
                    free_list_remove(pfn, order);
                    meta->prev = walk_prev;
                    meta->next = PFN_NONE;
                    meta->generation = since_ms;
                    meta->order = (uint8_t)order;
                    meta->flags = PAGE_ISOLATED;
                    buddy.free_pages -= 1ull << order;
                    pfns[count++] = pfn;
                } else {
                    wait = 0; /* due, but this batch is full */
                }
            }
            walk_prev = pfn;
            pfn = next;
        }
    }
    spin_unlock(&buddy.lock);
    *wait_ms = wait;
    return count;
}

void buddy_putback_isolated(const uint32_t *pfns, unsigned count, bool reported)
{
    spin_lock(&buddy.lock);
    for (unsigned i = 0; i < count; i++) {
        uint32_t pfn = pfns[i];
        struct page_meta *meta = &page_meta[pfn];
        if (meta->flags != PAGE_ISOLATED)
            panic("buddy_putback_isolated: block is not isolated");
        unsigned order = meta->order;
        uint32_t prev = meta->prev, since_ms = meta->generation;
        meta->next = 0;
        meta->prev = 0;
        meta->generation = 0;
        meta->order = 0;
        meta->flags = 0;
        buddy.free_pages += 1ull << order;
        uint32_t buddy_pfn = pfn ^ (1u << order);
        bool buddy_free = order < BUDDY_MAX_ORDER && buddy_pfn < buddy.meta_entries &&
                          (page_meta[buddy_pfn].flags & PAGE_FREE_HEAD) != 0 && page_meta[buddy_pfn].order == order;
        if (buddy_free) {
            free_block_coalescing(pfn, order, reported, since_ms); /* its buddy was freed meanwhile */
            continue;
        }
        /* Back where it was: after its old predecessor if that is still a free block of this order (the list
         * is then exactly as before), else at the head. */
        if (prev != PFN_NONE && (prev >= buddy.meta_entries || (page_meta[prev].flags & PAGE_FREE_HEAD) == 0 ||
                                 page_meta[prev].order != order))
            prev = PFN_NONE;
        free_list_link(pfn, order, prev, reported ? PAGE_REPORTED : 0, since_ms);
        if (!reported && order >= buddy.report_kick_order && buddy_report_kick == 0)
            buddy_report_kick = 1;
    }
    spin_unlock(&buddy.lock);
}

void buddy_mark_free_window(uint64_t start_pfn, uint64_t page_count, uint8_t *bitmap)
{
    uint64_t end_pfn = start_pfn + page_count;
    spin_lock(&buddy.lock);
    for (unsigned order = 0; order < BUDDY_ORDER_COUNT; order++) {
        for (uint32_t pfn = buddy.free_head[order]; pfn != PFN_NONE; pfn = page_meta[pfn].next) {
            /* Blocks are aligned to their size and windows to the largest block, so a block is wholly inside
             * or wholly outside the window. */
            if (pfn < start_pfn || pfn >= end_pfn)
                continue;
            uint64_t bit = pfn - start_pfn;
            uint64_t pages = 1ull << order;
            if (pages >= 8) {
                memset(bitmap + bit / 8, 0xff, pages / 8);
            } else {
                for (uint64_t i = 0; i < pages; i++)
                    bitmap[(bit + i) / 8] |= (uint8_t)(1u << ((bit + i) % 8));
            }
        }
    }
    spin_unlock(&buddy.lock);
}
