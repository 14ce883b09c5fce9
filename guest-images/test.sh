#!/usr/bin/env bash
# Boot the test guest under QEMU's virt board at EL1, with no hypervisor,
# and check what it prints. Each run has a timeout and must end with the
# guest's sentinel and PSCI SYSTEM_OFF (QEMU exits by itself).
#
# Every TAP line of the passing runs counts as a test, and each run adds
# one check of its own (plan met, TEST_PASS, powered off in time). Control
# runs, which must fail in a given way, show that the native expectations
# are not vacuous: the default (Tenure) expectations fail without Tenure.
# The last line is `N passed, M failed`; the exit status is non-zero if
# anything failed. Logs: build/guest-images/*.log.
#
# Usage: guest-images/test.sh   (builds the image first with build.sh)
# GUEST_TIMEOUT=SECONDS sets the timeout of one boot (default 30).
set -uo pipefail # not -e: a failing run must not stop the others

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
IMAGE=build/guest-images/test-guest.Image
LOGS=build/guest-images
TIMEOUT=${GUEST_TIMEOUT:-30}
# Every probe that runs without a hypervisor, in one boot.
NATIVE_PROBES=print,meminfo,share,unshare,relinquish,hostile,outside,gicc-iidr,secret-write,off

passed=0
failed=0

check() {
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
}

# boot NAME BOOTARGS: boots the image with BOOTARGS, logging the console to
# $LOGS/NAME.log; sets `qemu_rc` (124 on timeout).
boot() {
    local name=$1 bootargs=$2 log=$LOGS/$1.log
    echo "== guest run $name: $bootargs (log: $log)"
    timeout "$TIMEOUT" qemu-system-aarch64 -M virt -cpu cortex-a72 -m 256M \
        -display none -monitor none -serial stdio \
        -kernel "$IMAGE" -append "$bootargs" </dev/null 2>&1 | tr -d '\r' >"$log"
    qemu_rc=${PIPESTATUS[0]}
    cat "$log"
}

count() { grep -cE "$1" "$2" || true; }

# passing_run NAME BOOTARGS: a run whose probes must all pass.
passing_run() {
    local name=$1 log=$LOGS/$1.log ok not_ok plan
    boot "$1" "$2"
    ok=$(count '^ok [0-9]+ - ' "$log")
    not_ok=$(count '^not ok [0-9]+ - ' "$log")
    plan=$(sed -n 's/^1\.\.\([0-9][0-9]*\)$/\1/p' "$log" | head -n 1)
    passed=$((passed + ok))
    failed=$((failed + not_ok))
    if ((qemu_rc == 124)); then
        echo "== FAILED: $name: no SYSTEM_OFF within ${TIMEOUT}s"
        return 1
    elif ((qemu_rc != 0)); then
        echo "== FAILED: $name: QEMU exited $qemu_rc"
        return 1
    elif ! grep -qx TEST_PASS "$log"; then
        echo "== FAILED: $name: no TEST_PASS"
        return 1
    elif [[ -z $plan || $plan -ne $((ok + not_ok)) ]]; then
        echo "== FAILED: $name: plan 1..${plan:-?} but $((ok + not_ok)) results"
        return 1
    fi
    echo "== $name: $ok passed, $not_ok failed, TEST_PASS, powered off"
}

# failing_run NAME BOOTARGS LINE: a control run that must print LINE (a
# regular expression for a whole line), then TEST_FAIL, and power off.
failing_run() {
    local name=$1 line=$3 log=$LOGS/$1.log
    boot "$1" "$2"
    if ((qemu_rc != 0)) || ! grep -qx TEST_FAIL "$log" || ! grep -qxE "$line" "$log"; then
        echo "== FAILED: control $name: want the line /$line/, TEST_FAIL and SYSTEM_OFF"
        return 1
    fi
    echo "== control $name: failed as it must"
}

mkdir -p "$LOGS"
if ! guest-images/build.sh; then
    echo "0 passed, 1 failed"
    exit 1
fi

check passing_run native "probes=$NATIVE_PROBES expect=native"
# The probes of the hostile suite that mean something alone: natively the
# registers are the guest's own, all RAM is there and the load completes.
check passing_run native-hostile "probes=trapped,fair,refault,quota,off expect=native"
# A later boot (a fresh machine) finds the secret page zeroed.
check passing_run native-secret-read "probes=secret-read,off expect=native"
# Without Tenure the default expectations must fail, with the reason.
check failing_run tenure-without-tenure "probes=print,share,off" \
    'not ok 2 - share: step 1: MEM_SHARE\(0x[0-9a-f]+, 1\) returned -1 \(NOT_SUPPORTED\), want 0 \(SUCCESS\)'
# A probe name the guest does not know fails rather than being skipped.
check failing_run unknown-probe "probes=print,no-such-probe,off expect=native" \
    'not ok 2 - no-such-probe: no such probe'
# A page that still holds the secret is caught (here: the same boot).
check failing_run secret-kept "probes=secret-write,secret-read,off expect=native" \
    'not ok 2 - secret-read: page 0x[0-9a-f]+ still holds 512 words of the secret'

echo "$passed passed, $failed failed"
((failed == 0))
