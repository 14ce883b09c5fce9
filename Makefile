# Tenure: the user's entry point (Microkit convention).
#
#   make run | test | image | bench  [BOARD=...] [CONFIG=debug|release|benchmark]

BOARD ?= qemu_virt_aarch64
CONFIG ?= debug
FUZZ_SECONDS ?= 60

# The target PDs are built for, and hyp-mm linted for; the kernel is
# soft-float, so the FP/SIMD registers stay the PDs' and guests'.
TARGET := aarch64-unknown-none
KERNEL_TARGET := aarch64-unknown-none-softfloat

# debug builds the kernel unoptimised; release and benchmark optimise it.
KERNEL_PROFILE := $(if $(filter debug,$(CONFIG)),debug,release)
KERNEL_FLAGS := $(if $(filter debug,$(CONFIG)),,--release)
KERNEL_ELF := target/$(KERNEL_TARGET)/$(KERNEL_PROFILE)/tenure-kernel
# The packed image; on a Raspberry Pi SD card it is kernel8.img.
IMAGE := build/$(BOARD)/$(CONFIG)/tenure.img

.PHONY: help setup test bench fmt clippy fuzz image run clean

help:
	@echo "Tenure make targets:"
	@echo "  setup    install what building and testing need (ci/setup.sh)"
	@echo "  test     every test and lint; ends with 'N passed, M failed'"
	@echo "  bench    hyp-mm host benchmarks, then kernel IPC/boot/size benchmarks vs seL4 (QEMU)"
	@echo "  fmt      format the workspace"
	@echo "  clippy   lint the workspace, host and $(TARGET)"
	@echo "  fuzz     fuzz hyp-mm operations, system.xml parsing and the boot image reader, FUZZ_SECONDS each (default 60)"
	@echo "  image    build the kernel and PDs, pack $(SYSTEM) for BOARD into $(IMAGE)"
	@echo "  run      build, pack and boot BOARD in QEMU, console here (quit: Ctrl-A X)"
	@echo "  clean    remove build outputs"
	@echo "Variables: BOARD=$(BOARD) CONFIG=$(CONFIG)"

setup:
	@bash ci/setup.sh

# Target suites and make run boot QEMU, and make image compiles the
# guest's device tree: have setup install QEMU and dtc.
test run bench image: export TENURE_NEED_QEMU := 1

test: setup
	@bash ci/test.sh

bench: setup
	@bash ci/bench.sh

fmt: setup
	cargo fmt --all

clippy: setup
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p hyp-mm -p tenure-abi -p tenure-boot-image --target $(TARGET) -- -D warnings
	cargo clippy -p tenure-kernel --target $(KERNEL_TARGET) -- -D warnings
	cargo clippy $(LINTED_PDS) --target $(TARGET) -- -D warnings

# Every crate built for the target besides the kernel: PDs, suite PDs and
# the test guest (as ci/test.sh lints them).
LINTED_PDS := -p tenure-serial -p tenure-mm -p tenure-vmm -p tenure-example-ping \
	-p tenure-example-pong -p tenure-ipc-driver -p tenure-ipc-echo -p tenure-ipc-deep \
	-p tenure-ipc-sink -p tenure-sched-pd -p tenure-faults-pd -p tenure-irq-pd \
	-p tenure-passive-pd -p tenure-vcpu-pd -p tenure-mm-suite-pd -p tenure-guest-monitor-pd \
	-p tenure-hostile-collector-pd \
	-p tenure-bench-boot -p tenure-bench-client -p tenure-bench-pong -p tenure-bench-server \
	-p tenure-bench-mm -p tenure-test-guest

# cargo-fuzz needs a nightly toolchain (sanitizer flags).
fuzz: setup
	@rustup toolchain list | grep -q '^nightly-' || rustup toolchain install nightly --profile minimal
	@cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cd hyp-mm && cargo +nightly fuzz run ops -- -max_total_time=$(FUZZ_SECONDS)
	cd tool && cargo +nightly fuzz run sdf -- -max_total_time=$(FUZZ_SECONDS)
	cd boot-image && cargo +nightly fuzz run image -- -max_total_time=$(FUZZ_SECONDS)

# The PD crates of the default system, built like the kernel.
PDS := -p tenure-serial -p tenure-mm -p tenure-vmm -p tenure-example-ping -p tenure-example-pong
# The default system's guest: the test guest, and the probes its device
# tree's bootargs ask for (guest-images/README.md).
GUEST_BOOTARGS := probes=print,meminfo,share,unshare,relinquish,hostile,outside,off expect=tenure
# The default system for BOARD: the Raspberry Pi 4B has its own UART.
SYSTEM := $(if $(filter rpi4b_%,$(BOARD)),system.rpi4b.xml,system.xml)

image: setup
	cargo build -q -p tenure-kernel --target $(KERNEL_TARGET) $(KERNEL_FLAGS)
	cargo build -q $(PDS) --target $(TARGET) $(KERNEL_FLAGS)
	guest-images/build.sh
	guest-images/dtb.sh "$(GUEST_BOOTARGS)" build/guest-images/default.dtb
	@mkdir -p $(dir $(IMAGE))
	cargo run -q -p tenure-tool -- pack $(SYSTEM) --board $(BOARD) --config $(CONFIG) \
	    --search-path target/$(TARGET)/$(KERNEL_PROFILE) --search-path build/guest-images \
	    --kernel $(KERNEL_ELF) -o $(IMAGE) -r $(dir $(IMAGE))report.txt

run: image
	cargo run -q -p tenure-tool -- run $(IMAGE) --board $(BOARD)

clean:
	cargo clean
	rm -rf build hyp-mm/fuzz/target tool/fuzz/target boot-image/fuzz/target
