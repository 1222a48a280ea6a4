/* The workload: pattern-filled page blocks tracked through page_meta, and the paced multi-vCPU dirtier. */
#include "workload.h"

#include <stddef.h>

#include "buddy.h"
#include "config.h"
#include "format.h"
#include "idle.h"
#include "io.h"
#include "panic.h"
#include "pattern.h"
#include "reclaim.h"

/* How long vCPU 0 waits for the other vCPUs to acknowledge a dirty mode change before declaring them dead. */
#define ACK_TIMEOUT_MS 10000
/* The most dirty work a vCPU catches up after falling behind (e.g. the VM was paused), in ms of its rate. */
#define DIRTY_MAX_BACKLOG_MS 50

/* Workload blocks, doubly linked through page_meta[first pfn].next/prev (the owner's links of an allocated
 * block); the head is the newest block. */
struct block_list {
    uint32_t head;
};

enum dirty_mode {
    DIRTY_IDLE,  /* no dirty run: workers only read */
    DIRTY_RUN,   /* rewrite the slice at the paced rate */
    DIRTY_PAUSE, /* finish the current page, then wait (verify is reading the pages) */
};

/* Written only by vCPU 0: `mode` first, then `seq` with release. Each worker acknowledges a seq it has acted on. */
static struct {
    uint32_t seq;
    uint32_t mode;
} dirty_control __attribute__((aligned(64)));

/* One per vCPU, on its own cache lines so vCPUs do not contend. */
struct dirty_cpu {
    /* Written by vCPU 0 only while this vCPU is DIRTY_IDLE (acknowledged), read by this vCPU. */
    uint32_t slice_first_block;  /* first pfn of the block holding the slice's first page */
    uint32_t slice_first_offset; /* that page's index in its block */
    uint64_t slice_pages;
    uint64_t rate_pages_per_ks; /* pages per 1000 s: stays an integer when a small rate is split across vCPUs */
    uint64_t max_backlog_pages;
    /* Written only by this vCPU. */
    uint32_t cursor_block; /* next page to dirty: block + offset, and its index in the slice */
    uint32_t cursor_offset;
    uint64_t cursor_index;
    uint64_t pace_start_tsc;
    uint64_t pace_pages; /* pages accounted to the pacer since pace_start_tsc */
    uint64_t next_tick_tsc;
    uint64_t pages_dirtied; /* since boot; vCPU 0 reads it */
    uint32_t acked_seq;     /* last dirty_control.seq acted on; vCPU 0 reads it */
} __attribute__((aligned(64)));

static struct dirty_cpu dirty_cpus[MAX_CPUS];

/* Set by workload_init before the other vCPUs are released, read-only afterwards. */
static unsigned cpu_count;
static uint64_t tsc_khz;
static uint64_t tsc_cycles_per_ks; /* TSC cycles in 1000 s */
static uint64_t tick_cycles;       /* ~1 ms: how often workers compute what they owe */

/* vCPU 0's alone. */
static struct block_list fill_blocks;
static struct block_list working_set;
static uint64_t dirty_baseline[MAX_CPUS]; /* pages_dirtied of each vCPU when the current/last run started */
static uint64_t verify_failures_total;
static char error_text[160];
bool workload_cpu0_dirtying; /* a dirty run is active */

void workload_init(unsigned cpus, uint64_t khz)
{
    cpu_count = cpus;
    tsc_khz = khz;
    tsc_cycles_per_ks = khz * 1000000;
    tick_cycles = khz;
    fill_blocks.head = PFN_NONE;
    working_set.head = PFN_NONE;
}

static uint64_t tsc_to_ns(uint64_t cycles)
{
    return mul_div_u64(cycles, 1000000, tsc_khz);
}

static const char *out_of_memory(uint64_t requested_mib)
{
    struct out out;
    out_init(&out, error_text, sizeof(error_text));
    out_str(&out, "out of memory: ");
    out_u64(&out, requested_mib);
    out_str(&out, " MiB requested, ");
    out_u64(&out, buddy_free_pages() / PAGES_PER_MIB);
    out_str(&out, " MiB free");
    out_terminate(&out);
    return error_text;
}

