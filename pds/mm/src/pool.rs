//! The pool's table memory as the mm PD keeps it: refcounts and a page
//! source inside the table pages themselves, over raw word access.
//!
//! ```text
//! tables                  refcounts: one word per page of the page source
//! tables + count pages    the page source: pages never handed out are taken
//!  ...                    in order; freed pages wait on a list threaded
//! tables + table_pages    through their first word
//! ```
//!
//! TLB maintenance and cache cleaning are not done here: the manager
//! batches them for the kernel ([`crate::control`]). On the target the
//! words are reached through the PD's window onto the pool
//! (`window::Window`); host tests use a vector.

use crate::config::PoolLayout;
use hyp_mm::{MmOps, PAGE_SIZE, PhysAddr, Pte, TlbOp};

/// Words per page.
const WORDS: u64 = PAGE_SIZE / 8;

/// Word access to the whole pool, by physical address.
pub trait PoolWords {
    /// The 64-bit word at `pa` (8-byte aligned, inside the pool).
    fn load(&self, pa: u64) -> u64;
    /// Stores the 64-bit word at `pa`, single-copy atomically.
    fn store(&mut self, pa: u64, value: u64);
}

/// [`MmOps`] over a pool's words.
pub struct PoolOps<W> {
    words: W,
    /// First table page, where the refcounts are.
    tables: u64,
    /// First page of the page source.
    first: u64,
    /// First page never handed out.
    fresh: u64,
    /// End of the table pages.
    end: u64,
    /// Head of the list of freed pages.
    free: Option<PhysAddr>,
}

impl<W: PoolWords> PoolOps<W> {
    /// The table pages of `layout`, reached through `words`; zeroes the
    /// refcounts.
    pub fn new(words: W, layout: &PoolLayout) -> Self {
        let tables = layout.tables().raw();
        // c count pages hold the counts of the other (table_pages - c).
        let count_pages = layout.table_pages().div_ceil(WORDS + 1);
        let first = tables + count_pages * PAGE_SIZE;
        let end = tables + layout.table_pages() * PAGE_SIZE;
        let mut ops = PoolOps { words, tables, first, fresh: first, end, free: None };
        for page in 0..count_pages {
            ops.zero(tables + page * PAGE_SIZE);
        }
        ops
    }

    /// The words, for tests.
    pub fn words(&self) -> &W {
        &self.words
    }

    /// Pages the page source can still hand out without reuse.
    #[must_use]
    pub fn fresh_pages(&self) -> u64 {
        (self.end - self.fresh) / PAGE_SIZE
    }

    /// Where the refcount of table page `page` is: pages outside the page
    /// source (the roots) have none.
    fn count_at(&self, page: PhysAddr) -> Option<u64> {
        let pa = page.raw();
        (pa >= self.first && pa < self.end).then(|| self.tables + (pa - self.first) / PAGE_SIZE * 8)
    }

    fn zero(&mut self, page: u64) {
        for i in 0..WORDS {
            self.words.store(page + i * 8, 0);
        }
    }
}

impl<W: PoolWords> MmOps for PoolOps<W> {
    fn read(&self, table: PhysAddr, index: usize) -> Pte {
        Pte(self.words.load(table.raw() + index as u64 * 8))
    }

    fn write(&mut self, table: PhysAddr, index: usize, pte: Pte) {
        self.words.store(table.raw() + index as u64 * 8, pte.0);
    }

    /// A root keeps no count (hyp-mm never reads it but to skip it): 0.
    fn page_count(&self, page: PhysAddr) -> u32 {
        self.count_at(page).map_or(0, |at| self.words.load(at) as u32)
    }

    fn set_page_count(&mut self, page: PhysAddr, count: u32) {
        debug_assert!(self.count_at(page).is_some(), "hyp-mm counts only pages it took");
        if let Some(at) = self.count_at(page) {
            self.words.store(at, u64::from(count));
        }
    }

    fn alloc_page(&mut self) -> Option<PhysAddr> {
        let page = if let Some(page) = self.free {
            let link = self.words.load(page.raw());
            self.free = (link != 0).then(|| PhysAddr::new(link & !1));
            page.raw()
        } else if self.fresh < self.end {
            self.fresh += PAGE_SIZE;
            self.fresh - PAGE_SIZE
        } else {
            return None;
        };
        self.zero(page);
        Some(PhysAddr::new(page))
    }

    fn free_page(&mut self, page: PhysAddr) {
        debug_assert!(self.count_at(page).is_some(), "only table pages are freed");
        if let Some(at) = self.count_at(page) {
            self.words.store(at, 0);
        }
        let link = self.free.map_or(0, |next| next.raw() | 1);
        self.words.store(page.raw(), link);
        self.free = Some(page);
    }

    /// Never called: the manager batches TLB maintenance for the kernel.
    fn tlb(&mut self, _op: TlbOp) {}

