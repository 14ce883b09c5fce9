//! Stage-2 descriptors: tables, blocks, pages and annotated invalid entries.
//!
//! Layout (Arm ARM D8.3, VMSAv8-64 descriptor formats, 4 KiB granule):
//!
//! ```text
//!  valid leaf (block at L1/L2: bits[1:0]=01, page at L3: 11)
//!  63    59 58   55 54 53 52 51 50 48 47            12 11 10  9 8  7 6  5    2 1 0
//!  [ignored][ SW  ][ XN ][C ][DBM][ 0 ][ output addr ][ 0][AF][ SH ][S2AP][MemAttr][T V]
//!
//!  table (L0..L2: bits[1:0]=11): next-level table address in [47:12]
//!
//!  invalid (bit 0 = 0): every other bit is ignored by hardware; Tenure keeps
//!  an annotation there:
//!  63                                  17 16             1 0
//!  [            metadata (47 bits)      ][ owner (16 bits)][0]
//! ```
//!
//! Software bits [58:55] of a valid leaf hold the page state (see
//! [`crate::owner`]). An all-zero entry is the annotation "owner 0, no
//! metadata": the default owner holds the whole span of the entry.

use crate::addr::{PAGE_SHIFT, PhysAddr};
use crate::error::{Error, Result};
use bitflags::bitflags;

/// Translation levels 0..=3 of the 4 KiB granule.
pub const LEVELS: u8 = 4;
/// Descriptors per table page.
pub const ENTRIES: usize = 512;
/// The last level, where leaves are pages.
pub const LAST_LEVEL: u8 = 3;
/// The first level at which a 4 KiB-granule stage-2 table may hold a block
/// (1 GiB at level 1; Arm ARM D8.2.6: no level-0 blocks without LPA2).
pub const FIRST_BLOCK_LEVEL: u8 = 1;

const VALID: u64 = 1 << 0;
const TABLE_OR_PAGE: u64 = 1 << 1;
const MEMATTR_SHIFT: u32 = 2;
const MEMATTR_MASK: u64 = 0xf << MEMATTR_SHIFT;
/// MemAttr[3:0] for Normal, outer and inner write-back cacheable.
const MEMATTR_NORMAL_WB: u64 = 0xf;
/// MemAttr[3:0] for Device-nGnRE.
const MEMATTR_DEVICE_NGNRE: u64 = 0x1;
const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const CONTIGUOUS: u64 = 1 << 52;
/// XN[1:0] = 0b10: not executable at EL1 or EL0 (with or without FEAT_XNX).
const XN_NONE: u64 = 0b10 << 53;
const XN_MASK: u64 = 0b11 << 53;
const SW_SHIFT: u32 = 55;
const SW_MASK: u64 = 0xf << SW_SHIFT;
/// Output address bits [47:12].
const OA_MASK: u64 = 0x0000_ffff_ffff_f000;
/// Bits that only grant or remove access: changing them needs no
/// break-before-make (Arm ARM D8.16.1).
const PERM_MASK: u64 = S2AP_R | S2AP_W | XN_MASK;

const OWNER_SHIFT: u32 = 1;
const OWNER_BITS: u32 = 16;
const META_SHIFT: u32 = OWNER_SHIFT + OWNER_BITS;
/// Width of an annotation's metadata field.
pub const META_BITS: u32 = 64 - META_SHIFT;

/// log2 of the bytes one entry at `level` spans.
#[must_use]
pub const fn level_shift(level: u8) -> u32 {
    PAGE_SHIFT + 9 * (LAST_LEVEL - level) as u32
}

/// Bytes one entry at `level` spans: 512 GiB, 1 GiB, 2 MiB or 4 KiB.
#[must_use]
pub const fn level_size(level: u8) -> u64 {
    1 << level_shift(level)
}

