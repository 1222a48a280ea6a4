/* The generation source of the fill pattern. */
#include "pattern.h"

#include "io.h"

/* Shared by every vCPU (dirty workers too); 0 is never handed out: it means "no pattern". */
static uint32_t last_generation;

uint32_t pattern_next_generation(void)
{
    uint32_t generation;
    do
        generation = fetch_add_relaxed(&last_generation, 1) + 1;
    while (generation == 0);
    return generation;
}
