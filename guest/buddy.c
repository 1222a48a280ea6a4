/* The buddy allocator: per-order doubly linked free lists threaded through the page_meta array. */
#include "buddy.h"

#include "buddy_internal.h"
#include "config.h"
#include "io.h"
#include "lib.h"
#include "panic.h"
#include "spinlock.h"

/* The guest never manages [0, 1 MiB): boot-info page, GDT and page tables live there (docs/guest-abi.md). */
#define LOW_RESERVED_END 0x100000ull

struct page_meta *page_meta;
uint32_t buddy_report_kick;
struct buddy_state buddy;

static uint64_t align_up(uint64_t value, uint64_t alignment)
{
    return (value + alignment - 1) & ~(alignment - 1);
}

static uint64_t align_down(uint64_t value, uint64_t alignment)
{
    return value & ~(alignment - 1);
}

uint32_t buddy_now_ms(void)
{
    return (uint32_t)((rdtsc() - buddy.boot_tsc) / buddy.tsc_khz);
}

/* Links a free block into its order's list, at the head (after == PFN_NONE) or right after the free head
 * `after`, and makes its first page a free head that has been free since `since_ms`. */
void free_list_link(uint32_t pfn, unsigned order, uint32_t after, uint8_t extra_flags, uint32_t since_ms)
{
    struct page_meta *meta = &page_meta[pfn];
    uint32_t next = after == PFN_NONE ? buddy.free_head[order] : page_meta[after].next;
    meta->next = next;
    meta->prev = after;
    meta->generation = since_ms;
    meta->order = (uint8_t)order;
    meta->flags = (uint8_t)(PAGE_FREE_HEAD | extra_flags);
    meta->owner = OWNER_NONE;
    if (next != PFN_NONE)
        page_meta[next].prev = pfn;
    if (after == PFN_NONE)
        buddy.free_head[order] = pfn;
    else
        page_meta[after].next = pfn;
    buddy.free_blocks[order]++;
}

/* Unlinks a free head from its list and returns its entry to all-zero. */
void free_list_remove(uint32_t pfn, unsigned order)
{
    struct page_meta *meta = &page_meta[pfn];
    if (meta->prev != PFN_NONE)
        page_meta[meta->prev].next = meta->next;
    else
        buddy.free_head[order] = meta->next;
    if (meta->next != PFN_NONE)
        page_meta[meta->next].prev = meta->prev;
    meta->next = 0;
    meta->prev = 0;
    meta->generation = 0;
    meta->order = 0;
    meta->flags = 0;
    buddy.free_blocks[order]--;
}

/* Inserts a free block, first merging it with its buddy for as long as the buddy is a free block of equal order.
 * A merged block counts as reported only if both halves were, and as free since the later of the two. */
void free_block_coalescing(uint32_t pfn, unsigned order, bool reported, uint32_t since_ms)
{
    while (order < BUDDY_MAX_ORDER) {
        uint32_t buddy_pfn = pfn ^ (1u << order);
        if (buddy_pfn >= buddy.meta_entries)
            break;
        const struct page_meta *other = &page_meta[buddy_pfn];
        if ((other->flags & PAGE_FREE_HEAD) == 0 || other->order != order)
            break;
        reported = reported && (other->flags & PAGE_REPORTED) != 0;
        if ((int32_t)(other->generation - since_ms) > 0)
            since_ms = other->generation;
        free_list_remove(buddy_pfn, order);
        pfn &= ~(1u << order);
        order++;
    }
    free_list_link(pfn, order, PFN_NONE, reported ? PAGE_REPORTED : 0, since_ms);
    if (!reported && order >= buddy.report_kick_order && buddy_report_kick == 0)
        buddy_report_kick = 1;
}

/* Frees the pages [start_pfn, end_pfn) as the largest naturally aligned blocks, highest addresses first so that
 * the lowest blocks end up at the heads of the free lists (allocation then starts from low memory). */
static void free_pfn_range(uint64_t start_pfn, uint64_t end_pfn)
{
    uint64_t pfn = end_pfn;
    while (pfn > start_pfn) {
        /* Largest block ending at pfn: aligned to its size, not reaching below start_pfn. */
        unsigned order = BUDDY_MAX_ORDER;
        for (;;) {
            uint64_t size = 1ull << order;
            if ((pfn & (size - 1)) == 0 && pfn >= size && pfn - size >= start_pfn)
                break;
            order--;
        }
        pfn -= 1ull << order;
        free_block_coalescing((uint32_t)pfn, order, false, 0);
        buddy.total_pages += 1ull << order;
        buddy.free_pages += 1ull << order;
    }
}

