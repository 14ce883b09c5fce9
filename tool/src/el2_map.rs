//! The kernel's own EL2 stage-1 map (TTBR0_EL2), built here and installed
//! by the kernel before it does anything else (DESIGN.md, "The kernel";
//! `docs/decisions/0006-kernel-el2-stage1-identity-map.md`, made W^X by
//! `docs/decisions/0008-kernel-map-is-w-xor-x.md`).
//!
//! An identity map, 4 KiB granule, 39-bit VA (the walk starts at level 1),
//! in which no page is both writable and executable:
//!
//! ```text
//! kernel block (load address .. __boot_image), 4 KiB pages, by segment:
//!   text    R X  Normal WB       (PT_LOAD PF_R|PF_X)
//!   rodata  R    Normal WB, XN   (PF_R; relocated by the tool beforehand)
//!   data    RW   Normal WB, XN   (PF_R|PF_W: .data, .bss)
//!   guard   unmapped             (in no segment: the page under the stack)
//!   stack   RW   Normal WB, XN   (PF_R|PF_W)
//! every other byte of RAM (boot image, PD memory, firmware):
//!           RW   Normal WB, XN   (2 MiB blocks where aligned, else pages)
//! PL011, GICD, GICC, GICH: RW Device-nGnRE, XN
//! everything else: unmapped, so a stray access faults
//! ```
//!
//! Normal memory is inner shareable, MAIR attribute 0; devices use
//! attribute 1. The kernel's block is always mapped with pages, whatever
//! its segments, so that the shape of the tables depends on the board and
//! the kernel's size alone: `tenure pack` lays a system out, map included,
//! knowing only the kernel's size ([`build`]), and `image::pack` then
//! writes the permissions of the kernel's segments into the same tables
//! ([`build_for_kernel`]).
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
/// (as Linux's PTE_HYP sets it), and AP[2] selects read-only.
const AP_RW: u64 = 0b01 << 6;
/// AP[2:1], bits [7:6] = 0b11: read-only (AP[2] = 1, AP[1] RES1).
const AP_RO: u64 = 0b11 << 6;
/// SH[1:0], bits [9:8] = 0b11: inner shareable (Normal memory; Device
/// memory is outer shareable whatever the field says).
const SH_INNER: u64 = 0b11 << 8;
/// AF, bit 10: accessed, so the first access does not fault.
const AF: u64 = 1 << 10;
/// XN, bit 54: execute-never (the EL2 regime's only execute control;
/// D8.4 "Memory access control", instruction execution permissions).
const XN: u64 = 1 << 54;

/// The attributes of a leaf mapping the kernel's text: Normal,
/// read-only, executable.
pub const LEAF_TEXT: u64 = attr_index(ATTR_NORMAL) | AP_RO | SH_INNER | AF;
/// The attributes of a leaf mapping the kernel's read-only data: Normal,
/// read-only, execute-never.
pub const LEAF_RODATA: u64 = LEAF_TEXT | XN;
/// The attributes of a leaf mapping writable RAM (the kernel's data, bss
/// and stack, and all RAM outside the kernel): Normal, read/write,
/// execute-never.
pub const LEAF_RAM: u64 = attr_index(ATTR_NORMAL) | AP_RW | SH_INNER | AF | XN;
/// The attributes of a leaf mapping a device: read/write, never executed.
pub const LEAF_DEVICE: u64 = attr_index(ATTR_DEVICE) | AP_RW | AF | XN;

/// Bytes of each device the kernel touches: the PL011 (4 KiB), the GICv2
/// distributor (4 KiB) and CPU interface (8 KiB: GICC_DIR is at 0x1000).
const UART_SIZE: u64 = PAGE;
const GICD_SIZE: u64 = PAGE;
const GICC_SIZE: u64 = 2 * PAGE;
/// The GICv2 virtual interface control (GICH) the kernel drives for guests:
/// one page (IHI 0048B table 5-5: registers up to GICH_LR63 at 0x1fc).
const GICH_SIZE: u64 = PAGE;

