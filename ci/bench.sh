#!/usr/bin/env bash
# Host-side benchmarks (criterion) of hyp-mm's stage-2 operations, side by
# side with aarch64-paging, ending with a summary table. Called by `make bench`.
#
# The bench runs on hyp-mm's host Arena, hence `--features host` (the bench
# target requires it, so plain `cargo test --all-targets` skips it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo bench -p hyp-mm --features host --bench stage2 "$@"
