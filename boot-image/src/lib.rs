//! Tenure's boot image: the tool writes it, the kernel reads it.
//!
//! The image is a little-endian byte string placed in memory right after
//! the kernel (see `docs/decisions/0003-boot-image-layout.md` for where):
//!
//! ```text
//! offset 0            +--------------------------------------------+
//!                     | Header (32 bytes): magic, version,         |
//!                     | header size, total size, section count     |
//! HEADER_SIZE         +--------------------------------------------+
//!                     | section table: section_count x Section     |
//!                     | (24 bytes each: kind, offset, size)        |
//!                     +--------------------------------------------+
//!                     | section bodies, each 8-byte aligned, in    |
//!                     | bounds of total_size; BoardInfo is one     |
//! total_size          +--------------------------------------------+
//! ```
//!
//! Invariants that [`Image::parse`] establishes, so that readers never
//! check them again: the magic and version are this crate's; every
//! section lies inside `total_size` bytes, after the section table, is
//! 8-byte aligned and does not overlap another; each section kind is known
//! and appears at most once; a [`BoardInfo`] section is present and well
//! formed (UTF-8 name, memory regions in bounds and non-overlapping); the
//! kernel's EL2 stage-1 map, if any, has both its sections, its tables are
//! whole 4 KiB pages at a 4 KiB-aligned offset, TTBR0_EL2 names one of
//! them and every table descriptor reachable from it names another
//! ([`Stage1`]; `docs/decisions/0006-kernel-el2-stage1-identity-map.md`).
//!
//! All fields use zerocopy's little-endian integer types, so every struct
//! has alignment 1 and can be read in place from any byte slice.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// First bytes of every image.
pub const MAGIC: [u8; 8] = *b"TENUREIM";
/// Format version this crate reads and writes; bumped on any layout change.
pub const VERSION: u32 = 3;
/// Size of [`Header`].
pub const HEADER_SIZE: usize = size_of::<Header>();
/// Size of one [`Section`] table entry.
pub const SECTION_ENTRY_SIZE: usize = size_of::<Section>();
/// Alignment of every section body, so a reader could cast it in place
/// even with aligned types later.
pub const SECTION_ALIGN: u64 = 8;
/// Most sections an image may have: one per [`SectionKind`] for now.
pub const MAX_SECTIONS: u32 = 16;
/// Longest board name, in bytes (Microkit's names are at most 20).
pub const BOARD_NAME_LEN: usize = 32;
/// Most RAM regions a board lists (the Raspberry Pi 4B 8 GB needs 3).
pub const MAX_MEMORY_REGIONS: usize = 4;

/// The image header, at offset 0.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: U32,
    /// [`HEADER_SIZE`]; lets a reader reject a header of another shape.
    pub header_size: U32,
    /// Bytes of the whole image, header included.
    pub total_size: U64,
    /// Entries in the section table that follows the header.
    pub section_count: U32,
    /// Zero.
    pub reserved: U32,
}

/// One entry of the section table.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Section {
    /// A [`SectionKind`] as its raw value.
    pub kind: U32,
    /// Zero.
    pub reserved: U32,
    /// Offset of the body from the start of the image.
    pub offset: U64,
    /// Size of the body in bytes.
    pub size: U64,
}

/// What a section holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SectionKind {
    /// A [`BoardInfo`]; exactly one per image.
    BoardInfo = 1,
    /// The [`Stage2Config`] of PD address spaces.
    Stage2Config = 2,
    /// The protection domains: an array of [`PdEntry`], index = PD id.
    Pds = 3,
    /// Every PD's capabilities: an array of [`CapEntry`], each PD's a run
    /// sorted by slot.
    Caps = 4,
    /// Physical memory to fill at boot: an array of [`LoadEntry`].
    Loads = 5,
    /// The bytes [`LoadEntry`]s copy.
    Blob = 6,
    /// Interrupts delivered to PDs: an array of [`IrqEntry`].
    Irqs = 7,
    /// The kernel's EL2 stage-1 registers: a [`Stage1Config`].
    Stage1 = 8,
    /// The kernel's EL2 stage-1 translation tables: whole 4 KiB pages, at
    /// a 4 KiB-aligned offset ([`STAGE1_TABLES_OFFSET`] as written).
    Stage1Tables = 9,
    /// The virtual machines: an array of [`VmEntry`], index = guest id.
    Vms = 10,
    /// Their vCPUs: an array of [`VcpuEntry`], each VM's a run.
    Vcpus = 11,
    /// The memory the memory-manager PD manages for guests: a
    /// [`GuestPool`]; present iff there are VMs.
    GuestPool = 12,
}

impl SectionKind {
    /// The kind `raw` names, if this version knows it.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::BoardInfo),
            2 => Some(Self::Stage2Config),
            3 => Some(Self::Pds),
            4 => Some(Self::Caps),
            5 => Some(Self::Loads),
            6 => Some(Self::Blob),
            7 => Some(Self::Irqs),
            8 => Some(Self::Stage1),
            9 => Some(Self::Stage1Tables),
            10 => Some(Self::Vms),
            11 => Some(Self::Vcpus),
            12 => Some(Self::GuestPool),
            _ => None,
        }
    }
}

/// Longest PD name (Microkit's limit).
pub const PD_NAME_LEN: usize = 64;
/// Most PDs a system has (Microkit's limit).
pub const MAX_PDS: usize = 63;
/// Most PDs and vCPUs a system schedules together.
pub const MAX_SCHEDULED: usize = 64;
/// No parent, in [`PdEntry::parent`].
pub const NO_PARENT: u8 = 0xff;

/// How PD address spaces are translated: the VTCR_EL2 the tool computed
/// with hyp-mm for the tables it built.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Stage2Config {
    /// VTCR_EL2 for every PD.
    pub vtcr: U64,
}

/// One virtual machine (Microkit's `virtual_machine`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct VmEntry {
    /// Name, UTF-8, NUL padded.
    pub name: [u8; PD_NAME_LEN],
    /// VMID its stage-2 table is installed under; distinct from every PD's
    /// and every other VM's.
    pub vmid: U32,
    /// First of its vCPUs in the [`VcpuEntry`] array.
    pub vcpu_first: U32,
    /// Number of its vCPUs, 1 or more.
    pub vcpu_count: U32,
    /// Index of its VMM, the PD whose `virtual_machine` it is.
    pub vmm: u8,
    /// Zero.
    pub reserved: [u8; 3],
}

/// One vCPU of a VM.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct VcpuEntry {
    /// Index of its VM.
    pub vm: U32,
    /// The id its VMM knows it by (`vcpu id`, 0..=61): its faults arrive
    /// with this id and its capability sits at slot 330 + id.
    pub id: u8,
    /// Scheduling priority (the VM's), 0..=254.
    pub priority: u8,
    /// Zero.
    pub reserved: [u8; 2],
    /// MPIDR_EL1 the guest reads (VMPIDR_EL2).
    pub mpidr: U64,
    /// Scheduling budget in microseconds (the VM's), 1 or more.
    pub budget_us: U64,
    /// Scheduling period in microseconds, at least the budget.
    pub period_us: U64,
}

/// The guest memory the memory-manager PD owns: guest stage-2 roots the
/// kernel installs and ranges it cleans must lie inside.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct GuestPool {
    /// Physical base, 4 KiB aligned.
    pub base: U64,
    /// Size in bytes, a multiple of 4 KiB.
    pub size: U64,
    /// Index of the memory-manager PD (it holds the stage-2 control
    /// capability).
    pub mm: u8,
    /// Zero.
    pub reserved: [u8; 7],
}

/// Size of a translation table page (4 KiB granule).
pub const TABLE_PAGE: u64 = 4096;
/// Where [`write_image`] puts the [`SectionKind::Stage1Tables`] section:
/// the first page boundary, past the header and the largest section
/// table, so that the tool knows the tables' physical address before it
/// writes the image (the image itself starts at a page boundary,
/// `__boot_image`).
pub const STAGE1_TABLES_OFFSET: u64 = TABLE_PAGE;
const _: () = assert!(HEADER_SIZE as u64 + MAX_SECTIONS as u64 * 24 <= STAGE1_TABLES_OFFSET);

