/*
 * Reclaim: what the guest does when an allocation would fail. Whoever holds memory it can give back (the cache,
 * the balloon driver) registers a reclaimer here at init; code that allocates asks only this module for room, so
 * it depends on none of them.
 */
#ifndef FERRY_RECLAIM_H
#define FERRY_RECLAIM_H

#include <stdbool.h>
#include <stdint.h>

/* The stages, in the order memory is taken back (as Linux: shrinkers and page cache before the OOM notifiers). */
enum reclaim_stage {
    RECLAIM_HINTS, /* blocks held for free page hinting (the spec lets the driver take them back) */
    RECLAIM_CACHE, /* cache pages */
    RECLAIM_OOM,   /* OOM notifiers: the balloon deflating (with DEFLATE_ON_OOM) */
    RECLAIM_STAGE_COUNT
};

struct reclaimer {
    const char *name;
    enum reclaim_stage stage;
    uint64_t (*reclaimable)(void);       /* pages it could free now */
    uint64_t (*reclaim)(uint64_t pages); /* frees at least `pages` of them, or all it has; returns the pages freed */
};

/* vCPU 0, at init. `reclaimer` must stay valid; within a stage, reclaimers run in registration order. */
void reclaim_register(const struct reclaimer *reclaimer);

/*
 * Makes sure `pages` pages are free, reclaiming stage by stage up to and including `last`. Returns false without
 * reclaiming anything when even all of that would not be enough (so a failing command changes nothing), or when
 * reclaiming fell short (the balloon device broke meanwhile).
 */
bool reclaim_make_room(uint64_t pages, enum reclaim_stage last);

/* What the reclaimers of one stage hold, and freeing up to `pages` of it (UINT64_MAX: all); returns the pages
 * freed. For the balloon's stats (caches count as available memory) and a host's request to drop caches. */
uint64_t reclaim_stage_pages(enum reclaim_stage stage);
uint64_t reclaim_stage_drop(enum reclaim_stage stage, uint64_t pages);

#endif
