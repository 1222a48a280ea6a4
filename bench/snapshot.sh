#!/usr/bin/env bash
# Snapshots (issue 6): per size and profile, Ferry saving a running guest into a fixed-offset file, a plain
# sequential write of the same number of bytes into the same directory (baseline), Ferry's eager restore (warm, and
# cold after dropping the page cache: needs root), and QEMU (>= 9.0) saving the same guest with mapped-ram (+ multifd)
# to a file and loading it back, all in one invocation. Needs /dev/kvm; QEMU is optional ("skipped" without it).
# Builds guest and solution (Release) first.
# Usage: bench/snapshot.sh [--memory-gib 4,8] [--profiles idle-fresh,fill-free-hint] [--repeat 3]
#                          [--dir /var/tmp/ferry-snap-bench] [--warm-only] [--no-qemu-restore] [--paused] [--cpus 1] [--json FILE]
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
make -s -C guest
dotnet build Ferry.sln -c Release -nologo -v quiet -clp:ErrorsOnly
echo "== commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src guest 2>/dev/null || echo ' + uncommitted changes in src/ or guest/')"
exec dotnet artifacts/bin/Ferry.Bench/release/Ferry.Bench.dll snapshot "$@"
