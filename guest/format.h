/* A bounded text builder for JSON lines (decimal, hex, escaped strings) and the number parsers. */
#ifndef FERRY_FORMAT_H
#define FERRY_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Appends never write past cap - 1 (room for a NUL); `overflowed` records that something was dropped. */
struct out {
    char *buf;
    size_t len;
    size_t cap;
    bool overflowed;
};

void out_init(struct out *out, char *buf, size_t cap);
void out_char(struct out *out, char c);
void out_bytes(struct out *out, const char *s, size_t len);
void out_str(struct out *out, const char *s);
void out_u64(struct out *out, uint64_t value);
void out_hex(struct out *out, uint64_t value); /* 0x-prefixed, lower case */
void out_bool(struct out *out, bool value);
/* A JSON string literal with quotes: '"' and '\\' get a backslash, control bytes and bytes >= 0x80 are \u00XX. */
void out_json_string(struct out *out, const char *s, size_t len);
void out_terminate(struct out *out); /* NUL-terminates (buf[len] = 0) */

/* `,"key":value` helpers for JSON objects whose first member is already written. */
void out_field_u64(struct out *out, const char *key, uint64_t value);
void out_field_bool(struct out *out, const char *key, bool value);
void out_field_string(struct out *out, const char *key, const char *value);
void out_key(struct out *out, const char *key); /* writes `,"key":` */

/* Whole-string parsers: false on empty input, a non-digit or overflow. */
bool parse_decimal_u64(const char *s, size_t len, uint64_t *value);
bool parse_hex_u64(const char *s, size_t len, uint64_t *value);
/* 0x-prefixed hex or decimal, the whole of [s, s + len). */
bool parse_hex_or_decimal_u64(const char *s, size_t len, uint64_t *value);

#endif
