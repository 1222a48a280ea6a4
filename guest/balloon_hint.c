/* Free page hinting (FREE_PAGE_HINT), after Linux's report_free_page_func: order-10 blocks held until DONE. */
#include "balloon_internal.h"
#include "buddy.h"
#include "config.h"

#define HINT_ID_SLOTS 16 /* 4-byte id buffers in the queue's scratch page, used in turn */
#define HINT_STOP_OFFSET (HINT_ID_SLOTS * 4)
#define HINT_KICK_BATCH 32 /* blocks added between notifications */

static void hint_list_remove(uint32_t pfn)
{
    struct page_meta *meta = &page_meta[pfn];
    if (meta->prev != PFN_NONE)
        page_meta[meta->prev].next = meta->next;
    else
        balloon.hint_list = meta->next;
    if (meta->next != PFN_NONE)
        page_meta[meta->next].prev = meta->prev;
    meta->next = PFN_NONE;
    meta->prev = PFN_NONE;
}

static void hint_free(uint32_t pfn)
{
    hint_list_remove(pfn);
    page_meta[pfn].owner = OWNER_NONE;
    balloon.hinted_pages -= 1u << HINT_ORDER;
    buddy_free(pfn);
}

uint64_t hint_release(uint64_t pages, bool including_in_flight)
{
    uint64_t freed = 0;
    uint32_t pfn = balloon.hint_list;
    while (pfn != PFN_NONE && freed < pages) {
        uint32_t next = page_meta[pfn].next;
        if (including_in_flight || (page_meta[pfn].owner & OWNER_INFLIGHT) == 0) {
            hint_free(pfn);
            freed += 1u << HINT_ORDER;
        }
        pfn = next;
    }
    return freed;
}

void hint_reap(void)
{
    uint64_t cookie;
    uint32_t len;
    while (virtq_get_used(balloon.hint_q, &cookie, &len) > 0) {
        if (cookie == COOKIE_HINT_ID || cookie == COOKIE_HINT_STOP)
            continue;
        uint32_t pfn = (uint32_t)cookie;
        page_meta[pfn].owner = OWNER_HINT;
        if (balloon.hint_done)
            hint_free(pfn); /* DONE came while the device still held it */
    }
}

/* Sends STOP (a descriptor is always kept free for it) and ends the run. */
static void hint_stop(void)
{
    uint32_t *stop = (uint32_t *)(balloon.hint_q->scratch + HINT_STOP_OFFSET);
    *stop = HINT_CMD_ID_STOP;
    struct virtq_buf buf = {(uint64_t)stop, sizeof(*stop), false};
    balloon.hint_running = false;
    if (!virtq_add(balloon.hint_q, &buf, 1, COOKIE_HINT_STOP)) {
        virtio_fail(&balloon.dev, "free page hint queue full: no room for STOP");
        return;
    }
    virtq_kick(balloon.hint_q);
    hint_reap();
}

static void hint_start(uint32_t cmd_id)
{
    hint_reap();
    if (virtq_free(balloon.hint_q) < 2)
        return; /* the device still holds the last run's buffers: skip this run rather than wait */
    uint32_t *id = (uint32_t *)(balloon.hint_q->scratch + (balloon.hint_runs % HINT_ID_SLOTS) * 4);
    *id = cmd_id;
    struct virtq_buf buf = {(uint64_t)id, sizeof(*id), false};
    if (!virtq_add(balloon.hint_q, &buf, 1, COOKIE_HINT_ID))
        return;
    virtq_kick(balloon.hint_q);
    balloon.hint_active_id = cmd_id;
    balloon.hint_running = true;
    balloon.hint_done = false;
    balloon.hint_runs++;
}

void hint_config_changed(uint32_t cmd_id)
{
    balloon.hint_cmd_id = cmd_id;
    if (cmd_id == HINT_CMD_ID_DONE) {
        if (balloon.hint_running)
            hint_stop();
        balloon.hint_done = true;
        hint_release(UINT64_MAX, false);
    } else if (cmd_id == HINT_CMD_ID_STOP) {
        if (balloon.hint_running)
            hint_stop();
    } else if (cmd_id != balloon.hint_active_id) {
        if (balloon.hint_running)
            hint_stop();
        hint_start(cmd_id);
    }
}

void hint_step(uint64_t deadline)
{
    struct virtq *q = balloon.hint_q;
    unsigned unkicked = 0;
    while (balloon_usable() && balloon.hint_running) {
        /* Keep one descriptor for STOP. */
        if (virtq_free(q) <= 1) {
            if (unkicked > 0)
                virtq_kick(q);
            unkicked = 0;
            hint_reap();
            if (virtq_free(q) <= 1)
                return; /* the device holds them all: go on in a later slice */
        }
        uint32_t pfn = buddy_alloc(HINT_ORDER);
        if (pfn == PFN_NONE) {
            if (unkicked > 0)
                virtq_kick(q);
            hint_stop(); /* nothing of that order left */
            return;
        }
        struct page_meta *meta = &page_meta[pfn];
        meta->owner = OWNER_HINT | OWNER_INFLIGHT;
        meta->prev = PFN_NONE;
        meta->next = balloon.hint_list;
        if (balloon.hint_list != PFN_NONE)
            page_meta[balloon.hint_list].prev = pfn;
        balloon.hint_list = pfn;
        balloon.hinted_pages += 1u << HINT_ORDER;
        struct virtq_buf buf = {(uint64_t)pfn << PAGE_SHIFT, PAGE_SIZE << HINT_ORDER, true};
        virtq_add(q, &buf, 1, pfn); /* room checked above */
        if (++unkicked == HINT_KICK_BATCH || rdtsc() >= deadline) {
            virtq_kick(q);
            unkicked = 0;
            hint_reap();
            if (rdtsc() >= deadline)
                return;
        }
    }
    if (unkicked > 0)
        virtq_kick(q);
}
