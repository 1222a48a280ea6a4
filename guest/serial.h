/* COM1 (16550A) polling driver and the line-oriented console on top of it. */
#ifndef FERRY_SERIAL_H
#define FERRY_SERIAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"

#define COM1_BASE 0x3F8
#define UART_DATA (COM1_BASE + 0) /* THR on write, RBR on read */
#define UART_LSR (COM1_BASE + 5)
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

/* Returns true and stores a byte if the UART has one (one LSR read, plus one RBR read if data is ready).
 * Inline so that the console's idle loop makes no calls (a call writes the stack, which the host would see as
 * a dirty page). */
static inline bool serial_try_read(uint8_t *byte)
{
    if ((inb(UART_LSR) & LSR_DATA_READY) == 0)
        return false;
    *byte = inb(UART_DATA);
    return true;
}

/* Writes `len` bytes and a '\n' as one line; a lock keeps lines from different vCPUs whole. */
void console_write_line(const char *line, size_t len);

/* Waits until the UART has taken the last byte written (so a power-off cannot cut a reply short). */
void serial_drain(void);

#endif