/* ---- the pattern ---- */

static void verify_page(uint32_t pfn, struct verify_result *result)
{
    uint64_t address = (uint64_t)pfn << PAGE_SHIFT;
    uint32_t generation = load_acquire(&page_meta[pfn].generation);
    const uint64_t *word = (const uint64_t *)address;
    uint64_t expected = address * PATTERN_ADDRESS_FACTOR + generation * PATTERN_GENERATION_FACTOR;
    const uint64_t step = sizeof(uint64_t) * PATTERN_ADDRESS_FACTOR;
    for (unsigned i = 0; i < PAGE_SIZE / sizeof(uint64_t); i++, expected += step) {
        uint64_t found = word[i];
        if (found == expected)
            continue;
        if (result->reported < VERIFY_MAX_REPORTED) {
            result->first_failures[result->reported++] =
                (struct verify_failure){address + i * sizeof(uint64_t), expected, found};
        }
        result->failures++;
    }
    result->pages_checked++;
}

/* ---- block lists ---- */

static uint64_t block_pages(uint32_t pfn)
{
    return 1ull << buddy_block_order(pfn);
}

static void block_list_push(struct block_list *list, uint32_t pfn)
{
    page_meta[pfn].next = list->head;
    page_meta[pfn].prev = PFN_NONE;
    if (list->head != PFN_NONE)
        page_meta[list->head].prev = pfn;
    list->head = pfn;
}

static void block_list_remove(struct block_list *list, uint32_t pfn)
{
    struct page_meta *meta = &page_meta[pfn];
    if (meta->prev != PFN_NONE)
        page_meta[meta->prev].next = meta->next;
    else
        list->head = meta->next;
    if (meta->next != PFN_NONE)
        page_meta[meta->next].prev = meta->prev;
    meta->next = PFN_NONE;
    meta->prev = PFN_NONE;
}

/* Allocates `pages` pages, largest orders first, writes them with the pattern of `generation`, marks them as
 * workload pages and pushes the blocks on `list`. Runs of contiguous blocks go to `ranges` if it is not NULL.
 * The caller has checked that enough pages are free (only vCPU 0 allocates). */
static void allocate_blocks(struct block_list *list, uint64_t pages, uint32_t generation,
                            struct fill_result *ranges)
{
    unsigned order = BUDDY_MAX_ORDER;
    while (pages > 0) {
        while ((1ull << order) > pages)
            order--;
        uint32_t pfn = buddy_alloc(order);
        if (pfn == PFN_NONE) {
            if (order == 0)
                panic("allocator has fewer free pages than it counts");
            order--; /* no block this large is left: none will appear, since only this loop allocates */
            continue;
        }
        uint64_t count = 1ull << order;
        uint64_t address = (uint64_t)pfn << PAGE_SHIFT;
        write_pattern(address, count << PAGE_SHIFT, generation);
        /* Contents first, then the generation that describes them. */
        for (uint64_t i = 0; i < count; i++) {
            struct page_meta *meta = &page_meta[pfn + i];
            store_release(&meta->generation, generation);
            meta->flags |= PAGE_WORKLOAD;
        }
        block_list_push(list, pfn);
        pages -= count;

        if (ranges != NULL) {
            struct phys_range *last = ranges->range_count > 0 ? &ranges->ranges[ranges->range_count - 1] : NULL;
            if (last != NULL && last->addr + last->bytes == address)
                last->bytes += count << PAGE_SHIFT;
            else if (ranges->range_count < FILL_MAX_RANGES)
                ranges->ranges[ranges->range_count++] = (struct phys_range){address, count << PAGE_SHIFT};
            else
                ranges->ranges_truncated = true;
        }
    }
}

/* Clears the workload marks of a block's pages and returns it to the allocator. */
static void release_block(uint32_t pfn)
{
    uint64_t count = block_pages(pfn);
    for (uint64_t i = 0; i < count; i++) {
        struct page_meta *meta = &page_meta[pfn + i];
        meta->generation = 0;
        meta->flags &= (uint8_t)~PAGE_WORKLOAD;
    }
    buddy_free(pfn);
}

