//! What the kernel checks and prints at boot, apart from the CPU: the
//! banner and the boot test suite (`ci/systems/boot`).

use core::fmt::{self, Write};
use tenure_boot_image::BoardInfo;

/// Facts about this boot that the arch code gathers from the CPU.
#[derive(Clone, Copy, Debug)]
pub struct BootState<'a> {
    /// Exception level the kernel was entered at (CurrentEL.EL).
    pub current_el: u8,
    /// Run-time address of the kernel's first byte (`_start`).
    pub kernel_start: u64,
    /// Run-time address just past the kernel and its boot image.
    pub kernel_end: u64,
    /// Run-time address of the exception vector table.
    pub vectors: u64,
    /// VBAR_EL2 as read back after installing the vectors.
    pub vbar_el2: u64,
    /// The board the boot image describes.
    pub board: &'a BoardInfo,
}

impl BootState<'_> {
    /// The kernel runs where the boot image says the board loads it, and
    /// that lies in the board's RAM: the image was packed for this board.
    pub fn board_matches(&self) -> bool {
        let in_ram = self.board.memory().iter().any(|region| {
            let base = region.base.get();
            let end = base.saturating_add(region.size.get());
            base <= self.kernel_start && self.kernel_end <= end
        });
        self.kernel_start == self.board.kernel_load_addr.get() && in_ram
    }
}

/// Prints the boot banner.
pub fn banner(out: &mut impl Write, state: &BootState<'_>) -> fmt::Result {
    writeln!(
        out,
        "Tenure {} on {} (EL{}, kernel at {:#x})",
        env!("CARGO_PKG_VERSION"),
        state.board.name(),
        state.current_el,
        state.kernel_start
    )
}

/// Runs the boot test suite: TAP lines, then `TEST_PASS` or `TEST_FAIL`.
/// Returns whether every test passed.
pub fn boot_tests(out: &mut impl Write, state: &BootState<'_>) -> Result<bool, fmt::Error> {
    let mut tap = Tap::new(out);
    tap.check(state.current_el == 2, format_args!("kernel entered at EL2"))?;
    tap.check(
        state.board_matches(),
        format_args!(
            "boot image board matches ({}, loaded at {:#x})",
            state.board.name(),
            state.board.kernel_load_addr.get()
        ),
    )?;
    tap.check(
        state.current_el == 2 && state.vbar_el2 == state.vectors,
        format_args!("EL2 exception vectors installed"),
    )?;
    tap.finish()
}

/// Numbers TAP lines and remembers failures.
pub struct Tap<'w, W: Write> {
    out: &'w mut W,
    count: u32,
    failed: u32,
}

impl<'w, W: Write> Tap<'w, W> {
    /// A TAP writer on `out`, starting at test 1.
    pub fn new(out: &'w mut W) -> Self {
        Self { out, count: 0, failed: 0 }
    }

    /// Prints `ok N - what` or `not ok N - what`.
    pub fn check(&mut self, passed: bool, what: fmt::Arguments<'_>) -> fmt::Result {
        self.count += 1;
        if !passed {
            self.failed += 1;
        }
        let prefix = if passed { "ok" } else { "not ok" };
        writeln!(self.out, "{prefix} {} - {what}", self.count)
    }

    /// Prints the plan and the sentinel; returns whether all passed.
    pub fn finish(self) -> Result<bool, fmt::Error> {
        writeln!(self.out, "1..{}", self.count)?;
        let passed = self.failed == 0;
        writeln!(self.out, "{}", if passed { "TEST_PASS" } else { "TEST_FAIL" })?;
        Ok(passed)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;
    use tenure_boot_image::{MAX_MEMORY_REGIONS, MemoryRegion};

    fn board() -> BoardInfo {
        let mut memory = [MemoryRegion::default(); MAX_MEMORY_REGIONS];
        memory[0] = MemoryRegion { base: 0x4000_0000.into(), size: 0x8000_0000.into() };
        BoardInfo {
            name: BoardInfo::encode_name("qemu_virt_aarch64").unwrap(),
            kernel_load_addr: 0x4020_0000.into(),
            uart_base: 0x0900_0000.into(),
            gicd_base: 0x0800_0000.into(),
            gicc_base: 0x0801_0000.into(),
            uart_intid: 33.into(),
            timer_el2_phys_intid: 26.into(),
            timer_virt_intid: 27.into(),
            memory_region_count: 1.into(),
            memory,
        }
    }

    fn state(board: &BoardInfo) -> BootState<'_> {
        BootState {
            current_el: 2,
            kernel_start: 0x4020_0000,
            kernel_end: 0x4023_0000,
            vectors: 0x4020_0800,
            vbar_el2: 0x4020_0800,
            board,
        }
    }

    #[test]
    fn a_good_boot_passes() {
        let board = board();
        let mut out = String::new();
        banner(&mut out, &state(&board)).unwrap();
        assert!(boot_tests(&mut out, &state(&board)).unwrap());
        assert!(out.starts_with("Tenure 0.1.0 on qemu_virt_aarch64 (EL2"));
        assert!(out.contains("ok 1 - kernel entered at EL2\n"));
        assert!(out.contains("ok 2 - boot image board matches"));
        assert!(out.contains("ok 3 - EL2 exception vectors installed\n1..3\nTEST_PASS\n"));
    }

    #[test]
    fn a_wrong_el_or_load_address_fails() {
        let board = board();
        let mut out = String::new();
        let at_el1 = BootState { current_el: 1, ..state(&board) };
        assert!(!boot_tests(&mut out, &at_el1).unwrap());
        assert!(out.contains("not ok 1 - kernel entered at EL2"));
        assert!(out.ends_with("TEST_FAIL\n"));

        let moved =
            BootState { kernel_start: 0x4040_0000, kernel_end: 0x4043_0000, ..state(&board) };
        assert!(!moved.board_matches());
        let outside_ram = BootState { kernel_end: 0xC000_1000, ..state(&board) };
        assert!(!outside_ram.board_matches());
    }
}
