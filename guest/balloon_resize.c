/* Inflate and deflate: PFN arrays (standard) or page bitmaps (FERRY_F_PAGE_BITMAP), and deflate on OOM. */
#include <stddef.h>

#include "balloon_internal.h"
#include "buddy.h"
#include "config.h"
#include "lib.h"

/* The first `count` pages of a list linked through page_meta. */
#define for_each_listed(pfn, first, count, i)                                                                  \
    for (uint64_t i = 0, pfn = (first); i < (count) && pfn != PFN_NONE; i++, pfn = page_meta[pfn].next)

static void write_actual(void)
{
    virtio_config_write32(&balloon.dev, BALLOON_CFG_ACTUAL, (uint32_t)balloon.pages);
}

static bool send_pfns(struct virtq *q, uint32_t first, uint64_t count)
{
    uint32_t *pfns = (uint32_t *)q->scratch;
    uint64_t n = 0;
    for_each_listed(pfn, first, count, i) pfns[n++] = (uint32_t)pfn;
    struct virtq_buf buf = {(uint64_t)pfns, (uint32_t)(n * sizeof(uint32_t)), false};
    return balloon_send_and_wait(q, &buf, 1);
}

/* One bitmap message per window of the chunks' capacity that holds any of the pages (normally just one). */
static bool send_bitmaps(struct virtq *q, uint32_t first, uint64_t count)
{
    uint64_t min_pfn = UINT64_MAX, max_pfn = 0;
    for_each_listed(pfn, first, count, i)
    {
        if (pfn < min_pfn)
            min_pfn = pfn;
        if (pfn > max_pfn)
            max_pfn = pfn;
    }
    if (min_pfn == UINT64_MAX)
        return true;
    unsigned chunks = balloon.chunk_count;
    if (chunks > q->size - 1u)
        chunks = q->size - 1u; /* the header takes one descriptor */
    uint64_t window_pages = (uint64_t)chunks * BITMAP_CHUNK_PAGES;
    struct ferry_bitmap_hdr *hdr = (struct ferry_bitmap_hdr *)q->scratch;

    for (uint64_t start = min_pfn & ~63ull; start <= max_pfn; start += window_pages) {
        uint64_t end = start + window_pages, last = 0;
        bool any = false;
        for_each_listed(pfn, first, count, i)
        {
            if (pfn >= start && pfn < end && (!any || pfn > last)) {
                last = pfn;
                any = true;
            }
        }
        if (!any)
            continue;
        uint64_t bytes = ((last - start) / 64 + 1) * 8;
        memset(balloon.chunks, 0, bytes);
        for_each_listed(pfn, first, count, i)
        {
            if (pfn >= start && pfn < end)
                balloon.chunks[(pfn - start) / 8] |= (uint8_t)(1u << ((pfn - start) % 8));
        }
        *hdr = (struct ferry_bitmap_hdr){.cmd = 0, .page_shift = PAGE_SHIFT, .start_pfn = start, .bmap_len = bytes};
        struct virtq_buf bufs[1 + BITMAP_MAX_CHUNKS];
        unsigned n = 0;
        bufs[n++] = (struct virtq_buf){(uint64_t)hdr, sizeof(*hdr), false};
        for (uint64_t off = 0; off < bytes; off += BITMAP_CHUNK_BYTES) {
            uint64_t len = bytes - off < BITMAP_CHUNK_BYTES ? bytes - off : BITMAP_CHUNK_BYTES;
            bufs[n++] = (struct virtq_buf){(uint64_t)(balloon.chunks + off), (uint32_t)len, false};
        }
        if (!balloon_send_and_wait(q, bufs, n))
            return false;
    }
    return true;
}

static bool send_pages(struct virtq *q, uint32_t first, uint64_t count)
{
    return has_feature(FERRY_F_PAGE_BITMAP) ? send_bitmaps(q, first, count) : send_pfns(q, first, count);
}

static uint64_t batch_limit(void)
{
    return has_feature(FERRY_F_PAGE_BITMAP) ? BITMAP_BATCH_PAGES : PFNS_PER_BUFFER;
}

/* Puts one allocated order-0 page at the head of the balloon list. */
static void push_balloon_page(uint32_t pfn)
{
    struct page_meta *meta = &page_meta[pfn];
    meta->owner = OWNER_BALLOON;
    meta->prev = PFN_NONE;
    meta->next = balloon.list_head;
    if (balloon.list_head != PFN_NONE)
        page_meta[balloon.list_head].prev = pfn;
    balloon.list_head = pfn;
}

/* The largest block order up to INFLATE_MAX_ORDER whose pages all fit in `pages`. */
static unsigned inflate_order(uint64_t pages)
{
    unsigned order = 0;
    while (order < INFLATE_MAX_ORDER && (2ull << order) <= pages)
        order++;
    return order;
}