bitflags! {
    /// Access and memory type of a valid leaf.
    #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
    pub struct Prot: u8 {
        /// Readable (S2AP bit 6).
        const R = 1 << 0;
        /// Writable (S2AP bit 7).
        const W = 1 << 1;
        /// Executable (XN = 0b00).
        const X = 1 << 2;
        /// Device-nGnRE instead of Normal write-back memory; never executable.
        const DEVICE = 1 << 3;
    }
}

impl Prot {
    /// Read, write and execute Normal memory.
    pub const RWX: Prot = Prot::R.union(Prot::W).union(Prot::X);
    /// Read and write Normal memory.
    pub const RW: Prot = Prot::R.union(Prot::W);
    /// Read and write device memory.
    pub const DEVICE_RW: Prot = Prot::DEVICE.union(Prot::RW);

    /// Refuses combinations the hardware cannot express safely: executable
    /// device memory (Linux refuses it too) and a leaf with no access at all
    /// (that is an unmap, not a mapping).
    pub fn validate(self) -> Result<Self> {
        if self.contains(Prot::DEVICE | Prot::X) || !self.intersects(Prot::RWX) {
            return Err(Error::InvalidArgument);
        }
        Ok(self)
    }
}

/// An owner id: 0 is the default owner; guests and PDs have their own ids.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct OwnerId(pub u16);

impl OwnerId {
    /// The default owner: holds everything an all-zero table covers.
    pub const DEFAULT: OwnerId = OwnerId(0);
}

/// The contents of an invalid descriptor: an owner and 47 bits of metadata.
///
/// Owner 0 carries no metadata, so the only annotation naming the default
/// owner is the all-zero entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
pub struct Annotation(u64);

impl Annotation {
    /// The all-zero annotation: the default owner holds the span.
    pub const DEFAULT: Annotation = Annotation(0);

    /// An annotation for `owner` with `meta`; refused if `meta` needs more
    /// than [`META_BITS`] bits or names the default owner with metadata.
    pub const fn new(owner: OwnerId, meta: u64) -> Result<Self> {
        if meta >> META_BITS != 0 || (owner.0 == 0 && meta != 0) {
            return Err(Error::InvalidArgument);
        }
        Ok(Self(((owner.0 as u64) << OWNER_SHIFT) | (meta << META_SHIFT)))
    }

    /// Reads a raw invalid-descriptor value; refused if bit 0 (valid) is set
    /// or it names the default owner with metadata.
    pub const fn from_raw(raw: u64) -> Result<Self> {
        if raw & VALID != 0 {
            return Err(Error::InvalidArgument);
        }
        Self::new(
            OwnerId(((raw >> OWNER_SHIFT) & ((1 << OWNER_BITS) - 1)) as u16),
            raw >> META_SHIFT,
        )
    }

    /// The owner recorded in the entry.
    #[must_use]
    pub const fn owner(self) -> OwnerId {
        OwnerId(((self.0 >> OWNER_SHIFT) & ((1 << OWNER_BITS) - 1)) as u16)
    }

    /// The metadata recorded in the entry.
    #[must_use]
    pub const fn meta(self) -> u64 {
        self.0 >> META_SHIFT
    }

    /// The descriptor value.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The annotation `pages` pages further along a run whose metadata
    /// counts up by one per page (a reverse map); the caller has checked
    /// that the metadata does not overflow.
    #[must_use]
    pub(crate) const fn nth(self, pages: u64) -> Annotation {
        Annotation(self.0 + (pages << META_SHIFT))
    }

    /// Whether this is the all-zero default annotation.
    #[must_use]
    pub const fn is_default(self) -> bool {
        self.0 == 0
    }
}

/// A raw stage-2 descriptor. Its meaning depends on the level it sits at.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Pte(pub u64);

impl core::fmt::Debug for Pte {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Pte({:#018x})", self.0)
    }
}

impl Pte {
    /// The all-zero entry (owner 0).
    pub const ZERO: Pte = Pte(0);

    /// A table descriptor pointing at the next-level table `next`.
    #[must_use]
    pub const fn table(next: PhysAddr) -> Self {
        Pte((next.raw() & OA_MASK) | TABLE_OR_PAGE | VALID)
    }

