/* CPU primitives usable at CPL3 with IOPL=3: port I/O, rdtsc, pause, atomics, 128-bit mul/div. */
#ifndef FERRY_IO_H
#define FERRY_IO_H

#include <stdint.h>

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline void outl(uint16_t port, uint32_t value)
{
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* The idle primitive: `hlt` is privileged, so waiting is a pause loop. */
static inline void cpu_relax(void)
{
    __asm__ volatile("pause" : : : "memory");
}

/* MMIO at CPL3: plain 32-bit movs (KVM decodes and forwards them); "memory" keeps them ordered with RAM accesses. */
static inline uint32_t mmio_read32(uint64_t address)
{
    uint32_t value;
    __asm__ volatile("movl (%1), %0" : "=r"(value) : "r"(address) : "memory");
    return value;
}

static inline void mmio_write32(uint64_t address, uint32_t value)
{
    __asm__ volatile("movl %0, (%1)" : : "r"(value), "r"(address) : "memory");
}

#define load_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define fetch_add_relaxed(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)

/*
 * a * b / c with a 128-bit intermediate, saturating at UINT64_MAX. Written with mul/div because gcc would call
 * libgcc's __udivti3 for a 128-bit division, and we link without libgcc. c must not be 0.
 */
static inline uint64_t mul_div_u64(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t lo, hi, quotient, remainder;
    __asm__("mulq %3" : "=a"(lo), "=d"(hi) : "a"(a), "rm"(b));
    if (hi >= c)
        return UINT64_MAX; /* the quotient would not fit: divq would fault */
    __asm__("divq %4" : "=a"(quotient), "=d"(remainder) : "a"(lo), "d"(hi), "rm"(c));
    (void)remainder;
    return quotient;
}

#endif