static uint64_t release_list(struct block_list *list)
{
    uint64_t freed = 0;
    while (list->head != PFN_NONE) {
        uint32_t pfn = list->head;
        freed += block_pages(pfn);
        block_list_remove(list, pfn);
        release_block(pfn);
    }
    return freed;
}

/* ---- the dirtier: shared by vCPU 0 (cooperatively) and the workers ---- */

static void cursor_restart(struct dirty_cpu *cpu)
{
    cpu->cursor_block = cpu->slice_first_block;
    cpu->cursor_offset = cpu->slice_first_offset;
    cpu->cursor_index = 0;
}

static void pacer_restart(struct dirty_cpu *cpu, uint64_t now)
{
    cpu->pace_start_tsc = now;
    cpu->pace_pages = 0;
    cpu->next_tick_tsc = now;
}

/* Pages this vCPU should have written by `now` and has not; at most max_backlog_pages, so that a stall (the
 * VM paused by the host, a slow vCPU) does not turn into a burst afterwards. */
static uint64_t pages_owed(struct dirty_cpu *cpu, uint64_t now)
{
    uint64_t due = mul_div_u64(now - cpu->pace_start_tsc, cpu->rate_pages_per_ks, tsc_cycles_per_ks);
    if (due <= cpu->pace_pages)
        return 0;
    uint64_t owed = due - cpu->pace_pages;
    if (owed > cpu->max_backlog_pages) {
        cpu->pace_pages = due - cpu->max_backlog_pages;
        owed = cpu->max_backlog_pages;
    }
    return owed;
}

/* Rewrites the page at the cursor with a fresh generation and moves the cursor on (wrapping within the slice). */
static void dirty_next_page(struct dirty_cpu *cpu)
{
    uint32_t pfn = cpu->cursor_block + cpu->cursor_offset;
    uint32_t generation = pattern_next_generation();
    write_pattern((uint64_t)pfn << PAGE_SHIFT, PAGE_SIZE, generation);
    store_release(&page_meta[pfn].generation, generation); /* publish only after the contents */
    cpu->pace_pages++;
    store_relaxed(&cpu->pages_dirtied, cpu->pages_dirtied + 1);

    if (++cpu->cursor_index == cpu->slice_pages) {
        cursor_restart(cpu);
    } else if (++cpu->cursor_offset == 1u << page_meta[cpu->cursor_block].order) {
        cpu->cursor_block = page_meta[cpu->cursor_block].next;
        cpu->cursor_offset = 0;
    }
}

/* A worker with no dirty run to do (idle, paused for verify, or with an empty slice) sleeps at the idle port after
 * IDLE_SPIN_US of nothing; vCPU 0 wakes it when it publishes a new mode (dirty_set_mode). */
void workload_worker_loop(unsigned cpu_index)
{
    struct dirty_cpu *cpu = &dirty_cpus[cpu_index];
    const uint32_t can_idle = load_relaxed(&idle_port_present);
    const uint64_t idle_spin_cycles = tsc_khz * IDLE_SPIN_US / 1000;
    uint32_t seen_seq = 0; /* dirty_control.seq starts at 0 with mode IDLE */
    uint32_t mode = DIRTY_IDLE;
    uint64_t busy_tsc = rdtsc(); /* when this worker last had something to do */
    for (;;) {
        uint32_t seq = load_acquire(&dirty_control.seq);
        if (seq != seen_seq) {
            uint32_t new_mode = load_relaxed(&dirty_control.mode);
            if (new_mode == DIRTY_RUN) {
                if (mode == DIRTY_IDLE)
                    cursor_restart(cpu); /* a new run; after a pause the cursor carries on */
                pacer_restart(cpu, rdtsc());
            }
            mode = new_mode;
            seen_seq = seq;
            store_release(&cpu->acked_seq, seq);
            busy_tsc = rdtsc();
            continue;
        }
        if (mode == DIRTY_RUN && cpu->slice_pages != 0) {
            uint64_t now = rdtsc();
            if (now >= cpu->next_tick_tsc) {
                cpu->next_tick_tsc = now + tick_cycles;
                /* A mode change is honoured between pages: the page being written is always finished. */
                for (uint64_t owed = pages_owed(cpu, now);
                     owed > 0 && load_relaxed(&dirty_control.seq) == seen_seq; owed--)
                    dirty_next_page(cpu);
            }
        } else if (can_idle != 0 && rdtsc() - busy_tsc >= idle_spin_cycles) {
            idle_sleep_us(IDLE_WORKER_MAX_US);
            continue;
        }
        cpu_relax();
    }
}

