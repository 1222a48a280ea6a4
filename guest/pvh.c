/* PVH boot: struct hvm_start_info (and what pvh_entry.S found at CPL0) -> the Ferry boot-info page. Runs at CPL3;
 * start_info, its memory map and command line are identity-mapped like all RAM. */
#include "pvh.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "format.h"
#include "io.h"
#include "lib.h"
#include "panic.h"

#define HVM_START_MAGIC 0x336ec578u
#define E820_RAM 1

/* The allocator never uses memory below 1 MiB (buddy.c reserves it): boot structures there need no carving out of
 * the RAM ranges. */
#define LOW_MEMORY_END 0x100000ull

/* QEMU microvm's virtio-mmio transports: 512 bytes each from here (hw/i386/microvm.c). */
#define MICROVM_VIRTIO_BASE 0xfeb00000ull
#define MICROVM_VIRTIO_STRIDE 0x200ull
#define MICROVM_VIRTIO_SLOTS 32
#define VIRTIO_MMIO_MAGIC 0x74726976u
#define VIRTIO_MMIO_DEVICE_ID 0x008

/* xen/include/public/arch-x86/hvm/start_info.h */
struct hvm_start_info {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr; /* version >= 1 */
    uint32_t memmap_entries;
    uint32_t reserved;
};

struct hvm_modlist_entry {
    uint64_t paddr;
    uint64_t size;
    uint64_t cmdline_paddr;
    uint64_t reserved;
};

struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
};

/* The kvmclock page (Linux's struct pvclock_vcpu_time_info). */
struct pvclock_time_info {
    uint32_t version;
    uint32_t pad0;
    uint64_t tsc_timestamp;
    uint64_t system_time;
    uint32_t tsc_to_system_mul;
    int8_t tsc_shift;
    uint8_t flags;
    uint8_t pad[2];
};

_Static_assert(sizeof(struct hvm_start_info) == 56, "hvm_start_info is 56 bytes");
_Static_assert(sizeof(struct hvm_memmap_table_entry) == 24, "memmap entries are 24 bytes");
_Static_assert(sizeof(struct pvclock_time_info) == 32, "pvclock_vcpu_time_info is 32 bytes");

/* Left by pvh_entry.S. */
extern uint64_t pvh_start_info;   /* EBX at entry */
extern uint64_t pvh_map_end;      /* [0, pvh_map_end) is identity-mapped ... */
extern uint32_t pvh_window_start; /* ... and [pvh_window_start, 4 GiB), the device window */
extern uint32_t pvh_map_1g;       /* with 1 GiB pages (else 2 MiB pages) */
extern uint32_t pvh_pvclock_used; /* the stub enabled kvmclock on pvh_pvclock, then disabled it */
extern struct pvclock_time_info pvh_pvclock;

static struct boot_info pvh_info __attribute__((aligned(4096)));

struct range {
    uint64_t start, end;
};

/* ---- helpers ---- */

static bool mapped(uint64_t addr, uint64_t len)
{
    uint64_t end = addr + len;
    if (end < addr)
        return false;
    return end <= pvh_map_end || (addr >= pvh_window_start && end <= (1ull << 32));
}

static char pvh_error[160];

__attribute__((noreturn)) static void fail(const char *what, const char *word, size_t word_len)
{
    struct out out;
    out_init(&out, pvh_error, sizeof(pvh_error));
    out_str(&out, "PVH boot: ");
    out_str(&out, what);
    if (word != NULL) {
        out_str(&out, ": ");
        out_bytes(&out, word, word_len > 64 ? 64 : word_len);
    }
    out_terminate(&out);
    panic(pvh_error);
}

static bool word_is_key(const char *word, size_t len, const char *key, const char **value, size_t *value_len)
{
    size_t n = strlen(key);
    if (len <= n || memcmp(word, key, n) != 0 || word[n] != '=')
        return false;
    *value = word + n + 1;
    *value_len = len - n - 1;
    return true;
}


