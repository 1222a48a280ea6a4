/* The console shell: line assembly, argument parsing and the JSON replies of docs/guest-abi.md. */
#include "shell.h"

#include <stdbool.h>
#include <stddef.h>

#include "balloon.h"
#include "buddy.h"
#include "cache.h"
#include "config.h"
#include "format.h"
#include "io.h"
#include "layout.h"
#include "lib.h"
#include "serial.h"
#include "workload.h"

#define LINE_MAX_BYTES 255
#define MAX_WORDS 8

static const struct boot_info *boot_info;

/* +1 so that a 255-byte line's optional '\r' still fits before it is stripped. */
static char line[LINE_MAX_BYTES + 1];
static size_t line_len;
static bool line_overlong;

static char reply_buf[16384];
static char error_buf[160];
/* Large results live here rather than on the 64 KiB stack. */
static struct fill_result fill_result;
static struct verify_result verify_result;

struct word {
    const char *text;
    size_t len;
};

struct command {
    const char *name;
    unsigned min_args, max_args;
    const char *usage;
    /* Appends the reply's fields after `"cmd":"NAME"` and returns NULL, or returns an error message. */
    const char *(*run)(const struct word *args, unsigned arg_count, struct out *reply);
};

void shell_init(const struct boot_info *info)
{
    boot_info = info;
}

static void send(struct out *out)
{
    console_write_line(out->buf, out->len);
}

void shell_announce_ready(void)
{
    struct buddy_stats stats;
    buddy_get_stats(&stats);
    uint64_t usable = stats.total_pages * PAGE_SIZE;
    struct out out;
    out_init(&out, reply_buf, sizeof(reply_buf));
    out_str(&out, "{\"event\":\"ready\"");
    out_field_u64(&out, "version", BOOT_INFO_VERSION);
    out_field_u64(&out, "cpus", boot_info->cpu_count);
    out_field_u64(&out, "ram_bytes", boot_info->ram_bytes);
    out_field_u64(&out, "usable_bytes", usable);
    out_field_u64(&out, "reserved_bytes", boot_info->ram_bytes > usable ? boot_info->ram_bytes - usable : 0);
    out_char(&out, '}');
    send(&out);
}

/* "NAME: 'VALUE' is not ..." naming the offending argument. */
static const char *bad_value(const char *name, const struct word *value, const char *problem)
{
    struct out out;
    out_init(&out, error_buf, sizeof(error_buf));
    out_str(&out, name);
    out_str(&out, ": '");
    out_bytes(&out, value->text, value->len > 64 ? 64 : value->len);
    out_str(&out, "' ");
    out_str(&out, problem);
    out_terminate(&out);
    return error_buf;
}

static const char *parse_number(const char *name, const struct word *word, uint64_t min, uint64_t max,
                                uint64_t *value)
{
    if (!parse_decimal_u64(word->text, word->len, value))
        return bad_value(name, word, "is not a decimal number");
    if (*value < min || *value > max) {
        struct out out;
        out_init(&out, error_buf, sizeof(error_buf));
        out_str(&out, name);
        out_str(&out, ": '");
        out_bytes(&out, word->text, word->len);
        out_str(&out, "' is out of range ");
        out_u64(&out, min);
        out_str(&out, "..");
        out_u64(&out, max);
        out_terminate(&out);
        return error_buf;
    }
    return NULL;
}

/* ---- commands ---- */

static const char *cmd_fill(const struct word *args, unsigned arg_count, struct out *reply)
{
    (void)arg_count;
    uint64_t mib;
    const char *error = parse_number("MIB", &args[0], 1, UINT32_MAX, &mib);
    if (error != NULL)
        return error;
    error = workload_fill(mib, &fill_result);
    if (error != NULL)
        return error;
    out_field_u64(reply, "mib", mib);
    out_field_u64(reply, "pages", fill_result.pages);
    out_field_u64(reply, "generation", fill_result.generation);
    out_field_u64(reply, "ns", fill_result.ns);
    out_key(reply, "ranges");
    out_char(reply, '[');
    for (unsigned i = 0; i < fill_result.range_count; i++) {
        out_str(reply, i == 0 ? "[" : ",[");
        out_u64(reply, fill_result.ranges[i].addr);
        out_char(reply, ',');
        out_u64(reply, fill_result.ranges[i].bytes);
        out_char(reply, ']');
    }
    out_char(reply, ']');
    out_field_bool(reply, "ranges_truncated", fill_result.ranges_truncated);
    return NULL;
}

