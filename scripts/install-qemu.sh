#!/usr/bin/env bash
# Installs QEMU from Debian for the guest-under-QEMU tests and the QEMU reference benchmarks.
#   scripts/install-qemu.sh             Debian's qemu-system-x86 (7.2 on bookworm), if no QEMU is installed
#   scripts/install-qemu.sh backports   QEMU 10.0 from bookworm-backports (replaces 7.2), for the reference figures
# The backports suite is added by copying the machine's own Debian source entry, so no mirror is named here.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if [ "${1:-}" = "backports" ]; then
  src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ] && [ ! -f /etc/apt/sources.list.d/ferry-backports.sources ]; then
    awk 'BEGIN{RS=""; ORS="\n\n"} /Suites: bookworm( |$)/ {sub(/Suites: [^\n]*/, "Suites: bookworm-backports"); print; exit}' "$src" \
      | $sudo tee /etc/apt/sources.list.d/ferry-backports.sources >/dev/null
  fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
elif ! command -v qemu-system-x86_64 >/dev/null; then
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null
fi
qemu-system-x86_64 --version | head -1
