/* The OOM path: Linux reclaims page cache before its OOM notifiers run, and the balloon's notifier deflates. */
#include "oom.h"

#include "balloon.h"
#include "buddy.h"
#include "cache.h"

bool oom_make_room(uint64_t pages, enum oom_reclaim how)
{
    uint64_t free_pages = buddy_free_pages();
    if (free_pages >= pages)
        return true;
    uint64_t reclaimable = balloon_hinted_pages();
    if (how == OOM_RECLAIM_ALL)
        reclaimable += cache_pages() + balloon_oom_deflatable_pages();
    if (free_pages + reclaimable < pages)
        return false;

    balloon_release_hints(pages - free_pages);
    free_pages = buddy_free_pages();
    if (how == OOM_RECLAIM_ALL && free_pages < pages) {
        cache_drop(pages - free_pages);
        free_pages = buddy_free_pages();
    }
    if (how == OOM_RECLAIM_ALL && free_pages < pages) {
        balloon_oom_deflate(pages - free_pages);
        free_pages = buddy_free_pages();
    }
    return free_pages >= pages;
}
