#!/usr/bin/env bash
# Coverage-guided fuzzing of one Ferry harness with afl++ and SharpFuzz (docs/fuzzing.md).
# Usage: bench/fuzz.sh TARGET SECONDS [EXECS]   TARGET: stream | snapshot | qmp | virtio | elf
# (with EXECS, afl also stops after about that many executions, whichever comes first)
# Installs what it needs (Debian's afl++, the SharpFuzz.CommandLine dotnet tool), publishes fuzz/Ferry.Fuzz into
# artifacts/fuzz/bin, instruments the Ferry assemblies there (never the build the tests use), runs afl-fuzz
# on one core from fuzz/corpus/TARGET for SECONDS, and prints executions, crashes and hangs. Findings stay in
# artifacts/fuzz/TARGET/out (crashes/, hangs/, queue/); replay one with
#   dotnet artifacts/bin/Ferry.Fuzz/release/Ferry.Fuzz.dll replay TARGET FILE   (the uninstrumented build)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
target="${1:?usage: bench/fuzz.sh TARGET SECONDS}"
seconds="${2:?usage: bench/fuzz.sh TARGET SECONDS}"
execs=()
[ -n "${3:-}" ] && execs=(-E "$3")
case "$target" in stream|snapshot|qmp|virtio|elf) ;; *) echo "fuzz.sh: unknown target '$target'" >&2; exit 2 ;; esac
sharpfuzz_version=2.3.0

if ! command -v afl-fuzz >/dev/null; then
  echo "fuzz.sh: installing afl++ (Debian)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq afl++ >/dev/null
fi
tools=artifacts/fuzz/tools
if [ ! -x "$tools/sharpfuzz" ]; then
  echo "fuzz.sh: installing SharpFuzz.CommandLine $sharpfuzz_version" >&2
  dotnet tool install SharpFuzz.CommandLine --version "$sharpfuzz_version" --tool-path "$tools" >/dev/null
fi

work="artifacts/fuzz/$target"
# One instrumented copy for every target, published again only when a source file changed since.
bin=artifacts/fuzz/bin
stamp="$bin/.instrumented"
if [ ! -f "$stamp" ] || [ -n "$(find src fuzz/Ferry.Fuzz Directory.Packages.props Directory.Build.props \( -name '*.cs' -o -name '*.csproj' -o -name '*.props' \) -newer "$stamp" -not -path '*/obj/*' -not -path '*/bin/*' | head -1)" ]; then
  rm -rf "$bin"
  dotnet publish fuzz/Ferry.Fuzz/Ferry.Fuzz.csproj -c Release -nologo -v quiet -clp:ErrorsOnly -o "$bin" >/dev/null
  for dll in "$bin"/Ferry.*.dll; do
    case "$(basename "$dll")" in Ferry.Fuzz.dll) continue ;; esac
    "$tools/sharpfuzz" "$dll" >/dev/null
  done
  touch "$stamp"
fi
mkdir -p "$work"

# This container: no CPU frequency governor to check, core dumps may go to a pipe, the target is `dotnet` (not an
# afl-instrumented binary: SharpFuzz instruments the IL), and afl must not take a core of its own choosing.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_BIN_CHECK=1 AFL_NO_AFFINITY=1
export AFL_NO_UI=1 AFL_QUIET=1 AFL_SKIP_CRASHES=0
out="$work/out"
rm -rf "$out"
status=0
timeout --signal=INT --kill-after=30 "$((seconds + 60))" \
  afl-fuzz -i "fuzz/corpus/$target" -o "$out" -t 5000 -m none -V "$seconds" "${execs[@]}" -- dotnet "$bin/Ferry.Fuzz.dll" "$target" \
  >"$work/afl.log" 2>&1 || status=$?
stats="$out/default/fuzzer_stats"
if [ ! -f "$stats" ]; then
  echo "fuzz.sh: afl-fuzz did not start (exit $status); its log:" >&2
  tail -40 "$work/afl.log" >&2
  exit 1
fi
field() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
crashes=$(find "$out/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
hangs=$(find "$out/default/hangs" -type f -name 'id:*' 2>/dev/null | wc -l)
echo "fuzz $target: $(field execs_done) executions in $(field run_time) s ($(field execs_per_sec) exec/s), $(field corpus_count) corpus entries, edges $(field edges_found), crashes $crashes, hangs $hangs"
[ "$crashes" -eq 0 ] && [ "$hangs" -eq 0 ]
