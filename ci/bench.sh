#!/usr/bin/env bash
# Host-side benchmarks (criterion) of hyp-mm's stage-2 operations. Called by `make bench`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo bench -p hyp-mm --bench stage2 "$@"
