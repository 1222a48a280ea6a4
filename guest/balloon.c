/* The balloon driver's core: probe and negotiation, the service loop, config changes and the stats queue. */
#include "balloon.h"

#include <stddef.h>

#include "balloon_internal.h"
#include "buddy.h"
#include "config.h"
#include "lib.h"
#include "reclaim.h"

#define VIRTIO_ID_BALLOON 5

/* Everything this driver understands; the command line's balloon_features mask can take bits away. */
#define DRIVER_FEATURES                                                                                       \
    ((1ull << BALLOON_F_MUST_TELL_HOST) | (1ull << BALLOON_F_STATS_VQ) | (1ull << BALLOON_F_DEFLATE_ON_OOM) |  \
     (1ull << BALLOON_F_FREE_PAGE_HINT) | (1ull << BALLOON_F_PAGE_POISON) | (1ull << BALLOON_F_REPORTING) |    \
     (1ull << VIRTIO_F_VERSION_1) | (1ull << FERRY_F_PAGE_BITMAP) | (1ull << FERRY_F_FREE_PAGE_BITMAP))

/* Stats tags (virtio spec, Linux's order). */
enum {
    STAT_SWAP_IN,
    STAT_SWAP_OUT,
    STAT_MAJFLT,
    STAT_MINFLT,
    STAT_MEMFREE,
    STAT_MEMTOT,
    STAT_AVAIL,
    STAT_CACHES,
    STAT_HTLB_PGALLOC,
    STAT_HTLB_PGFAIL,
    STAT_COUNT
};

struct balloon_stat {
    uint16_t tag;
    uint64_t val;
} __attribute__((packed));
_Static_assert(sizeof(struct balloon_stat) == 10, "stats entries are 10 bytes");

struct balloon balloon;
uint64_t balloon_isr_address;
uint64_t balloon_wake_tsc = UINT64_MAX;

static struct virtq queues[6];
static uint64_t driver_start, driver_end;

bool balloon_send_and_wait(struct virtq *q, const struct virtq_buf *bufs, unsigned count)
{
    if (!balloon_usable())
        return false;
    if (!virtq_add(q, bufs, count, 0)) {
        virtio_fail(&balloon.dev, "no room in a queue the driver waits on (device holds its buffers)");
        return false;
    }
    virtq_kick(q);
    uint64_t cookie;
    uint32_t len;
    return virtq_wait_used(q, &cookie, &len);
}

/* ---- stats ---- */

static void stats_post(void)
{
    struct buddy_stats stats;
    buddy_get_stats(&stats);
    uint64_t total = stats.total_pages;
    /* Without DEFLATE_ON_OOM, Linux takes inflated pages out of its managed pages: MemTotal shrinks. */
    if (!has_feature(BALLOON_F_DEFLATE_ON_OOM))
        total -= balloon.pages;
    uint64_t values[STAT_COUNT] = {0};
    uint64_t caches = reclaim_stage_pages(RECLAIM_CACHE);
    values[STAT_MEMFREE] = stats.free_pages * PAGE_SIZE;
    values[STAT_MEMTOT] = total * PAGE_SIZE;
    values[STAT_AVAIL] = (stats.free_pages + caches) * PAGE_SIZE;
    values[STAT_CACHES] = caches * PAGE_SIZE;
    struct balloon_stat *entries = (struct balloon_stat *)balloon.stats_q->scratch;
    for (unsigned tag = 0; tag < STAT_COUNT; tag++) {
        entries[tag].tag = (uint16_t)tag;
        entries[tag].val = values[tag];
    }
    struct virtq_buf buf = {(uint64_t)entries, STAT_COUNT * sizeof(struct balloon_stat), false};
    if (!virtq_add(balloon.stats_q, &buf, 1, 0)) {
        virtio_fail(&balloon.dev, "stats queue full");
        return;
    }
    virtq_kick(balloon.stats_q);
}

/* The device returns the buffer when the host wants fresh figures: refill it and give it back. */
static void stats_reap(void)
{
    uint64_t cookie;
    uint32_t len;
    while (virtq_get_used(balloon.stats_q, &cookie, &len) > 0)
        stats_post();
}

/* ---- config changes ---- */

static void config_changed(void)
{
    if (virtio_status(&balloon.dev) & VIRTIO_STATUS_NEEDS_RESET) {
        virtio_fail(&balloon.dev, "device set DEVICE_NEEDS_RESET");
        return;
    }
    balloon.target = virtio_config_read32(&balloon.dev, BALLOON_CFG_NUM_PAGES);
    balloon.resizing = balloon.target != balloon.pages;
    balloon.retry_tsc = 0;
    if (has_feature(BALLOON_F_FREE_PAGE_HINT))
        hint_config_changed(virtio_config_read32(&balloon.dev, BALLOON_CFG_HINT_CMD_ID));
}