struct interval {
    uint64_t start, end;
};

/* Frees the page-aligned part of [start, end) that lies outside every reserved interval (sorted by start). */
static void free_usable(uint64_t start, uint64_t end, const struct interval *reserved, unsigned reserved_count)
{
    for (unsigned i = 0; i <= reserved_count && start < end; i++) {
        uint64_t piece_end = i < reserved_count ? reserved[i].start : end;
        if (piece_end > end)
            piece_end = end;
        uint64_t piece_start = align_up(start, PAGE_SIZE);
        piece_end = align_down(piece_end, PAGE_SIZE);
        if (piece_start < piece_end)
            free_pfn_range(piece_start >> PAGE_SHIFT, piece_end >> PAGE_SHIFT);
        if (i < reserved_count && reserved[i].end > start)
            start = reserved[i].end;
    }
}

const char *buddy_init(const struct boot_info *info, uint64_t image_start, uint64_t image_end,
                       enum free_mode free_mode, uint8_t poison)
{
    buddy.free_mode = free_mode;
    buddy.poison = poison;
    buddy.report_kick_order = BUDDY_ORDER_COUNT;
    buddy.tsc_khz = info->tsc_khz;
    buddy.boot_tsc = rdtsc();
    for (unsigned order = 0; order < BUDDY_ORDER_COUNT; order++)
        buddy.free_head[order] = PFN_NONE;

    /* Usable ranges sorted by base (there are at most 8: insertion sort). */
    struct interval usable[BOOT_INFO_MAX_RAM_RANGES];
    unsigned usable_count = 0;
    uint64_t ram_end = 0;
    for (unsigned i = 0; i < info->ram_range_count; i++) {
        const struct boot_ram_range *range = &info->ram_ranges[i];
        if (range->size == 0)
            continue;
        if (range->base + range->size < range->base)
            return "boot info: RAM range wraps around";
        if (range->base + range->size > ram_end)
            ram_end = range->base + range->size;
        if (range->type != RAM_TYPE_USABLE)
            continue;
        unsigned at = usable_count++;
        while (at > 0 && usable[at - 1].start > range->base) {
            usable[at] = usable[at - 1];
            at--;
        }
        usable[at] = (struct interval){range->base, range->base + range->size};
    }

    buddy.meta_entries = align_up(ram_end, PAGE_SIZE) >> PAGE_SHIFT;
    if (buddy.meta_entries > PFN_NONE)
        return "RAM too large for 32-bit page frame numbers";
    uint64_t meta_bytes = align_up(buddy.meta_entries * sizeof(struct page_meta), PAGE_SIZE);

    /* The metadata goes into the first usable RAM after the image that can hold all of it. */
    for (unsigned i = 0; i < usable_count && buddy.meta_end == 0; i++) {
        uint64_t start = align_up(usable[i].start > image_end ? usable[i].start : image_end, PAGE_SIZE);
        if (start < usable[i].end && usable[i].end - start >= meta_bytes) {
            buddy.meta_start = start;
            buddy.meta_end = start + meta_bytes;
        }
    }
    if (buddy.meta_end == 0)
        return "no usable RAM range can hold the page metadata";
    page_meta = (struct page_meta *)buddy.meta_start;

    /* Sorted, non-overlapping by construction: the low area, the image, then the metadata above the image. */
    struct interval reserved[] = {
        {0, LOW_RESERVED_END},
        {image_start, image_end},
        {buddy.meta_start, buddy.meta_end},
    };
    if (image_start < LOW_RESERVED_END)
        return "guest image below 1 MiB";

    /* Highest range first, for the same reason as in free_pfn_range. */
    for (unsigned i = usable_count; i-- > 0;)
        free_usable(usable[i].start, usable[i].end, reserved, sizeof(reserved) / sizeof(reserved[0]));
    if (buddy.total_pages == 0)
        return "no usable RAM left for the allocator";
    return NULL;
}

