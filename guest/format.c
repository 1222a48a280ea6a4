/* The bounded text builder and number parsers declared in format.h. */
#include "format.h"

#include "lib.h"

void out_init(struct out *out, char *buf, size_t cap)
{
    out->buf = buf;
    out->len = 0;
    out->cap = cap;
    out->overflowed = false;
}

void out_char(struct out *out, char c)
{
    if (out->len + 1 < out->cap)
        out->buf[out->len++] = c;
    else
        out->overflowed = true;
}

void out_bytes(struct out *out, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        out_char(out, s[i]);
}

void out_str(struct out *out, const char *s)
{
    out_bytes(out, s, strlen(s));
}

void out_u64(struct out *out, uint64_t value)
{
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (n > 0)
        out_char(out, digits[--n]);
}

static const char hex_digits[] = "0123456789abcdef";

void out_hex(struct out *out, uint64_t value)
{
    out_str(out, "0x");
    int shift = 60;
    while (shift > 0 && ((value >> shift) & 0xf) == 0)
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        out_char(out, hex_digits[(value >> shift) & 0xf]);
}

void out_bool(struct out *out, bool value)
{
    out_str(out, value ? "true" : "false");
}

void out_json_string(struct out *out, const char *s, size_t len)
{
    out_char(out, '"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out_char(out, '\\');
            out_char(out, (char)c);
        } else if (c < 0x20 || c >= 0x80) {
            /* \u00XX keeps the line valid JSON (and ASCII) whatever bytes the host sent. */
            out_str(out, "\\u00");
            out_char(out, hex_digits[c >> 4]);
            out_char(out, hex_digits[c & 0xf]);
        } else {
            out_char(out, (char)c);
        }
    }
    out_char(out, '"');
}

void out_terminate(struct out *out)
{
    if (out->cap > 0)
        out->buf[out->len < out->cap ? out->len : out->cap - 1] = '\0';
}

void out_key(struct out *out, const char *key)
{
    out_str(out, ",\"");
    out_str(out, key);
    out_str(out, "\":");
}

void out_field_u64(struct out *out, const char *key, uint64_t value)
{
    out_key(out, key);
    out_u64(out, value);
}

void out_field_bool(struct out *out, const char *key, bool value)
{
    out_key(out, key);
    out_bool(out, value);
}

void out_field_string(struct out *out, const char *key, const char *value)
{
    out_key(out, key);
    out_json_string(out, value, strlen(value));
}

bool parse_decimal_u64(const char *s, size_t len, uint64_t *value)
{
    if (len == 0)
        return false;
    uint64_t result = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        uint64_t digit = (uint64_t)(s[i] - '0');
        if (result > (UINT64_MAX - digit) / 10)
            return false;
        result = result * 10 + digit;
    }
    *value = result;
    return true;
}

bool parse_hex_u64(const char *s, size_t len, uint64_t *value)
{
    if (len == 0 || len > 16)
        return false;
    uint64_t result = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        uint64_t digit;
        if (c >= '0' && c <= '9')
            digit = (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            digit = (uint64_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            digit = (uint64_t)(c - 'A' + 10);
        else
            return false;
        result = result << 4 | digit;
    }
    *value = result;
    return true;
}

bool parse_hex_or_decimal_u64(const char *s, size_t len, uint64_t *value)
{
    if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        return parse_hex_u64(s + 2, len - 2, value);
    return parse_decimal_u64(s, len, value);
}