static const char *cmd_free(const struct word *args, unsigned arg_count, struct out *reply)
{
    uint64_t pages;
    if (arg_count == 0) {
        pages = workload_free_all();
    } else {
        uint64_t mib;
        const char *error = parse_number("MIB", &args[0], 0, UINT32_MAX, &mib);
        if (error != NULL)
            return error;
        pages = workload_free_fill(mib);
    }
    out_field_u64(reply, "pages", pages);
    return NULL;
}

static const char *cmd_dirty(const struct word *args, unsigned arg_count, struct out *reply)
{
    (void)arg_count;
    uint64_t rate, wss, pages;
    const char *error = parse_number("MIB_PER_S", &args[0], 0, DIRTY_MAX_RATE_MIB_S, &rate);
    if (error == NULL)
        error = parse_number("WSS_MIB", &args[1], 1, UINT32_MAX, &wss);
    if (error == NULL)
        error = workload_dirty_start(rate, wss, &pages);
    if (error != NULL)
        return error;
    out_field_u64(reply, "rate_mib_s", rate);
    out_field_u64(reply, "wss_mib", wss);
    out_field_u64(reply, "pages", pages);
    return NULL;
}

static const char *cmd_stop(const struct word *args, unsigned arg_count, struct out *reply)
{
    (void)args;
    (void)arg_count;
    out_field_u64(reply, "pages_dirtied", workload_dirty_stop());
    return NULL;
}

static const char *cmd_verify(const struct word *args, unsigned arg_count, struct out *reply)
{
    (void)args;
    (void)arg_count;
    workload_verify(&verify_result);
    out_field_u64(reply, "pages_checked", verify_result.pages_checked);
    out_field_u64(reply, "failures", verify_result.failures);
    out_field_bool(reply, "passed", verify_result.failures == 0);
    out_key(reply, "first_failures");
    out_char(reply, '[');
    for (unsigned i = 0; i < verify_result.reported; i++) {
        const struct verify_failure *failure = &verify_result.first_failures[i];
        out_str(reply, i == 0 ? "{\"addr\":" : ",{\"addr\":");
        out_u64(reply, failure->addr);
        out_field_u64(reply, "expected", failure->expected);
        out_field_u64(reply, "found", failure->found);
        out_char(reply, '}');
    }
    out_char(reply, ']');
    return NULL;
}

static const char *cmd_stats(const struct word *args, unsigned arg_count, struct out *reply)
{
    (void)args;
    (void)arg_count;
    struct buddy_stats stats;
    buddy_get_stats(&stats);
    out_field_u64(reply, "total_bytes", stats.total_pages * PAGE_SIZE);
    out_field_u64(reply, "free_bytes", stats.free_pages * PAGE_SIZE);
    out_field_u64(reply, "used_bytes", (stats.total_pages - stats.free_pages) * PAGE_SIZE);
    out_key(reply, "free_pages_per_order");
    out_char(reply, '[');
    for (unsigned order = 0; order < BUDDY_ORDER_COUNT; order++) {
        if (order > 0)
            out_char(reply, ',');
        out_u64(reply, stats.free_blocks[order]);
    }
    out_char(reply, ']');
    uint64_t total_dirtied = 0;
    for (unsigned cpu = 0; cpu < boot_info->cpu_count; cpu++)
        total_dirtied += workload_pages_dirtied(cpu);
    out_field_u64(reply, "pages_dirtied", total_dirtied);
    out_field_u64(reply, "cache_bytes", cache_pages() * PAGE_SIZE);
    out_field_u64(reply, "balloon_bytes", balloon_pages() * PAGE_SIZE);
    out_field_u64(reply, "hinted_bytes", balloon_hinted_pages() * PAGE_SIZE);
    out_field_u64(reply, "verify_failures", workload_verify_failures_total());
    out_field_bool(reply, "dirty_running", workload_dirty_running());
    out_key(reply, "cpus");
    out_char(reply, '[');
    for (unsigned cpu = 0; cpu < boot_info->cpu_count; cpu++) {
        out_str(reply, cpu == 0 ? "{\"id\":" : ",{\"id\":");
        out_u64(reply, cpu);
        out_field_u64(reply, "pages_dirtied", workload_pages_dirtied(cpu));
        out_char(reply, '}');
    }
    out_char(reply, ']');
    return NULL;
}

