#!/usr/bin/env bash
# Compile the test guest's device tree (test-guest.dts) into the blob the
# VMM hands the guest, with the suite's kernel command line in
# /chosen/bootargs. Needs dtc and fdtput (Debian: device-tree-compiler).
#
# Usage: guest-images/dtb.sh BOOTARGS [OUTPUT]
#   OUTPUT defaults to build/guest-images/test-guest.dtb.
# Example:
#   guest-images/dtb.sh "probes=print,meminfo,share,outside,off expect=tenure"
set -euo pipefail

if (($# < 1 || $# > 2)); then
    echo "usage: $0 BOOTARGS [OUTPUT]" >&2
    exit 2
fi
bootargs=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${2:-$(dirname "$here")/build/guest-images/test-guest.dtb}

for tool in dtc fdtput; do
    if ! command -v "$tool" >/dev/null; then
        echo "dtb.sh: no $tool (Debian package device-tree-compiler)" >&2
        exit 1
    fi
done

mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
dtc -I dts -O dtb -o "$tmp" "$here/test-guest.dts"
# fdtput grows the blob as needed; the boot protocol caps it at 2 MiB.
fdtput -t s "$tmp" /chosen bootargs "$bootargs"
chmod 644 "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
