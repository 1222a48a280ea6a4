/* The balloon driver's state and the functions its files (balloon*.c) share; not for the rest of the guest. */
#ifndef FERRY_BALLOON_INTERNAL_H
#define FERRY_BALLOON_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "balloon.h"
#include "virtio_mmio.h"

/* Feature bits (docs/virtio-balloon.md). */
#define BALLOON_F_MUST_TELL_HOST 0
#define BALLOON_F_STATS_VQ 1
#define BALLOON_F_DEFLATE_ON_OOM 2
#define BALLOON_F_FREE_PAGE_HINT 3
#define BALLOON_F_PAGE_POISON 4
#define BALLOON_F_REPORTING 5
#define FERRY_F_PAGE_BITMAP 62
#define FERRY_F_FREE_PAGE_BITMAP 63

/* Config space offsets. */
#define BALLOON_CFG_NUM_PAGES 0
#define BALLOON_CFG_ACTUAL 4
#define BALLOON_CFG_HINT_CMD_ID 8
#define BALLOON_CFG_POISON_VAL 12

#define HINT_CMD_ID_STOP 0
#define HINT_CMD_ID_DONE 1
#define HINT_ORDER 10

#define PFNS_PER_BUFFER 256             /* standard inflate/deflate buffers (Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX) */
#define BITMAP_BATCH_PAGES 32768        /* pages per inflate/deflate step in bitmap mode (128 MiB) */
#define BITMAP_CHUNK_BYTES 32768        /* the guest's bitmap chunk, one descriptor each */
#define BITMAP_CHUNK_PAGES (BITMAP_CHUNK_BYTES * 8) /* 262144 pages = 1 GiB, also the free-bitmap window */
#define BITMAP_MAX_CHUNKS 32            /* 1 MiB of bitmap, the device's limit per message */
#define REPORT_CAPACITY 32              /* blocks per report (Linux's PAGE_REPORTING_CAPACITY) */
#define SLICE_US 1000                   /* longest stretch of driver work between two looks at the console */
#define OUT_OF_PUFF_RETRY_MS 200        /* Linux's back-off when inflating finds no free page */
#define OOM_DEFLATE_STEP 256            /* Linux's VIRTIO_BALLOON_OOM_NR_PAGES */
#define INFLATE_MAX_ORDER 9             /* inflate 2 MiB blocks first: the host can give a whole huge page back */

/* Cookies of hint-queue buffers: a block's pfn, or one of these. */
#define COOKIE_HINT_ID (1ull << 40)
#define COOKIE_HINT_STOP (2ull << 40)

struct ferry_bitmap_hdr {
    uint16_t cmd;
    uint16_t page_shift;
    uint16_t flags;
    uint16_t reserved;
    uint64_t req_id;
    uint64_t start_pfn;
    uint64_t bmap_len;
};
_Static_assert(sizeof(struct ferry_bitmap_hdr) == 32, "bitmap header is 32 bytes");

struct ferry_req {
    uint16_t cmd;
    uint16_t flags;
    uint32_t reserved;
    uint64_t req_id;
};
_Static_assert(sizeof(struct ferry_req) == 16, "free bitmap request is 16 bytes");

struct balloon {
    struct virtio_dev dev;
    bool present; /* negotiated and running (it may have broken since: dev.broken) */
    uint64_t features;
    uint64_t offered; /* the device's features, before the driver's choice */
    uint64_t tsc_khz;
    struct virtq *inflate_q, *deflate_q, *stats_q, *hint_q, *report_q, *fbmap_q;
    uint8_t *chunks; /* BITMAP_MAX_CHUNKS at most, contiguous, BITMAP_CHUNK_BYTES each */
    unsigned chunk_count;

    /* inflate/deflate */
    uint32_t target;      /* num_pages as last read */
    uint64_t pages;       /* pages in the balloon (acknowledged or in flight) */
    uint32_t list_head;   /* balloon pages, newest first, linked through page_meta */
    bool resizing;        /* moving toward target (set by a config change, cleared when there or after OOM) */
    uint64_t retry_tsc;   /* inflating found no free page: not before this */
    uint64_t oom_deflated_pages;
    uint64_t block_inflated_pages; /* inflated as blocks of order >= 8 (1 MiB and up), not page by page */

    /* free page hinting */
    uint32_t hint_cmd_id;     /* last value read from config */
    uint32_t hint_active_id;  /* the id last announced to the device */
    bool hint_running;
    bool hint_done;           /* DONE seen since the last run: returned blocks are freed, not kept */
    uint32_t hint_list;       /* held blocks (owner OWNER_HINT), newest first */
    uint64_t hinted_pages;    /* held now */
    uint64_t hint_runs;

    /* free page reporting */
    unsigned report_order;
    uint32_t report_delay_ms;
    uint64_t report_due_tsc; /* UINT64_MAX: nothing to report */
    uint64_t reported_pages;

    /* free page bitmap (extension b) */
    bool fbmap_active;     /* answering a request */
    uint64_t fbmap_req_id;
    uint64_t fbmap_next_pfn;
    uint64_t free_bitmap_requests;
};

extern struct balloon balloon;

static inline bool has_feature(unsigned bit)
{
    return (balloon.features >> bit & 1) != 0;
}

static inline bool balloon_usable(void)
{
    return balloon.present && !balloon.dev.broken;
}

static inline uint64_t ms_to_tsc(uint64_t ms)
{
    return ms * balloon.tsc_khz;
}

/* Adds a chain, notifies and waits for it to come back (false: the device broke). */
bool balloon_send_and_wait(struct virtq *q, const struct virtq_buf *bufs, unsigned count);

/* balloon_resize.c */
void resize_step(uint64_t deadline);
/* With DEFLATE_ON_OOM: pages the balloon could give back; deflates (telling the host first with MUST_TELL_HOST)
 * at least `pages` of them, or all it has. Returns the pages deflated. */
uint64_t oom_deflatable_pages(void);
uint64_t oom_deflate(uint64_t pages);

/* balloon_hint.c */
void hint_config_changed(uint32_t cmd_id);
void hint_reap(void);
void hint_step(uint64_t deadline);
/* Frees held hint blocks (newest first) until `pages` are freed; returns the pages freed. */
uint64_t hint_release(uint64_t pages, bool including_in_flight);

/* balloon_report.c */
void report_step(uint64_t deadline);
void report_kicked(void);
void fbmap_post_request(void);
void fbmap_reap(void);
void fbmap_step(uint64_t deadline);

#endif
