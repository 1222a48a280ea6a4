/* guest_main: vCPU 0 initialises the OS and runs the console loop; the other vCPUs run dirty workers. */
#include <stdint.h>

#include "balloon.h"
#include "bootinfo.h"
#include "buddy.h"
#include "config.h"
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

/*
 * The idle path of this loop writes no memory: no calls (a call pushes a return address), state in registers,
 * and the balloon driver is entered only when the device raised InterruptStatus, when it asked for a wake-up
 * time, or when the allocator has a new block to report.
 */
__attribute__((noreturn)) static void console_loop(uint64_t tsc_khz)
{
    const uint64_t poll_cycles = tsc_khz * CONSOLE_POLL_INTERVAL_US / 1000;
    const uint64_t isr_cycles = tsc_khz * BALLOON_ISR_POLL_US / 1000;
    uint64_t next_poll = rdtsc();
    uint64_t next_isr = next_poll;
    for (;;) {
        uint64_t now = rdtsc();
        if (now >= next_poll) {
            uint8_t byte;
            while (serial_try_read(&byte))
                shell_input_byte(byte);
            next_poll = rdtsc() + poll_cycles;
        }
        /* vCPU 0's share of a dirty run, done between polls so the console stays responsive. */
        if (workload_cpu0_dirtying)
            workload_cpu0_step(next_poll);
        if (now >= next_isr) {
            next_isr = now + isr_cycles;
            uint32_t isr = balloon_isr_peek();
            if (isr != 0)
                balloon_service(isr);
        }
        if (now >= load_relaxed(&balloon_wake_tsc) || load_relaxed(&buddy_report_kick) != 0)
            balloon_service(0);
        cpu_relax();
    }
}

__attribute__((noreturn)) static void secondary_main(const struct boot_info *info, unsigned cpu_index)
{
    while (load_acquire(&boot_complete) == 0)
        cpu_relax();
    if (cpu_index >= info->cpu_count) {
        for (;;)
            cpu_relax(); /* a vCPU the boot-info page does not count: give it nothing to do */
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
    workload_init(info->cpu_count, info->tsc_khz);
    /* Before "ready": the driver's rings are reserved memory, not part of usable_bytes. */
    balloon_init(info, &options);
    shell_init(info);

    store_release(&boot_complete, 1);
    shell_announce_ready();
    console_loop(info->tsc_khz);
}
