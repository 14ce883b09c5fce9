//! On the target: the pool reached through a window of the mm PD's own
//! address space, at a fixed offset from physical addresses.
//!
//! ```text
//! PD IPA (= VA, stage 1 off)        physical
//! pa + offset    <-- window -->     pa, for every pa of the pool
//! ```
//!
//! The offset is the pool's address in the PD minus its physical base,
//! modulo 2^64: the pool may be mapped below where it lies.
#![allow(unsafe_code, reason = "the one place the window's addresses become memory accesses")]

use crate::config::PoolLayout;
use crate::pool::PoolWords;

/// The pool's words at `pa + offset`.
pub struct Window {
    offset: u64,
    start: u64,
    end: u64,
}

impl Window {
    /// The window onto `layout`'s pool at `offset`.
    ///
    /// # Safety
    ///
    /// Every byte of the pool must be mapped read-write, as Normal
    /// cacheable memory, at its physical address plus `offset` (modulo
    /// 2^64) in this PD,
    /// for as long as the value lives; nothing else in the PD may access
    /// that range; and only one `Window` may exist for it.
    #[must_use]
    pub unsafe fn new(offset: u64, layout: &PoolLayout) -> Window {
        let (base, bytes) = layout.pool();
        Window { offset, start: base.raw(), end: base.raw() + bytes }
    }

    /// The address of the word at `pa`.
    fn at(&self, pa: u64) -> *mut u64 {
        assert!(
            pa >= self.start && pa < self.end && pa.is_multiple_of(8),
            "{pa:#x} is not a word of the pool"
        );
        pa.wrapping_add(self.offset) as *mut u64
    }
}

impl PoolWords for Window {
    fn load(&self, pa: u64) -> u64 {
        let p = self.at(pa);
        // SAFETY: `at` checked that `pa` is an aligned word of the pool,
        // which `new`'s contract maps at `pa + offset` for our sole use.
        unsafe { p.read_volatile() }
    }

    fn store(&mut self, pa: u64, value: u64) {
        let p = self.at(pa);
        // SAFETY: as in `load`; an aligned 64-bit store is single-copy
        // atomic, as a descriptor write must be (Arm ARM B2.2.1).
        unsafe { p.write_volatile(value) }
    }
}
