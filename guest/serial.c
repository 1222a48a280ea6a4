/* COM1 polling driver: output polls LSR.THRE before each byte; input checks LSR.DR, then reads RBR. */
#include "serial.h"

#include "io.h"
#include "spinlock.h"

static struct spinlock console_lock;

static void serial_write_byte(uint8_t byte)
{
    while ((inb(UART_LSR) & LSR_THR_EMPTY) == 0)
        cpu_relax();
    outb(UART_DATA, byte);
}

void serial_drain(void)
{
    while ((inb(UART_LSR) & LSR_THR_EMPTY) == 0)
        cpu_relax();
}

void console_write_line(const char *line, size_t len)
{
    spin_lock(&console_lock);
    for (size_t i = 0; i < len; i++)
        serial_write_byte((uint8_t)line[i]);
    serial_write_byte('\n');
    spin_unlock(&console_lock);
}