    /// A valid leaf at `level` mapping `pa` (aligned to the level) with
    /// `prot` and software state `sw` (4 bits).
    #[must_use]
    pub const fn leaf(level: u8, pa: PhysAddr, prot: Prot, sw: u8) -> Self {
        let kind = if level == LAST_LEVEL { TABLE_OR_PAGE | VALID } else { VALID };
        let attr =
            if prot.contains(Prot::DEVICE) { MEMATTR_DEVICE_NGNRE } else { MEMATTR_NORMAL_WB };
        let bits = kind | (attr << MEMATTR_SHIFT) | SH_INNER | AF | (pa.raw() & OA_MASK);
        Pte(bits | ((sw as u64 & 0xf) << SW_SHIFT)).with_prot(prot)
    }

    /// An invalid entry holding `annotation`.
    #[must_use]
    pub const fn annotated(annotation: Annotation) -> Self {
        Pte(annotation.raw())
    }

    /// Whether bit 0 (valid) is set.
    #[must_use]
    pub const fn is_valid(self) -> bool {
        self.0 & VALID != 0
    }

    /// Whether the entry is zero: no mapping, owner 0.
    #[must_use]
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Whether the entry counts towards its table's refcount: any non-zero
    /// entry, valid or annotated.
    #[must_use]
    pub const fn is_counted(self) -> bool {
        self.0 != 0
    }

    /// Whether the entry points at a next-level table.
    #[must_use]
    pub const fn is_table(self, level: u8) -> bool {
        level < LAST_LEVEL && self.0 & (VALID | TABLE_OR_PAGE) == (VALID | TABLE_OR_PAGE)
    }

    /// Whether the entry is a valid block or page.
    #[must_use]
    pub const fn is_leaf(self, level: u8) -> bool {
        self.is_valid() && !self.is_table(level)
    }

    /// The annotation of an invalid entry, or `None` for a valid one.
    #[must_use]
    pub const fn annotation(self) -> Option<Annotation> {
        if self.is_valid() { None } else { Some(Annotation(self.0)) }
    }

    /// Output address: the next table, or the first byte a leaf maps.
    #[must_use]
    pub const fn addr(self) -> PhysAddr {
        PhysAddr::new(self.0 & OA_MASK)
    }

    /// Access and memory type of a valid leaf.
    #[must_use]
    pub const fn prot(self) -> Prot {
        let mut bits = 0;
        if self.0 & S2AP_R != 0 {
            bits |= Prot::R.bits();
        }
        if self.0 & S2AP_W != 0 {
            bits |= Prot::W.bits();
        }
        if self.0 & XN_MASK == 0 {
            bits |= Prot::X.bits();
        }
        if (self.0 & MEMATTR_MASK) >> MEMATTR_SHIFT == MEMATTR_DEVICE_NGNRE {
            bits |= Prot::DEVICE.bits();
        }
        Prot::from_bits_truncate(bits)
    }

    /// Software bits [58:55] of a valid leaf.
    #[must_use]
    pub const fn sw(self) -> u8 {
        ((self.0 & SW_MASK) >> SW_SHIFT) as u8
    }

    /// The same leaf with software bits `sw`.
    #[must_use]
    pub const fn with_sw(self, sw: u8) -> Self {
        Pte((self.0 & !SW_MASK) | ((sw as u64 & 0xf) << SW_SHIFT))
    }

    /// The same leaf with access `prot` (memory type unchanged).
    #[must_use]
    pub const fn with_prot(self, prot: Prot) -> Self {
        let mut bits = self.0 & !PERM_MASK;
        if prot.contains(Prot::R) {
            bits |= S2AP_R;
        }
        if prot.contains(Prot::W) {
            bits |= S2AP_W;
        }
        if !prot.contains(Prot::X) {
            bits |= XN_NONE;
        }
        Pte(bits)
    }