/// The kernel's own EL2 stage-1 translation (TTBR0_EL2), built by the
/// tool: the register values the kernel installs before it turns its MMU
/// on. The tables themselves are the [`SectionKind::Stage1Tables`]
/// section.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Stage1Config {
    /// MAIR_EL2.
    pub mair: U64,
    /// TCR_EL2 (HCR_EL2.E2H = 0 layout; TG0 must be 4 KiB).
    pub tcr: U64,
    /// TTBR0_EL2: the root table's physical address, inside the tables
    /// section.
    pub ttbr0: U64,
    /// The physical address the tool placed the image at (page aligned):
    /// the kernel checks it is where it found the image.
    pub image_paddr: U64,
}

/// A leaf of the kernel's stage-1 map, as [`Stage1::translate`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1Leaf {
    /// The output address of the translated address.
    pub pa: u64,
    /// The level of the leaf: 1 or 2 for a block, 3 for a page.
    pub level: u8,
    /// The block or page descriptor.
    pub descriptor: u64,
}

impl Stage1Leaf {
    /// AttrIndx, descriptor bits [4:2]: the MAIR_EL2 attribute index.
    pub fn attr_index(&self) -> u8 {
        ((self.descriptor >> 2) & 0b111) as u8
    }

    /// AP[2], bit 7: read-only.
    pub fn read_only(&self) -> bool {
        self.descriptor & (1 << 7) != 0
    }

    /// XN, bit 54: not executable.
    pub fn execute_never(&self) -> bool {
        self.descriptor & (1 << 54) != 0
    }
}

/// The kernel's stage-1 map in a checked image: its registers and tables.
#[derive(Clone, Copy, Debug)]
pub struct Stage1<'a> {
    /// The registers.
    pub config: &'a Stage1Config,
    /// The table pages, as they lie at `tables_paddr`.
    tables: &'a [u8],
    /// Physical address of the first table page.
    tables_paddr: u64,
}

/// Output address bits [47:12] of a descriptor.
const DESC_ADDR_MASK: u64 = 0x0000_FFFF_FFFF_F000;

impl<'a> Stage1<'a> {
    /// TCR_EL2.T0SZ.
    fn t0sz(&self) -> u32 {
        (self.config.tcr.get() & 0x3f) as u32
    }

    /// The level the walk starts at for a 4 KiB granule: 0 for T0SZ
    /// 16..=24, 1 for 25..=33, 2 for 34..=39 (Arm ARM, "Translation table
    /// walk: the initial lookup level").
    fn start_level(&self) -> u8 {
        match self.t0sz() {
            16..=24 => 0,
            25..=33 => 1,
            _ => 2,
        }
    }

    /// The table page at physical address `pa`, if it is one of ours.
    fn table(&self, pa: u64) -> Option<&'a [u8]> {
        let off = pa.checked_sub(self.tables_paddr)?;
        if !off.is_multiple_of(TABLE_PAGE) || off >= self.tables.len() as u64 {
            return None;
        }
        self.tables.get(off as usize..(off + TABLE_PAGE) as usize)
    }

    fn entry(table: &[u8], index: usize) -> u64 {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&table[index * 8..index * 8 + 8]);
        u64::from_le_bytes(raw)
    }

    /// Walks `va` through the tables as the MMU would (4 KiB granule,
    /// VMSAv8-64 descriptors); `None` for an address outside the VA range
    /// or an invalid descriptor.
    pub fn translate(&self, va: u64) -> Option<Stage1Leaf> {
        if va >> (64 - self.t0sz()) != 0 {
            return None;
        }
        let mut table = self.table(self.config.ttbr0.get() & DESC_ADDR_MASK)?;
        let mut level = self.start_level();
        loop {
            let shift = 12 + 9 * (3 - u32::from(level));
            let index = ((va >> shift) & 0x1ff) as usize;
            let desc = Self::entry(table, index);
            match (desc & 0b11, level) {
                (0b11, 0..=2) => {
                    table = self.table(desc & DESC_ADDR_MASK)?;
                    level += 1;
                }
                (0b01, 1 | 2) | (0b11, 3) => {
                    let size_mask = (1u64 << shift) - 1;
                    let pa = (desc & DESC_ADDR_MASK & !size_mask) | (va & size_mask);
                    return Some(Stage1Leaf { pa, level, descriptor: desc });
                }
                _ => return None,
            }
        }
    }

    /// Every table descriptor reachable from the root names a table page
    /// of the section, and the walk visits no more tables than there are
    /// pages (so a shared or cyclic table is refused, and checking takes
    /// bounded time).
    fn check(&self) -> Result<(), ImageError> {
        let tcr = self.config.tcr.get();
        let tg0 = (tcr >> 14) & 0b11;
        let ttbr0 = self.config.ttbr0.get();
        if tg0 != 0 || !(16..=39).contains(&self.t0sz()) || ttbr0 & !DESC_ADDR_MASK != 0 {
            return Err(ImageError::BadStage1);
        }
        let root = self.table(ttbr0).ok_or(ImageError::BadStage1)?;
        let mut budget = self.tables.len() as u64 / TABLE_PAGE - 1;
        self.check_table(root, self.start_level(), &mut budget)
    }

    fn check_table(&self, table: &[u8], level: u8, budget: &mut u64) -> Result<(), ImageError> {
        for index in 0..512 {
            let desc = Self::entry(table, index);
            if level < 3 && desc & 0b11 == 0b11 {
                let next = self.table(desc & DESC_ADDR_MASK).ok_or(ImageError::BadStage1)?;
                *budget = budget.checked_sub(1).ok_or(ImageError::BadStage1)?;
                self.check_table(next, level + 1, budget)?;
            }
        }
        Ok(())
    }
}

/// One protection domain.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PdEntry {
    /// Name, UTF-8, NUL padded.
    pub name: [u8; PD_NAME_LEN],
    /// Scheduling priority, 0..=254.
    pub priority: u8,
    /// 1 if passive.
    pub passive: u8,
    /// Index of the parent PD, or [`NO_PARENT`].
    pub parent: u8,
    /// The id the parent knows this PD by.
    pub child_id: u8,
    /// VMID of its address space.
    pub vmid: U32,
    /// First instruction.
    pub entry: U64,
    /// Initial stack pointer.
    pub sp: U64,
    /// Physical address of its stage-2 root (VTTBR_EL2.BADDR).
    pub stage2_root: U64,
    /// Physical address of its IPC buffer page.
    pub ipc_buffer: U64,
    /// First of its capabilities in the [`CapEntry`] array.
    pub cap_first: U32,
    /// Number of its capabilities.
    pub cap_count: U32,
    /// Scheduling budget: microseconds of CPU time per period, 1 or more.
    pub budget_us: U64,
    /// Scheduling period in microseconds, at least the budget.
    pub period_us: U64,
}

impl PdEntry {
    /// The PD's name, without its NUL padding (`"?"` if not UTF-8).
    pub fn name(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(PD_NAME_LEN);
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }
}

/// One capability of a PD (kinds as in `tenure-abi`'s `CapKind`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct CapEntry {
    /// Slot in the PD's table.
    pub slot: zerocopy::little_endian::U16,
    /// Kind (`CapKind` as a byte).
    pub kind: u8,
    /// Zero.
    pub reserved: u8,
    /// The object: a PD index, or an interrupt number.
    pub target: U32,
    /// Badge delivered with it.
    pub badge: U64,
}

/// A range of physical memory the kernel fills before starting PDs:
/// `data_size` bytes from the blob at `data_offset`, then zeroes up to
/// `size`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct LoadEntry {
    /// First physical address.
    pub paddr: U64,
    /// Bytes to fill.
    pub size: U64,
    /// Offset of the data in the [`SectionKind::Blob`] section.
    pub data_offset: U64,
    /// Bytes of data; the rest is zeroed.
    pub data_size: U64,
}

/// An interrupt and the PD it is delivered to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct IrqEntry {
    /// GIC INTID.
    pub intid: U32,
    /// PD index.
    pub pd: u8,
    /// 1 for edge-triggered, 0 for level.
    pub edge: u8,
    /// Zero.
    pub reserved: zerocopy::little_endian::U16,
    /// Badge bits signalled (1 << the PD's channel id).
    pub badge: U64,
}

/// A range of RAM: `base..base + size`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct MemoryRegion {
    /// Physical address of the first byte.
    pub base: U64,
    /// Size in bytes; non-zero for a used entry.
    pub size: U64,
}

