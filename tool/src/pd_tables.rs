//! PD address spaces, built offline: each PD's stage-2 table is made with
//! hyp-mm in a block of table memory whose pages go into the boot image,
//! so the kernel only installs roots.

use hyp_mm::host::Arena;
use hyp_mm::{
    Geometry, Ipa, IpaRange, Mapping, MemCache, PAGE_SIZE, PhysAddr, Prot, Stage2, TableKind, VmId,
};
use std::fmt;

/// Why a PD's address space could not be built.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TableError {
    /// The table area is full.
    OutOfTableMemory,
    /// A mapping is malformed (misaligned, outside the IPA space, or
    /// overlapping one already made).
    BadMapping {
        /// First IPA of the mapping.
        ipa: u64,
        /// Why hyp-mm refused it.
        why: hyp_mm::Error,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::OutOfTableMemory => write!(f, "the PD table area is full"),
            TableError::BadMapping { ipa, why } => write!(f, "cannot map {ipa:#x}: {why}"),
        }
    }
}

/// A block of physical memory holding PD stage-2 tables.
pub struct TableArea {
    arena: Arena,
    cache: MemCache,
}

impl TableArea {
    /// An empty area of `pages` pages at `base` (aligned for a root).
    #[must_use]
    pub fn new(base: PhysAddr, pages: usize) -> Self {
        let mut arena = Arena::new(base, pages);
        arena.record_tlb = false;
        TableArea { arena, cache: MemCache::new() }
    }

    /// A new, empty address space with VMID `vmid`.
    pub fn new_space(&mut self, vmid: VmId) -> Result<Stage2, TableError> {
        let g = Geometry::IPA_40;
        let root =
            self.arena.alloc_contiguous(g.root_pages()).ok_or(TableError::OutOfTableMemory)?;
        Stage2::new(g, root, vmid, TableKind::Component).map_err(|_| TableError::OutOfTableMemory)
    }

    /// Maps `size` bytes at `ipa` in `space` to physical memory at `pa`,
    /// with the largest blocks alignment allows. The range must be empty.
    pub fn map(
        &mut self,
        space: &mut Stage2,
        ipa: u64,
        pa: u64,
        size: u64,
        prot: Prot,
    ) -> Result<(), TableError> {
        let bad = |why| TableError::BadMapping { ipa, why };
        let range =
            IpaRange::new(Ipa::new(ipa), size).ok_or(bad(hyp_mm::Error::InvalidArgument))?;
        let occupied = space.next_leaf(&self.arena, range.start(), range.end()).is_some();
        if occupied {
            return Err(bad(hyp_mm::Error::Exists));
        }
        let update = hyp_mm::Update::Map { pa: PhysAddr::new(pa), mapping: Mapping::new(prot) };
        let needed = space.pages_needed(&self.arena, range, update).map_err(bad)?;
        self.cache.topup(&mut self.arena, needed).map_err(|_| TableError::OutOfTableMemory)?;
        space.update(&mut self.arena, &mut self.cache, range, update).map_err(bad)
    }

    /// The table memory in use, from the base, as the image carries it.
    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        let pages = self.arena.high_water();
        let base = self.base();
        (0..pages as u64)
            .flat_map(|p| self.arena.page_words(base.add(p * PAGE_SIZE)).to_vec())
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    /// Where the area starts.
    #[must_use]
    pub fn base(&self) -> PhysAddr {
        self.arena.base()
    }

    /// The translation of `ipa` in `space`: the PA and access, if mapped.
    #[must_use]
    pub fn translate(&self, space: &Stage2, ipa: u64) -> Option<(u64, Prot)> {
        let pte = space.page(&self.arena, Ipa::new(ipa & !(PAGE_SIZE - 1))).ok()?;
        pte.is_valid().then(|| (pte.addr().raw() + (ipa & (PAGE_SIZE - 1)), pte.prot()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pd_space_translates_what_was_mapped_and_nothing_else() {
        let mut area = TableArea::new(PhysAddr::new(0x4800_0000), 64);
        let mut pd = area.new_space(VmId(3)).unwrap();
        area.map(&mut pd, 0x20_0000, 0x4100_0000, 0x3000, Prot::R | Prot::X).unwrap();
        area.map(&mut pd, 0x90_0000, 0x0900_0000, 0x1000, Prot::DEVICE_RW).unwrap();
        assert_eq!(area.translate(&pd, 0x20_1234), Some((0x4100_1234, Prot::R | Prot::X)));
        assert_eq!(area.translate(&pd, 0x90_0008), Some((0x0900_0008, Prot::DEVICE_RW)));
        assert_eq!(area.translate(&pd, 0x20_3000), None);
        assert_eq!(pd.root(), PhysAddr::new(0x4800_0000));
    }

    #[test]
    fn overlapping_mappings_are_refused() {
        let mut area = TableArea::new(PhysAddr::new(0x4800_0000), 64);
        let mut pd = area.new_space(VmId(1)).unwrap();
        area.map(&mut pd, 0x20_0000, 0x4100_0000, 0x2000, Prot::RW).unwrap();
        let err = area.map(&mut pd, 0x20_1000, 0x4200_0000, 0x1000, Prot::RW).unwrap_err();
        assert_eq!(err, TableError::BadMapping { ipa: 0x20_1000, why: hyp_mm::Error::Exists });
    }

    #[test]
    fn the_image_bytes_hold_the_roots_and_tables_in_use() {
        let mut area = TableArea::new(PhysAddr::new(0x4800_0000), 64);
        let mut a = area.new_space(VmId(1)).unwrap();
        area.map(&mut a, 0x20_0000, 0x4100_0000, 0x1000, Prot::RW).unwrap();
        // Root (2 pages) + level-2 + level-3 tables.
        let bytes = area.bytes();
        assert_eq!(bytes.len(), 4 * 4096);
        let root_entry = u64::from_le_bytes(bytes[0..8].try_into().unwrap());
        assert_eq!(root_entry & 0b11, 0b11, "the root's first entry is a table descriptor");
    }

    #[test]
    fn a_full_area_is_reported() {
        let mut area = TableArea::new(PhysAddr::new(0x4800_0000), 3);
        let mut a = area.new_space(VmId(1)).unwrap();
        assert_eq!(
            area.map(&mut a, 0x20_0000, 0x4100_0000, 0x1000, Prot::RW),
            Err(TableError::OutOfTableMemory)
        );
    }
}
