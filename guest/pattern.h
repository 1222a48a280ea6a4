/* The fill pattern of docs/guest-abi.md, shared by the workload and the cache pages. */
#ifndef FERRY_PATTERN_H
#define FERRY_PATTERN_H

#include <stdint.h>

/* The word at address a of generation g = a * A + g * G (mod 2^64). */
#define PATTERN_ADDRESS_FACTOR 0x9E3779B97F4A7C15ull
#define PATTERN_GENERATION_FACTOR 0xC2B2AE3D27D4EB4Full

/* A fresh generation (never 0), from any vCPU. */
uint32_t pattern_next_generation(void);

/* Writes the pattern of `generation` over [address, address + bytes): one store and one add per word. */
static inline void write_pattern(uint64_t address, uint64_t bytes, uint32_t generation)
{
    uint64_t *word = (uint64_t *)address;
    uint64_t *end = word + bytes / sizeof(uint64_t);
    uint64_t value = address * PATTERN_ADDRESS_FACTOR + generation * PATTERN_GENERATION_FACTOR;
    const uint64_t step = sizeof(uint64_t) * PATTERN_ADDRESS_FACTOR;
    while (word < end) {
        *word++ = value;
        value += step;
    }
}

#endif