void workload_cpu0_step(uint64_t deadline)
{
    struct dirty_cpu *cpu = &dirty_cpus[0];
    if (cpu->slice_pages == 0)
        return;
    for (uint64_t owed = pages_owed(cpu, rdtsc()); owed > 0; owed--) {
        dirty_next_page(cpu);
        if (rdtsc() >= deadline)
            break;
    }
}

/* Publishes a new mode and waits until every worker has acted on it. The wait counts guest running time in
 * steps of at most 1 ms, so a host that pauses the VM meanwhile does not trip the timeout. */
static void dirty_set_mode(enum dirty_mode mode)
{
    store_relaxed(&dirty_control.mode, (uint32_t)mode);
    uint32_t seq = dirty_control.seq + 1;
    store_release(&dirty_control.seq, seq);
    idle_wake_all(); /* workers with nothing to do sleep at the idle port */

    uint64_t waited = 0, last = rdtsc();
    for (unsigned cpu = 1; cpu < cpu_count; cpu++) {
        while (load_acquire(&dirty_cpus[cpu].acked_seq) != seq) {
            cpu_relax();
            uint64_t now = rdtsc();
            uint64_t step = now - last;
            waited += step < tick_cycles ? step : tick_cycles;
            last = now;
            if (waited > ACK_TIMEOUT_MS * tick_cycles) {
                struct out out;
                out_init(&out, error_text, sizeof(error_text));
                out_str(&out, "vCPU ");
                out_u64(&out, cpu);
                out_str(&out, " did not acknowledge a dirty-workload mode change");
                out_terminate(&out);
                panic(error_text);
            }
        }
    }
}

/* ---- the commands ---- */

const char *workload_fill(uint64_t mib, struct fill_result *result)
{
    uint64_t start = rdtsc();
    uint64_t pages = mib * PAGES_PER_MIB;
    if (mib > UINT64_MAX / PAGES_PER_MIB || !reclaim_make_room(pages, RECLAIM_OOM))
        return out_of_memory(mib);
    result->pages = pages;
    result->generation = pattern_next_generation();
    result->range_count = 0;
    result->ranges_truncated = false;
    allocate_blocks(&fill_blocks, pages, result->generation, result);
    result->ns = tsc_to_ns(rdtsc() - start);
    return NULL;
}

uint64_t workload_free_fill(uint64_t mib)
{
    uint64_t wanted = mib > UINT64_MAX / PAGES_PER_MIB ? UINT64_MAX : mib * PAGES_PER_MIB;
    uint64_t freed = 0;
    while (freed < wanted && fill_blocks.head != PFN_NONE) {
        uint32_t pfn = fill_blocks.head;
        uint64_t count = block_pages(pfn);
        if (count > wanted - freed) {
            /* Free exactly what was asked: split the newest block, its upper half becomes the newest. */
            block_list_push(&fill_blocks, buddy_split_allocated(pfn));
            continue;
        }
        block_list_remove(&fill_blocks, pfn);
        release_block(pfn);
        freed += count;
    }
    return freed;
}

bool workload_dirty_running(void)
{
    return workload_cpu0_dirtying;
}

uint64_t workload_pages_dirtied(unsigned cpu)
{
    return load_relaxed(&dirty_cpus[cpu].pages_dirtied) - dirty_baseline[cpu];
}

uint64_t workload_verify_failures_total(void)
{
    return verify_failures_total;
}

