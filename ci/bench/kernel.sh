#!/usr/bin/env bash
# Kernel benchmarks (ci/bench/README.md): builds the `benchmark` kernel and
# the bench PDs, packs ci/bench/*/system.xml, boots each under QEMU with
# `-icount shift=0,sleep=off` on every CPU in BENCH_CPUS (the first is the
# one compared with seL4), measures sizes, and prints the table against the
# seL4 Microkit figures of shared/reference/anchors.md. A MISS is reported,
# never a failure: only a build or run error fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

TARGET=aarch64-unknown-none
# The kernel is soft-float (it leaves the FP/SIMD registers to PDs).
KERNEL_TARGET=aarch64-unknown-none-softfloat
BOARD=qemu_virt_aarch64
CPUS=${BENCH_CPUS:-cortex-a53 cortex-a72}
OUT=build/bench
# Separate target dirs: the benchmark kernel must not replace the release
# kernel that `make test` packs, and sizes come from a plain release build.
BENCH_KERNEL_DIR=target/bench/benchmark
RELEASE_KERNEL_DIR=target/bench/release
BENCH_KERNEL=$BENCH_KERNEL_DIR/$KERNEL_TARGET/release/tenure-kernel
RELEASE_KERNEL=$RELEASE_KERNEL_DIR/$KERNEL_TARGET/release/tenure-kernel
PDS=(-p tenure-bench-boot -p tenure-bench-client -p tenure-bench-pong -p tenure-bench-server
     -p tenure-serial -p tenure-example-ping -p tenure-example-pong -p tenure-vcpu-pd
     -p tenure-mm -p tenure-vmm -p tenure-bench-mm)

echo "== kernel benchmarks: building"
CARGO_TARGET_DIR=$BENCH_KERNEL_DIR cargo build -q -p tenure-kernel --release --target $KERNEL_TARGET \
    --features benchmark
CARGO_TARGET_DIR=$RELEASE_KERNEL_DIR cargo build -q -p tenure-kernel --release --target $KERNEL_TARGET
cargo build -q --release --target $TARGET "${PDS[@]}"
# The test guest's Image and device trees: the default system's (as make
# image builds it) for the default image's size, and guest_mm's.
guest-images/build.sh >/dev/null
guest-images/dtb.sh "$(sed -n 's/^GUEST_BOOTARGS := //p' Makefile)" build/guest-images/default.dtb \
    >/dev/null
# guest_mm: the test guest's `bench` probe first, then the guest suite's
# probes, which the VMM's checks need.
guest-images/dtb.sh \
    "probes=bench,print,meminfo,share,unshare,relinquish,hostile,outside,off expect=tenure" \
    build/guest-images/guest-bench.dtb >/dev/null
cargo build -q -p tenure-tool
TENURE=target/debug/tenure

mkdir -p $OUT
RESULTS=$OUT/results.txt
: >"$RESULTS"

# pack SYSTEM CONFIG KERNEL IMAGE
pack() {
    $TENURE pack "$1" --board $BOARD --config "$2" --search-path target/$TARGET/release \
        --search-path build/guest-images --kernel "$3" -o "$4" -r "${4%.img}.report.txt" >/dev/null
}

for system in ci/bench/*/system.xml; do
    name=$(basename "$(dirname "$system")")
    image=$OUT/$name.img
    pack "$system" benchmark "$BENCH_KERNEL" "$image"
    for cpu in $CPUS; do
        echo "== $name on $cpu"
        log=$OUT/$name.$cpu.log
        if ! $TENURE test-image "$image" --board $BOARD --timeout 60 \
            --qemu-arg -icount --qemu-arg shift=0,sleep=off \
            --qemu-arg -cpu --qemu-arg "$cpu" >"$log" 2>&1; then
            cat "$log"
            echo "Error: the $name benchmark did not finish on $cpu" >&2
            exit 1
        fi
        grep '^BENCH ' "$log" | sed "s/^BENCH /$cpu /" | tee -a "$RESULTS"
    done
done

# Sizes: the default system and the 1-PD system packed as release builds.
pack system.xml release "$RELEASE_KERNEL" $OUT/default.release.img
pack ci/bench/boot/system.xml release "$RELEASE_KERNEL" $OUT/boot.release.img
size_of() { stat -c %s "$1"; }
{
    echo "size kernel_elf $(size_of "$RELEASE_KERNEL")"
    echo "size kernel_elf_benchmark $(size_of "$BENCH_KERNEL")"
    echo "size image_default $(size_of $OUT/default.release.img)"
    echo "size image_boot $(size_of $OUT/boot.release.img)"
    echo "size image_bench $(size_of $OUT/ipc.img)"
} >>"$RESULTS"

python3 ci/bench/table.py "$RESULTS" "$RELEASE_KERNEL" ${CPUS}