/// What the kernel may do with one of its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Text: read and execute, never write.
    ReadExecute,
    /// Read-only data: read, never write or execute.
    ReadOnly,
    /// Data, bss and stack: read and write, never execute.
    ReadWrite,
}

impl Access {
    /// The leaf attributes of a page with this access.
    #[must_use]
    pub const fn leaf(self) -> u64 {
        match self {
            Self::ReadExecute => LEAF_TEXT,
            Self::ReadOnly => LEAF_RODATA,
            Self::ReadWrite => LEAF_RAM,
        }
    }
}

/// One loadable segment of the kernel, at its run-time address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSegment {
    /// First byte; page aligned.
    pub addr: u64,
    /// Bytes of memory it spans; its last page is mapped whole.
    pub size: u64,
    /// What the kernel may do with it.
    pub access: Access,
}

/// The kernel as its map sees it: the block of memory from its load
/// address to the boot image, and its segments in that block. Pages of
/// the block in no segment (the stack guard, alignment padding) are left
/// unmapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// Physical address of the kernel's first byte: the board's load
    /// address.
    pub base: u64,
    /// Bytes from `base` to the boot image (`__boot_image`).
    pub size: u64,
    /// The loadable segments.
    pub segments: Vec<KernelSegment>,
}

impl KernelLayout {
    /// Physical address of the boot image, right after the kernel.
    #[must_use]
    pub fn image_paddr(&self) -> u64 {
        self.base + self.size
    }

    /// The leaf attributes of every page of the block, `None` where it is
    /// left unmapped.
    fn pages(&self) -> Result<Vec<Option<u64>>, MapError> {
        let end = self.base.checked_add(self.size).filter(|&e| e <= VA_LIMIT);
        if end.is_none()
            || self.size == 0
            || !self.base.is_multiple_of(PAGE)
            || !self.size.is_multiple_of(PAGE)
        {
            return Err(MapError::BadRange(self.base, self.size));
        }
        let mut pages = vec![None; (self.size / PAGE) as usize];
        for segment in self.segments.iter().filter(|s| s.size > 0) {
            if !segment.addr.is_multiple_of(PAGE) {
                return Err(MapError::UnalignedSegment(segment.addr));
            }
            let offset = segment.addr.checked_sub(self.base);
            let inside = offset.is_some_and(|o| {
                o.checked_add(segment.size).is_some_and(|segment_end| segment_end <= self.size)
            });
            let Some(offset) = offset.filter(|_| inside) else {
                return Err(MapError::BadRange(segment.addr, segment.size));
            };
            let first = (offset / PAGE) as usize;
            let count = segment.size.div_ceil(PAGE) as usize;
            for (i, page) in pages[first..first + count].iter_mut().enumerate() {
                if page.is_some() {
                    return Err(MapError::SharedPage(segment.addr + i as u64 * PAGE));
                }
                *page = Some(segment.access.leaf());
            }
        }
        Ok(pages)
    }
}