uint64_t workload_dirty_stop(void)
{
    if (workload_cpu0_dirtying) {
        dirty_set_mode(DIRTY_IDLE);
        workload_cpu0_dirtying = false;
    }
    uint64_t total = 0;
    for (unsigned cpu = 0; cpu < cpu_count; cpu++)
        total += workload_pages_dirtied(cpu);
    return total;
}

uint64_t workload_free_all(void)
{
    workload_dirty_stop();
    return release_list(&working_set) + release_list(&fill_blocks);
}

const char *workload_dirty_start(uint64_t rate_mib_s, uint64_t wss_mib, uint64_t *pages_out)
{
    if (workload_cpu0_dirtying)
        return "dirty is already running (stop it first)";
    uint64_t pages = wss_mib * PAGES_PER_MIB;
    if (wss_mib > UINT64_MAX / PAGES_PER_MIB || !reclaim_make_room(pages, RECLAIM_OOM))
        return out_of_memory(wss_mib);

    /* A stopped run's working set stays allocated and verifiable: it joins the fill blocks as the newest. */
    while (working_set.head != PFN_NONE) {
        uint32_t pfn = working_set.head;
        block_list_remove(&working_set, pfn);
        block_list_push(&fill_blocks, pfn);
    }
    allocate_blocks(&working_set, pages, pattern_next_generation(), NULL);

    /* vCPU i owns pages [pages * i / n, pages * (i + 1) / n) of the working set, walked in list order, and
     * dirties them at its share of the rate. */
    uint64_t total_rate_pages_per_ks = rate_mib_s * PAGES_PER_MIB * 1000;
    uint32_t block = working_set.head;
    uint64_t block_offset = 0, position = 0;
    for (unsigned i = 0; i < cpu_count; i++) {
        uint64_t first = pages * i / cpu_count, end = pages * (i + 1) / cpu_count;
        while (position < first) {
            uint64_t step = block_pages(block) - block_offset;
            if (step > first - position)
                step = first - position;
            block_offset += step;
            position += step;
            if (block_offset == block_pages(block)) {
                block = page_meta[block].next;
                block_offset = 0;
            }
        }
        struct dirty_cpu *cpu = &dirty_cpus[i];
        cpu->slice_first_block = block;
        cpu->slice_first_offset = (uint32_t)block_offset;
        cpu->slice_pages = end - first;
        cpu->rate_pages_per_ks = mul_div_u64(total_rate_pages_per_ks, end - first, pages);
        cpu->max_backlog_pages = cpu->rate_pages_per_ks * DIRTY_MAX_BACKLOG_MS / 1000000;
        if (cpu->max_backlog_pages == 0)
            cpu->max_backlog_pages = 1;
        dirty_baseline[i] = load_relaxed(&cpu->pages_dirtied);
    }
    cursor_restart(&dirty_cpus[0]);
    pacer_restart(&dirty_cpus[0], rdtsc());
    dirty_set_mode(DIRTY_RUN);
    workload_cpu0_dirtying = true;
    *pages_out = pages;
    return NULL;
}

void workload_verify(struct verify_result *result)
{
    bool running = workload_cpu0_dirtying;
    if (running)
        dirty_set_mode(DIRTY_PAUSE);

    result->pages_checked = 0;
    result->failures = 0;
    result->reported = 0;
    const struct block_list *lists[] = {&fill_blocks, &working_set};
    for (unsigned l = 0; l < sizeof(lists) / sizeof(lists[0]); l++) {
        for (uint32_t pfn = lists[l]->head; pfn != PFN_NONE; pfn = page_meta[pfn].next) {
            uint64_t count = block_pages(pfn);
            for (uint64_t i = 0; i < count; i++)
                verify_page(pfn + (uint32_t)i, result);
        }
    }
    verify_failures_total += result->failures;

    if (running) {
        dirty_set_mode(DIRTY_RUN);
        pacer_restart(&dirty_cpus[0], rdtsc()); /* the workers restart their pacers on DIRTY_RUN */
    }
}