/* Length of the number at the start of [s, s + len): 0x-prefixed hex digits or decimal digits. */
static size_t number_length(const char *s, size_t len)
{
    size_t i = 0;
    if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        i = 2;
        while (i < len && ((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') || (s[i] >= 'A' && s[i] <= 'F')))
            i++;
        return i > 2 ? i : 0;
    }
    while (i < len && s[i] >= '0' && s[i] <= '9')
        i++;
    return i;
}

/* ---- RAM ranges ---- */

static struct range ram[BOOT_INFO_MAX_RAM_RANGES];
static unsigned ram_count;

/* Adds [start, end) to the sorted, merged list of RAM ranges. */
static void ram_add(uint64_t start, uint64_t end)
{
    if (start >= end)
        return;
    /* Merge with every range it overlaps or touches, then insert the union in order. */
    unsigned i = 0;
    while (i < ram_count) {
        if (ram[i].end >= start && ram[i].start <= end) {
            if (ram[i].start < start)
                start = ram[i].start;
            if (ram[i].end > end)
                end = ram[i].end;
            for (unsigned j = i + 1; j < ram_count; j++)
                ram[j - 1] = ram[j];
            ram_count--;
        } else {
            i++;
        }
    }
    if (ram_count == BOOT_INFO_MAX_RAM_RANGES)
        fail("more than 8 separate RAM ranges in the memory map", NULL, 0);
    unsigned at = ram_count++;
    while (at > 0 && ram[at - 1].start > start) {
        ram[at] = ram[at - 1];
        at--;
    }
    ram[at] = (struct range){start, end};
}

/* Takes [start, end) (rounded out to pages) out of the RAM ranges: memory start_info points at. */
static void ram_reserve(uint64_t start, uint64_t len)
{
    if (len == 0)
        return;
    uint64_t end = start + len < start ? UINT64_MAX : start + len;
    start &= ~(uint64_t)(PAGE_SIZE - 1);
    end = end > UINT64_MAX - (PAGE_SIZE - 1) ? UINT64_MAX : (end + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
    if (end <= LOW_MEMORY_END)
        return; /* never handed out anyway */
    for (unsigned i = 0; i < ram_count; i++) {
        struct range *r = &ram[i];
        if (r->end <= start || r->start >= end)
            continue;
        if (r->start < start && r->end > end) {
            /* Split in two. */
            if (ram_count == BOOT_INFO_MAX_RAM_RANGES)
                fail("more than 8 RAM ranges after reserving the boot structures", NULL, 0);
            for (unsigned j = ram_count; j > i + 1; j--)
                ram[j] = ram[j - 1];
            ram_count++;
            ram[i + 1] = (struct range){end, r->end};
            r->end = start;
            i++;
        } else if (r->start < start) {
            r->end = start;
        } else if (r->end > end) {
            r->start = end;
        } else {
            for (unsigned j = i + 1; j < ram_count; j++)
                ram[j - 1] = ram[j];
            ram_count--;
            i--;
        }
    }
}

/* ---- devices ---- */

static void device_add(uint64_t base, uint64_t size, uint32_t irq)
{
    if (size < MICROVM_VIRTIO_STRIDE || !mapped(base, size))
        return; /* the driver could not touch it */
    for (unsigned i = 0; i < pvh_info.device_count; i++) {
        if (pvh_info.devices[i].base == base)
            return;
    }
    if (pvh_info.device_count == BOOT_INFO_MAX_DEVICES)
        return;
    pvh_info.devices[pvh_info.device_count++] = (struct boot_device){base, size, 1, irq};
}

/* Linux's virtio_mmio.device=<size>[KMG]@<baseaddr>:<irq>[:<id>], as QEMU microvm appends it for -kernel. */
static void parse_virtio_device(const char *word, size_t word_len, const char *v, size_t len)
{
    uint64_t size, base, irq;
    size_t n = number_length(v, len);
    if (n == 0 || !parse_hex_or_decimal_u64(v, n, &size))
        fail("bad virtio_mmio.device", word, word_len);
    v += n;
    len -= n;
    if (len > 0 && (*v == 'K' || *v == 'k' || *v == 'M' || *v == 'm' || *v == 'G' || *v == 'g')) {
        unsigned shift = (*v == 'K' || *v == 'k') ? 10 : (*v == 'M' || *v == 'm') ? 20 : 30;
        if (size > (UINT64_MAX >> shift))
            fail("bad virtio_mmio.device", word, word_len);
        size <<= shift;
        v++;
        len--;
    }
    if (len == 0 || *v != '@')
        fail("bad virtio_mmio.device", word, word_len);
    v++;
    len--;
    n = number_length(v, len);
    if (n == 0 || !parse_hex_or_decimal_u64(v, n, &base))
        fail("bad virtio_mmio.device", word, word_len);
    v += n;
    len -= n;
    if (len == 0 || *v != ':')
        fail("bad virtio_mmio.device", word, word_len);
    v++;
    len--;
    n = number_length(v, len);
    if (n == 0 || !parse_hex_or_decimal_u64(v, n, &irq) || irq > UINT32_MAX)
        fail("bad virtio_mmio.device", word, word_len);
    v += n;
    len -= n;
    if (len > 0 && (*v != ':' || number_length(v + 1, len - 1) != len - 1))
        fail("bad virtio_mmio.device", word, word_len); /* an optional :<id> (Linux's platform device id) */
    device_add(base, size, (uint32_t)irq);
}

/* Without the command line's list (QEMU 7.2 microvm adds it only with acpi=off): every transport slot. Each read
 * is an exit to QEMU (tens of microseconds here), so DeviceID first (0 for an empty transport, and QEMU reads
 * unassigned addresses as 0), MagicValue only where there is something. */
static void probe_microvm_devices(void)
{
    for (unsigned i = 0; i < MICROVM_VIRTIO_SLOTS; i++) {
        uint64_t base = MICROVM_VIRTIO_BASE + i * MICROVM_VIRTIO_STRIDE;
        uint32_t id = mmio_read32(base + VIRTIO_MMIO_DEVICE_ID);
        if (id != 0 && id != UINT32_MAX && mmio_read32(base) == VIRTIO_MMIO_MAGIC)
            device_add(base, MICROVM_VIRTIO_STRIDE, 0);
    }
}

/* ---- TSC frequency ---- */

static void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

/* pvclock: ns = ((tsc << shift) * mul) >> 32 (shift >= 0; tsc >> -shift otherwise), so the TSC runs at
 * 10^6 * 2^32 / mul ticks per ms, divided by 2^shift (Linux's pvclock_tsc_khz). */
static uint64_t kvmclock_tsc_khz(void)
{
    if (!pvh_pvclock_used)
        return 0;
    const volatile struct pvclock_time_info *clock = &pvh_pvclock;
    uint32_t version = clock->version;
    uint32_t mul = clock->tsc_to_system_mul;
    int shift = clock->tsc_shift;
    if (version == 0 || (version & 1) != 0 || mul == 0 || shift > 31 || shift < -31)
        return 0;
    uint64_t khz = (1000000ull << 32) / mul;
    return shift < 0 ? khz << -shift : khz >> shift;
}

/* Without kvmclock: the hypervisor's timing leaf (VMware's 0x40000010, which QEMU offers with invtsc), then the
 * CPU's own leaves 0x15 (TSC/crystal ratio) and 0x16 (base MHz). 0 if none says. */
static uint64_t cpuid_tsc_khz(void)
{
    uint32_t a, b, c, d;
    cpuid(0x40000000, &a, &b, &c, &d);
    if (a >= 0x40000010 && a < 0x40000100) {
        cpuid(0x40000010, &a, &b, &c, &d);
        if (a != 0)
            return a;
    }
    cpuid(0, &a, &b, &c, &d);
    uint32_t max_leaf = a;
    if (max_leaf >= 0x15) {
        cpuid(0x15, &a, &b, &c, &d);
        if (a != 0 && b != 0 && c != 0)
            return (uint64_t)c * b / a / 1000;
    }
    if (max_leaf >= 0x16) {
        cpuid(0x16, &a, &b, &c, &d);
        if ((a & 0xffff) != 0)
            return (uint64_t)(a & 0xffff) * 1000;
    }
    return 0;
}

/* ---- the boot-info page ---- */

const struct boot_info *pvh_boot_info(void)
{
    const struct hvm_start_info *si = (const struct hvm_start_info *)pvh_start_info;
    if (!mapped(pvh_start_info, sizeof(*si)) || si->magic != HVM_START_MAGIC)
        fail("no hvm_start_info (EBX does not point at the PVH magic)", NULL, 0);
    if (si->version < 1 || si->memmap_entries == 0 ||
        !mapped(si->memmap_paddr, (uint64_t)si->memmap_entries * sizeof(struct hvm_memmap_table_entry)))
        fail("start_info has no memory map", NULL, 0);

    struct boot_info *info = &pvh_info;
    info->magic = BOOT_INFO_MAGIC;
    info->version = BOOT_INFO_VERSION;
    info->cpu_count = 1; /* PVH starts only the boot CPU */
    info->flags = 0;

    /* The command line, copied (it may be longer than ours: the rest is dropped). */
    uint64_t cmdline_bytes = 0; /* in guest memory, with the NUL */
    if (si->cmdline_paddr != 0 && mapped(si->cmdline_paddr, 1)) {
        const char *src = (const char *)si->cmdline_paddr;
        size_t len = 0;
        while (mapped(si->cmdline_paddr + len, 1) && src[len] != 0 && len < 65536)
            len++;
        cmdline_bytes = len + 1;
        if (len > BOOT_INFO_CMDLINE_SIZE - 1)
            len = BOOT_INFO_CMDLINE_SIZE - 1;
        memcpy(info->cmdline, src, len);
        info->cmdline[len] = 0;
        info->cmdline_len = (uint32_t)len;
    }

    /* RAM: the memory map's RAM entries, within what the stub mapped. */
    const struct hvm_memmap_table_entry *map = (const struct hvm_memmap_table_entry *)si->memmap_paddr;
    uint64_t mapped_end = pvh_map_end;
    for (uint32_t i = 0; i < si->memmap_entries; i++) {
        if (map[i].type != E820_RAM)
            continue;
        uint64_t start = map[i].addr, end = map[i].addr + map[i].size;
        if (end < start)
            continue;
        if (end > mapped_end)
            end = mapped_end;
        ram_add(start, end);
    }
    uint64_t ram_bytes = 0;
    for (unsigned i = 0; i < ram_count; i++)
        ram_bytes += ram[i].end - ram[i].start;
    if (ram_bytes == 0)
        fail("no RAM in the memory map", NULL, 0);
    /* Memory start_info points at stays out of the allocator (the page tables and the kvmclock page are in the
     * image's .bss, which it never manages). */
    ram_reserve(pvh_start_info, sizeof(*si));
    ram_reserve(si->memmap_paddr, (uint64_t)si->memmap_entries * sizeof(struct hvm_memmap_table_entry));
    ram_reserve(si->cmdline_paddr, cmdline_bytes);
    ram_reserve(si->rsdp_paddr, si->rsdp_paddr != 0 ? 36 : 0); /* ACPI 2.0 RSDP */
    if (si->nr_modules != 0 && si->modlist_paddr != 0) {
        uint64_t list_bytes = (uint64_t)si->nr_modules * sizeof(struct hvm_modlist_entry);
        ram_reserve(si->modlist_paddr, list_bytes);
        const struct hvm_modlist_entry *mods = (const struct hvm_modlist_entry *)si->modlist_paddr;
        for (uint32_t i = 0; i < si->nr_modules && i < 16 && mapped(si->modlist_paddr, list_bytes); i++)
            ram_reserve(mods[i].paddr, mods[i].size);
    }
    info->ram_bytes = ram_bytes;
    info->ram_range_count = ram_count;
    for (unsigned i = 0; i < ram_count; i++)
        info->ram_ranges[i] = (struct boot_ram_range){ram[i].start, ram[i].end - ram[i].start, RAM_TYPE_USABLE, 0};

    /* The command line's keys for us: tsc_khz=N, virtio_mmio.device=... */
    uint64_t tsc_khz = 0;
    const char *cmdline = info->cmdline;
    size_t len = info->cmdline_len, pos = 0;
    while (pos < len) {
        while (pos < len && cmdline[pos] == ' ')
            pos++;
        size_t start = pos;
        while (pos < len && cmdline[pos] != ' ')
            pos++;
        const char *word = cmdline + start, *value;
        size_t word_len = pos - start, value_len;
        if (word_is_key(word, word_len, "tsc_khz", &value, &value_len)) {
            if (!parse_hex_or_decimal_u64(value, value_len, &tsc_khz) || tsc_khz == 0 || tsc_khz > 100000000)
                fail("bad command line option", word, word_len);
        } else if (word_is_key(word, word_len, "virtio_mmio.device", &value, &value_len)) {
            parse_virtio_device(word, word_len, value, value_len);
        }
    }
    if (info->device_count == 0)
        probe_microvm_devices();

    if (tsc_khz == 0)
        tsc_khz = kvmclock_tsc_khz();
    if (tsc_khz == 0)
        tsc_khz = cpuid_tsc_khz();
    if (tsc_khz == 0)
        fail("no TSC frequency (no kvmclock, no CPUID leaf): pass tsc_khz=N on the command line", NULL, 0);
    info->tsc_khz = tsc_khz;
    return info;
}