/// Why the map cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapError {
    /// A range is not page aligned, is empty, or runs past [`VA_LIMIT`]
    /// (or, for a kernel segment, past the kernel's block).
    BadRange(u64, u64),
    /// Two ranges overlap at `addr`.
    Overlap(u64),
    /// The kernel's block lies in no RAM region of the board.
    KernelOutsideRam(u64),
    /// A kernel segment does not start on a page.
    UnalignedSegment(u64),
    /// Two kernel segments share the page at `addr`.
    SharedPage(u64),
}

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadRange(base, size) => write!(
                f,
                "the kernel's EL2 map cannot cover {base:#x}+{size:#x}: not page aligned, empty, outside the kernel or past {VA_LIMIT:#x}"
            ),
            Self::Overlap(addr) => {
                write!(f, "the kernel's EL2 map has two mappings at {addr:#x}")
            }
            Self::KernelOutsideRam(addr) => {
                write!(f, "the kernel at {addr:#x} does not lie in one RAM region of the board")
            }
            Self::UnalignedSegment(addr) => write!(
                f,
                "the kernel's segment at {addr:#x} does not start on a 4 KiB page, so it cannot have its own permissions (kernel/link.ld aligns every segment)"
            ),
            Self::SharedPage(addr) => write!(
                f,
                "two of the kernel's segments share the page at {addr:#x}, so they cannot have their own permissions (kernel/link.ld aligns every segment)"
            ),
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

    /// The level-2 table covering `addr`, made on first use.
    fn l2_table(&mut self, addr: u64) -> Result<usize, MapError> {
        let l1 = (addr >> 30) as usize & (ENTRIES - 1);
        self.child(1, 0, l1).map_err(|_| MapError::Overlap(addr))
    }

    /// The level-3 table covering `addr`, made on first use.
    fn l3_table(&mut self, addr: u64) -> Result<usize, MapError> {
        let l2_table = self.l2_table(addr)?;
        let l2 = (addr >> 21) as usize & (ENTRIES - 1);
        self.child(2, l2_table, l2).map_err(|_| MapError::Overlap(addr))
    }

    /// Maps the page at `addr` (page aligned, below [`VA_LIMIT`]) to
    /// itself with leaf attributes `attrs`.
    fn map_page(&mut self, addr: u64, attrs: u64) -> Result<(), MapError> {
        let l3_table = self.l3_table(addr)?;
        let entry = &mut self.pages[l3_table][(addr >> 12) as usize & (ENTRIES - 1)];
        if *entry != 0 {
            return Err(MapError::Overlap(addr));
        }
        *entry = addr | attrs | DESC_TABLE_OR_PAGE;
        Ok(())
    }

    /// Maps `base..base + size` to itself with leaf attributes `attrs`,
    /// in 2 MiB blocks where aligned and pages elsewhere.
    fn map(&mut self, base: u64, size: u64, attrs: u64) -> Result<(), MapError> {
        let end = base.checked_add(size).filter(|&e| e <= VA_LIMIT);
        let Some(end) =
            end.filter(|_| base.is_multiple_of(PAGE) && size.is_multiple_of(PAGE) && size > 0)
        else {
            return Err(MapError::BadRange(base, size));
        };
        let mut addr = base;
        while addr < end {
            if addr.is_multiple_of(BLOCK_2M) && end - addr >= BLOCK_2M {
                let l2_table = self.l2_table(addr)?;
                let entry = &mut self.pages[l2_table][(addr >> 21) as usize & (ENTRIES - 1)];
                if *entry != 0 {
                    return Err(MapError::Overlap(addr));
                }
                *entry = addr | attrs | DESC_BLOCK;
                addr += BLOCK_2M;
            } else {
                self.map_page(addr, attrs)?;
                addr += PAGE;
            }
        }
        Ok(())
    }

    /// Maps the kernel's block page by page, as `pages` says, making the
    /// level-3 tables of unmapped pages too: the shape of the tables
    /// does not depend on which pages are mapped.
    fn map_kernel(&mut self, base: u64, pages: &[Option<u64>]) -> Result<(), MapError> {
        for (i, attrs) in pages.iter().enumerate() {
            let addr = base + i as u64 * PAGE;
            self.l3_table(addr)?;
            if let Some(attrs) = attrs {
                self.map_page(addr, *attrs)?;
            }
        }
        Ok(())
    }

    fn bytes(&self) -> Vec<u8> {
        self.pages.iter().flatten().flat_map(|d| d.to_le_bytes()).collect()
    }
}