    /// Whether the contiguous hint is set (Tenure never sets it; tests
    /// check it stays clear).
    #[must_use]
    pub const fn is_contiguous(self) -> bool {
        self.0 & CONTIGUOUS != 0
    }

    /// How replacing `self` by `new` at the same level must be done.
    #[must_use]
    pub fn change(self, new: Pte, level: u8) -> Change {
        if self == new {
            return Change::None;
        }
        if !self.is_valid() {
            return Change::Install;
        }
        if !new.is_valid() {
            return Change::Remove;
        }
        if self.is_table(level) || new.is_table(level) {
            return Change::BreakBeforeMake;
        }
        let diff = self.0 ^ new.0;
        if diff & !(PERM_MASK | SW_MASK) != 0 {
            return Change::BreakBeforeMake;
        }
        if diff & PERM_MASK == 0 {
            return Change::Software;
        }
        if new.prot().contains(self.prot()) { Change::Relax } else { Change::Restrict }
    }

    /// For a valid leaf, the page-level leaf for the page `offset` bytes
    /// into it (same attributes); an invalid entry is returned unchanged.
    #[must_use]
    pub const fn page_at(self, offset: u64) -> Pte {
        if !self.is_valid() {
            return self;
        }
        let pa = (self.addr().raw() + offset) & !(crate::addr::PAGE_SIZE - 1);
        self.moved(LAST_LEVEL, PhysAddr::new(pa))
    }

    /// The same leaf attributes mapping `pa` at `level` (a block at levels
    /// 1 and 2, a page at level 3).
    #[must_use]
    #[inline]
    pub const fn moved(self, level: u8, pa: PhysAddr) -> Pte {
        let kind = if level == LAST_LEVEL { TABLE_OR_PAGE | VALID } else { VALID };
        Pte((self.0 & !(OA_MASK | VALID | TABLE_OR_PAGE)) | kind | (pa.raw() & OA_MASK))
    }

    /// The entry that `self` (a block or annotation at `level`) becomes at
    /// `level + 1`, index `index`, when it is split into a table.
    #[must_use]
    pub const fn split_child(self, level: u8, index: usize) -> Pte {
        if !self.is_valid() {
            return self;
        }
        let child = level + 1;
        self.moved(child, PhysAddr::new(self.addr().raw() + index as u64 * level_size(child)))
    }
}

/// The kind of update a descriptor write is, which decides the TLB
/// maintenance around it (Arm ARM D8.16.1, break-before-make).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Change {
    /// Nothing changes.
    None,
    /// Invalid to anything: no TLB entry can exist for the old value.
    Install,
    /// Valid to invalid: write, then invalidate.
    Remove,
    /// Only software bits change: hardware ignores them.
    Software,
    /// Access only grows: in place, local invalidation.
    Relax,
    /// Access shrinks: write, then broadcast invalidation.
    Restrict,
    /// Address, memory type, size or table/leaf changes: break-before-make.
    BreakBeforeMake,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_leaf_has_af_inner_shareable_write_back() {
        let pte = Pte::leaf(3, PhysAddr::new(0x4000_1000), Prot::RW, 0);
        assert_eq!(pte.0 & 0b11, 0b11, "L3 leaves use type 11");
        assert_ne!(pte.0 & AF, 0);
        assert_eq!(pte.0 & SH_INNER, SH_INNER);
        assert_eq!((pte.0 & MEMATTR_MASK) >> MEMATTR_SHIFT, 0xf);
        assert_eq!(pte.0 & XN_MASK, XN_NONE);
        assert_eq!(pte.addr(), PhysAddr::new(0x4000_1000));
        assert_eq!(pte.prot(), Prot::RW);
        assert!(!pte.is_contiguous());
    }

    #[test]
    fn device_leaf_is_ngnre_and_never_executable() {
        let pte = Pte::leaf(2, PhysAddr::new(0x0900_0000 & !0x1f_ffff), Prot::DEVICE_RW, 0);
        assert_eq!(pte.0 & 0b11, 0b01, "L2 blocks use type 01");
        assert_eq!((pte.0 & MEMATTR_MASK) >> MEMATTR_SHIFT, 0x1);
        assert_eq!(pte.0 & XN_MASK, XN_NONE);
        assert_eq!(pte.prot(), Prot::DEVICE_RW);
    }

