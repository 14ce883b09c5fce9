#!/usr/bin/env bash
# Build the guest images: each guest crate for aarch64-unknown-none
# (release), then its ELF as a flat arm64 Linux Image (the first byte of
# the ELF's first loadable section at offset 0), with the rustup
# llvm-tools component's llvm-objcopy.
#
# Usage: guest-images/build.sh   -> build/guest-images/test-guest.Image
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET=aarch64-unknown-none
OUT=build/guest-images

objcopy=$(find "$(rustc --print sysroot)/lib/rustlib/" -path '*/bin/llvm-objcopy' -print -quit)
if [[ -z $objcopy ]]; then
    rustup component add llvm-tools
    objcopy=$(find "$(rustc --print sysroot)/lib/rustlib/" -path '*/bin/llvm-objcopy' -print -quit)
fi
if [[ -z $objcopy ]]; then
    echo "build.sh: no llvm-objcopy in the toolchain (rustup component add llvm-tools)" >&2
    exit 1
fi

cargo build -q -p tenure-test-guest --bin test-guest --target "$TARGET" --release
mkdir -p "$OUT"
"$objcopy" -O binary "target/$TARGET/release/test-guest" "$OUT/test-guest.Image"
echo "$OUT/test-guest.Image"