/* ---- reclaimers ---- */

static uint64_t hinted_pages(void)
{
    return balloon.hinted_pages;
}

/* Frees blocks held for free page hinting that the device does not hold (as Linux's shrinker may), all of them
 * once the device is broken. */
static uint64_t release_hints(uint64_t pages)
{
    return hint_release(pages, balloon.dev.broken);
}

static const struct reclaimer hint_reclaimer = {"free page hints", RECLAIM_HINTS, hinted_pages, release_hints};
static const struct reclaimer oom_reclaimer = {"balloon deflate on OOM", RECLAIM_OOM, oom_deflatable_pages,
                                               oom_deflate};

/* ---- setup ---- */

static const char *setup_queues(void)
{
    /* Queue numbers count only the negotiated queues, in this order (as Linux and QEMU do). */
    struct virtq **slots[6] = {&balloon.inflate_q, &balloon.deflate_q, &balloon.stats_q,
                               &balloon.hint_q,    &balloon.report_q,  &balloon.fbmap_q};
    bool wanted[6] = {true, true, has_feature(BALLOON_F_STATS_VQ), has_feature(BALLOON_F_FREE_PAGE_HINT),
                      has_feature(BALLOON_F_REPORTING), has_feature(FERRY_F_FREE_PAGE_BITMAP)};
    unsigned count = 0;
    for (unsigned i = 0; i < 6; i++)
        count += wanted[i];

    /* One reserved block for all rings and device buffers, so the host can name the driver's memory. The bitmap
     * chunks are allocated whatever the features, so that the pages the balloon takes do not depend on them. */
    uint64_t pfn_end = buddy_pfn_end();
    balloon.chunk_count = (unsigned)((pfn_end + BITMAP_CHUNK_PAGES - 1) / BITMAP_CHUNK_PAGES);
    if (balloon.chunk_count > BITMAP_MAX_CHUNKS)
        balloon.chunk_count = BITMAP_MAX_CHUNKS;
    uint64_t pages = count * VIRTQ_PAGES + balloon.chunk_count * (BITMAP_CHUNK_BYTES / PAGE_SIZE);
    unsigned order = 0;
    while ((1ull << order) < pages)
        order++;
    uint32_t pfn = order <= BUDDY_MAX_ORDER ? buddy_reserve(order) : PFN_NONE;
    if (pfn == PFN_NONE)
        return "no memory for the virtqueues";
    driver_start = (uint64_t)pfn << PAGE_SHIFT;
    driver_end = driver_start + ((uint64_t)PAGE_SIZE << order);

    uint64_t memory = driver_start;
    uint16_t index = 0;
    for (unsigned i = 0; i < 6; i++) {
        if (!wanted[i])
            continue;
        /* The ring indices must start at 0 (fresh RAM is zero, but do not rely on it here); the rest of the
         * rings is written before the device may read it, so untouched queues stay clean pages. */
        memset((void *)(memory + PAGE_SIZE), 0, 4);
        memset((void *)(memory + 2 * PAGE_SIZE), 0, 4);
        const char *error = virtq_setup(&balloon.dev, &queues[index], index, memory);
        if (error != NULL)
            return error;
        *slots[i] = &queues[index];
        index++;
        memory += VIRTQ_PAGES * PAGE_SIZE;
    }
    balloon.chunks = (uint8_t *)memory;
    return NULL;
}

void balloon_init(const struct boot_info *info, const struct guest_options *options)
{
    reclaim_register(&hint_reclaimer);
    reclaim_register(&oom_reclaimer);
    balloon.tsc_khz = info->tsc_khz;
    balloon.list_head = PFN_NONE;
    balloon.hint_list = PFN_NONE;
    balloon.report_due_tsc = UINT64_MAX;
    balloon.report_order = options->report_order;
    balloon.report_delay_ms = options->report_delay_ms;
    if (!virtio_find(info, VIRTIO_ID_BALLOON, &balloon.dev))
        return;

    uint64_t offered;
    const char *error = virtio_start(&balloon.dev, &offered);
    if (error == NULL) {
        balloon.offered = offered;
        uint64_t wanted = DRIVER_FEATURES & options->balloon_features;
        /* poison_val describes what freed pages hold: only meaningful when the allocator poisons them. */
        if (options->free_mode != FREE_MODE_POISON)
            wanted &= ~(1ull << BALLOON_F_PAGE_POISON);
        uint64_t accepted = offered & wanted;
        /* Linux: poisoned free pages must not be reported to a device that cannot be told the poison value
         * (it would discard them and they would come back as zeros). */
        if (options->free_mode == FREE_MODE_POISON && (accepted & (1ull << BALLOON_F_PAGE_POISON)) == 0)
            accepted &= ~(1ull << BALLOON_F_REPORTING);
        error = virtio_set_features(&balloon.dev, accepted);
    }
    if (error == NULL) {
        balloon.features = balloon.dev.features;
        error = setup_queues();
    }
    if (error != NULL) {
        virtio_fail(&balloon.dev, error);
        return;
    }
    if (has_feature(BALLOON_F_PAGE_POISON))
        virtio_config_write32(&balloon.dev, BALLOON_CFG_POISON_VAL, options->poison * 0x01010101u);
    virtio_driver_ok(&balloon.dev);
    balloon.present = true;

    if (balloon.stats_q != NULL)
        stats_post();
    if (balloon.fbmap_q != NULL)
        fbmap_post_request();
    if (balloon.report_q != NULL)
        buddy_set_report_order(balloon.report_order);
    config_changed();
    balloon_isr_address = balloon.dev.base + VIRTIO_MMIO_INTERRUPT_STATUS;
    balloon_service(0);
}

