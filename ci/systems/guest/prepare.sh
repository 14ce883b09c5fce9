#!/usr/bin/env bash
# Build what the guest suites (guest, guest_reset, guest_pair) pack
# besides their system.xml: the PDs they run (serial, mm, vmm: workspace
# crates; guest_pair's parent, guest_reset's guest_monitor) and, in build/guest-images/, the test
# guest's Image and one device tree per boot with that boot's bootargs.
# `tenure test` finds the PDs in target/aarch64-unknown-none/release and
# the guest's files in build/guest-images. ci/test.sh runs this before
# the system suites.
#
# Usage: ci/systems/guest/prepare.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../../.."

# The probes: every one that runs in a single boot (the hostile twelve
# included), then power off; the VMM's checks need share, unshare,
# outside and gicc-iidr (the GICV page system.xml passes through).
BOOTARGS="probes=print,meminfo,share,unshare,relinquish,hostile,outside,gicc-iidr,off expect=tenure"

cargo build -q --release --target aarch64-unknown-none \
    -p tenure-serial -p tenure-mm -p tenure-vmm -p tenure-guest-monitor-pd \
    -p tenure-hostile-collector-pd
guest-images/build.sh
guest-images/dtb.sh "$BOOTARGS" build/guest-images/guest-suite.dtb

# guest_reset: the first boot writes the secret (a page outside the
# image, which the guest's fault populates) and asks for SYSTEM_RESET;
# the second, from the VMM's second device tree, must read zeros there.
# Both boots share a page (the VMM's checks read one at power-off).
SECRET=secret=0x42000000
guest-images/dtb.sh \
    "probes=print,meminfo,share,unshare,relinquish,hostile,outside,secret-write,reset $SECRET" \
    build/guest-images/guest-reset-1.dtb
guest-images/dtb.sh "probes=print,secret-read,share,off $SECRET" \
    build/guest-images/guest-reset-2.dtb

# guest_pair: guest A writes the secret and stops, keeping its memory;
# then guest B, at the same IPAs, must read zeros there and can share
# the page A left shared.
guest-images/dtb.sh \
    "probes=print,meminfo,share,unshare,relinquish,hostile,outside,secret-write,off $SECRET" \
    build/guest-images/guest-pair-a.dtb
guest-images/dtb.sh "probes=print,secret-read,share,unshare,relinquish,hostile,outside,off $SECRET" \
    build/guest-images/guest-pair-b.dtb

# hostile: three guests side by side. The attacker and the victim write
# their own secrets (tag=) into the EL1 state and check it after the
# other ran; the attacker ends by touching RAM until its memory limit;
# the forger prints lines dressed as a runner's and no TAP of its own.
guest-images/dtb.sh \
    "probes=print,el1-state,trapped,refault,share,unshare,hostile,outside,quota,off tag=0xa11ce" \
    build/guest-images/hostile-attacker.dtb
guest-images/dtb.sh \
    "probes=print,el1-state,fair,trapped,share,unshare,relinquish,hostile,outside,refault,off tag=0xb0b" \
    build/guest-images/hostile-victim.dtb
guest-images/dtb.sh "probes=forge,off tap=none" build/guest-images/hostile-forger.dtb
