#!/usr/bin/env bash
# The foundation's end-to-end figures in one run (issue 2): start-to-shell time, guest fill rate against a host
# fill of the same size, and the cost of one dirty-log sync on an 8 GiB guest. Needs /dev/kvm.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
./build.sh >/dev/null
echo "== $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
bench/boot-time.sh 10 512M
dotnet artifacts/bin/Ferry.Bench/release/Ferry.Bench.dll fill --mib 1024 --rounds 3
dotnet artifacts/bin/Ferry.Bench/release/Ferry.Bench.dll dirtylog --memory-gib 8
