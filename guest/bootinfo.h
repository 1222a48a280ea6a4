/* The boot-info page the VMM writes at GPA 0x1000, and the guest command line parsed from it. */
#ifndef FERRY_BOOTINFO_H
#define FERRY_BOOTINFO_H

#include <stddef.h>
#include <stdint.h>

#define BOOT_INFO_MAGIC 0x59524546u /* "FERY" */
#define BOOT_INFO_VERSION 1
#define BOOT_INFO_MAX_RAM_RANGES 8
#define BOOT_INFO_MAX_DEVICES 16
#define BOOT_INFO_CMDLINE_SIZE 3072

/* boot_info.flags */
#define BOOT_FLAG_IDLE_PORT 1u /* the VMM handles the idle hint on port 0xF5 (idle.h) */

#define RAM_TYPE_USABLE 1
#define RAM_TYPE_RESERVED 2

struct boot_ram_range {
    uint64_t base;
    uint64_t size;
    uint32_t type;
    uint32_t zero;
};

struct boot_device {
    uint64_t base;
    uint64_t size;
    uint32_t kind; /* 1 = virtio-mmio */
    uint32_t irq;
};

struct boot_info {
    uint32_t magic;
    uint32_t version;
    uint32_t cpu_count;
    uint32_t ram_range_count;
    uint64_t tsc_khz;
    uint64_t ram_bytes;
    uint32_t device_count;
    uint32_t cmdline_len;
    uint64_t flags;
    struct boot_ram_range ram_ranges[BOOT_INFO_MAX_RAM_RANGES];
    struct boot_device devices[BOOT_INFO_MAX_DEVICES];
    uint8_t unused[1024 - 624];
    char cmdline[BOOT_INFO_CMDLINE_SIZE];
};

_Static_assert(offsetof(struct boot_info, tsc_khz) == 16, "boot_info.tsc_khz offset");
_Static_assert(offsetof(struct boot_info, flags) == 40, "boot_info.flags offset");
_Static_assert(offsetof(struct boot_info, ram_ranges) == 48, "boot_info.ram_ranges offset");
_Static_assert(offsetof(struct boot_info, devices) == 240, "boot_info.devices offset");
_Static_assert(offsetof(struct boot_info, cmdline) == 1024, "boot_info.cmdline offset");
_Static_assert(sizeof(struct boot_info) == 4096, "boot_info is one page");

enum free_mode {
    FREE_MODE_NONE,   /* freeing writes nothing into the page */
    FREE_MODE_ZERO,   /* freeing zeroes the page */
    FREE_MODE_POISON, /* freeing fills the page with the poison byte */
};

struct guest_options {
    enum free_mode free_mode;
    uint8_t poison;
    uint64_t balloon_features; /* mask of the virtio-balloon features the driver may accept (default all) */
    unsigned report_order;     /* free page reporting: smallest block order reported (default 9 = 2 MiB) */
    uint32_t report_delay_ms;  /* how long a block stays free before it is reported (default 2000) */
};

/* Checks the header fields the guest relies on. Returns NULL if usable, else a message for the panic event. */
const char *boot_info_validate(const struct boot_info *info);

/*
 * Parses the `key=value` words of the command line. Unknown keys are ignored (the VMM may pass options for
 * newer guests); a known key with a bad value is an error. Returns NULL on success, else a message naming the
 * bad word (in a static buffer).
 */
const char *boot_info_parse_options(const struct boot_info *info, struct guest_options *options);

#endif
