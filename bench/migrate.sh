#!/usr/bin/env bash
# Live migration end to end (issue 5): the loopback TCP ceiling, then Ferry and QEMU migrating the same guest image
# with the same profiles, in one invocation, with Ferry/QEMU ratios. Needs /dev/kvm; QEMU is optional (its columns
# stay "-" when qemu-system-x86_64 is missing). Builds guest and solution (Release) first.
# Usage: bench/migrate.sh [--memory-gib 4,8] [--profiles idle-fresh,fill-free-hint,fill-free-nohint,balloon10,dirty(,fill-keep)]
#                         [--repeat 3] [--downtime-ms 300] [--guest-cmdline report_delay_ms=600000] [--cpus 1]
#                         [--prepopulate-destination] [--verify] [--json FILE]
# --verify: Ferry migrates with ferry-verify and a table shows the digest work in the downtime (issue 16 measures
# it with --memory-gib 8 --profiles fill-keep --verify, and the same without --verify for the difference).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
make -s -C guest
dotnet build Ferry.sln -c Release -nologo -v quiet -clp:ErrorsOnly
echo "== commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src guest 2>/dev/null || echo ' + uncommitted changes in src/ or guest/')"
exec dotnet artifacts/bin/Ferry.Bench/release/Ferry.Bench.dll migrate "$@"
