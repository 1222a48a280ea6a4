/* The reclaimer registry and the OOM path: Linux reclaims page cache before its OOM notifiers run, and the
 * balloon's notifier deflates. */
#include "reclaim.h"

#include <stddef.h>

#include "buddy.h"
#include "format.h"
#include "panic.h"

#define RECLAIM_MAX_REGISTERED 8

/* vCPU 0's alone (the shell and the balloon driver run there). */
static const struct reclaimer *reclaimers[RECLAIM_MAX_REGISTERED];
static unsigned reclaimer_count;

void reclaim_register(const struct reclaimer *reclaimer)
{
    if (reclaimer_count == RECLAIM_MAX_REGISTERED) {
        static char message[96];
        struct out out;
        out_init(&out, message, sizeof(message));
        out_str(&out, "no room to register reclaimer ");
        out_str(&out, reclaimer->name);
        out_terminate(&out);
        panic(message);
    }
    reclaimers[reclaimer_count++] = reclaimer;
}

uint64_t reclaim_stage_pages(enum reclaim_stage stage)
{
    uint64_t pages = 0;
    for (unsigned i = 0; i < reclaimer_count; i++) {
        if (reclaimers[i]->stage == stage)
            pages += reclaimers[i]->reclaimable();
    }
    return pages;
}

uint64_t reclaim_stage_drop(enum reclaim_stage stage, uint64_t pages)
{
    uint64_t freed = 0;
    for (unsigned i = 0; i < reclaimer_count && freed < pages; i++) {
        if (reclaimers[i]->stage == stage)
            freed += reclaimers[i]->reclaim(pages - freed);
    }
    return freed;
}

bool reclaim_make_room(uint64_t pages, enum reclaim_stage last)
{
    uint64_t free_pages = buddy_free_pages();
    if (free_pages >= pages)
        return true;
    uint64_t reclaimable = 0;
    for (unsigned stage = 0; stage <= last; stage++)
        reclaimable += reclaim_stage_pages(stage);
    if (free_pages + reclaimable < pages)
        return false;

    for (unsigned stage = 0; stage <= last && free_pages < pages; stage++) {
        reclaim_stage_drop(stage, pages - free_pages);
        free_pages = buddy_free_pages();
    }
    return free_pages >= pages;
}
