#!/bin/sh
# Rebuilds the exec helper and prints its base64 for src/exec-helper.ts (needs GNU as and ld).
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
as --64 -o "$tmp/h.o" stderr-to-stdout-x86_64.S
ld -m elf_x86_64 -static -nostdlib -N -s --build-id=none --no-warn-rwx-segments -o "$tmp/h" "$tmp/h.o"
base64 -w 0 "$tmp/h"
echo
