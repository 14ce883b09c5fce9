//! What the kernel checks and prints at boot, apart from the CPU: the
//! banner and the boot test suite (`ci/systems/boot`).

use core::fmt::{self, Write};
use tenure_boot_image::{BoardInfo, Stage1};

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
    /// SCTLR_EL2 as read back after turning the EL2 stage 1 on.
    pub sctlr_el2: u64,
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
    tap.check(
        state.sctlr_el2 & SCTLR_EL2_MMU_ON == SCTLR_EL2_MMU_ON,
        format_args!("EL2 stage 1 on: the image's identity map, caches enabled"),
    )?;
    tap.finish()
}

/// SCTLR_EL2 bits the kernel sets to run on its map: M (bit 0, stage-1
/// translation), C (bit 2, data caches), I (bit 12, instruction caches).
pub const SCTLR_EL2_MMU_ON: u64 = (1 << 0) | (1 << 2) | (1 << 12);
/// SCTLR_EL2 bits the kernel clears: WXN (bit 19), which would make its
/// read/write/execute RAM mapping execute-never.
pub const SCTLR_EL2_MMU_CLEAR: u64 = 1 << 19;

/// MAIR attribute encodings the kernel's map must use: Normal write-back
/// (0xFF) for its own memory, any Device type (high nibble 0) for
/// registers.
const MAIR_NORMAL_WB: u64 = 0xFF;

/// Why the boot image's EL2 map cannot be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The image has no map.
    Missing,
    /// The map was built for an image at another address.
    WrongImageAddress(u64),
    /// An address of the kernel or its image is not mapped to itself as
    /// writable, executable Normal write-back memory.
    KernelNotMapped(u64),
    /// A device register page is not mapped to itself as Device memory.
    DeviceNotMapped(u64),
}

