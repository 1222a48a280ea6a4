/* A test-and-test-and-set spinlock (waiters spin reading, with pause). */
#ifndef FERRY_SPINLOCK_H
#define FERRY_SPINLOCK_H

#include <stdint.h>

#include "io.h"

struct spinlock {
    uint32_t locked;
};

static inline void spin_lock(struct spinlock *lock)
{
    while (__atomic_exchange_n(&lock->locked, 1, __ATOMIC_ACQUIRE) != 0) {
        while (load_relaxed(&lock->locked) != 0)
            cpu_relax();
    }
}

static inline void spin_unlock(struct spinlock *lock)
{
    store_release(&lock->locked, 0);
}

#endif