/// What the kernel needs to know about the board it runs on. The tool
/// fills it from its board table; the kernel names no board address.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct BoardInfo {
    /// Board name (Microkit's, e.g. `qemu_virt_aarch64`), UTF-8, padded
    /// with NUL bytes.
    pub name: [u8; BOARD_NAME_LEN],
    /// Physical address the kernel image is loaded at.
    pub kernel_load_addr: U64,
    /// Physical base of the PL011 console UART.
    pub uart_base: U64,
    /// Physical base of the GICv2 distributor (GICD).
    pub gicd_base: U64,
    /// Physical base of the GICv2 CPU interface (GICC).
    pub gicc_base: U64,
    /// INTID of the console UART's interrupt.
    pub uart_intid: U32,
    /// INTID of the EL2 physical timer (CNTHP), a PPI.
    pub timer_el2_phys_intid: U32,
    /// INTID of the EL1 virtual timer (CNTV), a PPI.
    pub timer_virt_intid: U32,
    /// Physical base of the GICv2 virtual interface control (GICH).
    pub gich_base: U64,
    /// Physical base of the GICv2 virtual CPU interface (GICV), which a
    /// guest's GICC is mapped to.
    pub gicv_base: U64,
    /// INTID of the vGIC maintenance interrupt, a PPI.
    pub vgic_maintenance_intid: U32,
    /// Zero (keeps the size a multiple of 8).
    pub reserved: U32,
    /// Used entries of `memory`.
    pub memory_region_count: U32,
    /// RAM regions, sorted by base; entries past the count are zero.
    pub memory: [MemoryRegion; MAX_MEMORY_REGIONS],
}

impl BoardInfo {
    /// The board name, without its NUL padding.
    ///
    /// Total for any bytes: a name that is not UTF-8 reads as `"?"`
    /// ([`Image::parse`] refuses such images, so a parsed one never does).
    pub fn name(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(BOARD_NAME_LEN);
        core::str::from_utf8(&self.name[..len]).unwrap_or("?")
    }

    /// The used memory regions.
    pub fn memory(&self) -> &[MemoryRegion] {
        let count = (self.memory_region_count.get() as usize).min(MAX_MEMORY_REGIONS);
        &self.memory[..count]
    }

    /// Encodes `name` into the fixed field, or `None` if it is empty or
    /// too long.
    pub fn encode_name(name: &str) -> Option<[u8; BOARD_NAME_LEN]> {
        if name.is_empty() || name.len() > BOARD_NAME_LEN || name.contains('\0') {
            return None;
        }
        let mut out = [0; BOARD_NAME_LEN];
        out[..name.len()].copy_from_slice(name.as_bytes());
        Some(out)
    }

    fn check(&self) -> Result<(), ImageError> {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(BOARD_NAME_LEN);
        if len == 0
            || core::str::from_utf8(&self.name[..len]).is_err()
            || self.name[len..].iter().any(|&b| b != 0)
        {
            return Err(ImageError::BadBoardName);
        }
        let count = self.memory_region_count.get() as usize;
        if count == 0 || count > MAX_MEMORY_REGIONS {
            return Err(ImageError::BadMemoryRegions);
        }
        let mut previous_end = 0u64;
        for (i, region) in self.memory.iter().enumerate() {
            if i >= count {
                if *region != MemoryRegion::default() {
                    return Err(ImageError::BadMemoryRegions);
                }
                continue;
            }
            let end = region
                .base
                .get()
                .checked_add(region.size.get())
                .ok_or(ImageError::BadMemoryRegions)?;
            if region.size.get() == 0 || (i > 0 && region.base.get() < previous_end) {
                return Err(ImageError::BadMemoryRegions);
            }
            previous_end = end;
        }
        Ok(())
    }
}

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The bytes are shorter than the header, or than the header's
    /// `total_size`.
    Truncated,
    /// The image does not start with [`MAGIC`].
    BadMagic,
    /// The image was written for another format version.
    UnsupportedVersion(u32),
    /// The header's `header_size` is not [`HEADER_SIZE`], or a reserved
    /// field is not zero.
    BadHeader,
    /// The section table does not fit in the image, or has more than
    /// [`MAX_SECTIONS`] entries.
    BadSectionTable,
    /// A section lies outside the image, over the header or the table, is
    /// misaligned, or overlaps another one.
    BadSectionBounds,
    /// A section kind this version does not know.
    UnknownSection(u32),
    /// A section kind appears twice.
    DuplicateSection(u32),
    /// A section's size does not match its kind's layout.
    BadSectionSize(u32),
    /// The image has no [`BoardInfo`] section.
    MissingBoardInfo,
    /// The board name is empty, not UTF-8 or not NUL padded.
    BadBoardName,
    /// The memory regions are empty, too many, unsorted, overlapping,
    /// zero-sized or overflow the address space.
    BadMemoryRegions,
    /// The system sections contradict each other: a PD's capabilities out
    /// of range or unsorted, a capability naming no PD, a load outside the
    /// blob, an interrupt for no PD, too many PDs.
    BadSystem,
    /// The EL2 stage-1 sections are malformed: one without the other, the
    /// tables not whole pages at a page-aligned offset, the image address
    /// not page aligned, TTBR0_EL2 outside the tables, a granule other than
    /// 4 KiB, or a table descriptor naming a page outside the tables.
    BadStage1,
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => f.write_str("the boot image is truncated"),
            Self::BadMagic => f.write_str("the boot image has a bad magic number"),
            Self::UnsupportedVersion(v) => {
                write!(f, "the boot image has version {v}, expected {VERSION}")
            }
            Self::BadHeader => f.write_str("the boot image header is malformed"),
            Self::BadSectionTable => f.write_str("the boot image section table is malformed"),
            Self::BadSectionBounds => {
                f.write_str("a boot image section lies outside the image or overlaps another")
            }
            Self::UnknownSection(k) => write!(f, "the boot image has an unknown section kind {k}"),
            Self::DuplicateSection(k) => write!(f, "the boot image has section kind {k} twice"),
            Self::BadSectionSize(k) => {
                write!(f, "boot image section kind {k} has the wrong size")
            }
            Self::MissingBoardInfo => f.write_str("the boot image has no board information"),
            Self::BadBoardName => f.write_str("the boot image's board name is malformed"),
            Self::BadMemoryRegions => f.write_str("the boot image's memory regions are malformed"),
            Self::BadSystem => f.write_str("the boot image's system sections are inconsistent"),
            Self::BadStage1 => f.write_str("the boot image's EL2 stage-1 map is malformed"),
        }
    }
}

/// A checked, borrowed view of an image.
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    bytes: &'a [u8],
    sections: &'a [Section],
    board: &'a BoardInfo,
    system: System<'a>,
    stage1: Option<Stage1<'a>>,
}

/// The system sections of an image; empty for a board-only image.
#[derive(Clone, Copy, Debug, Default)]
pub struct System<'a> {
    /// How PD address spaces are translated (present iff there are PDs).
    pub stage2: Option<&'a Stage2Config>,
    /// The PDs, by index.
    pub pds: &'a [PdEntry],
    /// Their capabilities.
    pub caps: &'a [CapEntry],
    /// Memory to fill at boot.
    pub loads: &'a [LoadEntry],
    /// The data the loads copy.
    pub blob: &'a [u8],
    /// Interrupts and the PDs they go to.
    pub irqs: &'a [IrqEntry],
    /// The virtual machines, by guest id.
    pub vms: &'a [VmEntry],
    /// Their vCPUs.
    pub vcpus: &'a [VcpuEntry],
    /// The memory-manager PD's guest memory (present iff there are VMs).
    pub guest_pool: Option<&'a GuestPool>,
}