/*
 * Takes a whole free block of 2^order pages (order > 0) onto the balloon as order-0 pages (each is deflated on
 * its own), linked so the list reads in ascending pfn order from the head: the device then sees one run and can
 * give the host's huge page back whole, as Linux's free page reporting does by reporting pageblocks. A PFN-array
 * batch holds 256 pages, so there the two order-8 halves of a 2 MiB block go out in consecutive batches (the
 * buddy hands out the upper half right after the lower one). Returns the pages taken, or 0 if no such block.
 */
static uint64_t inflate_block(unsigned order)
{
    uint32_t first = buddy_alloc(order);
    if (first == PFN_NONE)
        return 0;
    uint32_t count = 1u << order;
    for (unsigned o = order; o > 0; o--) {
        for (uint32_t pfn = first; pfn < first + count; pfn += 1u << o)
            buddy_split_allocated(pfn);
    }
    for (uint32_t i = count; i > 0; i--)
        push_balloon_page(first + i - 1);
    if (order >= 8)
        balloon.block_inflated_pages += count;
    return count;
}

/* Allocates up to `want` pages onto the balloon list, whole blocks first, and tells the device. Returns the pages
 * added. */
static uint64_t inflate_batch(uint64_t want)
{
    uint64_t n = 0;
    while (n < want) {
        unsigned order = inflate_order(want - n);
        if (order > 0) {
            uint64_t taken = inflate_block(order);
            if (taken != 0) {
                n += taken;
                continue;
            }
        }
        uint32_t pfn = buddy_alloc(0);
        if (pfn == PFN_NONE) {
            /* Linux's balloon allocation can make the hinting shrinker give blocks back; so does this. */
            if (hint_release(1, false) == 0)
                break;
            pfn = buddy_alloc(0);
            if (pfn == PFN_NONE)
                break;
        }
        push_balloon_page(pfn);
        n++;
    }
    if (n == 0)
        return 0;
    balloon.pages += n; /* counted at once: the device may have them even if it breaks before acknowledging */
    if (send_pages(balloon.inflate_q, balloon.list_head, n))
        write_actual();
    return n;
}

/* Takes `count` pages (newest first, so LIFO) off the balloon: tells the device, waits for it, then frees them.
 * MUST_TELL_HOST requires that order; Linux keeps it without the feature too, and so does this driver. */
static bool deflate_batch(uint64_t count)
{
    uint32_t first = balloon.list_head;
    if (!send_pages(balloon.deflate_q, first, count))
        return false; /* the pages stay in the balloon: the host may still count them as ballooned */
    uint32_t pfn = first;
    for (uint64_t i = 0; i < count && pfn != PFN_NONE; i++) {
        uint32_t next = page_meta[pfn].next;
        page_meta[pfn].next = PFN_NONE;
        page_meta[pfn].prev = PFN_NONE;
        page_meta[pfn].owner = OWNER_NONE;
        buddy_free(pfn);
        pfn = next;
    }
    balloon.list_head = pfn;
    if (pfn != PFN_NONE)
        page_meta[pfn].prev = PFN_NONE;
    balloon.pages -= count;
    write_actual();
    return true;
}

void resize_step(uint64_t deadline)
{
    while (balloon_usable() && balloon.resizing) {
        if (balloon.pages < balloon.target) {
            uint64_t want = balloon.target - balloon.pages;
            if (want > batch_limit())
                want = batch_limit();
            if (inflate_batch(want) == 0) {
                /* "Out of puff": no free page; try again later (Linux sleeps 200 ms and retries). */
                balloon.retry_tsc = rdtsc() + ms_to_tsc(OUT_OF_PUFF_RETRY_MS);
                return;
            }
        } else if (balloon.pages > balloon.target) {
            uint64_t count = balloon.pages - balloon.target;
            if (count > batch_limit())
                count = batch_limit();
            if (!deflate_batch(count))
                return;
        } else {
            balloon.resizing = false;
        }
        if (rdtsc() >= deadline)
            return;
    }
}

uint64_t oom_deflatable_pages(void)
{
    return balloon_usable() && has_feature(BALLOON_F_DEFLATE_ON_OOM) ? balloon.pages : 0;
}

uint64_t oom_deflate(uint64_t pages)
{
    if (oom_deflatable_pages() == 0)
        return 0;
    /* In steps of Linux's VIRTIO_BALLOON_OOM_NR_PAGES (256): its OOM notifier gives back that much per call. */
    pages = (pages + OOM_DEFLATE_STEP - 1) / OOM_DEFLATE_STEP * OOM_DEFLATE_STEP;
    if (pages > balloon.pages)
        pages = balloon.pages;
    uint64_t done = 0;
    while (done < pages && balloon_usable()) {
        uint64_t count = pages - done < batch_limit() ? pages - done : batch_limit();
        if (!deflate_batch(count))
            break;
        done += count;
    }
    balloon.oom_deflated_pages += done;
    /* As Linux: the balloon does not chase its target again until the host sets one. */
    balloon.resizing = false;
    return done;
}
