#!/usr/bin/env bash
# Make this machine ready to build and test Tenure. Called by the Makefile.
#
# Idempotent and quiet: prints one line per thing it installs, then
# "setup: ok" (only that line when everything was already present). Runs as root with no
# stdin (CI), on Debian 12 with rustup installed.
#
#   TENURE_NEED_QEMU=1   also ensure QEMU >= 9.0 and dtc (needed by target tests)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "setup: $*"; }

# toml_string KEY / toml_list KEY: read a value from rust-toolchain.toml, the
# one source of truth for the toolchain (flat file, one key per line).
toml_string() { sed -n "s/^$1 *= *\"\([^\"]*\)\".*/\1/p" rust-toolchain.toml; }
toml_list() { sed -n "s/^$1 *= *\[\(.*\)\].*/\1/p" rust-toolchain.toml | tr -d '" ' | tr ',' ' '; }

ensure_rust() {
    local channel components targets host c t
    channel=$(toml_string channel)
    components=$(toml_list components)
    targets=$(toml_list targets)
    [[ -n $channel ]] || { echo "setup: no channel in rust-toolchain.toml" >&2; exit 1; }

    if ! rustup toolchain list | grep -q "^${channel}-"; then
        say "installing Rust toolchain $channel"
        rustup toolchain install "$channel" --profile minimal --no-self-update \
            ${components:+--component "${components// /,}"} ${targets:+--target "${targets// /,}"}
    fi
    host=$(rustc "+$channel" -vV | sed -n 's/^host: //p')

    # Installed components are listed with or without the host suffix
    # (clippy-x86_64-unknown-linux-gnu, but rust-src).
    local have
    have=$(rustup component list --installed --toolchain "$channel" | sed "s/-${host}\$//")
    for c in $components; do
        if ! grep -qx "$c" <<<"$have"; then
            say "installing component $c"
            rustup component add --toolchain "$channel" "$c"
        fi
    done

    have=$(rustup target list --installed --toolchain "$channel")
    for t in $targets; do
        if ! grep -qx "$t" <<<"$have"; then
            say "installing target $t"
            rustup target add --toolchain "$channel" "$t"
        fi
    done
}

# QEMU 9.0+ is needed for -M raspi4b; bookworm has 7.2, bookworm-backports 10.x.
ensure_qemu() {
    local version major
    version=$(qemu-system-aarch64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p' || true)
    major=${version:-0}
    ((major >= 9)) && return 0

    export DEBIAN_FRONTEND=noninteractive
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        say "adding bookworm-backports to apt sources"
        echo 'deb http://deb.debian.org/debian bookworm-backports main' \
            >/etc/apt/sources.list.d/bookworm-backports.list
    fi
    say "installing qemu-system-arm from bookworm-backports"
    apt-get -qq update </dev/null >/dev/null
    apt-get install -y -qq -t bookworm-backports qemu-system-arm </dev/null >/dev/null
    qemu-system-aarch64 --version | head -n 1
}

# dtc and fdtput compile the test guest's device tree (guest-images/dtb.sh).
ensure_dtc() {
    command -v dtc >/dev/null && command -v fdtput >/dev/null && return 0
    export DEBIAN_FRONTEND=noninteractive
    say "installing device-tree-compiler"
    apt-get -qq update </dev/null >/dev/null
    apt-get install -y -qq device-tree-compiler </dev/null >/dev/null
}

ensure_rust
if [[ ${TENURE_NEED_QEMU:-0} == 1 ]]; then
    ensure_qemu
    ensure_dtc
fi

echo "setup: ok"
