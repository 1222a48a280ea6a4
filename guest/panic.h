/* Fatal errors: print {"event":"panic","msg":...} and ask the VMM to stop with a non-zero code. */
#ifndef FERRY_PANIC_H
#define FERRY_PANIC_H

__attribute__((noreturn)) void panic(const char *msg);

#endif
