#!/usr/bin/env bash
# Process start to guest shell ready, for `ferry run`, against the .NET runtime's own start (`ferry help`)
# measured in the same run. Usage: bench/boot-time.sh [RUNS] [MEMORY]   (defaults 10, 512M)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
runs="${1:-10}"
memory="${2:-512M}"
[ -f artifacts/bin/Ferry.Cli/release/ferry.dll ] || ./build.sh >/dev/null

now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

ready_times=(); help_times=()
for _ in $(seq "$runs"); do
  start=$(now_ns)
  ./ferry help >/dev/null
  help_times+=($(( ($(now_ns) - start) / 1000 )))

  start=$(now_ns)
  t=""
  while IFS= read -r line; do
    if [ -z "$t" ] && [[ "$line" == *'"event":"ready"'* ]]; then
      t=$(( ($(now_ns) - start) / 1000 ))
    fi
  done < <(printf 'poweroff\n' | ./ferry run --memory "$memory" 2>/dev/null)
  ready_times+=("$t")
done
ready=$(printf '%s\n' "${ready_times[@]}" | median)
help=$(printf '%s\n' "${help_times[@]}" | median)
awk -v r="$ready" -v h="$help" -v m="$memory" -v n="$runs" 'BEGIN {
  printf "process start to guest shell ready (ferry run --memory %s), median of %s runs: %6.1f ms\n", m, n, r / 1000
  printf "baseline: process start to exit of `ferry help` (runtime start-up alone):       %6.1f ms\n", h / 1000
  printf "so Ferry itself (KVM set-up, boot structures, guest boot) takes about:         %6.1f ms\n", (r - h) / 1000
}'
