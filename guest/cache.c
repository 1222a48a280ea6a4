/* The cache pages: a list of allocated blocks (owner OWNER_CACHE), newest at the head, linked through page_meta. */
#include "cache.h"

#include "buddy.h"
#include "config.h"
#include "pattern.h"
#include "reclaim.h"

/* vCPU 0's alone (the shell and the balloon driver run there). */
static struct {
    uint32_t head, tail;
    uint64_t pages;
} cache = {PFN_NONE, PFN_NONE, 0};

const char *cache_add(uint64_t pages, uint32_t *generation_out)
{
    if (!reclaim_make_room(pages, RECLAIM_HINTS))
        return "out of memory for cache pages";
    uint32_t generation = pattern_next_generation();
    unsigned order = BUDDY_MAX_ORDER;
    while (pages > 0) {
        while ((1ull << order) > pages)
            order--;
        uint32_t pfn = buddy_alloc(order);
        if (pfn == PFN_NONE) {
            if (order == 0)
                return "out of memory for cache pages"; /* only vCPU 0 allocates: cannot happen */
            order--;
            continue;
        }
        uint64_t count = 1ull << order;
        write_pattern((uint64_t)pfn << PAGE_SHIFT, count << PAGE_SHIFT, generation);
        struct page_meta *meta = &page_meta[pfn];
        meta->owner = OWNER_CACHE;
        meta->prev = PFN_NONE;
        meta->next = cache.head;
        if (cache.head != PFN_NONE)
            page_meta[cache.head].prev = pfn;
        else
            cache.tail = pfn;
        cache.head = pfn;
        cache.pages += count;
        pages -= count;
    }
    *generation_out = generation;
    return NULL;
}

uint64_t cache_drop(uint64_t pages)
{
    uint64_t freed = 0;
    while (freed < pages && cache.tail != PFN_NONE) {
        uint32_t pfn = cache.tail;
        struct page_meta *meta = &page_meta[pfn];
        cache.tail = meta->prev;
        if (cache.tail != PFN_NONE)
            page_meta[cache.tail].next = PFN_NONE;
        else
            cache.head = PFN_NONE;
        uint64_t count = 1ull << meta->order;
        cache.pages -= count;
        freed += count;
        buddy_free(pfn);
    }
    return freed;
}

uint64_t cache_pages(void)
{
    return cache.pages;
}

void cache_init(void)
{
    static const struct reclaimer reclaimer = {"cache", RECLAIM_CACHE, cache_pages, cache_drop};
    reclaim_register(&reclaimer);
}
