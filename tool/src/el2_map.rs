//! The kernel's own EL2 stage-1 map (TTBR0_EL2), built here and installed
//! by the kernel before it does anything else (DESIGN.md, "The kernel";
//! `docs/decisions/0006-kernel-el2-stage1-identity-map.md`).
//!
//! An identity map, 4 KiB granule, 39-bit VA (the walk starts at level 1):
//!
//! - every RAM region of the board: Normal write-back (MAIR attribute 0),
//!   inner shareable, read/write and executable (one RWX mapping: the
//!   kernel's text is not yet read-only, nor its data non-executable);
//! - the console UART and the GIC's distributor and CPU interface: Device-
//!   nGnRE (MAIR attribute 1), execute-never;
//! - 2 MiB blocks where a range is 2 MiB aligned, 4 KiB pages elsewhere;
//!   everything else is unmapped, so a stray access faults.
//!
//! Register and descriptor encodings: Arm Architecture Reference Manual
//! for A-profile (DDI 0487 K.a), chapter D8 "The AArch64 Virtual Memory
//! System Architecture" (D8.3 "Translation table descriptor formats",
//! D8.4 "Memory access control", D8.6 "Memory region attributes") and the
//! register descriptions of MAIR_EL2, TCR_EL2, TTBR0_EL2 and SCTLR_EL2 in
//! chapter D24 (HCR_EL2.E2H = 0 layouts).

use crate::board::Board;
use std::collections::BTreeMap;
use tenure_boot_image::{STAGE1_TABLES_OFFSET, Stage1Config};

const PAGE: u64 = 4096;
const BLOCK_2M: u64 = 2 << 20;
const ENTRIES: usize = 512;

/// MAIR_EL2 attribute index of Normal memory: Inner and Outer write-back
/// non-transient, read- and write-allocate (0xFF).
pub const ATTR_NORMAL: u64 = 0;
/// MAIR_EL2 attribute index of Device-nGnRE memory (0x04).
pub const ATTR_DEVICE: u64 = 1;
/// MAIR_EL2: Attr0 = 0xFF (Normal WB), Attr1 = 0x04 (Device-nGnRE).
pub const MAIR_EL2: u64 = 0x04 << 8 | 0xFF;

/// TCR_EL2.T0SZ: a 39-bit VA range (2^(64 - 25)), walked from level 1 with
/// a 4 KiB granule; covers every board's addresses (the Pi 4B 8 GB's RAM
/// ends at 8 GiB).
pub const T0SZ: u64 = 25;
/// Addresses this map can cover.
pub const VA_LIMIT: u64 = 1 << (64 - T0SZ);
/// TCR_EL2.PS = 0b010: 40-bit physical addresses, as VTCR_EL2 uses for
/// PDs (the Cortex-A53 and A72 both implement at least 40 bits).
const PS_40: u64 = 0b010;
/// TCR_EL2 (E2H = 0): T0SZ [5:0]; IRGN0 [9:8] and ORGN0 [11:10] = 0b01,
/// table walks write-back read/write-allocate; SH0 [13:12] = 0b11, inner
/// shareable; TG0 [15:14] = 0b00, 4 KiB; PS [18:16]; bits 31 and 23 RES1.
pub const TCR_EL2: u64 =
    (1 << 31) | (1 << 23) | (PS_40 << 16) | (0b11 << 12) | (0b01 << 10) | (0b01 << 8) | T0SZ;

/// Descriptor bits [1:0]: a table descriptor (levels 0 to 2) or a page
/// descriptor (level 3).
const DESC_TABLE_OR_PAGE: u64 = 0b11;
/// Descriptor bits [1:0]: a block descriptor (levels 1 and 2).
const DESC_BLOCK: u64 = 0b01;
/// AttrIndx, bits [4:2].
const fn attr_index(index: u64) -> u64 {
    index << 2
}
/// AP[2:1], bits [7:6] = 0b01: read/write. A regime with one exception
/// level (EL2, E2H = 0) has no unprivileged access: AP[1] is RES1 there
/// (as Linux's PTE_HYP sets it) and AP[2] = 1 would make it read-only.
const AP_RW: u64 = 0b01 << 6;
/// SH[1:0], bits [9:8] = 0b11: inner shareable (Normal memory; Device
/// memory is outer shareable whatever the field says).
const SH_INNER: u64 = 0b11 << 8;
/// AF, bit 10: accessed, so the first access does not fault.
const AF: u64 = 1 << 10;
/// XN, bit 54: execute-never (the EL2 regime's only execute control).
const XN: u64 = 1 << 54;

