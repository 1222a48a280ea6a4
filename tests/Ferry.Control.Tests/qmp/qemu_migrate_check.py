#!/usr/bin/env python3
"""Live-migrates a guest between two `ferry run` processes, driven only by QEMU's own client (qemu.qmp), with
QEMU's flow: the destination waits in inmigrate (--incoming defer), gets its capabilities, then migrate-incoming;
both sides send MIGRATION events (events capability); the source ends in postmigrate and quits when told.

Usage: PYTHONPATH=<dir holding qemu/qmp> qemu_migrate_check.py SOURCE_QMP DEST_QMP URI

The source runs the guest; the destination was started with --incoming defer. Exits 0 when the migration
completed and the guest runs on the destination, 1 otherwise (2 when qemu.qmp cannot be imported).
"""
import asyncio
import sys

try:
    from qemu.qmp import EventListener, QMPClient
except ImportError as e:
    print(f"cannot import qemu.qmp: {e}")
    sys.exit(2)


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


async def main(source_path, dest_path, uri):
    src, dst = QMPClient("source"), QMPClient("destination")
    await asyncio.wait_for(src.connect(source_path), 10)
    await asyncio.wait_for(dst.connect(dest_path), 10)
    check((await src.execute("query-status"))["status"] == "running", "source is running")
    check((await dst.execute("query-status"))["status"] == "inmigrate", "destination is inmigrate")
    events_on = {"capabilities": [{"capability": "events", "state": True}]}
    await dst.execute("migrate-set-capabilities", events_on)
    await src.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}, {"capability": "multifd", "state": True}]})
    await src.execute("migrate-set-parameters", {"downtime-limit": 300})
    src_events, dst_events = EventListener("MIGRATION"), EventListener("MIGRATION")
    with src.listen(src_events), dst.listen(dst_events):
        await dst.execute("migrate-incoming", {"uri": uri})
        check((await dst.execute("query-migrate"))["status"] == "setup", "destination query-migrate says setup")
        await src.execute("migrate", {"uri": uri})
        while True:
            event = await asyncio.wait_for(src_events.get(), 120)
            status = event["data"]["status"]
            print(f"source MIGRATION {status}")
            if status in ("completed", "failed", "cancelled"):
                break
        check(status == "completed", "migration completed")
        seen = []
        while not seen or seen[-1] not in ("completed", "failed"):
            seen.append((await asyncio.wait_for(dst_events.get(), 60))["data"]["status"])
        check(seen == ["setup", "active", "completed"], f"destination MIGRATION events {seen}")
    for _ in range(300):
        if (await dst.execute("query-status"))["status"] == "running":
            break
        await asyncio.sleep(0.1)
    text = await dst.execute("human-monitor-command", {"command-line": "info status"})
    check(text == "VM status: running\r\n", f"destination: {text!r}")
    check((await src.execute("query-status"))["status"] == "postmigrate", "source is postmigrate")
    check((await src.execute("query-migrate"))["status"] == "completed", "source query-migrate says completed")
    await dst.execute("quit")
    await asyncio.wait_for(dst.disconnect(), 10)
    await src.execute("quit")
    await asyncio.wait_for(src.disconnect(), 10)
    print("all checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__)
        sys.exit(1)
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
    except Exception as e:
        print(f"FAILED: {type(e).__name__}: {e}")
        sys.exit(1)