/* ---- the service loop ---- */

/* The device is gone for good: give back what only makes sense with it and stop being called. Balloon pages
 * stay allocated: with MUST_TELL_HOST the host may skip them when migrating, so reusing them would lose data. */
static void shut_down(void)
{
    hint_release(UINT64_MAX, true);
    buddy_set_report_order(BUDDY_ORDER_COUNT);
    buddy_report_kick = 0;
    balloon.resizing = false;
    balloon.hint_running = false;
    balloon.fbmap_active = false;
    store_relaxed(&balloon_isr_address, 0);
    store_relaxed(&balloon_wake_tsc, UINT64_MAX);
}

void balloon_service(uint32_t isr)
{
    if (!balloon.present)
        return;
    if (!balloon.dev.broken) {
        uint64_t now = rdtsc();
        uint64_t deadline = now + SLICE_US * balloon.tsc_khz / 1000;
        if (isr != 0)
            virtio_isr_ack(&balloon.dev, isr);
        if (isr & VIRTIO_ISR_CONFIG)
            config_changed();
        if (balloon.stats_q != NULL)
            stats_reap();
        if (balloon.fbmap_q != NULL)
            fbmap_reap();
        if (balloon.hint_q != NULL)
            hint_reap();
        if (buddy_report_kick != 0)
            report_kicked();

        if (balloon.fbmap_active)
            fbmap_step(deadline);
        if (balloon.resizing && now >= balloon.retry_tsc)
            resize_step(deadline);
        if (balloon.hint_running)
            hint_step(deadline);
        /* Reporting isolates free blocks: not while the balloon or a hint run is choosing pages, so that which
         * pages they get does not depend on when a report happened to run. */
        if (!balloon.resizing && !balloon.hint_running && !balloon.fbmap_active && now >= balloon.report_due_tsc)
            report_step(deadline);
    }
    if (balloon.dev.broken) {
        shut_down();
        return;
    }
    uint64_t wake = balloon.report_due_tsc;
    if (balloon.resizing && balloon.retry_tsc < wake)
        wake = balloon.retry_tsc;
    if (balloon.hint_running || balloon.fbmap_active)
        wake = 0;
    store_relaxed(&balloon_wake_tsc, wake);
}

/* ---- queries for the shell ---- */

void balloon_get_info(struct balloon_info *info)
{
    *info = (struct balloon_info){0};
    info->present = balloon.present;
    info->broken = balloon.dev.broken;
    if (!balloon.present)
        return;
    info->features = balloon.features;
    info->offered = balloon.offered;
    info->num_pages = balloon.dev.broken ? balloon.target
                                         : virtio_config_read32(&balloon.dev, BALLOON_CFG_NUM_PAGES);
    info->actual = (uint32_t)balloon.pages;
    info->hint_cmd_id = balloon.hint_cmd_id;
    info->hinted_pages = balloon.hinted_pages;
    info->hint_runs = balloon.hint_runs;
    info->reported_pages = balloon.reported_pages;
    info->oom_deflated_pages = balloon.oom_deflated_pages;
    info->block_inflated_pages = balloon.block_inflated_pages;
    info->bitmap_mode = has_feature(FERRY_F_PAGE_BITMAP);
    info->free_bitmap_requests = balloon.free_bitmap_requests;
    info->balloon_pages = balloon.pages;
    info->driver_start = driver_start;
    info->driver_end = driver_end;
}

uint64_t balloon_pages(void)
{
    return balloon.pages;
}

uint64_t balloon_hinted_pages(void)
{
    return hinted_pages();
}

uint64_t balloon_driver_start(void)
{
    return driver_start;
}

uint64_t balloon_driver_end(void)
{
    return driver_end;
}
