/* The memory workload the host drives through the shell: fill, free, dirty, stop, verify (docs/guest-abi.md). */
#ifndef FERRY_WORKLOAD_H
#define FERRY_WORKLOAD_H

#include <stdbool.h>
#include <stdint.h>

#define PAGES_PER_MIB 256
#define FILL_MAX_RANGES 64
#define VERIFY_MAX_REPORTED 16
#define DIRTY_MAX_RATE_MIB_S 1000000 /* keeps the pacing arithmetic far from overflow */

struct phys_range {
    uint64_t addr;
    uint64_t bytes;
};

struct fill_result {
    uint64_t pages;
    uint32_t generation;
    uint64_t ns;
    unsigned range_count;
    bool ranges_truncated;
    struct phys_range ranges[FILL_MAX_RANGES]; /* physically contiguous runs, in allocation order */
};

struct verify_failure {
    uint64_t addr; /* of the 8-byte word */
    uint64_t expected;
    uint64_t found;
};

struct verify_result {
    uint64_t pages_checked;
    uint64_t failures; /* mismatching 8-byte words */
    unsigned reported;
    struct verify_failure first_failures[VERIFY_MAX_REPORTED];
};

/* vCPU 0 only, before the other vCPUs are released. */
void workload_init(unsigned cpu_count, uint64_t tsc_khz);

/*
 * The commands. All run on vCPU 0. The const char * ones return NULL on success or an error message (valid until
 * the next call).
 */
const char *workload_fill(uint64_t mib, struct fill_result *result);
uint64_t workload_free_fill(uint64_t mib); /* returns the pages freed */
uint64_t workload_free_all(void);          /* stops dirty first; returns the pages freed */
const char *workload_dirty_start(uint64_t rate_mib_s, uint64_t wss_mib, uint64_t *pages);
uint64_t workload_dirty_stop(void); /* returns the pages dirtied by the run */
void workload_verify(struct verify_result *result);

bool workload_dirty_running(void);
uint64_t workload_pages_dirtied(unsigned cpu); /* by this vCPU in the current or last dirty run */
uint64_t workload_verify_failures_total(void); /* failures found by all verify commands since boot */

/* vCPU 0's share of the dirty work, called from the console loop: writes owed pages until `deadline` (TSC). */
extern bool workload_cpu0_dirtying; /* read inline by the console loop so its idle path makes no calls */
void workload_cpu0_step(uint64_t deadline);

/* The loop of every vCPU but 0. While no dirty run is active it only reads memory. */
__attribute__((noreturn)) void workload_worker_loop(unsigned cpu);

#endif