/// The kernel's EL2 map for `board` before the kernel's segments are
/// known, for a boot image at `image_paddr` (page aligned; the kernel
/// fills `board.kernel_load_addr..image_paddr`; the tables go at
/// [`STAGE1_TABLES_OFFSET`] in the image): the registers and the table
/// pages, for `Parts::stage1`. The kernel's block is mapped read/write and
/// execute-never, like the RAM around it, so the kernel cannot run on
/// this map: `image::pack` replaces its tables with those of
/// [`build_for_kernel`], which have the same shape and size.
pub fn build(board: &Board, image_paddr: u64) -> Result<(Stage1Config, Vec<u8>), MapError> {
    if !image_paddr.is_multiple_of(PAGE) || image_paddr <= board.kernel_load_addr {
        return Err(MapError::BadRange(image_paddr, 0));
    }
    let size = image_paddr - board.kernel_load_addr;
    let segment = KernelSegment { addr: board.kernel_load_addr, size, access: Access::ReadWrite };
    build_for_kernel(
        board,
        &KernelLayout { base: board.kernel_load_addr, size, segments: vec![segment] },
    )
}

/// The kernel's W^X EL2 map for `board` and the kernel laid out as
/// `kernel` says, for the boot image right after it (the tables go at
/// [`STAGE1_TABLES_OFFSET`] in the image): the registers and the table
/// pages, for `Parts::stage1`.
pub fn build_for_kernel(
    board: &Board,
    kernel: &KernelLayout,
) -> Result<(Stage1Config, Vec<u8>), MapError> {
    let pages = kernel.pages()?;
    let image_paddr = kernel.image_paddr();
    let root = image_paddr + STAGE1_TABLES_OFFSET;
    let mut tables = Tables::new(root);
    let mut kernel_mapped = false;
    for ram in board.ram {
        let end = ram.base + ram.size;
        if ram.base <= kernel.base && image_paddr <= end {
            if ram.base < kernel.base {
                tables.map(ram.base, kernel.base - ram.base, LEAF_RAM)?;
            }
            tables.map_kernel(kernel.base, &pages)?;
            if image_paddr < end {
                tables.map(image_paddr, end - image_paddr, LEAF_RAM)?;
            }
            kernel_mapped = true;
        } else {
            tables.map(ram.base, ram.size, LEAF_RAM)?;
        }
    }
    if !kernel_mapped {
        return Err(MapError::KernelOutsideRam(kernel.base));
    }
    for (base, size) in [
        (board.uart_base, UART_SIZE),
        (board.gicd_base, GICD_SIZE),
        (board.gicc_base, GICC_SIZE),
        (board.gich_base, GICH_SIZE),
    ] {
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

    /// A kernel as `kernel/link.ld` lays it out, at `base`: text, rodata,
    /// data and bss, a guard page at +0x2a000, a 64 KiB stack, and the
    /// boot image at +0x3b000.
    fn kernel_at(base: u64) -> KernelLayout {
        let segment = |offset, size, access| KernelSegment { addr: base + offset, size, access };
        KernelLayout {
            base,
            size: 0x3_b000,
            segments: vec![
                segment(0, 0x9884, Access::ReadExecute),
                segment(0xa000, 0x1268, Access::ReadOnly),
                segment(0xc000, 0x1_dd20, Access::ReadWrite),
                segment(0x2_b000, 0x1_0000, Access::ReadWrite),
            ],
        }
    }
    const GUARD: u64 = 0x2_a000;

    fn image_of(board: &Board, map: (Stage1Config, Vec<u8>)) -> Vec<u8> {
        write_image(&board.boot_info(), &Parts { stage1: Some(map), ..Parts::default() })
    }

    /// Packs `build(board, image_paddr)` into an image.
    fn image(board: &Board, image_paddr: u64) -> Vec<u8> {
        image_of(board, build(board, image_paddr).unwrap())
    }

    /// Translates `va` through the map of an image with the reader's
    /// walker.
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

    /// How a page should be mapped.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Want {
        /// Normal, read-only, executable.
        Text,
        /// Normal, read-only, execute-never.
        ReadOnly,
        /// Normal, read/write, execute-never.
        ReadWrite,
        /// Not mapped.
        Unmapped,
    }

    /// Every page of `kernel_at(base)`'s block and its neighbourhood that
    /// the map in `bytes` does not map as it should, with what it found.
    fn wrong_pages(bytes: &[u8], base: u64) -> Vec<(u64, Option<Stage1Leaf>)> {
        let want = |offset: u64| match offset {
            0..0xa000 => Want::Text,
            0xa000..0xc000 => Want::ReadOnly,
            GUARD..0x2_b000 => Want::Unmapped,
            _ => Want::ReadWrite,
        };
        let mut wrong = vec![];
        // The kernel, its image and the RAM on either side.
        for offset in (0..0x3_b000 + 0x10_0000).step_by(PAGE as usize) {
            let va = base + offset;
            let leaf = walk(bytes, va);
            let found = leaf.map(|l| {
                assert_eq!((l.pa, l.attr_index()), (va, 0), "{va:#x} is identity-mapped Normal");
                match (l.read_only(), l.execute_never()) {
                    (true, false) => Want::Text,
                    (true, true) => Want::ReadOnly,
                    (false, true) => Want::ReadWrite,
                    (false, false) => panic!("{va:#x} is writable and executable"),
                }
            });
            if found.unwrap_or(Want::Unmapped) != want(offset) {
                wrong.push((va, leaf));
            }
        }
        wrong
    }

    #[test]
    fn register_values() {
        assert_eq!(MAIR_EL2, 0x04FF);
        assert_eq!(TCR_EL2, 0x8082_3519);
        assert_eq!(LEAF_TEXT, 0x7C0);
        assert_eq!(LEAF_RODATA, (1 << 54) | 0x7C0);
        assert_eq!(LEAF_RAM, (1 << 54) | 0x740);
        assert_eq!(LEAF_DEVICE, (1 << 54) | 0x444);
    }

    #[test]
    fn the_kernel_map_is_w_xor_x_with_a_stack_guard() {
        for (name, base) in [("qemu_virt_aarch64", 0x4020_0000), ("rpi4b_1gb", 0x8_0000)] {
            let board = by_name(name).unwrap();
            let kernel = kernel_at(base);
            let bytes = image_of(board, build_for_kernel(board, &kernel).unwrap());
            assert_eq!(wrong_pages(&bytes, base), [], "{name}");
            // The raw descriptors: pages, with the right bits.
            let text = raw(&bytes, kernel.image_paddr(), base + 0x1000);
            assert_eq!(text.len(), 3);
            assert_eq!(text[2], (base + 0x1000) | 0x7C3, "{name} text");
            let rodata = raw(&bytes, kernel.image_paddr(), base + 0xa000);
            assert_eq!(rodata[2], (base + 0xa000) | (1 << 54) | 0x7C3, "{name} rodata");
            let data = raw(&bytes, kernel.image_paddr(), base + 0xc000);
            assert_eq!(data[2], (base + 0xc000) | (1 << 54) | 0x743, "{name} data");
            assert_eq!(raw(&bytes, kernel.image_paddr(), base + GUARD)[2], 0, "{name} guard");
            let stack = raw(&bytes, kernel.image_paddr(), base + 0x3_a000);
            assert_eq!(stack[2], (base + 0x3_a000) | (1 << 54) | 0x743, "{name} stack");
        }
    }

    #[test]
    fn the_checks_catch_a_writable_text_or_a_mapped_guard() {
        let board = by_name("qemu_virt_aarch64").unwrap();
        let base = board.kernel_load_addr;
        // The map before the kernel's segments are known: its whole block
        // read/write, execute-never.
        let bytes = image(board, base + 0x3_b000);
        let wrong: Vec<u64> = wrong_pages(&bytes, base).iter().map(|(va, _)| *va).collect();
        let mut expected: Vec<u64> = (0..0xc000).step_by(PAGE as usize).map(|o| base + o).collect();
        expected.push(base + GUARD);
        assert_eq!(wrong, expected);
        // A text segment that says it is writable.
        let mut kernel = kernel_at(base);
        kernel.segments[0].access = Access::ReadWrite;
        let bytes = image_of(board, build_for_kernel(board, &kernel).unwrap());
        assert_eq!(wrong_pages(&bytes, base).len(), 10);
        // A stack that runs over its guard page.
        let mut kernel = kernel_at(base);
        kernel.segments[3].addr -= PAGE;
        kernel.segments[3].size += PAGE;
        let bytes = image_of(board, build_for_kernel(board, &kernel).unwrap());
        assert_eq!(
            wrong_pages(&bytes, base).iter().map(|(va, _)| *va).collect::<Vec<_>>(),
            [base + GUARD]
        );
    }

    #[test]
    fn other_ram_is_read_write_execute_never_in_blocks_where_aligned() {
        let board = by_name("qemu_virt_aarch64").unwrap();
        let kernel = kernel_at(board.kernel_load_addr);
        let at = kernel.image_paddr();
        let bytes = image_of(board, build_for_kernel(board, &kernel).unwrap());
        for (va, level) in [(0x4000_0000, 2), (0x4010_1234, 2), (at, 3), (0x403F_F000, 3)]
            .into_iter()
            .chain([(0x4040_0000, 2), (0x8000_0000, 2), (0xBFFF_FFF8, 2)])
        {
            let leaf = walk(&bytes, va).unwrap();
            assert_eq!((leaf.pa, leaf.level, leaf.attr_index()), (va, level, 0), "{va:#x}");
            assert!(leaf.execute_never() && !leaf.read_only(), "{va:#x}");
        }
        // A block: Normal, inner shareable, accessed, execute-never.
        assert_eq!(
            raw(&bytes, at, 0x4040_0000),
            [raw(&bytes, at, 0x4040_0000)[0], 0x4040_0000 | (1 << 54) | 0x741]
        );
        for va in [0x0900_0000, 0x0800_0008, 0x0801_0000, 0x0801_1000] {
            let leaf = walk(&bytes, va).unwrap();
            assert_eq!((leaf.pa, leaf.level, leaf.attr_index()), (va, 3, 1), "{va:#x}");
            assert!(leaf.execute_never() && !leaf.read_only());
        }
        assert_eq!(raw(&bytes, at, 0x0900_0000)[2], 0x0900_0000 | (1 << 54) | 0x444 | 0b11);
        for va in [0, 0x0801_2000, 0x0900_1000, 0x3FFF_F000, 0xC000_0000, VA_LIMIT] {
            assert_eq!(walk(&bytes, va), None, "{va:#x} is unmapped");
        }
        // Root, one level-2 table per GiB touched (0, 1, 2), a level-3
        // table per 2 MiB with devices (GIC, UART), and one for the
        // kernel's 2 MiB.
        assert_eq!(Image::parse(&bytes).unwrap().sections()[0].size.get(), 7 * PAGE);
    }

    #[test]
    fn the_map_before_the_segments_has_the_same_shape() {
        for board in BOARDS {
            let kernel = kernel_at(board.kernel_load_addr);
            let (before, before_tables) = build(board, kernel.image_paddr()).unwrap();
            let (after, after_tables) = build_for_kernel(board, &kernel).unwrap();
            assert_eq!(before.ttbr0.get(), after.ttbr0.get(), "{}", board.name);
            assert_eq!(before.image_paddr.get(), after.image_paddr.get(), "{}", board.name);
            assert_eq!(before_tables.len(), after_tables.len(), "{}", board.name);
            assert_ne!(before_tables, after_tables, "{}", board.name);
            // Every descriptor naming a table page is the same in both:
            // only leaves differ.
            let words = |t: &[u8]| -> Vec<u64> {
                t.chunks(8).map(|w| u64::from_le_bytes(w.try_into().unwrap())).collect()
            };
            let tables = after.ttbr0.get()..after.ttbr0.get() + after_tables.len() as u64;
            for (i, (b, a)) in words(&before_tables).iter().zip(words(&after_tables)).enumerate() {
                if b & 0b11 == 0b11 && tables.contains(&(b & ADDR_MASK)) {
                    assert_eq!(*b, a, "{} descriptor {i}", board.name);
                }
            }
        }
    }

    #[test]
    fn raspberry_pi_ram_and_high_peripherals() {
        let board = by_name("rpi4b_8gb").unwrap();
        let bytes = image(board, 0x9_1000);
        for va in [0, 0x8_0000, 0x3B3F_F000, 0x4000_0000, 0xFBFF_F000, 0x1_0000_0000, 0x1_FFFF_F000]
        {
            let leaf = walk(&bytes, va).unwrap();
            assert_eq!((leaf.pa, leaf.attr_index()), (va, 0), "{va:#x}");
            assert!(leaf.execute_never() && !leaf.read_only());
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
            let kernel = kernel_at(board.kernel_load_addr);
            let bytes = image_of(board, build_for_kernel(board, &kernel).unwrap());
            let map = Image::parse(&bytes).unwrap().stage1().unwrap();
            let at = kernel.image_paddr();
            assert_eq!(map.config.ttbr0.get(), at + STAGE1_TABLES_OFFSET, "{}", board.name);
            assert_eq!(wrong_pages(&bytes, board.kernel_load_addr), [], "{}", board.name);
        }
    }

    #[test]
    fn bad_ranges_are_refused() {
        let board = by_name("qemu_virt_aarch64").unwrap();
        assert_eq!(build(board, 0x4020_0800).unwrap_err(), MapError::BadRange(0x4020_0800, 0));
        assert_eq!(build(board, 0x4020_0000).unwrap_err(), MapError::BadRange(0x4020_0000, 0));
        let mut tables = Tables::new(0x4000_0000);
        assert_eq!(tables.map(0x1000, 0x800, LEAF_DEVICE), Err(MapError::BadRange(0x1000, 0x800)));
        assert_eq!(
            tables.map(VA_LIMIT - PAGE, 2 * PAGE, 0),
            Err(MapError::BadRange(VA_LIMIT - PAGE, 2 * PAGE))
        );
        tables.map(0x4000_0000, BLOCK_2M, LEAF_RAM).unwrap();
        assert_eq!(tables.map(0x4010_0000, PAGE, LEAF_DEVICE), Err(MapError::Overlap(0x4010_0000)));
        tables.map(0x0900_0000, PAGE, LEAF_DEVICE).unwrap();
        assert_eq!(tables.map(0x0900_0000, PAGE, LEAF_DEVICE), Err(MapError::Overlap(0x0900_0000)));
    }

    #[test]
    fn kernel_segments_must_have_pages_of_their_own() {
        let board = by_name("qemu_virt_aarch64").unwrap();
        let base = board.kernel_load_addr;
        let refused = |edit: &dyn Fn(&mut KernelLayout)| {
            let mut kernel = kernel_at(base);
            edit(&mut kernel);
            build_for_kernel(board, &kernel).unwrap_err()
        };
        assert_eq!(
            refused(&|k| k.segments[1].addr += 0x10),
            MapError::UnalignedSegment(base + 0xa010)
        );
        // Text running into rodata's page.
        assert_eq!(refused(&|k| k.segments[0].size = 0xa001), MapError::SharedPage(base + 0xa000));
        // A stack past the boot image.
        assert_eq!(
            refused(&|k| k.segments[3].size += 1),
            MapError::BadRange(base + 0x2_b000, 0x1_0001)
        );
        assert_eq!(
            refused(&|k| k.segments[0].addr = base - PAGE),
            MapError::BadRange(base - PAGE, 0x9884)
        );
        assert_eq!(refused(&|k| k.size = 0x3_a800), MapError::BadRange(base, 0x3_a800));
        // A kernel outside RAM.
        let outside = KernelLayout { base: 0x1000_0000, size: PAGE, segments: vec![] };
        assert_eq!(
            build_for_kernel(board, &outside).unwrap_err(),
            MapError::KernelOutsideRam(0x1000_0000)
        );
        assert!(MapError::SharedPage(0x4020_a000).to_string().contains("kernel/link.ld"));
    }
}
