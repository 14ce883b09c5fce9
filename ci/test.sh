#!/usr/bin/env bash
# Run every test and check of the workspace. Called by `make test`.
#
# Each step adds to the totals; the last line is always `N passed, M failed`.
# Exits non-zero when anything failed. Logs go to build/.
#
# Adding a step: write a function that runs something and calls
# `add_totals PASSED FAILED`, then call it at the bottom. Lints count as one
# test each (`check`); libtest output is summed per binary (`cargo_suite`).
# Target suites (ci/systems/*) will be a TAP-counting step of the same kind.
set -uo pipefail # not -e: a failing step must not stop the others

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
mkdir -p build

passed=0
failed=0

add_totals() {
    passed=$((passed + $1))
    failed=$((failed + $2))
}

# check NAME CMD...: a lint or other pass/fail command, counted as one test.
check() {
    local name=$1
    shift
    echo "== check: $name"
    if "$@"; then
        add_totals 1 0
    else
        echo "== check FAILED: $name"
        add_totals 0 1
    fi
}

# libtest_totals LOG: print "PASSED FAILED" summed over every libtest summary
# line (`test result: ok. 3 passed; 0 failed; ...`, also FAILED ones).
libtest_totals() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" |
        awk '/^test result: (ok|FAILED)\. [0-9]+ passed; [0-9]+ failed;/ {
                 p += $4; f += $6; n++
             }
             END { printf "%d %d %d\n", p, f, n }'
}

# cargo_suite NAME LOG CMD...: run a cargo test command, streaming its output
# and keeping it in LOG, then add its libtest totals. A cargo failure that no
# test accounts for (a build error, a crashed test binary) counts as 1 failed.
cargo_suite() {
    local name=$1 log=$2
    shift 2
    echo "== suite: $name (log: $log)"
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]} p f n
    read -r p f n < <(libtest_totals "$log")
    if ((rc != 0 && f == 0)); then
        echo "== suite FAILED: $name (cargo exited $rc$( ((n == 0)) && echo ', no test results'))"
        f=1
    fi
    echo "== $name: $p passed; $f failed"
    add_totals "$p" "$f"
}

check "rustfmt" cargo fmt --all -- --check
check "clippy (host)" cargo clippy --workspace --all-targets -- -D warnings
check "clippy (aarch64-unknown-none)" \
    cargo clippy -p hyp-mm -p tenure-abi --target aarch64-unknown-none -- -D warnings

cargo_suite "host tests" build/test-host.log \
    cargo test --workspace --all-targets --no-fail-fast
# --all-targets leaves out doctests, so they run on their own.
cargo_suite "doc tests" build/test-doc.log \
    cargo test --workspace --doc --no-fail-fast

echo "$passed passed, $failed failed"
((failed == 0))
