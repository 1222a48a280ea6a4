/* The virtio-balloon driver (docs/virtio-balloon.md): polled from vCPU 0's console loop, no interrupts. */
#ifndef FERRY_BALLOON_H
#define FERRY_BALLOON_H

#include <stdbool.h>
#include <stdint.h>

#include "bootinfo.h"
#include "io.h"

/* Read inline by the idle loop, which must make no calls (a call writes the stack): the InterruptStatus
 * register's address (0 while there is no usable device) and the TSC at which the driver wants to run again
 * (UINT64_MAX: not until the device or the allocator says something). */
extern uint64_t balloon_isr_address;
extern uint64_t balloon_wake_tsc;

#define BALLOON_ISR_POLL_US 2000 /* how often the idle loop reads InterruptStatus (one MMIO exit) */

/* One MMIO read, or nothing without a device. */
static inline uint32_t balloon_isr_peek(void)
{
    uint64_t address = load_relaxed(&balloon_isr_address);
    return address != 0 ? mmio_read32(address) : 0;
}

/* Finds, negotiates and starts the balloon (vCPU 0, before the shell). A missing device is not an error; a
 * faulty one is reported as a virtio_error event and left alone. Registers the driver's reclaimers (held free
 * page hints, deflate on OOM) either way. */
void balloon_init(const struct boot_info *info, const struct guest_options *options);

/* The driver's work: acknowledges `isr` (as peeked), reaps returned buffers, acts on config changes and does
 * one slice of whatever is in progress. Sets balloon_wake_tsc. */
void balloon_service(uint32_t isr);

struct balloon_info {
    bool present;
    bool broken;
    uint64_t features;
    uint64_t offered; /* what the device offered */
    uint32_t num_pages;
    uint32_t actual;
    uint32_t hint_cmd_id;
    uint64_t hinted_pages;
    uint64_t hint_runs;
    uint64_t reported_pages;
    uint64_t oom_deflated_pages;
    uint64_t block_inflated_pages;
    bool bitmap_mode;
    uint64_t free_bitmap_requests;
    uint64_t balloon_pages;
    uint64_t driver_start, driver_end; /* the reserved rings and device buffers */
};

void balloon_get_info(struct balloon_info *info);

uint64_t balloon_pages(void);
uint64_t balloon_hinted_pages(void);
uint64_t balloon_driver_start(void);
uint64_t balloon_driver_end(void);

#endif
