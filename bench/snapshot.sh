#!/usr/bin/env bash
# Snapshots (issue 6): per size and profile, Ferry saving a running guest into a fixed-offset file, a plain
# sequential write of the same number of bytes into the same directory (baseline), Ferry's eager restore (warm, and
# cold after dropping the page cache: needs root), both lazy restores (issue 14: userfaultfd, `run --lazy`, with the
# time until the background fill has read the whole file, fault latency p50/p99 and the pieces back on huge pages;
# and the copy-on-write mapping, `--lazy=map`), and QEMU (>= 9.0) saving the same guest with mapped-ram (+ multifd)
# to a file and loading it back, all in one invocation. Needs /dev/kvm; QEMU is optional ("skipped" without it).
# Builds guest and solution (Release) first.
# Usage: bench/snapshot.sh [--memory-gib 4,8] [--profiles idle-fresh,fill-free-hint] [--repeat 3]
#                          [--dir /var/tmp/ferry-snap-bench] [--warm-only] [--no-qemu-restore] [--paused] [--cpus 1] [--json FILE]
# Issue 14's lazy-restore figures (4.8 GiB kept, on huge pages):
#   FERRY_MEMORY_BACKEND=anon bench/snapshot.sh --memory-gib 8 --profiles fill-keep --repeat 3
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
make -s -C guest
dotnet build Ferry.sln -c Release -nologo -v quiet -clp:ErrorsOnly
echo "== commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src guest 2>/dev/null || echo ' + uncommitted changes in src/ or guest/')"
exec dotnet artifacts/bin/Ferry.Bench/release/Ferry.Bench.dll snapshot "$@"
