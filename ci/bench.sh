#!/usr/bin/env bash
# `make bench`: host-side benchmarks (criterion) of hyp-mm's stage-2
# operations, side by side with aarch64-paging, ending with a summary
# table; then the kernel benchmarks under QEMU (ci/bench/kernel.sh: IPC
# round trips, boot, sizes, side by side with seL4 Microkit).
#
# The hyp-mm bench runs on hyp-mm's host Arena, hence `--features host` (the
# bench target requires it, so plain `cargo test --all-targets` skips it).
# Arguments go to the criterion bench. BENCH_CPUS picks the QEMU CPUs of the
# kernel part (default "cortex-a53 cortex-a72"; the first is compared).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo bench -p hyp-mm --features host --bench stage2 "$@"
bash ci/bench/kernel.sh
