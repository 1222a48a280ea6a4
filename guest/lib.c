/* memset/memcpy/memmove/memcmp/strlen. The mem* writers use `rep stos/movs` in asm so gcc cannot turn their
 * loops back into calls to themselves. */
#include "lib.h"

void *memset(void *dest, int byte, size_t count)
{
    void *d = dest;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(count) : "a"(byte) : "memory");
    return dest;
}

void *memcpy(void *restrict dest, const void *restrict src, size_t count)
{
    void *d = dest;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(count) : : "memory");
    return dest;
}

void *memmove(void *dest, const void *src, size_t count)
{
    unsigned char *d = dest;
    const unsigned char *s = src;
    if (d <= s || d >= s + count)
        return memcpy(dest, src, count);
    /* Overlapping with dest above src: copy backwards (direction flag set only for this instruction). */
    d += count - 1;
    s += count - 1;
    __asm__ volatile("std\n\trep movsb\n\tcld" : "+D"(d), "+S"(s), "+c"(count) : : "memory");
    return dest;
}

int memcmp(const void *a, const void *b, size_t count)
{
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < count; i++) {
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0')
        n++;
    return n;
}
