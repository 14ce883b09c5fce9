//! Shape of a stage-2 table for an IPA size, and the VTCR_EL2 that selects it.
//!
//! With a 4 KiB granule, up to 16 root tables may be concatenated so that a
//! walk starts one level lower (Arm ARM D8.2.7, "Concatenated translation
//! tables"). Tenure follows Linux: the start level is that of a stage-1 table
//! for `ipa_bits - 4` bits, but never below two levels of walk.
//!
//! | IPA bits | T0SZ | start | root                         |
//! |----------|------|-------|------------------------------|
//! | 32       | 32   | L2    | 4 concatenated tables        |
//! | 36       | 28   | L1    | 1 table, 64 entries          |
//! | 40       | 24   | L1    | 2 concatenated tables (8 KiB) |
//! | 42       | 22   | L1    | 8 concatenated tables        |
//! | 44       | 20   | L0    | 1 table, 32 entries          |

use crate::addr::{Ipa, PAGE_SIZE};
use crate::desc::{ENTRIES, LAST_LEVEL, level_shift};
use crate::error::{Error, Result};

/// Smallest IPA size supported (VTCR_EL2.T0SZ = 32).
pub const MIN_IPA_BITS: u8 = 32;
/// Largest IPA size supported: the PARange of Cortex-A72 (ID_AA64MMFR0_EL1
/// PARange = 0b0100).
pub const MAX_IPA_BITS: u8 = 44;
/// At most 16 root tables may be concatenated (Arm ARM D8.2.7).
pub const MAX_ROOT_PAGES: usize = 16;

/// Start level and root size of a stage-2 table for one IPA size.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Geometry {
    ipa_bits: u8,
    start_level: u8,
}

impl Geometry {
    /// The geometry Tenure uses on both boards: 40-bit IPA, start at level 1,
    /// two concatenated root tables.
    pub const IPA_40: Geometry = match Geometry::new(40) {
        Ok(g) => g,
        Err(_) => panic!("40-bit IPA is supported"),
    };

    /// The geometry for an IPA of `ipa_bits` bits; refused outside 32..=44.
    pub const fn new(ipa_bits: u8) -> Result<Self> {
        if ipa_bits < MIN_IPA_BITS || ipa_bits > MAX_IPA_BITS {
            return Err(Error::InvalidArgument);
        }
        // Levels a stage-1 walk of (ipa_bits - 4) bits needs, at least two.
        let bits_per_level = 9;
        let resolved = (ipa_bits - 4) as u32 - level_shift(LAST_LEVEL);
        let mut levels = resolved.div_ceil(bits_per_level) as u8;
        if levels < 2 {
            levels = 2;
        }
        let g = Geometry { ipa_bits, start_level: LAST_LEVEL + 1 - levels };
        if g.root_pages() > MAX_ROOT_PAGES {
            return Err(Error::InvalidArgument);
        }
        Ok(g)
    }

    /// IPA size in bits.
    #[must_use]
    pub const fn ipa_bits(self) -> u8 {
        self.ipa_bits
    }

    /// First IPA past the address space.
    #[must_use]
    pub const fn ipa_limit(self) -> u64 {
        1 << self.ipa_bits
    }

    /// Level the walk starts at.
    #[must_use]
    pub const fn start_level(self) -> u8 {
        self.start_level
    }

    /// Number of entries in the (possibly concatenated) root.
    #[must_use]
    pub const fn root_entries(self) -> usize {
        1 << (self.ipa_bits as u32 - level_shift(self.start_level))
    }

    /// Number of 4 KiB pages the root occupies; the root must be aligned to
    /// its total size.
    #[must_use]
    pub const fn root_pages(self) -> usize {
        let n = self.root_entries().div_ceil(ENTRIES);
        if n == 0 { 1 } else { n }
    }

    /// Bytes the root occupies (and its required alignment).
    #[must_use]
    pub const fn root_bytes(self) -> u64 {
        self.root_pages() as u64 * PAGE_SIZE
    }

    /// Index of `ipa` in a table at `level` (in the root, across the
    /// concatenated pages).
    #[must_use]
    pub const fn index(self, ipa: Ipa, level: u8) -> usize {
        let entries = if level == self.start_level { self.root_entries() } else { ENTRIES };
        ((ipa.raw() >> level_shift(level)) as usize) & (entries - 1)
    }
}

/// Physical address size, as ID_AA64MMFR0_EL1.PARange and VTCR_EL2.PS encode it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PaRange(u8);

impl PaRange {
    /// The encodings 0..=6 and the sizes they stand for (Arm ARM D19.2.64).
    const BITS: [u8; 7] = [32, 36, 40, 42, 44, 48, 52];

    /// The range for `bits` physical address bits, if it is one of the
    /// architected sizes.
    pub fn from_bits(bits: u8) -> Result<Self> {
        Self::BITS
            .iter()
            .position(|&b| b == bits)
            .map(|i| PaRange(i as u8))
            .ok_or(Error::InvalidArgument)
    }

    /// Decodes ID_AA64MMFR0_EL1.PARange.
    pub fn from_encoding(parange: u8) -> Result<Self> {
        if (parange as usize) < Self::BITS.len() {
            Ok(PaRange(parange))
        } else {
            Err(Error::InvalidArgument)
        }
    }