static const char *cmd_info(const struct word *args, unsigned arg_count, struct out *reply)
{
    (void)args;
    (void)arg_count;
    out_field_u64(reply, "image_start", (uint64_t)__image_start);
    out_field_u64(reply, "image_end", (uint64_t)_end);
    out_field_u64(reply, "data_start", (uint64_t)__data_start);
    out_field_u64(reply, "stacks_start", (uint64_t)__stacks_start);
    out_field_u64(reply, "stacks_end", (uint64_t)__stacks_end);
    out_field_u64(reply, "meta_start", buddy_meta_start());
    out_field_u64(reply, "meta_end", buddy_meta_end());
    out_field_u64(reply, "driver_start", balloon_driver_start());
    out_field_u64(reply, "driver_end", balloon_driver_end());
    return NULL;
}

static const char *cmd_balloon(const struct word *args, unsigned arg_count, struct out *reply)
{
    (void)args;
    (void)arg_count;
    struct balloon_info info;
    balloon_get_info(&info);
    out_field_bool(reply, "present", info.present);
    out_field_bool(reply, "broken", info.broken);
    out_field_u64(reply, "features", info.features);
    out_field_u64(reply, "offered", info.offered);
    out_field_u64(reply, "num_pages", info.num_pages);
    out_field_u64(reply, "actual", info.actual);
    out_field_u64(reply, "hint_cmd_id", info.hint_cmd_id);
    out_field_u64(reply, "hinted_pages", info.hinted_pages);
    out_field_u64(reply, "hint_runs", info.hint_runs);
    out_field_u64(reply, "reported_pages", info.reported_pages);
    out_field_u64(reply, "oom_deflated_pages", info.oom_deflated_pages);
    out_field_u64(reply, "block_inflated_pages", info.block_inflated_pages);
    out_field_bool(reply, "bitmap_mode", info.bitmap_mode);
    out_field_u64(reply, "free_bitmap_requests", info.free_bitmap_requests);
    return NULL;
}

/* `cache MIB` adds reclaimable pages; `cache drop` frees them all. */
static const char *cmd_cache(const struct word *args, unsigned arg_count, struct out *reply)
{
    (void)arg_count;
    if (args[0].len == 4 && memcmp(args[0].text, "drop", 4) == 0) {
        out_field_u64(reply, "pages", cache_drop(UINT64_MAX));
        return NULL;
    }
    uint64_t mib;
    const char *error = parse_number("MIB", &args[0], 1, UINT32_MAX, &mib);
    if (error != NULL)
        return error;
    uint32_t generation;
    error = cache_add(mib * PAGES_PER_MIB, &generation);
    if (error != NULL)
        return error;
    out_field_u64(reply, "mib", mib);
    out_field_u64(reply, "pages", mib * PAGES_PER_MIB);
    out_field_u64(reply, "generation", generation);
    out_field_u64(reply, "cache_bytes", cache_pages() * PAGE_SIZE);
    return NULL;
}

static bool poweroff_requested;

static const char *cmd_poweroff(const struct word *args, unsigned arg_count, struct out *reply)
{
    (void)args;
    (void)arg_count;
    (void)reply;
    poweroff_requested = true; /* acted on after the reply is out */
    return NULL;
}

