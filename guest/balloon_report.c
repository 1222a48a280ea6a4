/* Free page reporting (REPORTING) and Ferry's free page bitmap on request (FERRY_F_FREE_PAGE_BITMAP). */
#include "balloon_internal.h"
#include "buddy.h"
#include "config.h"
#include "lib.h"
#include "reclaim.h"

#define FBMAP_CMD_GET_FREE_PAGES 1
#define FBMAP_FLAG_DROP_CACHES 1
#define FBMAP_FLAG_CONT 0
#define FBMAP_FLAG_DONE 1

/* ---- free page reporting ---- */

void report_kicked(void)
{
    buddy_report_kick = 0;
    /* The new block is due report_delay_ms from now; the pass then also takes anything else that is due. */
    uint64_t due = rdtsc() + ms_to_tsc(balloon.report_delay_ms);
    if (due < balloon.report_due_tsc)
        balloon.report_due_tsc = due;
}

void report_step(uint64_t deadline)
{
    uint32_t pfns[REPORT_CAPACITY];
    unsigned capacity = balloon.report_q->size < REPORT_CAPACITY ? balloon.report_q->size : REPORT_CAPACITY;
    for (;;) {
        uint32_t wait_ms;
        unsigned count = buddy_isolate_for_report(balloon.report_order, balloon.report_delay_ms, pfns, capacity,
                                                  &wait_ms);
        if (count > 0) {
            /* One chain of device-writable descriptors, as Linux's virtballoon_free_page_report. The device
             * never writes them; it may discard them. */
            struct virtq_buf bufs[REPORT_CAPACITY];
            uint64_t pages = 0;
            for (unsigned i = 0; i < count; i++) {
                unsigned order = page_meta[pfns[i]].order;
                bufs[i] = (struct virtq_buf){(uint64_t)pfns[i] << PAGE_SHIFT, PAGE_SIZE << order, true};
                pages += 1ull << order;
            }
            bool ok = balloon_send_and_wait(balloon.report_q, bufs, count);
            buddy_putback_isolated(pfns, count, ok);
            if (!ok)
                return;
            balloon.reported_pages += pages;
        }
        uint64_t now = rdtsc();
        balloon.report_due_tsc = wait_ms == UINT32_MAX ? UINT64_MAX : now + ms_to_tsc(wait_ms);
        if (count == 0 || wait_ms != 0 || now >= deadline)
            return;
    }
}

/* ---- the free page bitmap ---- */

void fbmap_post_request(void)
{
    struct ferry_req *req = (struct ferry_req *)balloon.fbmap_q->scratch;
    *req = (struct ferry_req){0};
    struct virtq_buf buf = {(uint64_t)req, sizeof(*req), true};
    if (!virtq_add(balloon.fbmap_q, &buf, 1, 0)) {
        virtio_fail(&balloon.dev, "free bitmap queue full");
        return;
    }
    virtq_kick(balloon.fbmap_q);
}

void fbmap_reap(void)
{
    if (balloon.fbmap_active)
        return; /* the request buffer is not posted while a reply is being sent */
    uint64_t cookie;
    uint32_t len;
    if (virtq_get_used(balloon.fbmap_q, &cookie, &len) <= 0)
        return;
    const struct ferry_req *req = (const struct ferry_req *)balloon.fbmap_q->scratch;
    if (len != sizeof(*req)) {
        virtio_fail(&balloon.dev, "free bitmap request returned with a used length other than 16");
        return;
    }
    if (req->cmd != FBMAP_CMD_GET_FREE_PAGES) {
        fbmap_post_request(); /* not a command this driver knows: ignore it */
        return;
    }
    balloon.free_bitmap_requests++;
    if (req->flags & FBMAP_FLAG_DROP_CACHES)
        reclaim_stage_drop(RECLAIM_CACHE, UINT64_MAX);
    balloon.fbmap_req_id = req->req_id;
    balloon.fbmap_next_pfn = 0;
    balloon.fbmap_active = true;
}

/* Sends windows of the free page bitmap, one 32 KiB chunk (1 GiB of pages) each, until the deadline. */
void fbmap_step(uint64_t deadline)
{
    struct ferry_bitmap_hdr *hdr = (struct ferry_bitmap_hdr *)(balloon.fbmap_q->scratch + sizeof(struct ferry_req));
    uint64_t pfn_end = buddy_pfn_end();
    while (balloon_usable() && balloon.fbmap_active) {
        uint64_t start = balloon.fbmap_next_pfn;
        uint64_t pages = pfn_end - start < BITMAP_CHUNK_PAGES ? pfn_end - start : BITMAP_CHUNK_PAGES;
        uint64_t bytes = (pages + 63) / 64 * 8;
        bool last = start + pages >= pfn_end;
        memset(balloon.chunks, 0, bytes);
        buddy_mark_free_window(start, pages, balloon.chunks);
        *hdr = (struct ferry_bitmap_hdr){.cmd = FBMAP_CMD_GET_FREE_PAGES,
                                         .page_shift = PAGE_SHIFT,
                                         .flags = last ? FBMAP_FLAG_DONE : FBMAP_FLAG_CONT,
                                         .req_id = balloon.fbmap_req_id,
                                         .start_pfn = start,
                                         .bmap_len = bytes};
        struct virtq_buf bufs[2] = {{(uint64_t)hdr, sizeof(*hdr), false},
                                    {(uint64_t)balloon.chunks, (uint32_t)bytes, false}};
        if (!balloon_send_and_wait(balloon.fbmap_q, bufs, 2))
            return;
        balloon.fbmap_next_pfn = start + pages;
        if (last) {
            balloon.fbmap_active = false;
            fbmap_post_request();
            return;
        }
        if (rdtsc() >= deadline)
            return;
    }
}
