/* What the guest does when an allocation would fail: give back hinted blocks, drop caches, deflate the balloon. */
#ifndef FERRY_OOM_H
#define FERRY_OOM_H

#include <stdbool.h>
#include <stdint.h>

enum oom_reclaim {
    OOM_FREE_HINTS_ONLY, /* return blocks held for free page hinting (the spec lets the driver take them back) */
    OOM_RECLAIM_ALL,     /* also drop cache pages, then deflate the balloon (with DEFLATE_ON_OOM) */
};

/*
 * Makes sure `pages` pages are free, reclaiming as `how` allows, in that order. Returns false without reclaiming
 * anything when even all of that would not be enough (so a failing command changes nothing), or when reclaiming
 * fell short (the balloon device broke meanwhile).
 */
bool oom_make_room(uint64_t pages, enum oom_reclaim how);

#endif
