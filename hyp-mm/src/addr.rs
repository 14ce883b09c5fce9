//! Typed physical and intermediate-physical addresses.
//!
//! A stage-2 table translates an [`Ipa`] (what a guest or PD calls physical)
//! to a [`PhysAddr`] (what the bus sees). Keeping the two apart in the type
//! system stops the classic bug of handing a guest address to the hardware.

use core::fmt;

/// Size of a translation granule and of the smallest page: 4 KiB.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw address.
            #[must_use]
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw address.
            #[must_use]
            pub const fn raw(self) -> u64 {
                self.0
            }

            /// Whether the address is a multiple of `align` (a power of two).
            #[must_use]
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }

            /// The address rounded down to a multiple of `align` (a power of two).
            #[must_use]
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }

            /// The address plus `bytes`, or `None` on overflow.
            #[must_use]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(raw) => Some(Self(raw)),
                    None => None,
                }
            }

            /// The address plus `bytes`; the caller has checked it cannot overflow.
            #[must_use]
            pub const fn add(self, bytes: u64) -> Self {
                Self(self.0 + bytes)
            }

            /// The page frame number (address >> 12).
            #[must_use]
            pub const fn frame(self) -> u64 {
                self.0 >> PAGE_SHIFT
            }

            /// The address of page frame `frame`.
            #[must_use]
            pub const fn from_frame(frame: u64) -> Self {
                Self(frame << PAGE_SHIFT)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:#x}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    };
}

address_type!(
    /// A physical address: what the memory system sees after stage 2.
    PhysAddr,
    "PA:"
);
address_type!(
    /// An intermediate physical address: the input of a stage-2 table.
    Ipa,
    "IPA:"
);

/// A half-open range of IPAs `[start, start + size)`, page aligned, non-empty
/// and not wrapping. Built only through [`IpaRange::new`], which checks that.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IpaRange {
    start: Ipa,
    end: Ipa,
}

impl IpaRange {
    /// The range `[start, start + size)`, or `None` if it is empty, not page
    /// aligned, or wraps around the address space.
    #[must_use]
    pub const fn new(start: Ipa, size: u64) -> Option<Self> {
        if size == 0 || !start.is_aligned(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
            return None;
        }
        match start.checked_add(size) {
            Some(end) => Some(Self { start, end }),
            None => None,
        }
    }

    /// The range of `pages` pages from `start`.
    #[must_use]
    pub const fn pages(start: Ipa, pages: u64) -> Option<Self> {
        match pages.checked_mul(PAGE_SIZE) {
            Some(size) => Self::new(start, size),
            None => None,
        }
    }

    /// First address in the range.
    #[must_use]
    pub const fn start(self) -> Ipa {
        self.start
    }

    /// First address past the range.
    #[must_use]
    pub const fn end(self) -> Ipa {
        self.end
    }

    /// Size in bytes.
    #[must_use]
    pub const fn size(self) -> u64 {
        self.end.raw() - self.start.raw()
    }

    /// Number of 4 KiB pages.
    #[must_use]
    pub const fn page_count(self) -> u64 {
        self.size() >> PAGE_SHIFT
    }

    /// The first address of each page, in order.
    pub fn page_addrs(self) -> impl Iterator<Item = Ipa> {
        (self.start.raw()..self.end.raw()).step_by(PAGE_SIZE as usize).map(Ipa::new)
    }

    /// Whether `ipa` lies in the range.
    #[must_use]
    pub const fn contains(self, ipa: Ipa) -> bool {
        ipa.raw() >= self.start.raw() && ipa.raw() < self.end.raw()
    }

    /// Whether `[start, start + size)` lies entirely inside the range.
    #[must_use]
    pub const fn covers(self, start: u64, size: u64) -> bool {
        start >= self.start.raw() && start + size <= self.end.raw()
    }
}