impl<'a> System<'a> {
    /// The capabilities of PD `pd` (sorted by slot).
    pub fn caps_of(&self, pd: &PdEntry) -> &'a [CapEntry] {
        let first = pd.cap_first.get() as usize;
        self.caps.get(first..first + pd.cap_count.get() as usize).unwrap_or(&[])
    }

    /// The vCPUs of VM `vm`.
    pub fn vcpus_of(&self, vm: &VmEntry) -> &'a [VcpuEntry] {
        let first = vm.vcpu_first.get() as usize;
        self.vcpus.get(first..first + vm.vcpu_count.get() as usize).unwrap_or(&[])
    }

    /// The bytes a load copies.
    pub fn data_of(&self, load: &LoadEntry) -> &'a [u8] {
        let start = load.data_offset.get() as usize;
        self.blob.get(start..start + load.data_size.get() as usize).unwrap_or(&[])
    }

    /// VMs, vCPUs and the guest pool: each VM's vCPUs a non-empty run in
    /// range, naming it back; VMMs are PDs; ids, priorities and budgets
    /// within limits; VMIDs distinct from each other and from the PDs'
    /// (1..=PD count); the pool present iff there are VMs, page aligned,
    /// not overflowing, its mm a PD; at most [`MAX_SCHEDULED`] PDs and
    /// vCPUs together.
    fn check_vms(&self) -> Result<(), ImageError> {
        let bad = ImageError::BadSystem;
        let pds = self.pds.len();
        if pds + self.vcpus.len() > MAX_SCHEDULED
            || self.vms.is_empty() != self.guest_pool.is_none()
        {
            return Err(bad);
        }
        if let Some(pool) = self.guest_pool {
            let (base, size) = (pool.base.get(), pool.size.get());
            if !base.is_multiple_of(TABLE_PAGE)
                || !size.is_multiple_of(TABLE_PAGE)
                || size == 0
                || base.checked_add(size).is_none()
                || usize::from(pool.mm) >= pds
                || pool.reserved != [0; 7]
            {
                return Err(bad);
            }
        }
        let mut covered = 0;
        for (i, vm) in self.vms.iter().enumerate() {
            let first = vm.vcpu_first.get() as usize;
            let count = vm.vcpu_count.get() as usize;
            let vcpus = first.checked_add(count).and_then(|end| self.vcpus.get(first..end));
            let vmid = vm.vmid.get();
            let vmid_taken = (1..=pds as u32).contains(&vmid)
                || self.vms[..i].iter().any(|other| other.vmid.get() == vmid);
            let Some(vcpus) = vcpus else { return Err(bad) };
            if first != covered
                || vcpus.is_empty()
                || vmid == 0
                || vmid > 0xff
                || vmid_taken
                || usize::from(vm.vmm) >= pds
                || vm.reserved != [0; 3]
                || core::str::from_utf8(&vm.name).is_err()
            {
                return Err(bad);
            }
            covered += count;
            for vcpu in vcpus {
                if vcpu.vm.get() as usize != i
                    || vcpu.id > 61
                    || vcpu.priority == 255
                    || vcpu.budget_us.get() == 0
                    || vcpu.budget_us.get() > vcpu.period_us.get()
                    || vcpu.reserved != [0; 2]
                {
                    return Err(bad);
                }
            }
        }
        if covered != self.vcpus.len() {
            return Err(bad);
        }
        Ok(())
    }

    /// Cross-section rules: PDs within limits with known parents and
    /// their caps in range and sorted; budgets non-zero and within their periods; caps of known kinds naming existing
    /// PDs; loads inside the blob and not overflowing; IRQs naming PDs.
    fn check(&self) -> Result<(), ImageError> {
        let pds = self.pds.len();
        if pds > MAX_PDS || (pds > 0 && self.stage2.is_none()) {
            return Err(ImageError::BadSystem);
        }
        for pd in self.pds {
            let parent_ok = pd.parent == NO_PARENT || usize::from(pd.parent) < pds;
            let first = pd.cap_first.get() as usize;
            let end =
                first.checked_add(pd.cap_count.get() as usize).ok_or(ImageError::BadSystem)?;
            let caps = self.caps.get(first..end).ok_or(ImageError::BadSystem)?;
            let sorted = caps.windows(2).all(|w| w[0].slot.get() < w[1].slot.get());
            if !parent_ok
                || !sorted
                || pd.priority == 255
                || pd.budget_us.get() == 0
                || pd.budget_us.get() > pd.period_us.get()
                || core::str::from_utf8(&pd.name).is_err()
            {
                return Err(ImageError::BadSystem);
            }
        }
        self.check_vms()?;
        for cap in self.caps {
            // Kinds 1 (notification), 2 (endpoint), 4 (child TCB) name PDs;
            // 3 (IRQ handler) an interrupt; 5 (vCPU) a vCPU; 6 (stage-2
            // control) nothing, and needs a guest pool.
            let target = cap.target.get() as usize;
            let ok = match cap.kind {
                1 | 2 | 4 => target < pds,
                3 => true,
                5 => target < self.vcpus.len(),
                6 => target == 0 && self.guest_pool.is_some(),
                _ => false,
            };
            if !ok || cap.reserved != 0 {
                return Err(ImageError::BadSystem);
            }
        }
        for load in self.loads {
            let data_end = load.data_offset.get().checked_add(load.data_size.get());
            let fits = data_end.is_some_and(|e| e <= self.blob.len() as u64);
            let end = load.paddr.get().checked_add(load.size.get());
            if !fits || end.is_none() || load.data_size.get() > load.size.get() {
                return Err(ImageError::BadSystem);
            }
        }
        if self.irqs.iter().any(|i| usize::from(i.pd) >= pds || i.edge > 1) {
            return Err(ImageError::BadSystem);
        }
        Ok(())
    }
}

impl<'a> Image<'a> {
    /// Checks `bytes` and returns a view of the image it starts with.
    /// `bytes` may be longer than the image (the kernel passes a bound,
    /// not the exact size); the rest is ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        let total = Self::peek_total_size(bytes)?;
        let total_usize = usize::try_from(total).map_err(|_| ImageError::Truncated)?;
        let bytes = bytes.get(..total_usize).ok_or(ImageError::Truncated)?;
        let (header, rest) = Header::ref_from_prefix(bytes).map_err(|_| ImageError::Truncated)?;
        if header.header_size.get() as usize != HEADER_SIZE || header.reserved.get() != 0 {
            return Err(ImageError::BadHeader);
        }
        let count = header.section_count.get();
        if count > MAX_SECTIONS {
            return Err(ImageError::BadSectionTable);
        }
        let (sections, _) = <[Section]>::ref_from_prefix_with_elems(rest, count as usize)
            .map_err(|_| ImageError::BadSectionTable)?;
        let table_end = (HEADER_SIZE + sections.len() * SECTION_ENTRY_SIZE) as u64;

