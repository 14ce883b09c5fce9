//! A host-memory implementation of [`MmOps`]: table pages live in a vector,
//! TLB operations are recorded. Tests, benchmarks and the fuzzer use it, and
//! so does the tool, which builds PD tables offline and copies the pages
//! into the boot image.

extern crate std;

use std::vec;
use std::vec::Vec;

use crate::addr::{PAGE_SHIFT, PhysAddr};
use crate::desc::{ENTRIES, Pte};
use crate::mem::{MmOps, TlbOp};

/// Pattern written over freed pages so that a walk through one is caught.
const POISON: u64 = 0xdead_0000_dead_0000;

/// Table memory of `pages` pages starting at a physical base address.
#[derive(Clone)]
pub struct Arena {
    base: u64,
    words: Vec<u64>,
    counts: Vec<u32>,
    free: Vec<bool>,
    /// Free pages in allocation order (a stack: the next page is the last).
    free_list: Vec<u32>,
    /// Every TLB operation performed, in order, while `record_tlb` is set.
    pub tlb_log: Vec<TlbOp>,
    /// Whether to record TLB operations (off for benchmarks).
    pub record_tlb: bool,
    /// Whether freed pages are filled with a poison pattern, so that a walk
    /// through a freed table is caught (on by default; benchmarks turn it
    /// off, as a real page source does not write freed pages).
    pub poison_freed: bool,
    /// Data pages zeroed through [`MmOps::zero_page`], in order.
    pub zeroed: Vec<PhysAddr>,
}

impl Arena {
    /// An arena of `pages` free pages at physical address `base`.
    #[must_use]
    pub fn new(base: PhysAddr, pages: usize) -> Self {
        Arena {
            base: base.raw(),
            words: vec![0; pages * ENTRIES],
            counts: vec![0; pages],
            free: vec![true; pages],
            free_list: (0..pages as u32).rev().collect(),
            tlb_log: Vec::new(),
            record_tlb: true,
            poison_freed: true,
            zeroed: Vec::new(),
        }
    }

    /// Index of `pa`'s page; an address below the arena wraps to an index
    /// past its end, which the slice bounds check catches.
    #[inline]
    fn page_index(&self, pa: PhysAddr) -> usize {
        (pa.raw().wrapping_sub(self.base) >> PAGE_SHIFT) as usize
    }

    /// Index of entry `index` of the table at `table` in `words`.
    #[inline]
    fn word_index(&self, table: PhysAddr, index: usize) -> usize {
        (table.raw().wrapping_sub(self.base) >> 3) as usize + index
    }

    /// The first physical address of the arena.
    #[must_use]
    pub fn base(&self) -> PhysAddr {
        PhysAddr::new(self.base)
    }

    /// `n` contiguous zeroed pages aligned to `n` pages (for a concatenated
    /// stage-2 root), or `None`.
    pub fn alloc_contiguous(&mut self, n: usize) -> Option<PhysAddr> {
        let first = (0..self.free.len())
            .step_by(n)
            .find(|&i| i + n <= self.free.len() && self.free[i..i + n].iter().all(|&f| f))?;
        for i in first..first + n {
            self.free[i] = false;
            self.words[i * ENTRIES..(i + 1) * ENTRIES].fill(0);
        }
        self.free_list.retain(|&p| !(first..first + n).contains(&(p as usize)));
        Some(PhysAddr::new(self.base + ((first as u64) << PAGE_SHIFT)))
    }

    /// The words of page `pa`, as the hardware will read them.
    #[must_use]
    pub fn page_words(&self, pa: PhysAddr) -> &[u64] {
        let i = self.page_index(pa);
        &self.words[i * ENTRIES..(i + 1) * ENTRIES]
    }

    /// Pages from the base up to the last one in use (0 if none is).
    #[must_use]
    pub fn high_water(&self) -> usize {
        self.free.iter().rposition(|&f| !f).map_or(0, |i| i + 1)
    }

    /// Pages currently free.
    #[must_use]
    pub fn free_pages(&self) -> usize {
        self.free_list.len()
    }

    /// Whether `page` is free (in the page source).
    #[must_use]
    pub fn is_free(&self, page: PhysAddr) -> bool {
        self.free[self.page_index(page)]
    }

    /// Whether `pa` lies inside the arena.
    #[must_use]
    pub fn contains(&self, pa: PhysAddr) -> bool {
        pa.raw() >= self.base && pa.raw() < self.base + ((self.free.len() as u64) << PAGE_SHIFT)
    }

    /// A copy of every word of table memory, for byte-for-byte comparisons.
    #[must_use]
    pub fn snapshot(&self) -> (Vec<u64>, Vec<u32>) {
        (self.words.clone(), self.counts.clone())
    }
}

impl MmOps for Arena {
    #[inline]
    fn read(&self, table: PhysAddr, index: usize) -> Pte {
        Pte(self.words[self.word_index(table, index)])
    }

    #[inline]
    fn write(&mut self, table: PhysAddr, index: usize, pte: Pte) {
        let i = self.word_index(table, index);
        self.words[i] = pte.0;
    }

    #[inline]
    fn page_count(&self, page: PhysAddr) -> u32 {
        self.counts[self.page_index(page)]
    }

    #[inline]
    fn set_page_count(&mut self, page: PhysAddr, count: u32) {
        let i = self.page_index(page);
        self.counts[i] = count;
    }

    fn alloc_page(&mut self) -> Option<PhysAddr> {
        let i = self.free_list.pop()? as usize;
        self.free[i] = false;
        self.words[i * ENTRIES..(i + 1) * ENTRIES].fill(0);
        Some(PhysAddr::new(self.base + ((i as u64) << PAGE_SHIFT)))
    }

    fn free_page(&mut self, page: PhysAddr) {
        let i = self.page_index(page);
        assert!(!self.free[i], "double free of {page}");
        self.free[i] = true;
        self.counts[i] = 0;
        if self.poison_freed {
            self.words[i * ENTRIES..(i + 1) * ENTRIES].fill(POISON);
        }
        self.free_list.push(i as u32);
    }

    #[inline]
    fn tlb(&mut self, op: TlbOp) {
        if self.record_tlb {
            self.tlb_log.push(op);
        }
    }

    fn zero_page(&mut self, page: PhysAddr) {
        if self.contains(page) {
            let i = self.page_index(page);
            self.words[i * ENTRIES..(i + 1) * ENTRIES].fill(0);
        }
        self.zeroed.push(page);
    }
}
