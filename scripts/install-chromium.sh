#!/usr/bin/env bash
# Installs Debian's chromium for the HTML report test (a real headless browser renders the page and the test reads
# the numbers back from its DOM and checks its screenshot). Does nothing when chromium is already installed.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v chromium >/dev/null; then
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
chromium --version | head -1