/// The lower attributes of a leaf mapping Normal RAM: read/write/execute.
pub const LEAF_NORMAL: u64 = attr_index(ATTR_NORMAL) | AP_RW | SH_INNER | AF;
/// The attributes of a leaf mapping a device: read/write, never executed.
pub const LEAF_DEVICE: u64 = attr_index(ATTR_DEVICE) | AP_RW | AF | XN;

/// Bytes of each device the kernel touches: the PL011 (4 KiB), the GICv2
/// distributor (4 KiB) and CPU interface (8 KiB: GICC_DIR is at 0x1000).
const UART_SIZE: u64 = PAGE;
const GICD_SIZE: u64 = PAGE;
const GICC_SIZE: u64 = 2 * PAGE;

/// Why the map cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapError {
    /// A range is not page aligned or runs past [`VA_LIMIT`].
    BadRange(u64, u64),
    /// Two ranges overlap at `addr`.
    Overlap(u64),
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadRange(base, size) => write!(
                f,
                "the kernel's EL2 map cannot cover {base:#x}+{size:#x}: not page aligned or past {VA_LIMIT:#x}"
            ),
            Self::Overlap(addr) => {
                write!(f, "the kernel's EL2 map has two mappings at {addr:#x}")
            }
        }
    }
}

impl std::error::Error for MapError {}

/// The tables being built: pages by index, page 0 the level-1 root.
struct Tables {
    pages: Vec<[u64; ENTRIES]>,
    /// Physical address of page 0.
    base: u64,
    /// Next-level table of (level, table index, entry index), by page.
    children: BTreeMap<(u8, usize, usize), usize>,
}

impl Tables {
    fn new(base: u64) -> Self {
        Self { pages: vec![[0; ENTRIES]], base, children: BTreeMap::new() }
    }

    /// The table below entry `index` of table `page` at `level`, made on
    /// first use.
    fn child(&mut self, level: u8, page: usize, index: usize) -> Result<usize, MapError> {
        if let Some(&child) = self.children.get(&(level, page, index)) {
            return Ok(child);
        }
        if self.pages[page][index] != 0 {
            return Err(MapError::Overlap(0));
        }
        let child = self.pages.len();
        self.pages.push([0; ENTRIES]);
        self.children.insert((level, page, index), child);
        self.pages[page][index] = (self.base + child as u64 * PAGE) | DESC_TABLE_OR_PAGE;
        Ok(child)
    }

    /// Maps `base..base + size` to itself with leaf attributes `attrs`.
    fn map(&mut self, base: u64, size: u64, attrs: u64) -> Result<(), MapError> {
        let end = base.checked_add(size).filter(|&e| e <= VA_LIMIT);
        let Some(end) =
            end.filter(|_| base.is_multiple_of(PAGE) && size.is_multiple_of(PAGE) && size > 0)
        else {
            return Err(MapError::BadRange(base, size));
        };
        let mut addr = base;
        while addr < end {
            let l1 = (addr >> 30) as usize & (ENTRIES - 1);
            let l2 = (addr >> 21) as usize & (ENTRIES - 1);
            let overlap = |_| MapError::Overlap(addr);
            let l2_table = self.child(1, 0, l1).map_err(overlap)?;
            if addr.is_multiple_of(BLOCK_2M) && end - addr >= BLOCK_2M {
                let entry = &mut self.pages[l2_table][l2];
                if *entry != 0 {
                    return Err(MapError::Overlap(addr));
                }
                *entry = addr | attrs | DESC_BLOCK;
                addr += BLOCK_2M;
            } else {
                let l3_table = self.child(2, l2_table, l2).map_err(overlap)?;
                let entry = &mut self.pages[l3_table][(addr >> 12) as usize & (ENTRIES - 1)];
                if *entry != 0 {
                    return Err(MapError::Overlap(addr));
                }
                *entry = addr | attrs | DESC_TABLE_OR_PAGE;
                addr += PAGE;
            }
        }
        Ok(())
    }

