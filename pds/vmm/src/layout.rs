//! The guest's physical address space as the VMM sees it: its RAM, the
//! devices it emulates, the devices passed through, and where guest RAM
//! appears in the VMM's own window.
//!
//! ```text
//! guest IPA space (the test guest's, QEMU virt's map)
//! 0x0800_0000  GIC distributor   emulated: reads as zero, writes ignored
//! 0x0801_0000  GIC CPU interface passed through (mm maps GICV on fault)
//! 0x0900_0000  PL011             emulated (src/pl011.rs)
//! 0x4000_0000  RAM               mm populates on fault; the image and DTB
//!   ...                          are donated from the VMM's window
//! anything else                  an abort injected into the guest
//!
//! VMM address space
//! window + (ipa - RAM base)      guest RAM page at ipa: written there while
//!                                loading, then donated; mapped again there
//!                                while the guest shares it
//! ```

use tenure_abi::mm::{GuestId, IPA_LIMIT, PAGE_SIZE};
use tenure_abi::vcpu::{WINDOW_IPA, WINDOW_SIZE};

use crate::pl011;

/// Most passthrough device ranges a guest has.
pub const MAX_PASSTHROUGH: usize = 4;
/// Bytes of the GIC distributor's register block (GICv2: 4 KiB, Arm IHI
/// 0048B 4.1.2).
pub const GICD_SIZE: u64 = 0x1000;
/// The alignment the arm64 boot protocol wants of RAM's base: the kernel
/// goes at a 2 MiB aligned base plus `text_offset` (Linux
/// `Documentation/arch/arm64/booting.rst`, section 4).
pub const RAM_ALIGN: u64 = 2 << 20;

/// A range of IPAs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Range {
    /// First IPA.
    pub start: u64,
    /// Bytes.
    pub size: u64,
}

impl Range {
    /// The first IPA past the range (saturating, for unchecked ranges).
    #[must_use]
    pub const fn end(self) -> u64 {
        self.start.saturating_add(self.size)
    }

    /// Whether `addr` lies in the range.
    #[must_use]
    pub const fn contains(self, addr: u64) -> bool {
        addr >= self.start && addr - self.start < self.size
    }

    /// Whether `bytes` bytes from `addr` lie in the range.
    #[must_use]
    pub const fn contains_span(self, addr: u64, bytes: u64) -> bool {
        self.contains(addr) && bytes <= self.size - (addr - self.start)
    }

    const fn overlaps(self, other: Range) -> bool {
        self.start < other.end() && other.start < self.end()
    }
}

/// Which part of the address space an IPA lies in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Region {
    /// Guest RAM.
    Ram,
    /// The emulated PL011, at this offset into it.
    Pl011(u64),
    /// The GIC distributor, at this offset into it.
    GicDistributor(u64),
    /// A passthrough device range.
    Passthrough(Range),
    /// Nothing: no RAM and no device.
    Outside,
}

/// Why a layout cannot be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LayoutError {
    /// RAM is empty, not 2 MiB aligned, not a whole number of pages or
    /// beyond the IPA space.
    BadRam,
    /// A device range is empty, not page aligned or beyond the IPA space.
    BadDevice,
    /// Two ranges overlap.
    Overlap,
    /// Guest RAM's view in the VMM's window is not page aligned or does
    /// not fit in the window.
    BadWindow,
}

/// The guest's address space.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Layout {
    /// The guest, as the mm protocol names it.
    pub guest: GuestId,
    /// Guest RAM.
    pub ram: Range,
    /// Base of the emulated PL011 ([`pl011::SIZE`] bytes).
    pub pl011: u64,
    /// Base of the GIC distributor ([`GICD_SIZE`] bytes), if the guest has
    /// one.
    pub gic_distributor: Option<u64>,
    /// Device ranges mm maps on fault (`MapDevice`), as system.xml
    /// declares them for the guest.
    pub passthrough: [Option<Range>; MAX_PASSTHROUGH],
    /// The IPA in the VMM's window at which RAM's first byte appears.
    pub window: u64,
}

impl Layout {
    /// Checks the layout: aligned ranges inside the IPA space, none
    /// overlapping, and RAM's view inside the VMM's window.
    pub fn check(&self) -> Result<(), LayoutError> {
        let page_aligned =
            |r: Range| r.start.is_multiple_of(PAGE_SIZE) && r.size.is_multiple_of(PAGE_SIZE);
        let inside =
            |r: Range| r.size > 0 && r.start.checked_add(r.size).is_some_and(|e| e <= IPA_LIMIT);
        if !inside(self.ram) || !page_aligned(self.ram) || !self.ram.start.is_multiple_of(RAM_ALIGN)
        {
            return Err(LayoutError::BadRam);
        }
        let mut devices = [None; MAX_PASSTHROUGH + 2];
        devices[0] = Some(Range { start: self.pl011, size: pl011::SIZE });
        devices[1] = self.gic_distributor.map(|start| Range { start, size: GICD_SIZE });
        devices[2..].copy_from_slice(&self.passthrough);
        // RAM, then each device checked against everything before it.
        let mut seen = [self.ram; MAX_PASSTHROUGH + 3];
        for (n, d) in devices.into_iter().flatten().enumerate() {
            if !inside(d) || !page_aligned(d) {
                return Err(LayoutError::BadDevice);
            }
            if seen[..=n].iter().any(|s| s.overlaps(d)) {
                return Err(LayoutError::Overlap);
            }
            seen[n + 1] = d;
        }
        let window = Range { start: WINDOW_IPA, size: WINDOW_SIZE };
        if !self.window.is_multiple_of(PAGE_SIZE)
            || !window.contains_span(self.window, self.ram.size)
        {
            return Err(LayoutError::BadWindow);
        }
        Ok(())
    }