    /// Zeroes the page; the manager has the kernel clean it to the point
    /// of coherency afterwards.
    fn zero_page(&mut self, page: PhysAddr) {
        self.zero(page.raw());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ROOT_AREA_PAGES;
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    struct VecWords {
        base: u64,
        words: Vec<u64>,
    }

    impl PoolWords for VecWords {
        fn load(&self, pa: u64) -> u64 {
            self.words[((pa - self.base) / 8) as usize]
        }
        fn store(&mut self, pa: u64, value: u64) {
            self.words[((pa - self.base) / 8) as usize] = value;
        }
    }

    fn pool(table_pages: u64) -> (PoolOps<VecWords>, PoolLayout) {
        let base = 0x8000_0000;
        let pages = ROOT_AREA_PAGES as u64 + table_pages + 4;
        let layout = PoolLayout::new(PhysAddr::new(base), pages * PAGE_SIZE, table_pages).unwrap();
        let words = VecWords { base, words: vec![0xdead_beef; (pages * WORDS) as usize] };
        (PoolOps::new(words, &layout), layout)
    }

    #[test]
    fn pages_come_zeroed_from_the_table_pages_only_and_come_back() {
        let (mut ops, layout) = pool(3);
        let first = layout.tables().add(PAGE_SIZE);
        let a = ops.alloc_page().unwrap();
        let b = ops.alloc_page().unwrap();
        assert_eq!((a, b), (first, first.add(PAGE_SIZE)), "after the count page");
        assert_eq!(ops.alloc_page(), None, "three table pages: one holds the counts");
        assert!((0..512).all(|i| ops.read(a, i).is_zero()));
        ops.write(a, 7, Pte(0x1234));
        ops.set_page_count(a, 5);
        ops.set_page_count(b, 9);
        assert_eq!((ops.page_count(a), ops.page_count(b)), (5, 9));
        ops.free_page(a);
        assert_eq!(ops.page_count(a), 0);
        assert_eq!(ops.alloc_page(), Some(a), "freed pages are reused");
        assert!((0..512).all(|i| ops.read(a, i).is_zero()), "and zeroed again");
        assert_eq!(ops.fresh_pages(), 0);
    }

    #[test]
    fn one_count_page_serves_512_table_pages() {
        let (mut ops, layout) = pool(513);
        let mut got = 0;
        while let Some(page) = ops.alloc_page() {
            ops.set_page_count(page, 1);
            got += 1;
        }
        assert_eq!(got, 512);
        assert_eq!(ops.page_count(layout.tables().add(512 * PAGE_SIZE)), 1);
    }

    #[test]
    fn the_manager_runs_on_it() {
        use crate::config::{ClientConfig, ClientId, Config, Window};
        use crate::control::{Refused, Stage2Control};
        use hyp_mm::{IpaRange, VmId};
        use tenure_abi::mm::{FaultAddr, GuestId, Request, Target, WalkFlags};
        struct Quiet;
        impl Stage2Control for Quiet {
            fn install(&mut self, _: GuestId, _: VmId, _: PhysAddr) -> Result<(), Refused> {
                Ok(())
            }
            fn uninstall(&mut self, _: GuestId, _: VmId) {}
            fn link_window(
                &mut self,
                _: ClientId,
                _: VmId,
                _: IpaRange,
                _: PhysAddr,
            ) -> Result<(), Refused> {
                Ok(())
            }
            fn invalidate_range(&mut self, _: VmId, _: IpaRange) {}
            fn invalidate_vmid(&mut self, _: VmId) {}
            fn clean_to_poc(&mut self, _: PhysAddr, _: u64) {}
        }
        let (_, layout) = pool(64);
        let (base, bytes) = layout.pool();
        let words = VecWords { base: base.raw(), words: vec![0; (bytes / 8) as usize] };
        let ops = PoolOps::new(words, &layout);
        let mut config = Config::default();
        let range = IpaRange::new(hyp_mm::Ipa::new(0x1000_0000), 1 << 20).unwrap();
        config.clients[0] = Some(ClientConfig { window: Some(Window { vmid: VmId(5), range }) });
        let mut m = crate::Manager::new(ops, Quiet, &layout, config).unwrap();
        for i in 0..4 {
            let addr = FaultAddr::from_raw(0x1000_0000 + i * PAGE_SIZE).unwrap();
            let request =
                Request::Populate { target: Target::Caller, addr, flags: WalkFlags::NONE };
            assert!(m.serve(ClientId(0), request).is_ok());
        }
        let request = Request::Relinquish {
            target: Target::Caller,
            range: tenure_abi::mm::PageRange::new(0x1000_0000, 4).unwrap(),
        };
        assert!(m.serve(ClientId(0), request).is_ok());
        m.ownership().check_invariants(m.mem()).unwrap();
    }
}
