//! What the kernel checks and prints at boot, apart from the CPU: the
//! banner and the boot test suite (`ci/systems/boot`).

use core::fmt::{self, Write};
use core::ops::Range;
use tenure_boot_image::{BoardInfo, Stage1};

/// Size of a page of the kernel's map.
const PAGE: u64 = 0x1000;

/// The kernel's memory by use, at run-time addresses, from the symbols of
/// `kernel/link.ld`; every bound but the image's end is page aligned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRegions {
    /// `_start..__text_end`: read-only, executable.
    pub text: Range<u64>,
    /// `__text_end..__rodata_end`: read-only, execute-never.
    pub rodata: Range<u64>,
    /// `__rodata_end..__stack_guard` (data and bss): read/write,
    /// execute-never.
    pub data: Range<u64>,
    /// `__stack_guard..__stack_bottom`: unmapped.
    pub guard: Range<u64>,
    /// `__stack_bottom..__stack_top`: read/write, execute-never.
    pub stack: Range<u64>,
    /// `__boot_image` to the end of the image: execute-never.
    pub image: Range<u64>,
}

/// What an address translation said (`AT S1E2R` or `AT S1E2W`): the
/// output address, or `None` for a fault.
pub type Translate = fn(va: u64, write: bool) -> Option<u64>;

/// Facts about this boot that the arch code gathers from the CPU.
#[derive(Clone, Debug)]
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
    /// The kernel's memory by use.
    pub regions: KernelRegions,
    /// The boot image's EL2 map, as installed.
    pub map: Option<Stage1<'a>>,
    /// Translates an address with the installed EL2 stage 1, as a read
    /// or a write would (at EL2 only).
    pub translate: Translate,
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
    let on = SCTLR_EL2_M | SCTLR_EL2_C | SCTLR_EL2_I;
    tap.check(
        state.sctlr_el2 & on == on,
        format_args!("EL2 stage 1 on: the image's identity map, caches enabled"),
    )?;
    tap.check(
        state.sctlr_el2 & SCTLR_EL2_WXN != 0,
        format_args!("SCTLR_EL2.WXN set: no writable page is executable"),
    )?;
    let el2 = state.current_el == 2;
    let r = &state.regions;
    let at = |va: u64, write: bool| if el2 { (state.translate)(va, write) } else { None };
    let readable = |va: u64| at(va, false) == Some(va);
    let writable = |va: u64| at(va, true) == Some(va);
    tap.check(
        readable(r.text.start) && !writable(r.text.start) && !writable(r.text.end - PAGE),
        format_args!("kernel text readable, not writable (AT S1E2R, S1E2W)"),
    )?;
    tap.check(
        readable(r.rodata.start) && !writable(r.rodata.start) && !writable(r.rodata.end - PAGE),
        format_args!("kernel rodata readable, not writable"),
    )?;
    tap.check(
        writable(r.data.start)
            && writable(r.data.end - PAGE)
            && writable(r.stack.start)
            && writable(r.stack.end - PAGE),
        format_args!("kernel data, bss and stack writable, so never executable (WXN)"),
    )?;
    tap.check(
        el2 && !r.guard.is_empty()
            && r.guard.clone().step_by(PAGE as usize).all(|va| at(va, false).is_none()),
        format_args!("stack guard page at {:#x} unmapped", r.guard.start),
    )?;
    // AT does not check execute permission: read the leaves instead.
    let never_executed = |range: &Range<u64>| {
        let leaf = |va| state.map.and_then(|map| map.translate(va));
        [range.start, range.end.next_multiple_of(PAGE) - PAGE]
            .into_iter()
            .all(|va| leaf(va).is_some_and(|leaf| leaf.execute_never()))
    };
    tap.check(
        never_executed(&r.rodata) && never_executed(&r.image),
        format_args!("kernel rodata and boot image execute-never"),
    )?;
    tap.finish()
}