        let mut seen = 0u32;
        let mut board = None;
        let mut system = System::default();
        let mut stage1_config = None;
        let mut stage1_tables = None;
        for (i, section) in sections.iter().enumerate() {
            let (start, end) = section_range(section, table_end, total)?;
            for other in &sections[..i] {
                let (other_start, other_end) = section_range(other, table_end, total)?;
                if start < other_end && other_start < end {
                    return Err(ImageError::BadSectionBounds);
                }
            }
            let raw = section.kind.get();
            let kind = SectionKind::from_raw(raw).ok_or(ImageError::UnknownSection(raw))?;
            if section.reserved.get() != 0 {
                return Err(ImageError::BadSectionTable);
            }
            let bit = 1 << (kind as u32);
            if seen & bit != 0 {
                return Err(ImageError::DuplicateSection(raw));
            }
            seen |= bit;
            // In bounds: `section_range` checked `end <= total`.
            let body = &bytes[start as usize..end as usize];
            let size_err = ImageError::BadSectionSize(raw);
            match kind {
                SectionKind::BoardInfo => {
                    let info = BoardInfo::ref_from_bytes(body).map_err(|_| size_err)?;
                    info.check()?;
                    board = Some(info);
                }
                SectionKind::Stage2Config => {
                    system.stage2 = Some(Stage2Config::ref_from_bytes(body).map_err(|_| size_err)?);
                }
                SectionKind::Pds => {
                    system.pds = <[PdEntry]>::ref_from_bytes(body).map_err(|_| size_err)?
                }
                SectionKind::Caps => {
                    system.caps = <[CapEntry]>::ref_from_bytes(body).map_err(|_| size_err)?;
                }
                SectionKind::Loads => {
                    system.loads = <[LoadEntry]>::ref_from_bytes(body).map_err(|_| size_err)?;
                }
                SectionKind::Blob => system.blob = body,
                SectionKind::Irqs => {
                    system.irqs = <[IrqEntry]>::ref_from_bytes(body).map_err(|_| size_err)?
                }
                SectionKind::Stage1 => {
                    stage1_config = Some(Stage1Config::ref_from_bytes(body).map_err(|_| size_err)?);
                }
                SectionKind::Vms => {
                    system.vms = <[VmEntry]>::ref_from_bytes(body).map_err(|_| size_err)?
                }
                SectionKind::Vcpus => {
                    system.vcpus = <[VcpuEntry]>::ref_from_bytes(body).map_err(|_| size_err)?
                }
                SectionKind::GuestPool => {
                    system.guest_pool =
                        Some(GuestPool::ref_from_bytes(body).map_err(|_| size_err)?);
                }
                SectionKind::Stage1Tables => {
                    if !start.is_multiple_of(TABLE_PAGE)
                        || body.is_empty()
                        || !(body.len() as u64).is_multiple_of(TABLE_PAGE)
                    {
                        return Err(ImageError::BadStage1);
                    }
                    stage1_tables = Some((start, body));
                }
            }
        }
        system.check()?;
        let board = board.ok_or(ImageError::MissingBoardInfo)?;
        let stage1 = match (stage1_config, stage1_tables) {
            (None, None) => None,
            (Some(config), Some((offset, tables))) => {
                let image_paddr = config.image_paddr.get();
                if !image_paddr.is_multiple_of(TABLE_PAGE) {
                    return Err(ImageError::BadStage1);
                }
                let tables_paddr = image_paddr.checked_add(offset).ok_or(ImageError::BadStage1)?;
                tables_paddr
                    .checked_add(tables.len() as u64)
                    .filter(|end| *end <= DESC_ADDR_MASK + TABLE_PAGE)
                    .ok_or(ImageError::BadStage1)?;
                let stage1 = Stage1 { config, tables, tables_paddr };
                stage1.check()?;
                Some(stage1)
            }
            _ => return Err(ImageError::BadStage1),
        };
        Ok(Self { bytes, sections, board, system, stage1 })
    }

    /// Checks the magic and version and returns the header's
    /// `total_size`, so a reader that only knows where an image starts can
    /// learn how many bytes to hand to [`Image::parse`].
    pub fn peek_total_size(bytes: &[u8]) -> Result<u64, ImageError> {
        let (header, _) = Header::ref_from_prefix(bytes).map_err(|_| ImageError::Truncated)?;
        if header.magic != MAGIC {
            return Err(ImageError::BadMagic);
        }
        if header.version.get() != VERSION {
            return Err(ImageError::UnsupportedVersion(header.version.get()));
        }
        let total = header.total_size.get();
        if total < HEADER_SIZE as u64 {
            return Err(ImageError::BadHeader);
        }
        Ok(total)
    }

    /// The board the image was packed for.
    pub fn board(&self) -> &'a BoardInfo {
        self.board
    }

    /// The system: PDs, capabilities, memory to fill, interrupts.
    pub fn system(&self) -> System<'a> {
        self.system
    }

    /// The kernel's EL2 stage-1 map, if the image has one.
    pub fn stage1(&self) -> Option<Stage1<'a>> {
        self.stage1
    }

    /// The section table.
    pub fn sections(&self) -> &'a [Section] {
        self.sections
    }

    /// The whole image, `total_size` bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// The body range of `section`, checked against the table end and the
/// image size.
fn section_range(section: &Section, table_end: u64, total: u64) -> Result<(u64, u64), ImageError> {
    let start = section.offset.get();
    let end = start.checked_add(section.size.get()).ok_or(ImageError::BadSectionBounds)?;
    if start < table_end || end > total || !start.is_multiple_of(SECTION_ALIGN) {
        return Err(ImageError::BadSectionBounds);
    }
    Ok((start, end))
}

/// Bytes of an image holding only a [`BoardInfo`] (the image of a system
/// without PDs), as [`write_board_only`] lays it out.
pub const BOARD_ONLY_SIZE: usize = board_only_offset() + size_of::<BoardInfo>();

const fn board_only_offset() -> usize {
    let end = HEADER_SIZE + SECTION_ENTRY_SIZE;
    end.next_multiple_of(SECTION_ALIGN as usize)
}

/// Writes an image holding only `board` into `out`, which must be
/// [`BOARD_ONLY_SIZE`] bytes long; returns `out` as the image.
///
/// # Panics
///
/// If `out` has another length: a caller bug, not an input error.
pub fn write_board_only<'a>(out: &'a mut [u8], board: &BoardInfo) -> &'a [u8] {
    assert_eq!(out.len(), BOARD_ONLY_SIZE, "board-only image buffer size");
    let header = Header {
        magic: MAGIC,
        version: VERSION.into(),
        header_size: (HEADER_SIZE as u32).into(),
        total_size: (BOARD_ONLY_SIZE as u64).into(),
        section_count: 1.into(),
        reserved: 0.into(),
    };
    let section = Section {
        kind: (SectionKind::BoardInfo as u32).into(),
        reserved: 0.into(),
        offset: (board_only_offset() as u64).into(),
        size: (size_of::<BoardInfo>() as u64).into(),
    };
    out.fill(0);
    out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    out[HEADER_SIZE..HEADER_SIZE + SECTION_ENTRY_SIZE].copy_from_slice(section.as_bytes());
    out[board_only_offset()..].copy_from_slice(board.as_bytes());
    out
}

/// An image's contents, to be written by [`write_image`].
#[cfg(feature = "alloc")]
#[derive(Clone, Debug, Default)]
pub struct Parts {
    /// How PD address spaces are translated; needed when there are PDs.
    pub stage2: Option<Stage2Config>,
    /// The PDs, by index.
    pub pds: alloc::vec::Vec<PdEntry>,
    /// Their capabilities.
    pub caps: alloc::vec::Vec<CapEntry>,
    /// Memory to fill at boot.
    pub loads: alloc::vec::Vec<LoadEntry>,
    /// The data the loads copy.
    pub blob: alloc::vec::Vec<u8>,
    /// Interrupts and the PDs they go to.
    pub irqs: alloc::vec::Vec<IrqEntry>,
    /// The virtual machines.
    pub vms: alloc::vec::Vec<VmEntry>,
    /// Their vCPUs.
    pub vcpus: alloc::vec::Vec<VcpuEntry>,
    /// The memory-manager PD's guest memory; needed when there are VMs.
    pub guest_pool: Option<GuestPool>,
    /// The kernel's EL2 stage-1 registers and table pages; the tables are
    /// written at [`STAGE1_TABLES_OFFSET`] in the image.
    pub stage1: Option<(Stage1Config, alloc::vec::Vec<u8>)>,
}

