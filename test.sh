#!/usr/bin/env bash
# Builds (guest included) and runs every test. Ends with one line: "N passed, N failed, N skipped".
# Tests that need /dev/kvm are skipped, with the reason printed, where it cannot be used.
set -uo pipefail
cd "$(dirname "$(readlink -f "$0")")"
./build.sh Release || { echo "0 passed, 1 failed"; exit 1; }
# QEMU runs the guest-under-QEMU tests (an independent balloon device, QEMU's migration); without it they skip.
scripts/install-qemu.sh || echo "test.sh: QEMU could not be installed; its tests will be skipped" >&2
# Chromium renders the HTML migration report in a real headless browser; without it that test skips.
scripts/install-chromium.sh || echo "test.sh: chromium could not be installed; the HTML report's browser test will be skipped" >&2

results=artifacts/test-results
rm -rf "$results"
dotnet test Ferry.sln -c Release --no-build -nologo \
  --logger "trx" --logger "console;verbosity=normal" --results-directory "$results" 2>&1 \
  | grep -E --line-buffered '^\s*(Passed|Failed|Skipped) |Error Message|Assert|^\s+at Ferry|\[SKIP\]|needs KVM|needs QEMU|needs chromium|Total tests|^Passed!|^Failed!|error' 
status=${PIPESTATUS[0]}

passed=0; failed=0; skipped=0
for trx in "$results"/*.trx; do
  [ -f "$trx" ] || continue
  p=$(grep -o 'outcome="Passed"' "$trx" | wc -l)
  f=$(grep -o 'outcome="Failed"' "$trx" | wc -l)
  s=$(grep -o 'outcome="NotExecuted"' "$trx" | wc -l)
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
