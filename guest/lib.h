/* The few libc-style routines the guest needs (gcc may also emit calls to the mem* ones). */
#ifndef FERRY_LIB_H
#define FERRY_LIB_H

#include <stddef.h>

void *memset(void *dest, int byte, size_t count);
void *memcpy(void *restrict dest, const void *restrict src, size_t count);
void *memmove(void *dest, const void *src, size_t count);
int memcmp(const void *a, const void *b, size_t count);
size_t strlen(const char *s);

#endif
