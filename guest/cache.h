/* Reclaimable "cache" pages: written like fill pages, never verified, dropped on the host's request or under OOM. */
#ifndef FERRY_CACHE_H
#define FERRY_CACHE_H

#include <stdint.h>

/* Registers the cache pages with reclaim (vCPU 0, at init). */
void cache_init(void);

/* Allocates `pages` pages (largest orders first) and writes each with the pattern of a new generation. Returns
 * NULL (and the generation) or an error message; allocates nothing when memory is short. */
const char *cache_add(uint64_t pages, uint32_t *generation);

/* Frees cache blocks, oldest first, until at least `pages` pages are freed or none are left; returns the pages
 * freed. UINT64_MAX drops everything. */
uint64_t cache_drop(uint64_t pages);

uint64_t cache_pages(void);

#endif