static const struct command commands[] = {
    {"fill", 1, 1, "fill MIB", cmd_fill},
    {"free", 0, 1, "free [MIB]", cmd_free},
    {"dirty", 2, 2, "dirty MIB_PER_S WSS_MIB", cmd_dirty},
    {"stop", 0, 0, "stop", cmd_stop},
    {"verify", 0, 0, "verify", cmd_verify},
    {"stats", 0, 0, "stats", cmd_stats},
    {"info", 0, 0, "info", cmd_info},
    {"balloon", 0, 0, "balloon", cmd_balloon},
    {"cache", 1, 1, "cache MIB|drop", cmd_cache},
    {"poweroff", 0, 0, "poweroff", cmd_poweroff},
};

static void reply_error(const struct word *cmd, const char *error)
{
    struct out out;
    out_init(&out, reply_buf, sizeof(reply_buf));
    out_str(&out, "{\"ok\":false,\"cmd\":");
    out_json_string(&out, cmd->text, cmd->len);
    out_field_string(&out, "error", error);
    out_char(&out, '}');
    send(&out);
}

static unsigned split_words(char *text, size_t len, struct word *words, unsigned max_words, bool *too_many)
{
    unsigned count = 0;
    size_t pos = 0;
    *too_many = false;
    for (;;) {
        while (pos < len && (text[pos] == ' ' || text[pos] == '\t'))
            pos++;
        if (pos == len)
            return count;
        size_t start = pos;
        while (pos < len && text[pos] != ' ' && text[pos] != '\t')
            pos++;
        if (count == max_words) {
            *too_many = true;
            return count;
        }
        words[count++] = (struct word){text + start, pos - start};
    }
}

static void execute_line(char *text, size_t len)
{
    struct word words[MAX_WORDS];
    bool too_many;
    unsigned count = split_words(text, len, words, MAX_WORDS, &too_many);
    if (count == 0) {
        reply_error(&(struct word){"", 0}, "empty line");
        return;
    }
    const struct word *name = &words[0];
    const struct command *command = NULL;
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strlen(commands[i].name) == name->len && memcmp(commands[i].name, name->text, name->len) == 0)
            command = &commands[i];
    }
    if (command == NULL) {
        /* Name the word we did not understand, so the host sees what it sent. */
        struct out out;
        out_init(&out, error_buf, sizeof(error_buf));
        out_str(&out, "unknown command '");
        for (size_t i = 0; i < name->len && i < 64; i++)
            out_char(&out, name->text[i]);
        out_str(&out, "' (commands: fill free dirty stop verify stats info balloon cache poweroff)");
        out_terminate(&out);
        reply_error(name, error_buf);
        return;
    }
    unsigned arg_count = count - 1;
    if (too_many || arg_count < command->min_args || arg_count > command->max_args) {
        struct out out;
        out_init(&out, error_buf, sizeof(error_buf));
        out_str(&out, "wrong number of arguments; usage: ");
        out_str(&out, command->usage);
        out_terminate(&out);
        reply_error(name, error_buf);
        return;
    }

    struct out reply;
    out_init(&reply, reply_buf, sizeof(reply_buf));
    out_str(&reply, "{\"ok\":true,\"cmd\":");
    out_json_string(&reply, name->text, name->len);
    const char *error = command->run(&words[1], arg_count, &reply);
    if (error != NULL) {
        reply_error(name, error);
        return;
    }
    out_char(&reply, '}');
    send(&reply);

    if (poweroff_requested) {
        workload_dirty_stop(); /* no vCPU writes memory after the VMM has been told we are done */
        serial_drain();
        outl(POWER_PORT, 0);
        for (;;)
            cpu_relax();
    }
}

void shell_input_byte(uint8_t byte)
{
    if (byte != '\n') {
        if (line_len < sizeof(line))
            line[line_len++] = (char)byte;
        else
            line_overlong = true; /* keep swallowing until the end of the line, then answer once */
        return;
    }
    size_t len = line_len;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (line_overlong || len > LINE_MAX_BYTES) {
        struct word words[1];
        bool too_many;
        unsigned count = split_words(line, len, words, 1, &too_many);
        reply_error(count > 0 ? &words[0] : &(struct word){"", 0}, "line longer than 255 bytes");
    } else {
        execute_line(line, len);
    }
    line_len = 0;
    line_overlong = false;
}
