/* Validation of the boot-info page and parsing of the guest command line. */
#include "bootinfo.h"

#include <stdbool.h>

#include "config.h"
#include "format.h"
#include "lib.h"

const char *boot_info_validate(const struct boot_info *info)
{
    if (info->magic != BOOT_INFO_MAGIC)
        return "boot info: bad magic";
    if (info->version != BOOT_INFO_VERSION)
        return "boot info: unsupported version";
    if (info->cpu_count == 0 || info->cpu_count > MAX_CPUS)
        return "boot info: cpu_count is 0 or above MAX_CPUS (64)";
    if (info->ram_range_count == 0 || info->ram_range_count > BOOT_INFO_MAX_RAM_RANGES)
        return "boot info: ram_range_count is 0 or above 8";
    if (info->tsc_khz == 0)
        return "boot info: tsc_khz is 0";
    if (info->cmdline_len >= BOOT_INFO_CMDLINE_SIZE)
        return "boot info: cmdline_len too large";
    return NULL;
}

static bool word_equals(const char *word, size_t len, const char *literal)
{
    size_t n = strlen(literal);
    return len == n && memcmp(word, literal, n) == 0;
}

/* Accepts 0xNN (hex) or decimal, 0..255. */
static bool parse_byte(const char *s, size_t len, uint8_t *out)
{
    uint64_t value;
    if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        if (!parse_hex_u64(s + 2, len - 2, &value))
            return false;
    } else if (!parse_decimal_u64(s, len, &value)) {
        return false;
    }
    if (value > 0xff)
        return false;
    *out = (uint8_t)value;
    return true;
}


static char option_error[128];

static const char *bad_option(const char *word, size_t len)
{
    struct out out;
    out_init(&out, option_error, sizeof(option_error));
    out_str(&out, "bad command line option: ");
    out_bytes(&out, word, len > 64 ? 64 : len);
    out_terminate(&out);
    return option_error;
}

const char *boot_info_parse_options(const struct boot_info *info, struct guest_options *options)
{
    options->free_mode = FREE_MODE_NONE;
    options->poison = 0xaa;
    options->balloon_features = UINT64_MAX;
    options->report_order = 9;
    options->report_delay_ms = 2000;

    const char *cmdline = info->cmdline;
    size_t len = info->cmdline_len;
    size_t pos = 0;
    while (pos < len) {
        while (pos < len && cmdline[pos] == ' ')
            pos++;
        size_t start = pos;
        while (pos < len && cmdline[pos] != ' ')
            pos++;
        if (pos == start)
            break;
        const char *word = cmdline + start;
        size_t word_len = pos - start;
        size_t eq = 0;
        while (eq < word_len && word[eq] != '=')
            eq++;
        if (eq == word_len)
            continue; /* not key=value: not ours */
        const char *value = word + eq + 1;
        size_t value_len = word_len - eq - 1;

        if (word_equals(word, eq, "free_mode")) {
            if (word_equals(value, value_len, "none"))
                options->free_mode = FREE_MODE_NONE;
            else if (word_equals(value, value_len, "zero"))
                options->free_mode = FREE_MODE_ZERO;
            else if (word_equals(value, value_len, "poison"))
                options->free_mode = FREE_MODE_POISON;
            else
                return bad_option(word, word_len);
        } else if (word_equals(word, eq, "poison")) {
            if (!parse_byte(value, value_len, &options->poison))
                return bad_option(word, word_len);
        } else if (word_equals(word, eq, "balloon_features")) {
            if (!parse_hex_or_decimal_u64(value, value_len, &options->balloon_features))
                return bad_option(word, word_len);
        } else if (word_equals(word, eq, "report_order")) {
            uint64_t order;
            if (!parse_hex_or_decimal_u64(value, value_len, &order) || order > 10)
                return bad_option(word, word_len);
            options->report_order = (unsigned)order;
        } else if (word_equals(word, eq, "report_delay_ms")) {
            uint64_t ms;
            if (!parse_hex_or_decimal_u64(value, value_len, &ms) || ms > 86400000)
                return bad_option(word, word_len);
            options->report_delay_ms = (uint32_t)ms;
        }
    }
    return NULL;
}
