#!/usr/bin/env bash
# Build what the guest suite packs besides its system.xml: the PDs it
# runs (serial, mm, vmm: workspace crates, not the suite's own) and, in
# build/guest-images/, the test guest's Image and the device tree with
# this suite's bootargs (guest-suite.dtb). `tenure test` finds the PDs
# in target/aarch64-unknown-none/release and the guest's files in
# build/guest-images. ci/test.sh runs this before the system suites.
#
# Usage: ci/systems/guest/prepare.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../../.."

# The probes: every one that runs in a single boot (the hostile ten
# included), then power off; the VMM's checks need share, unshare and
# outside.
BOOTARGS="probes=print,meminfo,share,unshare,relinquish,hostile,outside,off expect=tenure"

cargo build -q --release --target aarch64-unknown-none \
    -p tenure-serial -p tenure-mm -p tenure-vmm
guest-images/build.sh
guest-images/dtb.sh "$BOOTARGS" build/guest-images/guest-suite.dtb