uint32_t buddy_alloc(unsigned order)
{
    if (order > BUDDY_MAX_ORDER)
        return PFN_NONE;
    spin_lock(&buddy.lock);
    unsigned found = order;
    while (found <= BUDDY_MAX_ORDER && buddy.free_head[found] == PFN_NONE)
        found++;
    if (found > BUDDY_MAX_ORDER) {
        spin_unlock(&buddy.lock);
        return PFN_NONE;
    }
    uint32_t pfn = buddy.free_head[found];
    uint8_t reported = page_meta[pfn].flags & PAGE_REPORTED;
    uint32_t since_ms = page_meta[pfn].generation;
    free_list_remove(pfn, found);
    /* Split down to the requested order; the upper halves go back on the free lists. They keep the block's
     * reported mark: the host was told about all of it, and nobody has written them since. */
    while (found > order) {
        found--;
        free_list_link(pfn + (1u << found), found, PFN_NONE, reported, since_ms);
    }
    struct page_meta *meta = &page_meta[pfn];
    meta->next = PFN_NONE;
    meta->prev = PFN_NONE;
    meta->order = (uint8_t)order;
    meta->flags = PAGE_ALLOCATED;
    meta->owner = OWNER_NONE;
    buddy.free_pages -= 1ull << order;
    spin_unlock(&buddy.lock);
    return pfn;
}

void buddy_free(uint32_t pfn)
{
    if (pfn >= buddy.meta_entries)
        panic("buddy_free: pfn beyond RAM");
    struct page_meta *meta = &page_meta[pfn];
    if ((meta->flags & PAGE_ALLOCATED) == 0 || meta->order > BUDDY_MAX_ORDER)
        panic("buddy_free: not the first page of an allocated block");
    unsigned order = meta->order;

    /* The caller still owns the block here, so its contents can be written without the lock. */
    uint64_t bytes = (uint64_t)PAGE_SIZE << order;
    void *address = (void *)((uint64_t)pfn << PAGE_SHIFT);
    if (buddy.free_mode == FREE_MODE_ZERO)
        memset(address, 0, bytes);
    else if (buddy.free_mode == FREE_MODE_POISON)
        memset(address, buddy.poison, bytes);

    uint32_t now_ms = buddy_now_ms();
    spin_lock(&buddy.lock);
    meta->next = 0;
    meta->prev = 0;
    meta->order = 0;
    meta->flags = 0;
    meta->owner = OWNER_NONE;
    free_block_coalescing(pfn, order, false, now_ms);
    buddy.free_pages += 1ull << order;
    spin_unlock(&buddy.lock);
}

uint32_t buddy_reserve(unsigned order)
{
    uint32_t pfn = buddy_alloc(order);
    if (pfn == PFN_NONE)
        return PFN_NONE;
    spin_lock(&buddy.lock);
    page_meta[pfn].owner = OWNER_DRIVER;
    buddy.total_pages -= 1ull << order;
    spin_unlock(&buddy.lock);
    return pfn;
}

uint32_t buddy_split_allocated(uint32_t pfn)
{
    spin_lock(&buddy.lock);
    struct page_meta *lower = &page_meta[pfn];
    if ((lower->flags & PAGE_ALLOCATED) == 0 || lower->order == 0 || lower->order > BUDDY_MAX_ORDER)
        panic("buddy_split_allocated: not an allocated block of order > 0");
    unsigned order = lower->order - 1u;
    uint32_t upper_pfn = pfn + (1u << order);
    struct page_meta *upper = &page_meta[upper_pfn];
    lower->order = (uint8_t)order;
    upper->next = PFN_NONE;
    upper->prev = PFN_NONE;
    upper->order = (uint8_t)order;
    upper->flags = (uint8_t)(upper->flags | PAGE_ALLOCATED); /* keeps PAGE_WORKLOAD if the owner set it */
    upper->owner = lower->owner;
    spin_unlock(&buddy.lock);
    return upper_pfn;
}

unsigned buddy_block_order(uint32_t pfn)
{
    return page_meta[pfn].order;
}

uint64_t buddy_free_pages(void)
{
    spin_lock(&buddy.lock);
    uint64_t free_pages = buddy.free_pages;
    spin_unlock(&buddy.lock);
    return free_pages;
}

void buddy_get_stats(struct buddy_stats *stats)
{
    spin_lock(&buddy.lock);
    stats->total_pages = buddy.total_pages;
    stats->free_pages = buddy.free_pages;
    for (unsigned order = 0; order < BUDDY_ORDER_COUNT; order++)
        stats->free_blocks[order] = buddy.free_blocks[order];
    spin_unlock(&buddy.lock);
}

uint64_t buddy_meta_start(void)
{
    return buddy.meta_start;
}

uint64_t buddy_meta_end(void)
{
    return buddy.meta_end;
}

uint64_t buddy_pfn_end(void)
{
    return buddy.meta_entries;
}
