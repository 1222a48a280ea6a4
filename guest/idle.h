/* The idle hint (docs/guest-abi.md, port 0xF5): `hlt` is privileged at CPL3, so a loop with nothing to do tells
 * the VMM instead, and the VMM takes the vCPU off the host CPU until something happens or the time runs out.
 * Only under a VMM that sets BOOT_FLAG_IDLE_PORT in the boot-info page (Ferry; not QEMU under PVH). */
#ifndef FERRY_IDLE_H
#define FERRY_IDLE_H

#include <stdint.h>

#include "io.h"

#define IDLE_PORT 0xF5
#define IDLE_SPIN_US 100 /* how long a loop polls with nothing to do before it asks to sleep */
#define IDLE_MIN_US 20   /* a shorter sleep is not worth the exit: keep spinning */
/* The longest sleeps asked for. vCPU 0 polls the UART and the balloon's InterruptStatus by itself (every 2 ms,
 * BALLOON_ISR_POLL_US), so it never sleeps past that, even though the VMM wakes it for both. The other vCPUs
 * only wait for vCPU 0, which wakes them (idle_wake_all) whenever it publishes work: they take the VMM's cap. */
#define IDLE_MAX_US 2000
#define IDLE_WORKER_MAX_US 10000

/* Set by vCPU 0 from the boot-info flags before it releases the other vCPUs; read-only afterwards. Read inline
 * by the idle loops, which must make no calls (a call writes the stack). */
extern uint32_t idle_port_present;

/* Sleeps up to `us` microseconds (1..10000): returns early when the VMM has something for the guest (console
 * input, a device change, another vCPU's idle_wake_all) or wants the vCPU (pause). Only if idle_port_present. */
static inline void idle_sleep_us(uint32_t us)
{
    outl(IDLE_PORT, us);
}

/* Wakes every vCPU sleeping in idle_sleep_us (the guest's stand-in for an IPI): call after publishing work for
 * the other vCPUs. Nothing without the idle port. */
static inline void idle_wake_all(void)
{
    if (load_relaxed(&idle_port_present) != 0)
        outl(IDLE_PORT, 0);
}

#endif