/// Writes an image of `board` and `parts`; empty system sections are left
/// out, so a system without PDs is a board-only image.
#[cfg(feature = "alloc")]
#[must_use]
pub fn write_image(board: &BoardInfo, parts: &Parts) -> alloc::vec::Vec<u8> {
    use alloc::vec::Vec;
    let mut bodies: Vec<(SectionKind, &[u8])> = Vec::new();
    // The tables first, so that they land at STAGE1_TABLES_OFFSET.
    if let Some((config, tables)) = &parts.stage1 {
        bodies.push((SectionKind::Stage1Tables, tables));
        bodies.push((SectionKind::Stage1, config.as_bytes()));
    }
    bodies.push((SectionKind::BoardInfo, board.as_bytes()));
    if let Some(stage2) = &parts.stage2 {
        bodies.push((SectionKind::Stage2Config, stage2.as_bytes()));
    }
    if let Some(pool) = &parts.guest_pool {
        bodies.push((SectionKind::GuestPool, pool.as_bytes()));
    }
    let arrays: [(SectionKind, &[u8]); 7] = [
        (SectionKind::Pds, parts.pds.as_bytes()),
        (SectionKind::Caps, parts.caps.as_bytes()),
        (SectionKind::Loads, parts.loads.as_bytes()),
        (SectionKind::Blob, &parts.blob),
        (SectionKind::Irqs, parts.irqs.as_bytes()),
        (SectionKind::Vms, parts.vms.as_bytes()),
        (SectionKind::Vcpus, parts.vcpus.as_bytes()),
    ];
    bodies.extend(arrays.into_iter().filter(|(_, b)| !b.is_empty()));
    let table_end = HEADER_SIZE + bodies.len() * SECTION_ENTRY_SIZE;
    let mut offset = table_end.next_multiple_of(SECTION_ALIGN as usize);
    let mut sections = Vec::new();
    for (kind, body) in &bodies {
        if *kind == SectionKind::Stage1Tables {
            offset = STAGE1_TABLES_OFFSET as usize;
        }
        sections.push(Section {
            kind: (*kind as u32).into(),
            reserved: 0.into(),
            offset: (offset as u64).into(),
            size: (body.len() as u64).into(),
        });
        offset = (offset + body.len()).next_multiple_of(SECTION_ALIGN as usize);
    }
    let header = Header {
        magic: MAGIC,
        version: VERSION.into(),
        header_size: (HEADER_SIZE as u32).into(),
        total_size: (offset as u64).into(),
        section_count: (bodies.len() as u32).into(),
        reserved: 0.into(),
    };
    let mut out = alloc::vec![0u8; offset];
    out[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    for (i, (section, (_, body))) in sections.iter().zip(&bodies).enumerate() {
        let at = HEADER_SIZE + i * SECTION_ENTRY_SIZE;
        out[at..at + SECTION_ENTRY_SIZE].copy_from_slice(section.as_bytes());
        let start = section.offset.get() as usize;
        out[start..start + body.len()].copy_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn struct_sizes_are_fixed() {
        assert_eq!(size_of::<Header>(), 32);
        assert_eq!(size_of::<Section>(), 24);
        assert_eq!(size_of::<MemoryRegion>(), 16);
        assert_eq!(size_of::<BoardInfo>(), 32 + 6 * 8 + 6 * 4 + 4 * 16);
        assert_eq!(align_of::<BoardInfo>(), 1);
    }

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
            gich_base: 0x0803_0000.into(),
            gicv_base: 0x0804_0000.into(),
            vgic_maintenance_intid: 25.into(),
            reserved: 0.into(),
        }
    }

    fn image() -> Vec<u8> {
        let mut out = vec![0; BOARD_ONLY_SIZE];
        write_board_only(&mut out, &board());
        out
    }

    /// Applies `edit` to a good image's header and parses the result.
    fn with_header(edit: impl FnOnce(&mut Header)) -> Result<(), ImageError> {
        let mut bytes = image();
        let (header, _) = Header::mut_from_prefix(&mut bytes).unwrap();
        edit(header);
        Image::parse(&bytes).map(|_| ())
    }

    fn with_section(edit: impl FnOnce(&mut Section)) -> Result<(), ImageError> {
        let mut bytes = image();
        let (section, _) = Section::mut_from_prefix(&mut bytes[HEADER_SIZE..]).unwrap();
        edit(section);
        Image::parse(&bytes).map(|_| ())
    }

    fn with_board(edit: impl FnOnce(&mut BoardInfo)) -> Result<(), ImageError> {
        let mut bytes = image();
        let info = BoardInfo::mut_from_bytes(&mut bytes[board_only_offset()..]).unwrap();
        edit(info);
        Image::parse(&bytes).map(|_| ())
    }

    #[test]
    fn round_trip() {
        let bytes = image();
        let parsed = Image::parse(&bytes).unwrap();
        assert_eq!(parsed.board().name(), "qemu_virt_aarch64");
        assert_eq!(parsed.board().uart_base.get(), 0x0900_0000);
        assert_eq!(parsed.board().memory().len(), 1);
        assert_eq!(parsed.sections().len(), 1);
        assert_eq!(parsed.bytes().len(), BOARD_ONLY_SIZE);
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut bytes = image();
        bytes.extend_from_slice(&[0xAA; 100]);
        let parsed = Image::parse(&bytes).unwrap();
        assert_eq!(parsed.bytes().len(), BOARD_ONLY_SIZE);
    }

    #[test]
    fn truncated_images_are_refused() {
        let bytes = image();
        assert_eq!(Image::parse(&[]).unwrap_err(), ImageError::Truncated);
        assert_eq!(Image::parse(&bytes[..HEADER_SIZE - 1]).unwrap_err(), ImageError::Truncated);
        assert_eq!(Image::parse(&bytes[..BOARD_ONLY_SIZE - 1]).unwrap_err(), ImageError::Truncated);
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(with_header(|h| h.magic[0] = b'X'), Err(ImageError::BadMagic));
        assert_eq!(with_header(|h| h.version = 1.into()), Err(ImageError::UnsupportedVersion(1)));
        assert_eq!(with_header(|h| h.header_size = 40.into()), Err(ImageError::BadHeader));
        assert_eq!(with_header(|h| h.reserved = 1.into()), Err(ImageError::BadHeader));
        assert_eq!(with_header(|h| h.total_size = 8.into()), Err(ImageError::BadHeader));
        assert_eq!(with_header(|h| h.total_size = u64::MAX.into()), Err(ImageError::Truncated));
        assert_eq!(
            with_header(|h| h.section_count = (MAX_SECTIONS + 1).into()),
            Err(ImageError::BadSectionTable)
        );
        // A table that runs past the end of the image.
        assert_eq!(with_header(|h| h.section_count = 10.into()), Err(ImageError::BadSectionTable));
        assert_eq!(with_header(|h| h.section_count = 0.into()), Err(ImageError::MissingBoardInfo));
    }

    #[test]
    fn bad_sections_are_refused() {
        assert_eq!(with_section(|s| s.kind = 99.into()), Err(ImageError::UnknownSection(99)));
        assert_eq!(with_section(|s| s.offset = 0.into()), Err(ImageError::BadSectionBounds));
        assert_eq!(
            with_section(|s| s.offset = (s.offset.get() + 4).into()),
            Err(ImageError::BadSectionBounds)
        );
        assert_eq!(
            with_section(|s| s.size = (s.size.get() + 8).into()),
            Err(ImageError::BadSectionBounds)
        );
        assert_eq!(with_section(|s| s.offset = u64::MAX.into()), Err(ImageError::BadSectionBounds));
        assert_eq!(
            with_section(|s| s.size = (s.size.get() - 8).into()),
            Err(ImageError::BadSectionSize(1))
        );
        assert_eq!(with_section(|s| s.reserved = 1.into()), Err(ImageError::BadSectionTable));
    }

    #[test]
    fn duplicate_and_overlapping_sections_are_refused() {
        // Two BoardInfo entries over the same body: overlap is found first.
        let mut bytes = image();
        let body = bytes.split_off(board_only_offset());
        let mut second = *Section::ref_from_prefix(&bytes[HEADER_SIZE..]).unwrap().0;
        bytes.extend_from_slice(second.as_bytes());
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        let first_offset = bytes.len() as u64;
        bytes.extend_from_slice(&body);
        let second_offset = bytes.len() as u64;
        bytes.extend_from_slice(&body);
        let total = bytes.len() as u64;
        {
            let (header, rest) = Header::mut_from_prefix(&mut bytes).unwrap();
            header.section_count = 2.into();
            header.total_size = total.into();
            let (table, _) = <[Section]>::mut_from_prefix_with_elems(rest, 2).unwrap();
            table[0].offset = first_offset.into();
            table[1].offset = second_offset.into();
            second = table[1];
        }
        assert_eq!(Image::parse(&bytes).unwrap_err(), ImageError::DuplicateSection(1));
        let (_, rest) = Header::mut_from_prefix(&mut bytes).unwrap();
        let (table, _) = <[Section]>::mut_from_prefix_with_elems(rest, 2).unwrap();
        table[1].offset = (second.offset.get() - 8).into();
        assert_eq!(Image::parse(&bytes).unwrap_err(), ImageError::BadSectionBounds);
    }

    #[test]
    fn bad_board_info_is_refused() {
        assert_eq!(with_board(|b| b.name = [0; BOARD_NAME_LEN]), Err(ImageError::BadBoardName));
        assert_eq!(with_board(|b| b.name[0] = 0xFF), Err(ImageError::BadBoardName));
        assert_eq!(
            with_board(|b| b.name[BOARD_NAME_LEN - 1] = b'x'),
            Err(ImageError::BadBoardName)
        );
        assert_eq!(
            with_board(|b| b.memory_region_count = 0.into()),
            Err(ImageError::BadMemoryRegions)
        );
        assert_eq!(
            with_board(|b| b.memory_region_count = 5.into()),
            Err(ImageError::BadMemoryRegions)
        );
        assert_eq!(with_board(|b| b.memory[0].size = 0.into()), Err(ImageError::BadMemoryRegions));
        assert_eq!(
            with_board(|b| b.memory[0].base = u64::MAX.into()),
            Err(ImageError::BadMemoryRegions)
        );
        // A used region that starts inside the previous one.
        assert_eq!(
            with_board(|b| {
                b.memory_region_count = 2.into();
                b.memory[1] = MemoryRegion { base: 0x5000_0000.into(), size: 0x1000.into() };
            }),
            Err(ImageError::BadMemoryRegions)
        );
        // Garbage in an unused entry.
        assert_eq!(with_board(|b| b.memory[3].size = 1.into()), Err(ImageError::BadMemoryRegions));
    }

    proptest::proptest! {
        /// Flipping bytes of a good image, or cutting it short, gives an
        /// error or an image whose sections are in bounds: never a panic.
        #[test]
        fn mutated_images_are_refused_or_sound(
            flips in proptest::collection::vec((0..BOARD_ONLY_SIZE, proptest::num::u8::ANY), 0..8),
            cut in 0..=BOARD_ONLY_SIZE,
        ) {
            let mut bytes = image();
            for (at, value) in flips {
                bytes[at] = value;
            }
            bytes.truncate(cut);
            if let Ok(parsed) = Image::parse(&bytes) {
                assert!(parsed.bytes().len() <= bytes.len());
                for section in parsed.sections() {
                    let end = section.offset.get() + section.size.get();
                    assert!(end <= parsed.bytes().len() as u64);
                }
                assert!(!parsed.board().name().is_empty());
            }
        }

        /// Random bytes never panic the reader.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Image::parse(&bytes);
        }
    }

    #[test]
    fn name_encoding() {
        assert!(BoardInfo::encode_name("").is_none());
        assert!(BoardInfo::encode_name(&"x".repeat(BOARD_NAME_LEN + 1)).is_none());
        let full = "y".repeat(BOARD_NAME_LEN);
        let mut info = board();
        info.name = BoardInfo::encode_name(&full).unwrap();
        assert_eq!(info.name(), full);
    }

    #[cfg(feature = "alloc")]
    mod system {
        use super::*;

        fn pd(name: &str, parent: u8, caps: (u32, u32)) -> PdEntry {
            let mut n = [0u8; PD_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            PdEntry {
                name: n,
                priority: 10,
                passive: 0,
                parent,
                child_id: 0,
                vmid: 1.into(),
                entry: 0x20_0000.into(),
                sp: 0xff_ffff_e000.into(),
                stage2_root: 0x4800_0000.into(),
                ipc_buffer: 0x4810_0000.into(),
                cap_first: caps.0.into(),
                cap_count: caps.1.into(),
                budget_us: 1000.into(),
                period_us: 1000.into(),
            }
        }

        fn cap(slot: u16, kind: u8, target: u32) -> CapEntry {
            CapEntry {
                slot: slot.into(),
                kind,
                reserved: 0,
                target: target.into(),
                badge: 4.into(),
            }
        }

        fn parts() -> Parts {
            Parts {
                stage2: Some(Stage2Config { vtcr: 0x8004_3558.into() }),
                pds: vec![pd("ping", NO_PARENT, (0, 2)), pd("pong", 0, (2, 1))],
                caps: vec![cap(10, 1, 1), cap(74, 2, 1), cap(10, 1, 0)],
                loads: vec![LoadEntry {
                    paddr: 0x4100_0000.into(),
                    size: 0x2000.into(),
                    data_offset: 0.into(),
                    data_size: 3.into(),
                }],
                blob: vec![1, 2, 3],
                irqs: vec![IrqEntry {
                    intid: 33.into(),
                    pd: 1,
                    edge: 0,
                    reserved: 0.into(),
                    badge: 2.into(),
                }],
                stage1: None,
                vms: Vec::new(),
                vcpus: Vec::new(),
                guest_pool: None,
            }
        }

        /// [`parts`] with one VM of two vCPUs, run by ping, and pong as mm.
        fn parts_with_vm() -> Parts {
            let mut p = parts();
            let mut name = [0u8; PD_NAME_LEN];
            name[..5].copy_from_slice(b"guest");
            p.vms.push(VmEntry {
                name,
                vmid: 8.into(),
                vcpu_first: 0.into(),
                vcpu_count: 2.into(),
                vmm: 0,
                reserved: [0; 3],
            });
            for id in 0..2 {
                p.vcpus.push(VcpuEntry {
                    vm: 0.into(),
                    id,
                    priority: 5,
                    reserved: [0; 2],
                    mpidr: u64::from(id).into(),
                    budget_us: 1000.into(),
                    period_us: 1000.into(),
                });
            }
            p.guest_pool = Some(GuestPool {
                base: 0x5000_0000.into(),
                size: 0x400_0000.into(),
                mm: 1,
                reserved: [0; 7],
            });
            p.caps.push(cap(330, 5, 1));
            p.pds[0].cap_count = 3.into();
            p.caps.swap(2, 3);
            p.pds[1].cap_first = 3.into();
            p
        }

        #[test]
        fn vms_round_trip_through_the_image() {
            let bytes = write_image(&board(), &parts_with_vm());
            let image = Image::parse(&bytes).unwrap();
            let sys = image.system();
            assert_eq!(sys.vms.len(), 1);
            assert_eq!(sys.vcpus_of(&sys.vms[0]).len(), 2);
            assert_eq!(sys.vcpus[1].mpidr.get(), 1);
            assert_eq!(sys.guest_pool.unwrap().mm, 1);
            assert_eq!(image.board().gich_base.get(), 0x0803_0000);
        }

        #[test]
        fn inconsistent_vms_are_refused() {
            let refused = |edit: fn(&mut Parts)| {
                let mut p = parts_with_vm();
                edit(&mut p);
                Image::parse(&write_image(&board(), &p)).map(|_| ())
            };
            assert_eq!(refused(|_| ()), Ok(()));
            let bad = Err(ImageError::BadSystem);
            assert_eq!(refused(|p| p.guest_pool = None), bad, "VMs need a pool");
            assert_eq!(refused(|p| p.vms[0].vmid = 2.into()), bad, "a PD's VMID");
            assert_eq!(refused(|p| p.vms[0].vcpu_count = 3.into()), bad);
            assert_eq!(refused(|p| p.vms[0].vcpu_count = 1.into()), bad, "a vCPU of no VM");
            assert_eq!(refused(|p| p.vms[0].vmm = 2), bad);
            assert_eq!(refused(|p| p.vcpus[1].vm = 1.into()), bad);
            assert_eq!(refused(|p| p.vcpus[0].id = 62), bad);
            assert_eq!(refused(|p| p.vcpus[0].budget_us = 0.into()), bad);
            assert_eq!(refused(|p| p.guest_pool.as_mut().unwrap().base = 0x5000_0800.into()), bad);
            assert_eq!(refused(|p| p.guest_pool.as_mut().unwrap().mm = 9), bad);
            assert_eq!(refused(|p| p.caps[2].target = 2.into()), bad, "no vCPU 2");
            assert_eq!(refused(|p| p.vms.clear()), bad, "a pool without VMs");
        }

        #[test]
        fn a_system_round_trips_through_the_image() {
            let bytes = write_image(&board(), &parts());
            let image = Image::parse(&bytes).unwrap();
            let sys = image.system();
            assert_eq!(sys.pds.len(), 2);
            assert_eq!(sys.pds[1].name(), "pong");
            assert_eq!(sys.caps_of(&sys.pds[0]), &parts().caps[..2]);
            assert_eq!(sys.data_of(&sys.loads[0]), [1, 2, 3]);
            assert_eq!(sys.irqs[0].intid.get(), 33);
            assert_eq!(sys.stage2.unwrap().vtcr.get(), 0x8004_3558);
        }

        #[test]
        fn inconsistent_systems_are_refused() {
            let refused = |edit: fn(&mut Parts)| {
                let mut p = parts();
                edit(&mut p);
                Image::parse(&write_image(&board(), &p)).map(|_| ())
            };
            assert_eq!(refused(|p| p.pds[0].cap_count = 9.into()), Err(ImageError::BadSystem));
            assert_eq!(refused(|p| p.pds[1].parent = 7), Err(ImageError::BadSystem));
            assert_eq!(refused(|p| p.caps[0].target = 5.into()), Err(ImageError::BadSystem));
            assert_eq!(refused(|p| p.caps[0].kind = 9), Err(ImageError::BadSystem));
            assert_eq!(
                refused(|p| p.caps.swap(0, 1)),
                Err(ImageError::BadSystem),
                "unsorted slots"
            );
            assert_eq!(refused(|p| p.loads[0].data_size = 4.into()), Err(ImageError::BadSystem));
            assert_eq!(refused(|p| p.irqs[0].pd = 2), Err(ImageError::BadSystem));
            assert_eq!(refused(|p| p.stage2 = None), Err(ImageError::BadSystem));
            assert_eq!(refused(|p| p.pds[0].priority = 255), Err(ImageError::BadSystem));
            assert_eq!(refused(|p| p.pds[0].budget_us = 0.into()), Err(ImageError::BadSystem));
            assert_eq!(refused(|p| p.pds[1].period_us = 999.into()), Err(ImageError::BadSystem));
        }

        const IMAGE_PADDR: u64 = 0x4030_0000;
        const TABLES_PADDR: u64 = IMAGE_PADDR + STAGE1_TABLES_OFFSET;

        fn put(tables: &mut [u8], page: usize, index: usize, desc: u64) {
            let at = page * 4096 + index * 8;
            tables[at..at + 8].copy_from_slice(&desc.to_le_bytes());
        }

        /// A 39-bit map (root at level 1): 0x4000_0000 as a 2 MiB block
        /// of attribute 0, 0x4020_0000 as a device page (attribute 1, XN).
        fn stage1() -> (Stage1Config, Vec<u8>) {
            let mut tables = vec![0u8; 3 * 4096];
            put(&mut tables, 0, 1, (TABLES_PADDR + 0x1000) | 0b11);
            put(&mut tables, 1, 0, 0x4000_0000 | (1 << 10) | (1 << 6) | 0b01);
            put(&mut tables, 1, 1, (TABLES_PADDR + 0x2000) | 0b11);
            put(&mut tables, 2, 0, 0x4020_0000 | (1 << 54) | (1 << 10) | (1 << 2) | 0b11);
            let config = Stage1Config {
                mair: 0x04ff.into(),
                tcr: 0x8082_3519.into(),
                ttbr0: TABLES_PADDR.into(),
                image_paddr: IMAGE_PADDR.into(),
            };
            (config, tables)
        }

        fn with_stage1() -> Parts {
            Parts { stage1: Some(stage1()), ..parts() }
        }

        #[test]
        fn a_stage1_map_round_trips_and_translates() {
            let bytes = write_image(&board(), &with_stage1());
            let image = Image::parse(&bytes).unwrap();
            let tables = image
                .sections()
                .iter()
                .find(|s| s.kind.get() == SectionKind::Stage1Tables as u32)
                .unwrap();
            assert_eq!(tables.offset.get(), STAGE1_TABLES_OFFSET);
            let map = image.stage1().unwrap();
            assert_eq!(map.config.mair.get(), 0x04ff);
            let block = map.translate(0x4012_3456).unwrap();
            assert_eq!((block.pa, block.level, block.attr_index()), (0x4012_3456, 2, 0));
            assert!(!block.execute_never() && !block.read_only());
            let page = map.translate(0x4020_0010).unwrap();
            assert_eq!((page.pa, page.level, page.attr_index()), (0x4020_0010, 3, 1));
            assert!(page.execute_never());
            assert_eq!(map.translate(0x4020_1000), None, "an invalid page");
            assert_eq!(map.translate(0x1000), None, "an invalid level-1 entry");
            assert_eq!(map.translate(1 << 39), None, "outside the 39-bit VA range");
            // The image still has its system, and one without a map none.
            assert_eq!(image.system().pds.len(), 2);
            assert!(Image::parse(&write_image(&board(), &parts())).unwrap().stage1().is_none());
        }

        #[test]
        fn bad_stage1_maps_are_refused() {
            let refused = |edit: fn(&mut Stage1Config, &mut Vec<u8>)| {
                let mut p = with_stage1();
                let (config, tables) = p.stage1.as_mut().unwrap();
                edit(config, tables);
                Image::parse(&write_image(&board(), &p)).map(|_| ())
            };
            assert_eq!(refused(|_, _| {}), Ok(()));
            assert_eq!(refused(|_, t| t.truncate(4000)), Err(ImageError::BadStage1));
            assert_eq!(refused(|_, t| t.clear()), Err(ImageError::BadStage1));
            assert_eq!(
                refused(|c, _| c.image_paddr = (IMAGE_PADDR + 8).into()),
                Err(ImageError::BadStage1)
            );
            // TTBR0 past the tables, inside a page, or with low bits set.
            assert_eq!(
                refused(|c, _| c.ttbr0 = (TABLES_PADDR + 0x3000).into()),
                Err(ImageError::BadStage1)
            );
            assert_eq!(
                refused(|c, _| c.ttbr0 = (TABLES_PADDR + 0x800).into()),
                Err(ImageError::BadStage1)
            );
            assert_eq!(
                refused(|c, _| c.ttbr0 = (TABLES_PADDR | 1).into()),
                Err(ImageError::BadStage1)
            );
            // A 64 KiB granule, a T0SZ out of range.
            assert_eq!(
                refused(|c, _| c.tcr = (c.tcr.get() | (1 << 14)).into()),
                Err(ImageError::BadStage1)
            );
            assert_eq!(
                refused(|c, _| c.tcr = (c.tcr.get() & !0x3f | 40).into()),
                Err(ImageError::BadStage1)
            );
            // A table descriptor naming a page outside the tables.
            assert_eq!(
                refused(|_, t| put(t, 1, 5, 0x4000_0000 | 0b11)),
                Err(ImageError::BadStage1)
            );
            // A table shared twice, and a cycle back to the root.
            assert_eq!(
                refused(|_, t| put(t, 1, 2, (TABLES_PADDR + 0x2000) | 0b11)),
                Err(ImageError::BadStage1)
            );
            assert_eq!(
                refused(|_, t| put(t, 1, 2, TABLES_PADDR | 0b11)),
                Err(ImageError::BadStage1)
            );
            // A level-3 entry that looks like a table descriptor is a page.
            assert_eq!(refused(|_, t| put(t, 2, 3, 0x7000_0000 | 0b11)), Ok(()));
        }

        #[test]
        fn a_stage1_section_needs_its_tables_and_a_page_offset() {
            let mut bytes = write_image(&board(), &with_stage1());
            let image = Image::parse(&bytes).unwrap();
            let index = |kind: SectionKind| {
                image.sections().iter().position(|s| s.kind.get() == kind as u32).unwrap()
            };
            let tables = index(SectionKind::Stage1Tables);
            let kind_at = |i: usize| HEADER_SIZE + i * SECTION_ENTRY_SIZE;
            // Without loads, blob and interrupts, renaming a stage-1
            // section to one of those kinds leaves the other one alone.
            let lone = |from: SectionKind, to: SectionKind| {
                let p = Parts { loads: vec![], blob: vec![], irqs: vec![], ..with_stage1() };
                let mut bytes = write_image(&board(), &p);
                let image = Image::parse(&bytes).unwrap();
                let i = image.sections().iter().position(|s| s.kind.get() == from as u32).unwrap();
                bytes[kind_at(i)..kind_at(i) + 4].copy_from_slice(&(to as u32).to_le_bytes());
                Image::parse(&bytes).map(|_| ())
            };
            assert_eq!(
                lone(SectionKind::Stage1Tables, SectionKind::Blob),
                Err(ImageError::BadStage1),
                "a config without tables"
            );
            assert_eq!(
                lone(SectionKind::Stage1, SectionKind::Irqs),
                Err(ImageError::BadStage1),
                "tables without a config"
            );
            // Tables moved by 8 bytes: still in bounds, no longer a page.
            let at = kind_at(tables) + 8;
            bytes[at..at + 8].copy_from_slice(&(STAGE1_TABLES_OFFSET + 8).to_le_bytes());
            let at = kind_at(tables) + 16;
            bytes[at..at + 8].copy_from_slice(&(2 * TABLE_PAGE).to_le_bytes());
            assert_eq!(Image::parse(&bytes).unwrap_err(), ImageError::BadStage1);
        }

        #[test]
        fn a_truncated_pd_array_is_a_bad_section_size() {
            let mut bytes = write_image(&board(), &parts());
            let image = Image::parse(&bytes).unwrap();
            let pds = image
                .sections()
                .iter()
                .position(|s| s.kind.get() == SectionKind::Pds as u32)
                .unwrap();
            let at = HEADER_SIZE + pds * SECTION_ENTRY_SIZE + 16;
            let size = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            bytes[at..at + 8].copy_from_slice(&(size - 1).to_le_bytes());
            assert_eq!(Image::parse(&bytes).map(|_| ()), Err(ImageError::BadSectionSize(3)));
        }
    }
}