/// SCTLR_EL2.M, bit 0: stage-1 translation on (Arm ARM D24.2, SCTLR_EL2
/// when HCR_EL2.E2H is 0).
const SCTLR_EL2_M: u64 = 1 << 0;
/// SCTLR_EL2.C, bit 2: data and unified caches on.
const SCTLR_EL2_C: u64 = 1 << 2;
/// SCTLR_EL2.I, bit 12: instruction caches on.
const SCTLR_EL2_I: u64 = 1 << 12;
/// SCTLR_EL2.WXN, bit 19: every writable page is execute-never, whatever
/// its descriptor says (D8.4, "Preventing execution from writable
/// locations").
const SCTLR_EL2_WXN: u64 = 1 << 19;
/// SCTLR_EL2 bits the kernel sets to run on its map: M, C, I and WXN.
pub const SCTLR_EL2_MMU_ON: u64 = SCTLR_EL2_M | SCTLR_EL2_C | SCTLR_EL2_I | SCTLR_EL2_WXN;

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
    /// A page of the kernel or its image is not mapped to itself as
    /// Normal write-back memory with its region's permissions.
    KernelNotMapped(u64),
    /// The page under the kernel stack is mapped.
    GuardMapped(u64),
    /// A device register page is not mapped to itself as Device memory,
    /// read/write, execute-never.
    DeviceNotMapped(u64),
}