    /// Address bits.
    #[must_use]
    pub fn bits(self) -> u8 {
        Self::BITS[self.0 as usize]
    }

    /// The PARange / PS field encoding.
    #[must_use]
    pub fn encoding(self) -> u8 {
        self.0
    }
}

/// Builds the VTCR_EL2 value for a stage-2 geometry on a CPU with a given
/// PARange: 4 KiB granule, inner-shareable write-back walks, 8-bit VMIDs,
/// no hardware access-flag or dirty management (ARMv8.0).
#[derive(Clone, Copy, Debug)]
pub struct VtcrBuilder {
    geometry: Geometry,
    pa_range: PaRange,
}

impl VtcrBuilder {
    /// RES1 bit 31 of VTCR_EL2.
    const RES1: u64 = 1 << 31;
    /// SH0 = inner shareable, ORGN0 = IRGN0 = write-back read/write-allocate.
    const WALK_ATTRS: u64 = (0b11 << 12) | (0b01 << 10) | (0b01 << 8);

    /// Starts from a geometry and the CPU's physical address range.
    #[must_use]
    pub fn new(geometry: Geometry, pa_range: PaRange) -> Self {
        VtcrBuilder { geometry, pa_range }
    }

    /// The register value; refused if the IPA is wider than the PA range
    /// (Arm ARM: a T0SZ implying more than PS bits is a configuration
    /// error on ARMv8.0).
    pub fn build(self) -> Result<u64> {
        if self.geometry.ipa_bits > self.pa_range.bits() {
            return Err(Error::InvalidArgument);
        }
        let t0sz = 64 - self.geometry.ipa_bits as u64;
        let sl0 = 2 - self.geometry.start_level as u64;
        let ps = self.pa_range.encoding() as u64;
        Ok(Self::RES1 | (ps << 16) | Self::WALK_ATTRS | (sl0 << 6) | t0sz)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_reproduces_the_concatenation_table() {
        let expect =
            [(32, 2, 4, 2048), (36, 1, 1, 64), (40, 1, 2, 1024), (42, 1, 8, 4096), (44, 0, 1, 32)];
        for (bits, level, pages, entries) in expect {
            let g = Geometry::new(bits).unwrap();
            assert_eq!(g.start_level(), level, "{bits}-bit start level");
            assert_eq!(g.root_pages(), pages, "{bits}-bit root pages");
            assert_eq!(g.root_entries(), entries, "{bits}-bit root entries");
        }
        assert_eq!(Geometry::IPA_40.root_bytes(), 8192);
    }

    #[test]
    fn every_supported_ipa_size_fits_sixteen_root_pages() {
        for bits in MIN_IPA_BITS..=MAX_IPA_BITS {
            let g = Geometry::new(bits).unwrap();
            assert!(g.root_pages() <= MAX_ROOT_PAGES);
            assert_eq!(g.root_entries() as u64 * (1 << level_shift(g.start_level())), 1 << bits);
        }
    }

    #[test]
    fn unsupported_ipa_sizes_are_refused() {
        assert_eq!(Geometry::new(31), Err(Error::InvalidArgument));
        assert_eq!(Geometry::new(45), Err(Error::InvalidArgument));
    }

    #[test]
    fn vtcr_for_40_bit_ipa_on_a72() {
        let vtcr =
            VtcrBuilder::new(Geometry::IPA_40, PaRange::from_encoding(4).unwrap()).build().unwrap();
        assert_eq!(vtcr & 0x3f, 24, "T0SZ");
        assert_eq!((vtcr >> 6) & 3, 1, "SL0 = start at level 1");
        assert_eq!((vtcr >> 8) & 3, 1, "IRGN0 write-back");
        assert_eq!((vtcr >> 10) & 3, 1, "ORGN0 write-back");
        assert_eq!((vtcr >> 12) & 3, 3, "SH0 inner shareable");
        assert_eq!((vtcr >> 14) & 3, 0, "TG0 4 KiB");
        assert_eq!((vtcr >> 16) & 7, 4, "PS 44 bits");
        assert_ne!(vtcr & (1 << 31), 0, "RES1");
        assert_eq!(vtcr, 0x8004_3558);
    }

    #[test]
    fn vtcr_refuses_ipa_wider_than_pa_range() {
        let a53 = PaRange::from_bits(40).unwrap();
        assert!(VtcrBuilder::new(Geometry::IPA_40, a53).build().is_ok());
        assert_eq!(
            VtcrBuilder::new(Geometry::new(42).unwrap(), a53).build(),
            Err(Error::InvalidArgument)
        );
        assert_eq!(PaRange::from_encoding(7), Err(Error::InvalidArgument));
        assert_eq!(PaRange::from_bits(41), Err(Error::InvalidArgument));
    }

    #[test]
    fn root_index_spans_concatenated_pages() {
        let g = Geometry::IPA_40;
        assert_eq!(g.index(Ipa::new(0), 1), 0);
        assert_eq!(g.index(Ipa::new(513 << 30), 1), 513);
        assert_eq!(g.index(Ipa::new((1 << 40) - 1), 1), 1023);
        assert_eq!(g.index(Ipa::new(0x4020_3000), 2), 1);
        assert_eq!(g.index(Ipa::new(0x4020_3000), 3), 3);
    }
}
