/* guest_main: vCPU 0 initialises the OS and runs the console loop; the other vCPUs run dirty workers. */
#include <stdint.h>

#include "balloon.h"
#include "bootinfo.h"
#include "buddy.h"
#include "cache.h"
#include "config.h"
#include "idle.h"
#include "io.h"
#include "layout.h"
#include "panic.h"
#include "serial.h"
#include "shell.h"
#include "workload.h"

/* How often vCPU 0 looks at the UART when idle. Each look is a VM exit, so not in a tight loop. */
#define CONSOLE_POLL_INTERVAL_US 30

/* Set (release) by vCPU 0 once the allocator and workload are ready; the other vCPUs wait for it. */
static uint32_t boot_complete;

uint32_t idle_port_present;

/*
 * The idle path of this loop writes no memory: no calls (a call pushes a return address), state in registers,
 * and the balloon driver is entered only when the device raised InterruptStatus, when it asked for a wake-up
 * time, or when the allocator has a new block to report.
 *
 * After IDLE_SPIN_US with nothing to do it sleeps at the idle port (if the VMM has one) until the next thing it
 * must look at by itself: the InterruptStatus check, the balloon driver's wake-up time, at most IDLE_MAX_US. The
 * VMM ends the sleep early when console input arrives or the device has something; then the UART and
 * InterruptStatus are looked at at once.
 */
__attribute__((noreturn)) static void console_loop(uint64_t tsc_khz)
{
    const uint64_t poll_cycles = tsc_khz * CONSOLE_POLL_INTERVAL_US / 1000;
    const uint64_t isr_cycles = tsc_khz * BALLOON_ISR_POLL_US / 1000;
    const uint64_t idle_spin_cycles = tsc_khz * IDLE_SPIN_US / 1000;
    const uint64_t idle_min_cycles = tsc_khz * IDLE_MIN_US / 1000;
    const uint64_t idle_max_cycles = tsc_khz * IDLE_MAX_US / 1000;
    const uint32_t can_idle = load_relaxed(&idle_port_present);
    uint64_t next_poll = rdtsc();
    uint64_t next_isr = next_poll;
    uint64_t busy_tsc = next_poll; /* when the loop last had something to do */
    for (;;) {
        uint64_t now = rdtsc();
        if (now >= next_poll) {
            uint8_t byte;
            while (serial_try_read(&byte)) {
                shell_input_byte(byte);
                busy_tsc = rdtsc();
            }
            next_poll = rdtsc() + poll_cycles;
        }
        /* vCPU 0's share of a dirty run, done between polls so the console stays responsive. */
        if (workload_cpu0_dirtying) {
            workload_cpu0_step(next_poll);
            busy_tsc = rdtsc();
        }
        if (now >= next_isr) {
            next_isr = now + isr_cycles;
            uint32_t isr = balloon_isr_peek();
            if (isr != 0) {
                balloon_service(isr);
                busy_tsc = rdtsc();
            }
        }
        uint64_t wake = load_relaxed(&balloon_wake_tsc);
        if (now >= wake || load_relaxed(&buddy_report_kick) != 0) {
            balloon_service(0);
            busy_tsc = rdtsc();
        } else if (can_idle != 0 && now > busy_tsc && now - busy_tsc >= idle_spin_cycles) {
            uint64_t until = now + idle_max_cycles;
            if (next_isr < until)
                until = next_isr;
            if (wake < until)
                until = wake;
            if (until > now + idle_min_cycles) {
                uint64_t cycles = until - now;
                idle_sleep_us((uint32_t)(cycles * 1000 / tsc_khz));
                uint64_t after = rdtsc();
                next_poll = after; /* the UART at once */
                if (after - now < cycles - cycles / 8)
                    next_isr = after; /* woken early: the device may have something too */
                continue;
            }
        }
        cpu_relax();
    }
}

__attribute__((noreturn)) static void secondary_main(const struct boot_info *info, unsigned cpu_index)
{
    /* Read here, not from idle_port_present: vCPU 0 sets that only just before it releases us. Under PVH there
     * are no secondary vCPUs. */
    const int can_idle = (info->flags & BOOT_FLAG_IDLE_PORT) != 0;
    const uint64_t idle_spin_cycles = info->tsc_khz * IDLE_SPIN_US / 1000;
    const uint64_t start = rdtsc();
    while (load_acquire(&boot_complete) == 0) {
        if (can_idle && rdtsc() - start >= idle_spin_cycles)
            idle_sleep_us(IDLE_WORKER_MAX_US); /* vCPU 0 wakes us when it is done */
        else
            cpu_relax();
    }
    if (cpu_index >= info->cpu_count) {
        for (;;) { /* a vCPU the boot-info page does not count: give it nothing to do */
            if (can_idle)
                idle_sleep_us(IDLE_WORKER_MAX_US);
            else
                cpu_relax();
        }
    }
    workload_worker_loop(cpu_index);
}

__attribute__((noreturn)) void guest_main(const struct boot_info *info, uint64_t cpu_index);

void guest_main(const struct boot_info *info, uint64_t cpu_index)
{
    if (cpu_index != 0)
        secondary_main(info, (unsigned)cpu_index);

    const char *error = boot_info_validate(info);
    if (error != NULL)
        panic(error);
    struct guest_options options;
    error = boot_info_parse_options(info, &options);
    if (error != NULL)
        panic(error);
    error = buddy_init(info, (uint64_t)__image_start, (uint64_t)_end, options.free_mode, options.poison);
    if (error != NULL)
        panic(error);
    idle_port_present = (info->flags & BOOT_FLAG_IDLE_PORT) != 0;
    workload_init(info->cpu_count, info->tsc_khz);
    cache_init();
    /* Before "ready": the driver's rings are reserved memory, not part of usable_bytes. */
    balloon_init(info, &options);
    shell_init(info);

    store_release(&boot_complete, 1);
    idle_wake_all();
    shell_announce_ready();
    console_loop(info->tsc_khz);
}
