#!/usr/bin/env python3
"""Drives a Ferry QMP socket with QEMU's own, unmodified client library (qemu.qmp's QMPClient).

Usage: PYTHONPATH=<dir holding qemu/qmp> qemu_client_check.py SOCKET

Exits 0 when every check passed; otherwise prints the failed check and exits 1 (2 when qemu.qmp cannot be
imported). Every await is bounded so a server that never answers fails the check instead of hanging it.
"""
import asyncio
import sys

try:
    from qemu.qmp import EventListener, ExecuteError, QMPClient
except ImportError as e:  # the test skips on this
    print(f"cannot import qemu.qmp: {e}")
    sys.exit(2)

TIMEOUT = 10


async def bounded(awaitable):
    return await asyncio.wait_for(awaitable, TIMEOUT)


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


async def expect_error(qmp, error_class, cmd, arguments=None, desc_start=""):
    try:
        await bounded(qmp.execute(cmd, arguments))
    except ExecuteError as e:
        check(e.error_class == error_class and e.error.error.desc.startswith(desc_start),
              f"{cmd} {arguments or ''} -> {error_class}: {e.error.error.desc}")
        return
    raise AssertionError(f"{cmd} succeeded; expected {error_class}")


async def main(socket_path):
    qmp = QMPClient("ferry-conformance")
    # connect() reads the greeting, validates its shape and negotiates with qmp_capabilities (no newline sent).
    await bounded(qmp.connect(socket_path))
    version = qmp.greeting.QMP.version  # the client's Greeting model keeps "version" as a plain dict
    check(version["package"].startswith("Ferry "),
          f"greeting: version {version['qemu']['major']}.{version['qemu']['minor']}.{version['qemu']['micro']}, package {version['package']!r}")

    version = await bounded(qmp.execute("query-version"))
    check(version["qemu"]["major"] >= 1 and version["package"].startswith("Ferry "), f"query-version: {version}")

    names = {c["name"] for c in await bounded(qmp.execute("query-commands"))}
    check({"query-status", "stop", "cont", "query-qmp-schema", "human-monitor-command"} <= names,
          f"query-commands lists {len(names)} commands")

    schema = await bounded(qmp.execute("query-qmp-schema"))
    check(any(e["name"] == "stop" and e["meta-type"] == "command" for e in schema), "query-qmp-schema describes stop")

    status = await bounded(qmp.execute("query-status"))
    check(status["status"] == "running" and status["running"] is True, f"query-status: {status}")

    listener = EventListener(("STOP", "RESUME"))
    with qmp.listen(listener):
        await bounded(qmp.execute("stop"))
        event = await bounded(listener.get())
        check(event["event"] == "STOP", "stop -> STOP event")
        check((await bounded(qmp.execute("query-status")))["status"] == "paused", "query-status: paused")
        await bounded(qmp.execute("cont"))
        event = await bounded(listener.get())
        check(event["event"] == "RESUME", "cont -> RESUME event")

    hmp = await bounded(qmp.execute("human-monitor-command", {"command-line": "info status"}))
    check(hmp == "VM status: running\r\n", f"human-monitor-command info status: {hmp!r}")

    await expect_error(qmp, "CommandNotFound", "no-such-command", None, "The command no-such-command has not been found")
    await expect_error(qmp, "GenericError", "stop", {"extra": 1}, "Parameter 'extra' is unexpected")
    await expect_error(qmp, "GenericError", "human-monitor-command", {}, "Parameter 'command-line' is missing")
    await expect_error(qmp, "GenericError", "migrate-set-parameters", {"downtime-limit": "300"},
                       "Invalid parameter type for 'downtime-limit', expected: integer")

    # Still usable after the errors.
    check((await bounded(qmp.execute("query-status")))["running"] is True, "connection usable after errors")
    await bounded(qmp.disconnect())
    print("all checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(1)
    try:
        asyncio.run(main(sys.argv[1]))
    except Exception as e:  # report any failure as the exit code the test asserts
        print(f"FAILED: {type(e).__name__}: {e}")
        sys.exit(1)