    fn bytes(&self) -> Vec<u8> {
        self.pages.iter().flatten().flat_map(|d| d.to_le_bytes()).collect()
    }
}

/// The kernel's EL2 map for `board`, for a boot image at `image_paddr`
/// (page aligned; the tables go at [`STAGE1_TABLES_OFFSET`] in it): the
/// registers and the table pages, for `Parts::stage1`.
pub fn build(board: &Board, image_paddr: u64) -> Result<(Stage1Config, Vec<u8>), MapError> {
    if !image_paddr.is_multiple_of(PAGE) {
        return Err(MapError::BadRange(image_paddr, 0));
    }
    let root = image_paddr + STAGE1_TABLES_OFFSET;
    let mut tables = Tables::new(root);
    for ram in board.ram {
        tables.map(ram.base, ram.size, LEAF_NORMAL)?;
    }
    for (base, size) in
        [(board.uart_base, UART_SIZE), (board.gicd_base, GICD_SIZE), (board.gicc_base, GICC_SIZE)]
    {
        tables.map(base, size, LEAF_DEVICE)?;
    }
    let config = Stage1Config {
        mair: MAIR_EL2.into(),
        tcr: TCR_EL2.into(),
        ttbr0: root.into(),
        image_paddr: image_paddr.into(),
    };
    Ok((config, tables.bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::{BOARDS, by_name};
    use tenure_boot_image::{Image, Parts, Stage1Leaf, write_image};

    /// Output address bits [47:12] of a descriptor.
    const ADDR_MASK: u64 = 0x0000_FFFF_FFFF_F000;

    /// Packs the map for `board` into an image at `image_paddr` and
    /// translates `va` through it with the reader's walker.
    fn image(board: &Board, image_paddr: u64) -> Vec<u8> {
        let parts = Parts { stage1: Some(build(board, image_paddr).unwrap()), ..Parts::default() };
        write_image(&board.boot_info(), &parts)
    }

    fn walk(bytes: &[u8], va: u64) -> Option<Stage1Leaf> {
        Image::parse(bytes).unwrap().stage1().unwrap().translate(va)
    }

    /// Reads the descriptor of `va`'s level-`level` entry straight from
    /// the table bytes (independently of the reader's walker).
    fn raw(bytes: &[u8], image_paddr: u64, va: u64) -> Vec<u64> {
        let tables = &bytes[STAGE1_TABLES_OFFSET as usize..];
        let word = |pa: u64, index: u64| {
            let at = (pa - image_paddr - STAGE1_TABLES_OFFSET + index * 8) as usize;
            u64::from_le_bytes(tables[at..at + 8].try_into().unwrap())
        };
        let mut out = vec![];
        let mut table = image_paddr + STAGE1_TABLES_OFFSET;
        for shift in [30, 21, 12] {
            let d = word(table, (va >> shift) & 511);
            out.push(d);
            if d & 0b11 != 0b11 || shift == 12 {
                break;
            }
            table = d & ADDR_MASK;
        }
        out
    }

    #[test]
    fn register_values() {
        assert_eq!(MAIR_EL2, 0x04FF);
        assert_eq!(TCR_EL2, 0x8082_3519);
        assert_eq!(LEAF_NORMAL, 0x740);
        assert_eq!(LEAF_DEVICE, (1 << 54) | 0x444);
    }

    #[test]
    fn qemu_virt_ram_is_normal_and_devices_are_device() {
        let board = by_name("qemu_virt_aarch64").unwrap();
        let at = 0x4020_0000 + 0x5_0000;
        let bytes = image(board, at);
        for va in [0x4000_0000, 0x4020_1234, at, 0xBFFF_FFF8] {
            let leaf = walk(&bytes, va).unwrap();
            assert_eq!((leaf.pa, leaf.level, leaf.attr_index()), (va, 2, 0), "{va:#x}");
            assert!(!leaf.execute_never() && !leaf.read_only());
            // Normal, inner shareable, accessed, a block.
            assert_eq!(leaf.descriptor, (va & !(BLOCK_2M - 1)) | 0x741);
        }
        for va in [0x0900_0000, 0x0800_0008, 0x0801_0000, 0x0801_1000] {
            let leaf = walk(&bytes, va).unwrap();
            assert_eq!((leaf.pa, leaf.level, leaf.attr_index()), (va, 3, 1), "{va:#x}");
            assert!(leaf.execute_never() && !leaf.read_only());
        }
        for va in [0, 0x0801_2000, 0x0900_1000, 0x3FFF_F000, 0xC000_0000, VA_LIMIT] {
            assert_eq!(walk(&bytes, va), None, "{va:#x} is unmapped");
        }
        // The raw descriptors: a table at level 1, a block at level 2.
        let path = raw(&bytes, at, 0x4020_0000);
        assert_eq!(path.len(), 2);
        assert_eq!(path[0] & 0b11, 0b11);
        assert_eq!(path[1], 0x4020_0000 | 0x741);
        let path = raw(&bytes, at, 0x0900_0000);
        assert_eq!(path.len(), 3);
        assert_eq!(path[2], 0x0900_0000 | (1 << 54) | 0x444 | 0b11);
        // Root, one level-2 table per GiB touched (0, 1, 2), and a
        // level-3 table per 2 MiB with devices (GIC, UART).
        assert_eq!(Image::parse(&bytes).unwrap().sections()[0].size.get(), 6 * PAGE);
    }

    #[test]
    fn raspberry_pi_ram_and_high_peripherals() {
        let board = by_name("rpi4b_8gb").unwrap();
        let bytes = image(board, 0x9_1000);
        for va in [0, 0x8_0000, 0x3B3F_F000, 0x4000_0000, 0xFBFF_F000, 0x1_0000_0000, 0x1_FFFF_F000]
        {
            let leaf = walk(&bytes, va).unwrap();
            assert_eq!((leaf.pa, leaf.attr_index()), (va, 0), "{va:#x}");
            assert!(!leaf.execute_never());
        }
        for va in [0xFE20_1000, 0xFF84_1000, 0xFF84_2000, 0xFF84_3FFC] {
            let leaf = walk(&bytes, va).unwrap();
            assert_eq!((leaf.pa, leaf.level, leaf.attr_index()), (va, 3, 1), "{va:#x}");
            assert!(leaf.execute_never());
        }
        for va in [0x3B40_0000, 0xFC00_0000, 0xFE20_0000, 0xFF84_0000, 0x2_0000_0000] {
            assert_eq!(walk(&bytes, va), None, "{va:#x} is unmapped");
        }
    }

    #[test]
    fn every_board_has_a_valid_map() {
        for board in BOARDS {
            let at = board.kernel_load_addr + 0x4_0000;
            let bytes = image(board, at);
            let map = Image::parse(&bytes).unwrap().stage1().unwrap();
            assert_eq!(map.config.ttbr0.get(), at + STAGE1_TABLES_OFFSET, "{}", board.name);
            let load = walk(&bytes, board.kernel_load_addr).unwrap();
            assert_eq!((load.pa, load.attr_index()), (board.kernel_load_addr, 0));
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        let board = by_name("qemu_virt_aarch64").unwrap();
        assert_eq!(build(board, 0x4020_0800).unwrap_err(), MapError::BadRange(0x4020_0800, 0));
        let mut tables = Tables::new(0x4000_0000);
        assert_eq!(tables.map(0x1000, 0x800, LEAF_DEVICE), Err(MapError::BadRange(0x1000, 0x800)));
        assert_eq!(
            tables.map(VA_LIMIT - PAGE, 2 * PAGE, 0),
            Err(MapError::BadRange(VA_LIMIT - PAGE, 2 * PAGE))
        );
        tables.map(0x4000_0000, BLOCK_2M, LEAF_NORMAL).unwrap();
        assert_eq!(tables.map(0x4010_0000, PAGE, LEAF_DEVICE), Err(MapError::Overlap(0x4010_0000)));
        tables.map(0x0900_0000, PAGE, LEAF_DEVICE).unwrap();
        assert_eq!(tables.map(0x0900_0000, PAGE, LEAF_DEVICE), Err(MapError::Overlap(0x0900_0000)));
    }
}
