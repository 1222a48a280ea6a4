#!/usr/bin/env bash
# MSG_ZEROCOPY against a plain send() over loopback TCP (issue 13: does zero-copy sending help Ferry's channels?):
# 1 GiB in 1 MiB sends from 32 rotating buffers, a reader thread on the other end, three rounds of each.
# Usage: bench/msg-zerocopy.sh   (needs gcc; prints time, rate, and how many completions said the kernel copied)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
out=artifacts/probes
mkdir -p "$out"
gcc -O2 -o "$out/msg-zerocopy" bench/probes/msg-zerocopy.c -lpthread
for round in 1 2 3; do
  "$out/msg-zerocopy" plain
  "$out/msg-zerocopy" zc
done