    /// The part of the address space `ipa` lies in.
    #[must_use]
    pub fn region(&self, ipa: u64) -> Region {
        if self.ram.contains(ipa) {
            return Region::Ram;
        }
        if let Some(off) = ipa.checked_sub(self.pl011).filter(|&o| o < pl011::SIZE) {
            return Region::Pl011(off);
        }
        if let Some(off) =
            self.gic_distributor.and_then(|base| ipa.checked_sub(base)).filter(|&o| o < GICD_SIZE)
        {
            return Region::GicDistributor(off);
        }
        match self.passthrough.iter().flatten().find(|r| r.contains(ipa)) {
            Some(&r) => Region::Passthrough(r),
            None => Region::Outside,
        }
    }

    /// Where the guest RAM page at `ipa` appears in the VMM's window;
    /// `None` outside RAM.
    #[must_use]
    pub fn window_of(&self, ipa: u64) -> Option<u64> {
        self.ram.contains(ipa).then(|| self.window + (ipa - self.ram.start))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The test guest's layout (guest-images/test-guest.dts).
    pub(crate) fn virt() -> Layout {
        Layout {
            guest: GuestId::new(1).unwrap(),
            ram: Range { start: 0x4000_0000, size: 64 << 20 },
            pl011: 0x0900_0000,
            gic_distributor: Some(0x0800_0000),
            passthrough: [Some(Range { start: 0x0801_0000, size: 0x2000 }), None, None, None],
            window: WINDOW_IPA,
        }
    }

    #[test]
    fn the_test_guests_layout_is_valid_and_every_address_has_one_region() {
        let l = virt();
        assert_eq!(l.check(), Ok(()));
        assert_eq!(l.region(0x4000_0000), Region::Ram);
        assert_eq!(l.region(0x43ff_ffff), Region::Ram);
        assert_eq!(l.region(0x4400_0000), Region::Outside);
        assert_eq!(l.region(0x0900_0018), Region::Pl011(0x18));
        assert_eq!(l.region(0x0900_1000), Region::Outside);
        assert_eq!(l.region(0x0800_0004), Region::GicDistributor(4));
        assert!(matches!(l.region(0x0801_1000), Region::Passthrough(_)));
        assert_eq!(l.region(0), Region::Outside);
        assert_eq!(l.region(u64::MAX), Region::Outside);
        assert_eq!(l.window_of(0x4000_1000), Some(WINDOW_IPA + 0x1000));
        assert_eq!(l.window_of(0x3fff_f000), None);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let mut l = virt();
        l.ram.start = 0x4010_0000;
        assert_eq!(l.check(), Err(LayoutError::BadRam), "not 2 MiB aligned");
        let mut l = virt();
        l.ram.size = 0;
        assert_eq!(l.check(), Err(LayoutError::BadRam));
        let mut l = virt();
        l.ram.start = IPA_LIMIT - RAM_ALIGN;
        l.ram.size = 2 * RAM_ALIGN;
        assert_eq!(l.check(), Err(LayoutError::BadRam), "past the IPA space");
        let mut l = virt();
        l.pl011 = 0x4000_0000;
        assert_eq!(l.check(), Err(LayoutError::Overlap));
        let mut l = virt();
        l.passthrough[1] = Some(Range { start: 0x0900_0000, size: 0x1000 });
        assert_eq!(l.check(), Err(LayoutError::Overlap));
        let mut l = virt();
        l.pl011 = 0x0900_0800;
        assert_eq!(l.check(), Err(LayoutError::BadDevice));
        let mut l = virt();
        l.window = WINDOW_IPA + WINDOW_SIZE - 0x1000;
        assert_eq!(l.check(), Err(LayoutError::BadWindow));
        let mut l = virt();
        l.window = 0;
        assert_eq!(l.check(), Err(LayoutError::BadWindow));
    }

    #[test]
    fn spans_stay_inside_their_range() {
        let r = Range { start: 0x1000, size: 0x1000 };
        assert!(r.contains_span(0x1ff8, 8));
        assert!(!r.contains_span(0x1ffc, 8));
        assert!(!r.contains_span(0xfff, 1));
        assert!(!r.contains_span(0x1000, u64::MAX));
    }
}