/// Checks that `map` keeps the kernel running once installed, and W^X: it
/// was built for the image at `image_paddr`; every page of the kernel and
/// its image is identity-mapped Normal write-back, its text read-only and
/// executable, its rodata read-only and execute-never, its data, bss and
/// stack read/write and execute-never, its image execute-never; the page
/// under the stack is unmapped; the console and the GIC are
/// identity-mapped Device memory, read/write, execute-never.
pub fn check_map(
    map: Option<Stage1<'_>>,
    image_paddr: u64,
    regions: &KernelRegions,
    board: &BoardInfo,
) -> Result<(), MapError> {
    let map = map.ok_or(MapError::Missing)?;
    if map.config.image_paddr.get() != image_paddr {
        return Err(MapError::WrongImageAddress(map.config.image_paddr.get()));
    }
    let mair = map.config.mair.get();
    let attr = |index: u8| (mair >> (8 * u32::from(index))) & 0xFF;
    // (region, read-only, execute-never); `None`: either.
    let kernel = [
        (&regions.text, Some(true), false),
        (&regions.rodata, Some(true), true),
        (&regions.data, Some(false), true),
        (&regions.stack, Some(false), true),
        (&regions.image, None, true),
    ];
    for (range, read_only, execute_never) in kernel {
        let mut page = range.start & !(PAGE - 1);
        while page < range.end {
            let ok = map.translate(page).is_some_and(|leaf| {
                leaf.pa == page
                    && attr(leaf.attr_index()) == MAIR_NORMAL_WB
                    && read_only.is_none_or(|ro| leaf.read_only() == ro)
                    && leaf.execute_never() == execute_never
            });
            if !ok {
                return Err(MapError::KernelNotMapped(page));
            }
            page += PAGE;
        }
    }
    let mut page = regions.guard.start;
    while page < regions.guard.end {
        if map.translate(page).is_some() {
            return Err(MapError::GuardMapped(page));
        }
        page += PAGE;
    }
    let gicc = board.gicc_base.get();
    let devices = [board.uart_base.get(), board.gicd_base.get(), gicc, gicc + PAGE];
    for reg in devices.into_iter().chain([board.gich_base.get()]) {
        let ok = map.translate(reg).is_some_and(|leaf| {
            leaf.pa == reg
                && attr(leaf.attr_index()) & 0xF0 == 0
                && !leaf.read_only()
                && leaf.execute_never()
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
            gich_base: 0x0803_0000.into(),
            gicv_base: 0x0804_0000.into(),
            vgic_maintenance_intid: 25.into(),
            reserved: 0.into(),
            memory_region_count: 1.into(),
            memory,
        }
    }

    const IMAGE: u64 = 0x4023_0000;
    const TABLES: u64 = IMAGE + tenure_boot_image::STAGE1_TABLES_OFFSET;
    const GUARD: u64 = 0x4020_5000;

    /// A small kernel at 0x4020_0000 with its image at IMAGE, ending at
    /// `end`.
    fn regions(end: u64) -> KernelRegions {
        KernelRegions {
            text: 0x4020_0000..0x4020_2000,
            rodata: 0x4020_2000..0x4020_3000,
            data: 0x4020_3000..GUARD,
            guard: GUARD..GUARD + PAGE,
            stack: GUARD + PAGE..IMAGE,
            image: IMAGE..end,
        }
    }

    /// AT as the map of [`map_image`] answers it: text and rodata
    /// read-only, the guard page unmapped.
    fn at_w_xor_x(va: u64, write: bool) -> Option<u64> {
        let r = regions(0x4024_0000);
        let read_only = r.text.contains(&va) || r.rodata.contains(&va);
        let faults = r.guard.contains(&va) || (write && read_only);
        (!faults).then_some(va)
    }

    /// AT as one read/write mapping of all RAM answers it.
    fn at_rwx(va: u64, _write: bool) -> Option<u64> {
        Some(va)
    }

    fn state<'a>(board: &'a BoardInfo, image: &'a [u8]) -> BootState<'a> {
        BootState {
            current_el: 2,
            kernel_start: 0x4020_0000,
            kernel_end: 0x4024_0000,
            vectors: 0x4020_0800,
            vbar_el2: 0x4020_0800,
            sctlr_el2: 0x30CD_1835,
            board,
            regions: regions(0x4024_0000),
            map: tenure_boot_image::Image::parse(image).unwrap().stage1(),
            translate: at_w_xor_x,
        }
    }

    #[test]
    fn a_good_boot_passes() {
        let (board, image) = (board(), map_image(|_| {}));
        let mut out = String::new();
        banner(&mut out, &state(&board, &image)).unwrap();
        assert!(boot_tests(&mut out, &state(&board, &image)).unwrap(), "{out}");
        assert!(out.starts_with("Tenure 0.1.0 on qemu_virt_aarch64 (EL2"));
        assert!(out.contains("ok 1 - kernel entered at EL2\n"));
        assert!(out.contains("ok 2 - boot image board matches"));
        assert!(out.contains("ok 3 - EL2 exception vectors installed\n"));
        assert!(out.contains("ok 4 - EL2 stage 1 on: the image's identity map, caches enabled\n"));
        assert!(out.contains("ok 5 - SCTLR_EL2.WXN set: no writable page is executable\n"));
        assert!(out.contains("ok 6 - kernel text readable, not writable (AT S1E2R, S1E2W)\n"));
        assert!(out.contains("ok 7 - kernel rodata readable, not writable\n"));
        assert!(out.contains("ok 8 - kernel data, bss and stack writable"));
        assert!(out.contains("ok 9 - stack guard page at 0x40205000 unmapped\n"));
        assert!(out.contains("ok 10 - kernel rodata and boot image execute-never\n"));
        assert!(out.ends_with("1..10\nTEST_PASS\n"));
    }

    #[test]
    fn a_wrong_el_or_load_address_fails() {
        let (board, image) = (board(), map_image(|_| {}));
        let mut out = String::new();
        let at_el1 = BootState { current_el: 1, ..state(&board, &image) };
        assert!(!boot_tests(&mut out, &at_el1).unwrap());
        assert!(out.contains("not ok 1 - kernel entered at EL2"));
        assert!(out.contains("not ok 6 - kernel text"));
        assert!(out.ends_with("TEST_FAIL\n"));

        let moved = BootState {
            kernel_start: 0x4040_0000,
            kernel_end: 0x4043_0000,
            ..state(&board, &image)
        };
        assert!(!moved.board_matches());
        let outside_ram = BootState { kernel_end: 0xC000_1000, ..state(&board, &image) };
        assert!(!outside_ram.board_matches());

        let mmu_off = BootState { sctlr_el2: 0x30C5_0830, ..state(&board, &image) };
        let mut out = String::new();
        assert!(!boot_tests(&mut out, &mmu_off).unwrap());
        assert!(out.contains("not ok 4 - EL2 stage 1 on"));
    }

    #[test]
    fn a_map_that_is_not_w_xor_x_fails() {
        let (board, image) = (board(), map_image(|_| {}));
        let no_wxn = BootState { sctlr_el2: 0x30C5_1835, ..state(&board, &image) };
        let mut out = String::new();
        assert!(!boot_tests(&mut out, &no_wxn).unwrap());
        assert!(out.contains("not ok 5 - SCTLR_EL2.WXN set"));
        assert!(out.contains("ok 6 - kernel text readable"), "{out}");

        let rwx = BootState { translate: at_rwx, ..state(&board, &image) };
        let mut out = String::new();
        assert!(!boot_tests(&mut out, &rwx).unwrap());
        assert!(out.contains("not ok 6 - kernel text readable, not writable"));
        assert!(out.contains("not ok 7 - kernel rodata readable, not writable"));
        assert!(out.contains("ok 8 - kernel data"));
        assert!(out.contains("not ok 9 - stack guard page"));

        // The image's first page executable.
        let image = map_image(|t| t[5 * 512 + 0x30] &= !(1 << 54));
        let mut out = String::new();
        assert!(!boot_tests(&mut out, &state(&board, &image)).unwrap());
        assert!(out.contains("not ok 10 - kernel rodata and boot image execute-never"));
    }

    /// An image at IMAGE whose map has RAM 1..2 GiB in 2 MiB blocks but
    /// for the kernel's, in pages (page 5) with the permissions of
    /// [`regions`], and the QEMU virt devices as pages (attribute 1);
    /// `edit` changes the table words.
    fn map_image(edit: impl FnOnce(&mut [u64])) -> Vec<u8> {
        use tenure_boot_image::{Parts, Stage1Config, write_image};
        let mut t = vec![0u64; 6 * 512];
        let text = 0x7C0;
        let xn = 1 << 54;
        let rw = 0x740 | xn;
        let device = xn | 0x444;
        t[0] = (TABLES + 0x1000) | 3; // 0..1 GiB: level 2 at page 1
        t[1] = (TABLES + 0x2000) | 3; // 1..2 GiB: level 2 at page 2
        t[512 + 0x40] = (TABLES + 0x3000) | 3; // 0x0800_0000: level 3 at page 3
        t[512 + 0x48] = (TABLES + 0x4000) | 3; // 0x0900_0000: level 3 at page 4
        t[3 * 512] = 0x0800_0000 | device | 3;
        t[3 * 512 + 0x10] = 0x0801_0000 | device | 3;
        t[3 * 512 + 0x11] = 0x0801_1000 | device | 3;
        t[3 * 512 + 0x30] = 0x0803_0000 | device | 3; // GICH
        t[4 * 512] = 0x0900_0000 | device | 3;
        for i in 0..512u64 {
            t[2 * 512 + i as usize] = (0x4000_0000 + (i << 21)) | rw | 1;
        }
        t[2 * 512 + 1] = (TABLES + 0x5000) | 3; // 0x4020_0000: level 3 at page 5
        let r = regions(0x4024_0000);
        for i in 0..512u64 {
            let va = 0x4020_0000 + (i << 12);
            t[5 * 512 + i as usize] = if r.text.contains(&va) {
                va | text | 3
            } else if r.rodata.contains(&va) {
                va | text | xn | 3
            } else if r.guard.contains(&va) {
                0
            } else {
                va | rw | 3
            };
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
        check_map(parsed.stage1(), image, &regions(end), &board())
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
        let bytes = map_image(|t| t[4 * 512] = 0);
        assert_eq!(check(&bytes, IMAGE, 0x4024_0000), Err(MapError::DeviceNotMapped(0x0900_0000)));
        let bytes = map_image(|t| t[3 * 512 + 0x11] &= !(1 << 2));
        assert_eq!(check(&bytes, IMAGE, 0x4024_0000), Err(MapError::DeviceNotMapped(0x0801_1000)));
        let bytes = map_image(|t| t[3 * 512] &= !(1 << 54));
        assert_eq!(check(&bytes, IMAGE, 0x4024_0000), Err(MapError::DeviceNotMapped(0x0800_0000)));
        let none = tenure_boot_image::write_image(&board(), &Default::default());
        assert_eq!(check(&none, IMAGE, 0x4024_0000), Err(MapError::Missing));
    }

    #[test]
    fn the_map_must_be_w_xor_x_with_a_guard_page() {
        // (page of the kernel's level-3 table, bits to flip, the page)
        let cases = [
            (1, 1u64 << 54, 0x4020_1000), // text execute-never
            (1, 1 << 7, 0x4020_1000),     // text writable
            (1, 1 << 2, 0x4020_1000),     // text Device
            (2, 1 << 54, 0x4020_2000),    // rodata executable
            (2, 1 << 7, 0x4020_2000),     // rodata writable
            (4, 1 << 54, 0x4020_4000),    // data executable
            (4, 1 << 7, 0x4020_4000),     // data read-only
            (0x2f, 1 << 54, 0x4022_f000), // stack executable
            (0x30, 1 << 54, IMAGE),       // image executable
        ];
        for (index, flip, page) in cases {
            let bytes = map_image(|t| t[5 * 512 + index] ^= flip);
            assert_eq!(
                check(&bytes, IMAGE, 0x4024_0000),
                Err(MapError::KernelNotMapped(page)),
                "{flip:#x} at {page:#x}"
            );
        }
        let bytes = map_image(|t| t[5 * 512 + 5] = GUARD | 0x740 | (1 << 54) | 3);
        assert_eq!(check(&bytes, IMAGE, 0x4024_0000), Err(MapError::GuardMapped(GUARD)));
        // The image need not be writable.
        let bytes = map_image(|t| t[5 * 512 + 0x31] |= 1 << 7);
        assert_eq!(check(&bytes, IMAGE, 0x4024_0000), Ok(()));
    }
}
