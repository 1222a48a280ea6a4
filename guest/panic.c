/* panic(): the guest's only error exit (there is no IDT, so this is the one place errors are reported). */
#include "panic.h"

#include "config.h"
#include "format.h"
#include "io.h"
#include "lib.h"
#include "serial.h"

void panic(const char *msg)
{
    /* On the stack, not static: two vCPUs may panic at once. */
    char line[320];
    struct out out;
    out_init(&out, line, sizeof(line));
    out_str(&out, "{\"event\":\"panic\",\"msg\":");
    size_t msg_len = strlen(msg);
    out_json_string(&out, msg, msg_len > 240 ? 240 : msg_len);
    out_char(&out, '}');
    console_write_line(out.buf, out.len);
    serial_drain();
    outl(POWER_PORT, PANIC_CODE_GENERAL);
    for (;;)
        cpu_relax(); /* a VMM that ignores the power port gets a vCPU that only spins */
}
