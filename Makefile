# Tenure: the user's entry point (Microkit convention).
#
#   make run | test | bench  [BOARD=...] [CONFIG=debug|release|benchmark]

# Declared now, used once the kernel, the tool and the image exist.
BOARD ?= qemu_virt_aarch64
CONFIG ?= debug
FUZZ_SECONDS ?= 60

# The target that lints hyp-mm as it is built for the hypervisor.
TARGET := aarch64-unknown-none

.PHONY: help setup test bench fmt clippy fuzz run clean

help:
	@echo "Tenure make targets:"
	@echo "  setup    install what building and testing need (ci/setup.sh)"
	@echo "  test     every test and lint; ends with 'N passed, M failed'"
	@echo "  bench    host benchmarks of hyp-mm (criterion)"
	@echo "  fmt      format the workspace"
	@echo "  clippy   lint the workspace, host and $(TARGET)"
	@echo "  fuzz     fuzz hyp-mm operation sequences for FUZZ_SECONDS (default 60)"
	@echo "  run      boot BOARD in QEMU (not available yet)"
	@echo "  clean    remove build outputs"
	@echo "Variables: BOARD=$(BOARD) CONFIG=$(CONFIG)"

setup:
	@bash ci/setup.sh

test: setup
	@bash ci/test.sh

bench: setup
	@bash ci/bench.sh

fmt: setup
	cargo fmt --all

clippy: setup
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p hyp-mm -p tenure-abi --target $(TARGET) -- -D warnings

# cargo-fuzz needs a nightly toolchain (sanitizer flags).
fuzz: setup
	@rustup toolchain list | grep -q '^nightly-' || rustup toolchain install nightly --profile minimal
	@cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cd hyp-mm && cargo +nightly fuzz run ops -- -max_total_time=$(FUZZ_SECONDS)

run: setup
	@echo "make run: there is nothing to boot yet. The kernel, the image tool and"
	@echo "the QEMU boot for BOARD=$(BOARD) CONFIG=$(CONFIG) arrive with the kernel work."
	@exit 1

clean:
	cargo clean
	rm -rf build hyp-mm/fuzz/target