    #[test]
    fn executable_device_and_no_access_prots_are_refused() {
        assert_eq!((Prot::DEVICE | Prot::RWX).validate(), Err(Error::InvalidArgument));
        assert_eq!(Prot::empty().validate(), Err(Error::InvalidArgument));
        assert_eq!(Prot::RWX.validate(), Ok(Prot::RWX));
    }

    #[test]
    fn annotation_round_trips_owner_and_meta() {
        let a = Annotation::new(OwnerId(0xbeef), (1 << META_BITS) - 1).unwrap();
        let pte = Pte::annotated(a);
        assert!(!pte.is_valid());
        assert_eq!(pte.annotation(), Some(a));
        assert_eq!(a.owner(), OwnerId(0xbeef));
        assert_eq!(a.meta(), (1 << META_BITS) - 1);
        assert_eq!(Annotation::from_raw(a.raw()), Ok(a));
    }

    #[test]
    fn annotation_with_meta_overflow_or_bit0_is_refused() {
        assert_eq!(Annotation::new(OwnerId(1), 1 << META_BITS), Err(Error::InvalidArgument));
        assert_eq!(Annotation::from_raw(0x3), Err(Error::InvalidArgument));
        assert_eq!(Annotation::new(OwnerId::DEFAULT, 5), Err(Error::InvalidArgument));
        assert!(Annotation::new(OwnerId::DEFAULT, 0).unwrap().is_default());
    }

    #[test]
    fn split_child_of_a_block_maps_the_matching_sub_range() {
        let block = Pte::leaf(2, PhysAddr::new(0x4020_0000), Prot::RW, 1);
        let child = block.split_child(2, 7);
        assert!(child.is_leaf(3));
        assert_eq!(child.0 & 0b11, 0b11);
        assert_eq!(child.addr(), PhysAddr::new(0x4020_7000));
        assert_eq!(child.prot(), Prot::RW);
        assert_eq!(child.sw(), 1);
        let l1 = Pte::leaf(1, PhysAddr::new(0x4000_0000), Prot::RWX, 0);
        let l2 = l1.split_child(1, 3);
        assert_eq!(l2.0 & 0b11, 0b01);
        assert_eq!(l2.addr(), PhysAddr::new(0x4060_0000));
        let ann = Pte::annotated(Annotation::new(OwnerId(3), 9).unwrap());
        assert_eq!(ann.split_child(1, 100), ann);
    }

    #[test]
    fn change_classifies_every_kind_of_update() {
        let a = Pte::leaf(3, PhysAddr::new(0x1000), Prot::R, 0);
        assert_eq!(a.change(a, 3), Change::None);
        assert_eq!(Pte::ZERO.change(a, 3), Change::Install);
        assert_eq!(a.change(Pte::ZERO, 3), Change::Remove);
        assert_eq!(a.change(a.with_sw(2), 3), Change::Software);
        assert_eq!(a.change(a.with_prot(Prot::RW), 3), Change::Relax);
        assert_eq!(a.with_prot(Prot::RWX).change(a, 3), Change::Restrict);
        let moved = Pte::leaf(3, PhysAddr::new(0x2000), Prot::R, 0);
        assert_eq!(a.change(moved, 3), Change::BreakBeforeMake);
        let dev = Pte::leaf(3, PhysAddr::new(0x1000), Prot::DEVICE | Prot::R, 0);
        assert_eq!(a.change(dev, 3), Change::BreakBeforeMake);
        let block = Pte::leaf(2, PhysAddr::new(0), Prot::R, 0);
        let table = Pte::table(PhysAddr::new(0x5000));
        assert_eq!(block.change(table, 2), Change::BreakBeforeMake);
    }
}
