#!/usr/bin/env bash
# Builds everything Ferry needs on a fresh machine of our kind: installs the Debian packages the guest build
# and the layout test need (gcc, make, binutils, linux-libc-dev), builds the guest OS, then the .NET solution.
# Usage: ./build.sh [Debug|Release]   (default Release)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
configuration="${1:-Release}"

missing=()
command -v gcc >/dev/null || missing+=(gcc)
command -v make >/dev/null || missing+=(make)
command -v ld >/dev/null || missing+=(binutils)
[ -f /usr/include/linux/kvm.h ] || missing+=(linux-libc-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "build.sh: installing ${missing[*]}" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v dotnet >/dev/null; then
  echo "build.sh: the .NET SDK (dotnet 10) is not on PATH; this machine kind ships it" >&2
  exit 1
fi

make -s -C guest
dotnet build Ferry.sln -c "$configuration" -nologo -v quiet -clp:ErrorsOnly
echo "build.sh: built guest/build/ferry-guest.elf and the solution ($configuration); run ./ferry"