/// Checks that `map` keeps the kernel running once installed: it was built
/// for the image at `image_paddr`; every page of `kernel_start..kernel_end`
/// (the kernel and its image) is identity-mapped Normal write-back,
/// writable and executable; the console and the GIC are identity-mapped
/// Device memory.
pub fn check_map(
    map: Option<Stage1<'_>>,
    image_paddr: u64,
    kernel_start: u64,
    kernel_end: u64,
    board: &BoardInfo,
) -> Result<(), MapError> {
    let map = map.ok_or(MapError::Missing)?;
    if map.config.image_paddr.get() != image_paddr {
        return Err(MapError::WrongImageAddress(map.config.image_paddr.get()));
    }
    let mair = map.config.mair.get();
    let attr = |index: u8| (mair >> (8 * u32::from(index))) & 0xFF;
    let mut page = kernel_start & !0xFFF;
    while page < kernel_end {
        let ok = map.translate(page).is_some_and(|leaf| {
            leaf.pa == page
                && attr(leaf.attr_index()) == MAIR_NORMAL_WB
                && !leaf.read_only()
                && !leaf.execute_never()
        });
        if !ok {
            return Err(MapError::KernelNotMapped(page));
        }
        page += 0x1000;
    }
    let gicc = board.gicc_base.get();
    for reg in [board.uart_base.get(), board.gicd_base.get(), gicc, gicc + 0x1000] {
        let ok = map.translate(reg).is_some_and(|leaf| {
            leaf.pa == reg && attr(leaf.attr_index()) & 0xF0 == 0 && !leaf.read_only()
        });
        if !ok {
            return Err(MapError::DeviceNotMapped(reg));
        }
    }
    Ok(())
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
    use std::vec;
    use std::vec::Vec;
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
            sctlr_el2: 0x30C5_1835,
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
        assert!(out.contains("ok 3 - EL2 exception vectors installed\n"));
        assert!(out.contains("ok 4 - EL2 stage 1 on: the image's identity map, caches enabled\n"));
        assert!(out.ends_with("1..4\nTEST_PASS\n"));
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

        let mmu_off = BootState { sctlr_el2: 0x30C5_0830, ..state(&board) };
        let mut out = String::new();
        assert!(!boot_tests(&mut out, &mmu_off).unwrap());
        assert!(out.contains("not ok 4 - EL2 stage 1 on"));
    }

    const IMAGE: u64 = 0x4023_0000;
    const TABLES: u64 = IMAGE + tenure_boot_image::STAGE1_TABLES_OFFSET;

    /// An image at IMAGE whose map has RAM 1..2 GiB in 2 MiB blocks
    /// (attribute 0) and the QEMU virt devices as pages (attribute 1);
    /// `edit` changes the table words (page 2 holds the RAM blocks).
    fn map_image(edit: impl FnOnce(&mut [u64])) -> Vec<u8> {
        use tenure_boot_image::{Parts, Stage1Config, write_image};
        let mut t = vec![0u64; 5 * 512];
        let normal = 0x740;
        let device = (1 << 54) | 0x444;
        t[0] = (TABLES + 0x1000) | 3; // 0..1 GiB: level 2 at page 1
        t[1] = (TABLES + 0x2000) | 3; // 1..2 GiB: level 2 at page 2
        t[512 + 0x40] = (TABLES + 0x3000) | 3; // 0x0800_0000: level 3 at page 3
        t[512 + 0x48] = (TABLES + 0x4000) | 3; // 0x0900_0000: level 3 at page 4
        t[3 * 512] = 0x0800_0000 | device | 3;
        t[3 * 512 + 0x10] = 0x0801_0000 | device | 3;
        t[3 * 512 + 0x11] = 0x0801_1000 | device | 3;
        t[4 * 512] = 0x0900_0000 | device | 3;
        for i in 0..512u64 {
            t[2 * 512 + i as usize] = (0x4000_0000 + (i << 21)) | normal | 1;
        }
        edit(&mut t);
        let tables = t.iter().flat_map(|d| d.to_le_bytes()).collect();
        let config = Stage1Config {
            mair: 0x04FF.into(),
            tcr: 0x8082_3519.into(),
            ttbr0: TABLES.into(),
            image_paddr: IMAGE.into(),
        };
        write_image(&board(), &Parts { stage1: Some((config, tables)), ..Parts::default() })
    }

    fn check(bytes: &[u8], image: u64, end: u64) -> Result<(), MapError> {
        let parsed = tenure_boot_image::Image::parse(bytes).unwrap();
        check_map(parsed.stage1(), image, 0x4020_0000, end, &board())
    }

    #[test]
    fn the_map_must_cover_the_kernel_and_devices() {
        let good = map_image(|_| {});
        assert_eq!(check(&good, IMAGE, 0x4024_0000), Ok(()));
        assert_eq!(
            check(&good, IMAGE + 0x1000, 0x4024_0000),
            Err(MapError::WrongImageAddress(IMAGE))
        );
        assert_eq!(check(&good, IMAGE, 0x8000_1000), Err(MapError::KernelNotMapped(0x8000_0000)));
        // The kernel's block execute-never, read-only, or device.
        for bad in [1u64 << 54, 1 << 7, 1 << 2] {
            let bytes = map_image(|t| t[2 * 512 + 1] |= bad);
            assert_eq!(
                check(&bytes, IMAGE, 0x4024_0000),
                Err(MapError::KernelNotMapped(0x4020_0000))
            );
        }
        let bytes = map_image(|t| t[4 * 512] = 0);
        assert_eq!(check(&bytes, IMAGE, 0x4024_0000), Err(MapError::DeviceNotMapped(0x0900_0000)));
        let bytes = map_image(|t| t[3 * 512 + 0x11] &= !(1 << 2));
        assert_eq!(check(&bytes, IMAGE, 0x4024_0000), Err(MapError::DeviceNotMapped(0x0801_1000)));
        let none = tenure_boot_image::write_image(&board(), &Default::default());
        assert_eq!(check(&none, IMAGE, 0x4024_0000), Err(MapError::Missing));
    }
}
