//! What hyp-mm needs from its host: table memory, page refcounts, a page
//! source, TLB maintenance; and the memory cache that makes commits
//! infallible.
//!
//! hyp-mm never allocates. Every operation first works out how many table
//! pages it needs, checks that the [`MemCache`] holds that many, and only
//! then changes anything: pages are popped from the cache during the commit,
//! which therefore cannot run out. Pages freed by an operation go back to the
//! page source ([`MmOps::free_page`]) after the TLB maintenance that makes
//! them unreachable.

use crate::addr::PhysAddr;
use crate::desc::Pte;
use crate::error::{Error, Result};

/// A virtual machine identifier as programmed in VTTBR_EL2.VMID.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct VmId(pub u16);

/// One step of TLB maintenance, in the order the hardware must see it.
///
/// The names follow the instructions they stand for (Arm ARM C5.5, TLB
/// maintenance instructions; D8.16, break-before-make).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TlbOp {
    /// `DSB ISHST`: descriptor writes are visible to every walker.
    DsbIshst,
    /// `DSB ISH`: earlier TLB invalidations have completed everywhere.
    DsbIsh,
    /// `DSB NSH`: earlier local TLB invalidations have completed.
    DsbNsh,
    /// `ISB`.
    Isb,
    /// `TLBI IPAS2E1IS`: stage-2 entries for one IPA of `vmid`, broadcast;
    /// `level` is the translation level of the leaf (the TTL hint).
    InvalidateIpa {
        /// Address space the entry belongs to.
        vmid: VmId,
        /// First byte of the leaf.
        ipa: crate::addr::Ipa,
        /// Level of the leaf.
        level: u8,
    },
    /// `TLBI IPAS2E1`: as [`TlbOp::InvalidateIpa`] but on this CPU only;
    /// enough after a permission relaxation, where a stale entry only
    /// causes a spurious fault.
    InvalidateIpaLocal {
        /// Address space the entry belongs to.
        vmid: VmId,
        /// First byte of the leaf.
        ipa: crate::addr::Ipa,
        /// Level of the leaf.
        level: u8,
    },
    /// `TLBI VMALLE1IS`: combined stage-1+2 entries of `vmid`, which may
    /// have cached the old stage-2 translation.
    InvalidateStage1 {
        /// Address space to invalidate.
        vmid: VmId,
    },
    /// `TLBI VMALLS12E1IS`: every entry of `vmid`, walk caches included;
    /// needed before a table page is reused.
    InvalidateVmid {
        /// Address space to invalidate.
        vmid: VmId,
    },
}

/// The services a stage-2 table needs from whoever holds its memory.
///
/// On the target the memory manager implements this over its window onto
/// table memory and the kernel's stage-2 control capability; host tests
/// implement it over an arena and record the TLB operations.
pub trait MmOps {
    /// Reads entry `index` of the table at `table`. For a concatenated root,
    /// `index` may exceed 511 and runs into the following pages.
    fn read(&self, table: PhysAddr, index: usize) -> Pte;
    /// Writes entry `index` of the table at `table` (single-copy atomic on
    /// the target).
    fn write(&mut self, table: PhysAddr, index: usize, pte: Pte);
    /// The refcount of table page `page`: 1 + its non-zero entries while it
    /// is in use, 0 when free.
    fn page_count(&self, page: PhysAddr) -> u32;
    /// Sets the refcount of table page `page`.
    fn set_page_count(&mut self, page: PhysAddr, count: u32);
    /// A zeroed page from the page source, or `None` if it is exhausted.
    fn alloc_page(&mut self) -> Option<PhysAddr>;
    /// Returns a page to the page source. Its contents are undefined.
    fn free_page(&mut self, page: PhysAddr);
    /// Performs (or queues, preserving order) one TLB maintenance step.
    fn tlb(&mut self, op: TlbOp);
    /// Zeroes a data page and cleans it to the point of coherency, so that
    /// the next owner cannot read what the last one wrote.
    fn zero_page(&mut self, page: PhysAddr);
}

/// Preallocated, zeroed table pages (pKVM's memcache), kept as a list
/// threaded through the pages themselves so the cache needs no memory.
///
/// Invariant: every page in the cache is zero except entry 0, which holds
/// the link to the next page (`next | 1`, or 0 at the end of the list).
#[derive(Debug, Default)]
pub struct MemCache {
    head: Option<PhysAddr>,
    len: usize,
}

impl MemCache {
    /// An empty cache.
    #[must_use]
    pub const fn new() -> Self {
        MemCache { head: None, len: 0 }
    }

    /// Pages held.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache holds no page.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a zeroed page to the cache.
    pub fn push<M: MmOps>(&mut self, mem: &mut M, page: PhysAddr) {
        let link = self.head.map_or(0, |next| next.raw() | 1);
        mem.write(page, 0, Pte(link));
        self.head = Some(page);
        self.len += 1;
    }

    /// Takes a zeroed page out of the cache.
    pub fn pop<M: MmOps>(&mut self, mem: &mut M) -> Option<PhysAddr> {
        let page = self.head?;
        let link = mem.read(page, 0).0;
        mem.write(page, 0, Pte::ZERO);
        self.head = (link != 0).then(|| PhysAddr::new(link & !1));
        self.len -= 1;
        Some(page)
    }

    /// Fills the cache from the page source until it holds `pages` pages;
    /// `OutOfMemory` if the source runs dry (pages taken so far stay).
    pub fn topup<M: MmOps>(&mut self, mem: &mut M, pages: usize) -> Result<()> {
        while self.len < pages {
            let page = mem.alloc_page().ok_or(Error::OutOfMemory)?;
            self.push(mem, page);
        }
        Ok(())
    }

    /// Returns every page to the page source.
    pub fn drain<M: MmOps>(&mut self, mem: &mut M) {
        while let Some(page) = self.pop(mem) {
            mem.free_page(page);
        }
    }
}
