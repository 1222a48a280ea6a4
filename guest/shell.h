/* The console shell: assembles command lines from serial bytes and answers each with one JSON line. */
#ifndef FERRY_SHELL_H
#define FERRY_SHELL_H

#include <stdint.h>

#include "bootinfo.h"

void shell_init(const struct boot_info *info);

/* Prints the {"event":"ready",...} line. */
void shell_announce_ready(void);

/* Feeds one received byte; a complete line (ended by \n, optionally preceded by \r) is executed at once. */
void shell_input_byte(uint8_t byte);

#endif
