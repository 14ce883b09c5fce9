//! Behaviour tests of the stage-2 update engine.
//!
//! Every test runs against a host [`Arena`] wrapped in [`Traced`], which
//! records descriptor writes (with the value they overwrote), page frees and
//! TLB maintenance in one ordered log. Two checkers run after most
//! operations:
//!
//! - [`Fixture::check_refcounts`]: every reachable non-root table page is
//!   allocated, linked once, non-empty, and has refcount 1 + its non-zero
//!   entries;
//! - [`Fixture::check_maintenance`]: replays the log of the last operation
//!   and checks break-before-make, invalidation after removal and
//!   restriction, and that no table page is freed before the VMID
//!   invalidation that follows its unlinking (or, for a ledger, that there is
//!   no TLB maintenance at all).
//!
//! The behaviour numbers in comments are those of "Checkable behaviours" in
//! the stage-2 ownership design reference.

extern crate std;

use std::collections::{BTreeMap, BTreeSet};
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use crate::addr::{Ipa, IpaRange, PAGE_SIZE, PhysAddr};
use crate::desc::{Annotation, Change, ENTRIES, META_BITS, OwnerId, Prot, Pte, level_size};
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::host::Arena;
use crate::mem::{MemCache, MmOps, TlbOp, VmId};
use crate::table::{Mapping, Stage2, TableKind, Update};
use crate::walk::{Visit, VisitKind, WalkFlags};

/// Physical base of the table-memory arena.
const ARENA_BASE: u64 = 0x1_0000_0000;
/// Pages in the arena of most tests: room for 1 GiB mapped in pages (513
/// tables) with plenty to spare.
const ARENA_PAGES: usize = 4096;
/// Pages the fixture puts in the cache to start with.
const CACHE_PAGES: usize = 8;
const VMID: VmId = VmId(7);
const PAGE: u64 = PAGE_SIZE;
const BLOCK_2M: u64 = 1 << 21;
const BLOCK_1G: u64 = 1 << 30;
/// A PA offset that keeps 1 GiB alignment, so blocks are possible.
const PA_OFFSET: u64 = 0x40_0000_0000;

// ---------------------------------------------------------------------------
// Traced memory
// ---------------------------------------------------------------------------

/// One thing the table code did to memory, in order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Event {
    /// A descriptor write, with the value it replaced.
    Write { table: PhysAddr, index: usize, old: Pte, new: Pte },
    /// A page returned to the page source.
    Free(PhysAddr),
    /// One TLB maintenance step.
    Tlb(TlbOp),
}

/// An [`Arena`] that records every write, free and TLB operation, and
/// refuses to touch a free page.
struct Traced {
    arena: Arena,
    events: Vec<Event>,
}

impl MmOps for Traced {
    fn read(&self, table: PhysAddr, index: usize) -> Pte {
        assert!(!self.arena.is_free(table), "read of free page {table}");
        self.arena.read(table, index)
    }

    fn write(&mut self, table: PhysAddr, index: usize, pte: Pte) {
        assert!(!self.arena.is_free(table), "write into free page {table}");
        let old = self.arena.read(table, index);
        self.events.push(Event::Write { table, index, old, new: pte });
        self.arena.write(table, index, pte);
    }

    fn page_count(&self, page: PhysAddr) -> u32 {
        self.arena.page_count(page)
    }

    fn set_page_count(&mut self, page: PhysAddr, count: u32) {
        self.arena.set_page_count(page, count);
    }

    fn alloc_page(&mut self) -> Option<PhysAddr> {
        self.arena.alloc_page()
    }

    fn free_page(&mut self, page: PhysAddr) {
        self.events.push(Event::Free(page));
        self.arena.free_page(page);
    }

    fn tlb(&mut self, op: TlbOp) {
        self.events.push(Event::Tlb(op));
        self.arena.tlb(op);
    }

    fn zero_page(&mut self, page: PhysAddr) {
        self.arena.zero_page(page);
    }
}

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

/// A table page reachable from the root.
#[derive(Clone, Copy, Debug)]
struct TableInfo {
    page: PhysAddr,
    level: u8,
    /// First IPA the table spans.
    base: u64,
    /// The entry that links it, `None` for the root.
    parent: Option<(PhysAddr, usize)>,
}

/// A leaf as the walker reports it: first IPA, level, entry.
type Leaf = (u64, u8, Pte);

struct Fixture {
    mem: Traced,
    cache: MemCache,
    s2: Stage2,
    /// Pages free or cached right after the root was allocated.
    baseline: usize,
}

fn range(ipa: u64, size: u64) -> IpaRange {
    IpaRange::new(Ipa::new(ipa), size).expect("test ranges are page aligned")
}

fn ann(owner: u16, meta: u64) -> Annotation {
    Annotation::new(OwnerId(owner), meta).expect("test annotations are well formed")
}

fn rw() -> Mapping {
    Mapping::new(Prot::RW)
}

/// Break-before-make invalidation of one leaf (Linux
/// `__kvm_tlb_flush_vmid_ipa`).
fn bbm_leaf(ipa: u64, level: u8) -> [TlbOp; 6] {
    [
        TlbOp::DsbIshst,
        TlbOp::InvalidateIpa { vmid: VMID, ipa: Ipa::new(ipa), level },
        TlbOp::DsbIsh,
        TlbOp::InvalidateStage1 { vmid: VMID },
        TlbOp::DsbIsh,
        TlbOp::Isb,
    ]
}

fn is_invalidation(op: &TlbOp) -> bool {
    matches!(
        op,
        TlbOp::InvalidateIpa { .. }
            | TlbOp::InvalidateIpaLocal { .. }
            | TlbOp::InvalidateStage1 { .. }
            | TlbOp::InvalidateVmid { .. }
    )
}

fn position(events: &[Event], event: Event) -> usize {
    events.iter().position(|e| *e == event).unwrap_or_else(|| panic!("no {event:?} in {events:?}"))
}

impl Fixture {
    fn new() -> Self {
        Self::with(Geometry::IPA_40, TableKind::Component, ARENA_PAGES)
    }

    fn ledger() -> Self {
        Self::with(Geometry::IPA_40, TableKind::Ledger, ARENA_PAGES)
    }

    fn with(geometry: Geometry, kind: TableKind, pages: usize) -> Self {
        let mut arena = Arena::new(PhysAddr::new(ARENA_BASE), pages);
        let root = arena.alloc_contiguous(geometry.root_pages()).expect("arena holds the root");
        let s2 = Stage2::new(geometry, root, VMID, kind).expect("root is aligned");
        let mut mem = Traced { arena, events: Vec::new() };
        let mut cache = MemCache::new();
        cache.topup(&mut mem, CACHE_PAGES).expect("arena holds the cache");
        let baseline = mem.arena.free_pages() + cache.len();
        let mut fx = Fixture { mem, cache, s2, baseline };
        fx.clear_logs();
        fx
    }

    fn topup(&mut self, pages: usize) {
        self.cache.topup(&mut self.mem, pages).expect("arena has pages to spare");
    }

    fn clear_logs(&mut self) {
        self.mem.events.clear();
        self.mem.arena.tlb_log.clear();
    }

    fn tlb(&self) -> &[TlbOp] {
        &self.mem.arena.tlb_log
    }

    fn snapshot(&self) -> (Vec<u64>, Vec<u32>) {
        self.mem.arena.snapshot()
    }

    /// Pages in the page source or the cache.
    fn unused_pages(&self) -> usize {
        self.mem.arena.free_pages() + self.cache.len()
    }

    fn update(&mut self, ipa: u64, size: u64, update: Update) -> Result<()> {
        self.s2.update(&mut self.mem, &mut self.cache, range(ipa, size), update)
    }

    fn map(&mut self, ipa: u64, size: u64, pa: u64, mapping: Mapping) -> Result<()> {
        self.s2.map(&mut self.mem, &mut self.cache, range(ipa, size), PhysAddr::new(pa), mapping)
    }

    fn unmap(&mut self, ipa: u64, size: u64) -> Result<()> {
        self.s2.unmap(&mut self.mem, &mut self.cache, range(ipa, size))
    }

    fn protect(&mut self, ipa: u64, size: u64, prot: Prot) -> Result<()> {
        self.s2.protect(&mut self.mem, &mut self.cache, range(ipa, size), prot)
    }

    fn annotate(&mut self, ipa: u64, size: u64, annotation: Annotation) -> Result<()> {
        self.s2.annotate(&mut self.mem, &mut self.cache, range(ipa, size), annotation)
    }

    fn idmap(&mut self, fault: u64, permitted: IpaRange, prot: Prot) -> Result<IpaRange> {
        self.s2.idmap_greedy(&mut self.mem, &mut self.cache, Ipa::new(fault), permitted, prot)
    }

    fn needed(&self, ipa: u64, size: u64, update: Update) -> usize {
        self.s2.pages_needed(&self.mem, range(ipa, size), update).expect("valid update")
    }

    fn leaf(&self, ipa: u64) -> (Pte, u8) {
        self.s2.get_leaf(&self.mem, Ipa::new(ipa)).expect("IPA inside the table")
    }

    /// The table and index of the entry at `level` on the walk to `ipa`.
    fn slot(&self, ipa: u64, level: u8) -> (PhysAddr, usize) {
        let g = self.s2.geometry();
        let mut table = self.s2.root();
        for l in g.start_level()..level {
            let pte = self.mem.read(table, g.index(Ipa::new(ipa), l));
            assert!(pte.is_table(l), "no table at level {l} on the walk to {ipa:#x}");
            table = pte.addr();
        }
        (table, g.index(Ipa::new(ipa), level))
    }

    /// Every leaf visit of a walk over `r`.
    fn leaves(&mut self, r: IpaRange) -> Vec<Leaf> {
        let mut out = Vec::new();
        let mut visitor = |_: &mut Traced, v: &Visit, kind: VisitKind| -> Result<()> {
            assert_eq!(kind, VisitKind::Leaf);
            out.push((v.ipa.raw(), v.level, v.pte));
            Ok(())
        };
        self.s2.walk(&mut self.mem, r, WalkFlags::LEAF, &mut visitor).expect("walk");
        out
    }

    /// The non-zero leaves of the whole address space.
    fn nonzero_leaves(&mut self) -> Vec<Leaf> {
        let span = self.s2.span();
        self.leaves(span).into_iter().filter(|l| !l.2.is_zero()).collect()
    }

    /// Every table reachable from the root, the root first.
    fn tables(&self) -> Vec<TableInfo> {
        let g = self.s2.geometry();
        let root = self.s2.root();
        let mut out = vec![TableInfo { page: root, level: g.start_level(), base: 0, parent: None }];
        let mut next = 0;
        while next < out.len() {
            let t = out[next];
            let entries = if t.parent.is_none() { g.root_entries() } else { ENTRIES };
            for index in 0..entries {
                let pte = self.mem.read(t.page, index);
                if pte.is_table(t.level) {
                    out.push(TableInfo {
                        page: pte.addr(),
                        level: t.level + 1,
                        base: t.base + index as u64 * level_size(t.level),
                        parent: Some((t.page, index)),
                    });
                }
            }
            next += 1;
        }
        out
    }

    /// Checks the refcount invariant and returns the number of non-root
    /// table pages.
    fn check_refcounts(&self) -> usize {
        let g = self.s2.geometry();
        let arena = &self.mem.arena;
        for p in 0..g.root_pages() as u64 {
            assert!(!arena.is_free(self.s2.root().add(p * PAGE)), "root page {p} is free");
        }
        let tables = self.tables();
        let mut seen = BTreeSet::new();
        for t in &tables[1..] {
            let page = t.page;
            assert!(arena.contains(page), "table {page} outside table memory");
            assert!(!arena.is_free(page), "reachable table {page} (level {}) is free", t.level);
            assert!(seen.insert(page), "table {page} linked twice");
            let nonzero = (0..ENTRIES).filter(|&i| !arena.read(page, i).is_zero()).count();
            assert!(nonzero > 0, "empty table {page} (level {}) left linked", t.level);
            assert_eq!(
                arena.page_count(page),
                1 + nonzero as u32,
                "refcount of table {page} at level {} spanning {:#x}",
                t.level,
                t.base
            );
        }
        tables.len() - 1
    }

    /// Replays the event log of the last operation; `before` is the table
    /// tree as it was before it (from [`Fixture::tables`]).
    fn check_maintenance(&self, before: &[TableInfo]) {
        let events = &self.mem.events;
        if self.s2.kind() == TableKind::Ledger {
            let tlb: Vec<_> = events.iter().filter(|e| matches!(e, Event::Tlb(_))).collect();
            assert!(tlb.is_empty(), "ledger emitted TLB maintenance: {tlb:?}");
            return;
        }
        let has = |from: usize, to: usize, want: &dyn Fn(&TlbOp) -> bool| {
            events[from..to].iter().any(|e| matches!(e, Event::Tlb(op) if want(op)))
        };
        let mut tables: BTreeMap<PhysAddr, TableInfo> =
            before.iter().map(|t| (t.page, *t)).collect();
        // Slot -> (event index, entry) of the last valid entry removed there.
        let mut removed: BTreeMap<(PhysAddr, usize), (usize, Pte)> = BTreeMap::new();
        for (k, event) in events.iter().enumerate() {
            match *event {
                Event::Write { table, index, old, new } => {
                    let Some(t) = tables.get(&table).copied() else {
                        continue; // a page not linked yet: cache link or fill
                    };
                    let level = t.level;
                    let ipa = t.base + index as u64 * level_size(level);
                    let leaf_tlbi = TlbOp::InvalidateIpa { vmid: VMID, ipa: Ipa::new(ipa), level };
                    if new.is_table(level) && new != old {
                        let child = TableInfo {
                            page: new.addr(),
                            level: level + 1,
                            base: ipa,
                            parent: Some((table, index)),
                        };
                        tables.insert(new.addr(), child);
                    }
                    if old.is_valid() && new.is_valid() {
                        let change = old.change(new, level);
                        assert_ne!(
                            change,
                            Change::BreakBeforeMake,
                            "event {k}: {old:?} -> {new:?} at {ipa:#x} L{level} without \
                             break-before-make"
                        );
                        if change == Change::Restrict {
                            assert!(
                                has(k, events.len(), &|op| *op == leaf_tlbi),
                                "event {k}: restriction at {ipa:#x} never invalidated"
                            );
                        }
                        if change == Change::Relax {
                            assert!(
                                has(k, events.len(), &|op| matches!(op,
                                    TlbOp::InvalidateIpaLocal { ipa: i, level: l, .. }
                                        | TlbOp::InvalidateIpa { ipa: i, level: l, .. }
                                        if i.raw() == ipa && *l == level)),
                                "event {k}: relaxation at {ipa:#x} never invalidated"
                            );
                        }
                    } else if old.is_valid() {
                        let want = if old.is_table(level) {
                            TlbOp::InvalidateVmid { vmid: VMID }
                        } else {
                            leaf_tlbi
                        };
                        assert!(
                            has(k, events.len(), &|op| *op == want),
                            "event {k}: removal of {old:?} at {ipa:#x} L{level} not followed by \
                             {want:?}"
                        );
                        removed.insert((table, index), (k, old));
                    } else if new.is_valid()
                        && let Some(&(j, gone)) = removed.get(&(table, index))
                    {
                        let want = if gone.is_table(level) {
                            TlbOp::InvalidateVmid { vmid: VMID }
                        } else {
                            leaf_tlbi
                        };
                        assert!(
                            has(j, k, &|op| *op == want),
                            "event {k}: {new:?} written at {ipa:#x} before the removed {gone:?} \
                             was invalidated"
                        );
                    }
                }
                Event::Free(page) => {
                    let Some(t) = tables.get(&page).copied() else {
                        continue; // not a table page (cache drain)
                    };
                    // Where the subtree holding `page` was cut off.
                    let unlinked = match t.parent {
                        None => 0,
                        Some(mut slot) => loop {
                            if let Some(&(j, _)) = removed.get(&slot) {
                                break j;
                            }
                            let parent = tables[&slot.0];
                            slot = parent.parent.unwrap_or_else(|| {
                                panic!("event {k}: table {page} freed while still linked")
                            });
                        },
                    };
                    assert!(
                        has(unlinked, k, &|op| *op == TlbOp::InvalidateVmid { vmid: VMID }),
                        "event {k}: table page {page} returned to the page source before the \
                         VMID invalidation following its unlinking (event {unlinked})"
                    );
                }
                Event::Tlb(_) => {}
            }
        }
    }

    /// Runs `update`, checking that it takes from the cache exactly the
    /// pages `pages_needed` announced; returns that number.
    fn counted(&mut self, ipa: u64, size: u64, update: Update) -> usize {
        let needed = self.needed(ipa, size, update);
        self.topup(needed + 2);
        let before = self.cache.len();
        let tables = self.tables();
        self.clear_logs();
        let result = self.update(ipa, size, update);
        assert!(matches!(result, Ok(()) | Err(Error::Retry)), "{update:?}: {result:?}");
        assert_eq!(before - self.cache.len(), needed, "{update:?} over {ipa:#x}+{size:#x}");
        self.check_refcounts();
        self.check_maintenance(&tables);
        needed
    }
}

/// Asserts the 512 entries of the table that replaced a block at
/// `block_ipa` map `block_pa` page by page with the block's attributes,
/// except index `changed`.
fn assert_split_keeps_siblings(
    fx: &Fixture,
    block_ipa: u64,
    block_pa: u64,
    was: Pte,
    changed: u64,
) {
    for i in (0..ENTRIES as u64).filter(|&i| i != changed) {
        let (pte, level) = fx.leaf(block_ipa + i * PAGE);
        assert_eq!(level, 3, "page {i} of the split block");
        assert_eq!(pte.0 & 0b11, 0b11, "page {i} is a level-3 page descriptor");
        assert_eq!(pte.addr(), PhysAddr::new(block_pa + i * PAGE), "page {i} keeps its PA");
        assert_eq!(pte.prot(), was.prot(), "page {i} keeps its access");
        assert_eq!(pte.sw(), was.sw(), "page {i} keeps its software bits");
        assert_eq!(pte, Pte::leaf(3, pte.addr(), was.prot(), was.sw()), "page {i} encoding");
    }
}

// ---------------------------------------------------------------------------
// Leaf sizes and encodings (behaviours 2, 3)
// ---------------------------------------------------------------------------

#[test]
fn map_uses_a_1gib_block_where_ipa_and_pa_are_1gib_aligned() {
    let mut fx = Fixture::new();
    fx.map(BLOCK_1G, BLOCK_1G, PA_OFFSET, rw()).unwrap();
    let (pte, level) = fx.leaf(BLOCK_1G + 0x1234_5000);
    assert_eq!(level, 1);
    assert_eq!(pte, Pte::leaf(1, PhysAddr::new(PA_OFFSET), Prot::RW, 0));
    assert_eq!(fx.check_refcounts(), 0);
}

#[test]
fn map_uses_2mib_blocks_where_only_2mib_alignment_allows() {
    let mut fx = Fixture::new();
    fx.map(BLOCK_1G + BLOCK_2M, 2 * BLOCK_2M, PA_OFFSET + BLOCK_2M, rw()).unwrap();
    let leaves = fx.nonzero_leaves();
    let expect: Vec<Leaf> = (1..3)
        .map(|i| {
            let pa = PhysAddr::new(PA_OFFSET + i * BLOCK_2M);
            (BLOCK_1G + i * BLOCK_2M, 2, Pte::leaf(2, pa, Prot::RW, 0))
        })
        .collect();
    assert_eq!(leaves, expect);
    assert_eq!(fx.check_refcounts(), 1);
}

#[test]
fn map_uses_4kib_pages_for_a_small_range() {
    let mut fx = Fixture::new();
    fx.map(0x4000_1000, 3 * PAGE, 0x8000_1000, rw()).unwrap();
    let leaves = fx.nonzero_leaves();
    let expect: Vec<Leaf> = (1..4)
        .map(|i| {
            let pte = Pte::leaf(3, PhysAddr::new(0x8000_0000 + i * PAGE), Prot::RW, 0);
            (0x4000_0000 + i * PAGE, 3, pte)
        })
        .collect();
    assert_eq!(leaves, expect);
    assert_eq!(fx.check_refcounts(), 2);
}

#[test]
fn map_covers_an_unaligned_range_with_the_largest_leaf_at_each_part() {
    let mut fx = Fixture::new();
    let start = BLOCK_1G - BLOCK_2M - PAGE;
    let end = 2 * BLOCK_1G + BLOCK_2M + PAGE;
    fx.topup(8);
    fx.map(start, end - start, start + PA_OFFSET, rw()).unwrap();
    let shape: Vec<(u64, u8)> = fx.nonzero_leaves().iter().map(|l| (l.0, l.1)).collect();
    assert_eq!(
        shape,
        vec![
            (start, 3),
            (BLOCK_1G - BLOCK_2M, 2),
            (BLOCK_1G, 1),
            (2 * BLOCK_1G, 2),
            (2 * BLOCK_1G + BLOCK_2M, 3),
        ]
    );
    for (ipa, level, pte) in fx.nonzero_leaves() {
        assert_eq!(pte.addr().raw(), ipa + PA_OFFSET, "leaf at {ipa:#x} L{level}");
    }
    assert_eq!(fx.check_refcounts(), 4);
}

#[test]
fn pages_mapping_uses_level_3_even_where_a_block_fits() {
    let mut fx = Fixture::new();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, rw().pages()).unwrap();
    let leaves = fx.nonzero_leaves();
    assert_eq!(leaves.len(), 512);
    assert!(leaves.iter().all(|l| l.1 == 3));
    assert_eq!(fx.check_refcounts(), 2);
}

#[test]
fn pa_misaligned_against_the_ipa_forces_smaller_leaves() {
    let mut fx = Fixture::new();
    fx.topup(8);
    // IPA 1 GiB aligned, PA only 2 MiB aligned: 512 level-2 blocks.
    fx.map(BLOCK_1G, BLOCK_1G, PA_OFFSET + BLOCK_2M, rw()).unwrap();
    let l2 = fx.leaves(range(BLOCK_1G, BLOCK_1G));
    assert_eq!(l2.len(), 512);
    assert!(
        l2.iter().all(|l| l.1 == 2 && l.2.addr().raw() == l.0 - BLOCK_1G + PA_OFFSET + BLOCK_2M)
    );
    // IPA 2 MiB aligned, PA only page aligned: 512 pages.
    fx.map(2 * BLOCK_1G, BLOCK_2M, PA_OFFSET + PAGE, rw()).unwrap();
    let l3 = fx.leaves(range(2 * BLOCK_1G, BLOCK_2M));
    assert_eq!(l3.len(), 512);
    assert!(
        l3.iter().all(|l| l.1 == 3 && l.2.addr().raw() == l.0 - 2 * BLOCK_1G + PA_OFFSET + PAGE)
    );
    assert_eq!(fx.check_refcounts(), 3);
}

#[test]
fn a_44_bit_table_never_holds_a_level_0_block() {
    let mut fx = Fixture::with(Geometry::new(44).unwrap(), TableKind::Component, ARENA_PAGES);
    assert_eq!(fx.s2.geometry().start_level(), 0);
    let l0_span = level_size(0);
    // IPA and PA both 512 GiB aligned: still level-1 blocks under a table.
    fx.map(l0_span, l0_span, 2 * l0_span, rw()).unwrap();
    let root_entry = fx.mem.read(fx.s2.root(), 1);
    assert!(root_entry.is_table(0), "level-0 entry is a table, not a block");
    let leaves = fx.nonzero_leaves();
    assert_eq!(leaves.len(), 512);
    assert!(leaves.iter().all(|l| l.1 == 1 && l.2.0 & 0b11 == 0b01));
    assert_eq!(fx.leaf(l0_span + 5 * BLOCK_1G).1, 1);
    assert_eq!(fx.check_refcounts(), 1);
}

#[test]
fn leaves_use_type_11_at_level_3_and_01_at_levels_1_and_2() {
    let mut fx = Fixture::new();
    fx.map(BLOCK_1G, BLOCK_1G, PA_OFFSET, rw()).unwrap();
    fx.map(2 * BLOCK_1G, BLOCK_2M, PA_OFFSET, rw()).unwrap();
    fx.map(3 * BLOCK_1G, PAGE, PA_OFFSET, rw()).unwrap();
    for (ipa, level, bits) in
        [(BLOCK_1G, 1, 0b01), (2 * BLOCK_1G, 2, 0b01), (3 * BLOCK_1G, 3, 0b11)]
    {
        let (pte, l) = fx.leaf(ipa);
        assert_eq!(l, level);
        assert_eq!(pte.0 & 0b11, bits, "type bits of the level-{level} leaf");
        assert!(!pte.is_contiguous());
    }
}

#[test]
fn leaves_carry_af_inner_shareable_and_the_memory_type_of_their_prot() {
    let mut fx = Fixture::new();
    let cases = [
        (Prot::RWX, 0xf, 0b11, 0b00),
        (Prot::RW, 0xf, 0b11, 0b10),
        (Prot::R, 0xf, 0b01, 0b10),
        (Prot::R | Prot::X, 0xf, 0b01, 0b00),
        (Prot::DEVICE_RW, 0x1, 0b11, 0b10),
        (Prot::DEVICE | Prot::R, 0x1, 0b01, 0b10),
    ];
    for (i, (prot, memattr, s2ap, xn)) in cases.into_iter().enumerate() {
        let ipa = 0x4000_0000 + i as u64 * PAGE;
        fx.map(ipa, PAGE, 0x8000_0000 + i as u64 * PAGE, Mapping::new(prot).with_sw(0xa)).unwrap();
        let (pte, _) = fx.leaf(ipa);
        assert_eq!((pte.0 >> 2) & 0xf, memattr, "{prot:?} MemAttr");
        assert_eq!((pte.0 >> 6) & 0b11, s2ap, "{prot:?} S2AP");
        assert_eq!((pte.0 >> 8) & 0b11, 0b11, "{prot:?} SH inner shareable");
        assert_eq!((pte.0 >> 10) & 1, 1, "{prot:?} AF");
        assert_eq!((pte.0 >> 53) & 0b11, xn, "{prot:?} XN");
        assert_eq!((pte.0 >> 55) & 0xf, 0xa, "{prot:?} software bits");
        assert_eq!(pte.prot(), prot);
    }
}

#[test]
fn every_supported_geometry_maps_its_first_and_last_pages_and_tears_down() {
    for bits in 32..=44u8 {
        let g = Geometry::new(bits).unwrap();
        let mut fx = Fixture::with(g, TableKind::Component, 256);
        let limit = g.ipa_limit();
        fx.map(0, PAGE, 0x8000_0000, rw()).unwrap();
        fx.map(limit - PAGE, PAGE, 0x9000_0000, rw()).unwrap();
        fx.map(limit - 2 * BLOCK_2M, BLOCK_2M, 0xa000_0000, rw()).unwrap();
        let page = |pa| Pte::leaf(3, PhysAddr::new(pa), Prot::RW, 0);
        assert_eq!(fx.leaf(0), (page(0x8000_0000), 3), "{bits}-bit first page");
        assert_eq!(fx.leaf(limit - PAGE), (page(0x9000_0000), 3), "{bits}-bit last page");
        let block = Pte::leaf(2, PhysAddr::new(0xa000_0000), Prot::RW, 0);
        assert_eq!(fx.leaf(limit - BLOCK_2M - PAGE), (block, 2), "{bits}-bit block");
        assert_eq!(fx.nonzero_leaves().len(), 3, "{bits}-bit leaves");
        let levels_below_root = (3 - g.start_level()) as usize;
        assert_eq!(fx.check_refcounts(), 2 * levels_below_root, "{bits}-bit tables");
        let span = fx.s2.span();
        fx.s2.unmap(&mut fx.mem, &mut fx.cache, span).unwrap();
        assert_eq!(fx.check_refcounts(), 0);
        assert_eq!(fx.unused_pages(), fx.baseline, "{bits}-bit table pages returned");
        let Fixture { mut mem, mut cache, s2, .. } = fx;
        s2.destroy(&mut mem);
        cache.drain(&mut mem);
        assert_eq!(mem.arena.free_pages(), 256, "{bits}-bit root pages returned");
    }
}

// ---------------------------------------------------------------------------
// Table memory: counts, pages_needed, out of memory (behaviour 8)
// ---------------------------------------------------------------------------

#[test]
fn mapping_1gib_in_pages_takes_exactly_513_table_pages() {
    let mut fx = Fixture::new();
    let update = Update::Map { pa: PhysAddr::new(PA_OFFSET), mapping: rw().pages() };
    assert_eq!(fx.needed(BLOCK_1G, BLOCK_1G, update), 513);
    fx.topup(513);
    fx.update(BLOCK_1G, BLOCK_1G, update).unwrap();
    assert!(fx.cache.is_empty());
    assert_eq!(fx.check_refcounts(), 513);
    assert_eq!(fx.baseline - fx.unused_pages(), 513);
}

#[test]
fn mapping_1gib_as_a_block_takes_no_table_page() {
    let mut fx = Fixture::new();
    let update = Update::Map { pa: PhysAddr::new(PA_OFFSET), mapping: rw() };
    assert_eq!(fx.needed(BLOCK_1G, BLOCK_1G, update), 0);
    fx.update(BLOCK_1G, BLOCK_1G, update).unwrap();
    assert_eq!(fx.cache.len(), CACHE_PAGES);
    assert_eq!(fx.check_refcounts(), 0);
}

#[test]
fn pages_needed_equals_what_the_commit_takes_from_the_cache() {
    let mut fx = Fixture::new();
    let map = |pa: u64, mapping| Update::Map { pa: PhysAddr::new(pa), mapping };
    // One page into an empty 1 GiB: a level-2 and a level-3 table.
    assert_eq!(fx.counted(0x4000_0000, PAGE, map(0x8000_0000, rw())), 2);
    // A neighbour in the same tables.
    assert_eq!(fx.counted(0x4000_1000, PAGE, map(0x8000_1000, rw())), 0);
    // Pages across a 1 GiB boundary.
    assert_eq!(fx.counted(3 * BLOCK_1G - PAGE, 2 * PAGE, map(0x9000_0000, rw())), 4);
    // A 1 GiB block, then one page unmapped out of it: two splits.
    assert_eq!(fx.counted(4 * BLOCK_1G, BLOCK_1G, map(PA_OFFSET, rw())), 0);
    assert_eq!(fx.counted(4 * BLOCK_1G + 0x32_7000, PAGE, Update::Unmap), 2);
    // Protect one page of a 2 MiB block under an existing table.
    assert_eq!(fx.counted(0x4020_0000, BLOCK_2M, map(0x8020_0000, rw())), 0);
    assert_eq!(fx.counted(0x4020_3000, PAGE, Update::Protect(Prot::R)), 1);
    // Per-page annotations across a 2 MiB boundary in an empty 1 GiB.
    let pages = Update::AnnotatePages(ann(3, 100));
    assert_eq!(fx.counted(5 * BLOCK_1G + BLOCK_2M - 2 * PAGE, 4 * PAGE, pages), 3);
    // A whole 2 MiB annotation in an empty 1 GiB: one level-2 table.
    assert_eq!(fx.counted(6 * BLOCK_1G, BLOCK_2M, Update::Annotate(ann(2, 1))), 1);
    // Software bits and protection of whole leaves: nothing.
    assert_eq!(fx.counted(0x4000_0000, 2 * PAGE, Update::SetSoftware(3)), 0);
    // A block over tables, then everything unmapped: nothing.
    assert_eq!(fx.counted(BLOCK_1G, BLOCK_1G, map(PA_OFFSET, rw())), 0);
    let span = fx.s2.span();
    assert_eq!(fx.counted(0, span.size(), Update::Unmap), 0);
    assert_eq!(fx.check_refcounts(), 0);
}

#[test]
fn map_with_a_cache_one_page_short_fails_and_changes_nothing() {
    let mut fx = Fixture::new();
    fx.cache.drain(&mut fx.mem);
    let update = Update::Map { pa: PhysAddr::new(0x8000_0000), mapping: rw().pages() };
    let (ipa, size) = (BLOCK_1G - PAGE, 2 * BLOCK_2M + 2 * PAGE);
    let needed = fx.needed(ipa, size, update);
    assert_eq!(needed, 2 + 1 + 3);
    fx.topup(needed - 1);
    let snap = fx.snapshot();
    fx.clear_logs();
    assert_eq!(fx.update(ipa, size, update), Err(Error::OutOfMemory));
    assert!(fx.snapshot() == snap, "table memory changed");
    assert!(fx.mem.events.is_empty(), "{:?}", fx.mem.events);
    assert_eq!(fx.cache.len(), needed - 1);
}

#[test]
fn map_with_exactly_enough_pages_succeeds_and_empties_the_cache() {
    let mut fx = Fixture::new();
    fx.cache.drain(&mut fx.mem);
    let update = Update::Map { pa: PhysAddr::new(0x8000_0000), mapping: rw().pages() };
    let (ipa, size) = (BLOCK_1G - PAGE, 2 * BLOCK_2M + 2 * PAGE);
    let needed = fx.needed(ipa, size, update);
    fx.topup(needed);
    fx.update(ipa, size, update).unwrap();
    assert!(fx.cache.is_empty());
    assert_eq!(fx.check_refcounts(), needed);
}

#[test]
fn splitting_with_an_empty_cache_fails_and_changes_nothing() {
    let mut fx = Fixture::new();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, rw()).unwrap();
    fx.map(BLOCK_1G * 2, BLOCK_1G, PA_OFFSET, rw()).unwrap();
    fx.cache.drain(&mut fx.mem);
    let snap = fx.snapshot();
    fx.clear_logs();
    for update in [
        Update::Unmap,
        Update::Protect(Prot::R),
        Update::SetSoftware(1),
        Update::Annotate(ann(1, 1)),
        Update::AnnotatePages(ann(1, 1)),
        Update::Map { pa: PhysAddr::new(0x9000_0000), mapping: rw() },
    ] {
        assert_eq!(fx.update(0x4020_1000, PAGE, update), Err(Error::OutOfMemory), "{update:?}");
        assert_eq!(fx.update(2 * BLOCK_1G, PAGE, update), Err(Error::OutOfMemory), "{update:?}");
    }
    assert!(fx.snapshot() == snap, "table memory changed");
    assert!(fx.mem.events.is_empty(), "{:?}", fx.mem.events);
}

// ---------------------------------------------------------------------------
// Identical remaps (behaviour 29)
// ---------------------------------------------------------------------------

#[test]
fn identical_remap_returns_retry_and_changes_nothing() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, 4 * PAGE, 0x8000_0000, rw()).unwrap();
    fx.map(BLOCK_1G * 2, BLOCK_1G, PA_OFFSET, rw().with_sw(3)).unwrap();
    let cached = fx.cache.len();
    let snap = fx.snapshot();
    fx.clear_logs();
    assert_eq!(fx.map(0x4000_0000, 4 * PAGE, 0x8000_0000, rw()), Err(Error::Retry));
    assert_eq!(fx.map(2 * BLOCK_1G, BLOCK_1G, PA_OFFSET, rw().with_sw(3)), Err(Error::Retry));
    assert_eq!(fx.map(0x4000_1000, 2 * PAGE, 0x8000_1000, rw().pages()), Err(Error::Retry));
    assert!(fx.snapshot() == snap, "table memory changed");
    assert!(fx.mem.events.is_empty(), "{:?}", fx.mem.events);
    assert_eq!(fx.cache.len(), cached);
}

#[test]
fn remapping_a_page_inside_an_identical_block_is_retry_without_a_split() {
    let mut fx = Fixture::new();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, rw()).unwrap();
    fx.map(2 * BLOCK_1G, BLOCK_1G, PA_OFFSET, rw()).unwrap();
    let snap = fx.snapshot();
    fx.clear_logs();
    let inside_2m = Update::Map { pa: PhysAddr::new(0x8020_5000), mapping: rw() };
    assert_eq!(fx.needed(0x4020_5000, PAGE, inside_2m), 0);
    assert_eq!(fx.update(0x4020_5000, PAGE, inside_2m), Err(Error::Retry));
    let inside_1g = PA_OFFSET + 3 * BLOCK_2M + 0x7000;
    assert_eq!(
        fx.map(2 * BLOCK_1G + 3 * BLOCK_2M + 0x7000, PAGE, inside_1g, rw()),
        Err(Error::Retry)
    );
    assert!(fx.snapshot() == snap, "table memory changed");
    assert!(fx.mem.events.is_empty());
    assert_eq!(fx.leaf(0x4020_5000).1, 2);
    assert_eq!(fx.leaf(2 * BLOCK_1G).1, 1);
}

// ---------------------------------------------------------------------------
// Splits (behaviour 7)
// ---------------------------------------------------------------------------

fn block_fixture() -> (Fixture, Pte) {
    let mut fx = Fixture::new();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, Mapping::new(Prot::RWX).with_sw(5)).unwrap();
    let (block, level) = fx.leaf(0x4020_0000);
    assert_eq!(level, 2);
    fx.clear_logs();
    (fx, block)
}

#[test]
fn unmapping_one_page_of_a_2mib_block_keeps_the_other_511() {
    let (mut fx, block) = block_fixture();
    let tables = fx.tables();
    fx.unmap(0x4020_7000, PAGE).unwrap();
    assert_eq!(fx.leaf(0x4020_7000), (Pte::ZERO, 3));
    assert_split_keeps_siblings(&fx, 0x4020_0000, 0x8020_0000, block, 7);
    assert_eq!(fx.check_refcounts(), 2);
    let (l3, _) = fx.slot(0x4020_0000, 3);
    assert_eq!(fx.mem.arena.page_count(l3), 1 + 511);
    fx.check_maintenance(&tables);
}

#[test]
fn protecting_one_page_of_a_2mib_block_keeps_the_other_511() {
    let (mut fx, block) = block_fixture();
    let tables = fx.tables();
    fx.protect(0x4020_7000, PAGE, Prot::R).unwrap();
    let (pte, level) = fx.leaf(0x4020_7000);
    assert_eq!((pte, level), (Pte::leaf(3, PhysAddr::new(0x8020_7000), Prot::R, 5), 3));
    assert_split_keeps_siblings(&fx, 0x4020_0000, 0x8020_0000, block, 7);
    let (l3, _) = fx.slot(0x4020_0000, 3);
    assert_eq!(fx.mem.arena.page_count(l3), 1 + 512);
    assert_eq!(fx.check_refcounts(), 2);
    fx.check_maintenance(&tables);
}

#[test]
fn annotating_one_page_of_a_2mib_block_keeps_the_other_511() {
    let (mut fx, block) = block_fixture();
    let tables = fx.tables();
    let a = ann(2, 9);
    fx.annotate(0x4020_7000, PAGE, a).unwrap();
    assert_eq!(fx.leaf(0x4020_7000), (Pte::annotated(a), 3));
    assert_split_keeps_siblings(&fx, 0x4020_0000, 0x8020_0000, block, 7);
    assert_eq!(fx.check_refcounts(), 2);
    fx.check_maintenance(&tables);
}

#[test]
fn protecting_a_whole_block_changes_it_in_place_without_a_split() {
    let (mut fx, _) = block_fixture();
    let cached = fx.cache.len();
    fx.protect(0x4020_0000, BLOCK_2M, Prot::R).unwrap();
    assert_eq!(fx.leaf(0x4020_0000), (Pte::leaf(2, PhysAddr::new(0x8020_0000), Prot::R, 5), 2));
    assert_eq!(fx.cache.len(), cached);
    // Asking for what a straddled block already has does not split it.
    assert_eq!(fx.needed(0x4020_1000, PAGE, Update::Protect(Prot::R)), 0);
    fx.protect(0x4020_1000, PAGE, Prot::R).unwrap();
    assert_eq!(fx.leaf(0x4020_1000).1, 2);
}

#[test]
fn unmapping_one_page_of_a_1gib_block_splits_twice_and_keeps_the_rest() {
    let mut fx = Fixture::new();
    fx.map(BLOCK_1G, BLOCK_1G, PA_OFFSET, rw()).unwrap();
    let tables = fx.tables();
    fx.clear_logs();
    let hole = BLOCK_1G + 3 * BLOCK_2M + 7 * PAGE;
    fx.unmap(hole, PAGE).unwrap();
    assert_eq!(fx.leaf(hole), (Pte::ZERO, 3));
    for i in (0..512u64).filter(|&i| i != 3) {
        let ipa = BLOCK_1G + i * BLOCK_2M;
        let pa = PhysAddr::new(PA_OFFSET + i * BLOCK_2M);
        assert_eq!(fx.leaf(ipa), (Pte::leaf(2, pa, Prot::RW, 0), 2), "2 MiB block {i}");
    }
    let block = Pte::leaf(2, PhysAddr::new(PA_OFFSET + 3 * BLOCK_2M), Prot::RW, 0);
    assert_split_keeps_siblings(&fx, BLOCK_1G + 3 * BLOCK_2M, PA_OFFSET + 3 * BLOCK_2M, block, 7);
    assert_eq!(fx.check_refcounts(), 2);
    fx.check_maintenance(&tables);
    // The block is broken at level 1, then its level-2 child, then the page.
    let mut expect = Vec::new();
    expect.extend(bbm_leaf(BLOCK_1G, 1));
    expect.extend(bbm_leaf(BLOCK_1G + 3 * BLOCK_2M, 2));
    expect.extend(bbm_leaf(hole, 3));
    expect.push(TlbOp::DsbIshst);
    assert_eq!(fx.tlb(), expect.as_slice());
}

// ---------------------------------------------------------------------------
// TLB maintenance (behaviours 32, 33, 34)
// ---------------------------------------------------------------------------

#[test]
fn remapping_a_valid_page_to_another_pa_breaks_before_make() {
    let mut fx = Fixture::new();
    let ipa = 0x4000_3000;
    fx.map(ipa, PAGE, 0x8000_0000, rw()).unwrap();
    let (table, index) = fx.slot(ipa, 3);
    let old = fx.mem.read(table, index);
    fx.clear_logs();
    fx.map(ipa, PAGE, 0x9000_0000, rw()).unwrap();
    let new = Pte::leaf(3, PhysAddr::new(0x9000_0000), Prot::RW, 0);
    let mut expect = vec![Event::Write { table, index, old, new: Pte::ZERO }];
    expect.extend(bbm_leaf(ipa, 3).map(Event::Tlb));
    expect.push(Event::Write { table, index, old: Pte::ZERO, new });
    expect.push(Event::Tlb(TlbOp::DsbIshst));
    assert_eq!(fx.mem.events, expect);
    assert_eq!(fx.leaf(ipa), (new, 3));
}

#[test]
fn changing_the_memory_type_or_block_pa_breaks_before_make() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, PAGE, 0x0900_0000, Mapping::new(Prot::DEVICE_RW)).unwrap();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, rw()).unwrap();
    let tables = fx.tables();
    fx.clear_logs();
    fx.map(0x4000_0000, PAGE, 0x0900_0000, rw()).unwrap();
    let mut expect = bbm_leaf(0x4000_0000, 3).to_vec();
    expect.push(TlbOp::DsbIshst);
    assert_eq!(fx.tlb(), expect.as_slice());
    fx.check_maintenance(&tables);
    let tables = fx.tables();
    fx.clear_logs();
    fx.map(0x4020_0000, BLOCK_2M, 0x8040_0000, rw()).unwrap();
    let mut expect = bbm_leaf(0x4020_0000, 2).to_vec();
    expect.push(TlbOp::DsbIshst);
    assert_eq!(fx.tlb(), expect.as_slice());
    fx.check_maintenance(&tables);
}

#[test]
fn splitting_a_block_breaks_it_before_linking_the_table() {
    let (mut fx, block) = block_fixture();
    let (l2, i2) = fx.slot(0x4020_0000, 2);
    fx.unmap(0x4020_5000, PAGE).unwrap();
    let child = fx.mem.read(l2, i2).addr();
    let events = &fx.mem.events;
    let cut = position(events, Event::Write { table: l2, index: i2, old: block, new: Pte::ZERO });
    let link = position(
        events,
        Event::Write { table: l2, index: i2, old: Pte::ZERO, new: Pte::table(child) },
    );
    let bbm: Vec<Event> = bbm_leaf(0x4020_0000, 2).map(Event::Tlb).to_vec();
    assert_eq!(
        &events[cut + 1..link],
        bbm.as_slice(),
        "block broken, then invalidated, then linked"
    );
    let fills: Vec<usize> = (0..events.len())
        .filter(|&k| matches!(events[k], Event::Write { table, new, .. } if table == child && new.is_valid()))
        .collect();
    assert_eq!(fills.len(), 512);
    assert!(fills.iter().all(|&k| k < cut), "the table is filled before it is linked");
    let removal = position(
        events,
        Event::Write { table: child, index: 5, old: block.split_child(2, 5), new: Pte::ZERO },
    );
    assert!(removal > link);
    let mut expect = bbm_leaf(0x4020_0000, 2).to_vec();
    expect.extend(bbm_leaf(0x4020_5000, 3));
    expect.push(TlbOp::DsbIshst);
    assert_eq!(fx.tlb(), expect.as_slice());
}

#[test]
fn relaxing_permissions_invalidates_locally_and_never_broadcasts() {
    let mut fx = Fixture::new();
    let ipa = 0x4000_0000;
    fx.map(ipa, PAGE, 0x8000_0000, Mapping::new(Prot::R)).unwrap();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, Mapping::new(Prot::R)).unwrap();
    let (table, index) = fx.slot(ipa, 3);
    let old = fx.mem.read(table, index);
    fx.clear_logs();
    fx.protect(ipa, PAGE, Prot::RW).unwrap();
    let new = Pte::leaf(3, PhysAddr::new(0x8000_0000), Prot::RW, 0);
    let local = TlbOp::InvalidateIpaLocal { vmid: VMID, ipa: Ipa::new(ipa), level: 3 };
    assert_eq!(
        fx.mem.events,
        vec![
            Event::Write { table, index, old, new },
            Event::Tlb(TlbOp::DsbIshst),
            Event::Tlb(local),
            Event::Tlb(TlbOp::DsbNsh),
            Event::Tlb(TlbOp::Isb),
            Event::Tlb(TlbOp::DsbIshst),
        ]
    );
    fx.clear_logs();
    fx.protect(0x4020_0000, BLOCK_2M, Prot::RWX).unwrap();
    let local = TlbOp::InvalidateIpaLocal { vmid: VMID, ipa: Ipa::new(0x4020_0000), level: 2 };
    assert!(fx.tlb().contains(&local));
    assert!(
        !fx.tlb().iter().any(|op| matches!(
            op,
            TlbOp::InvalidateIpa { .. }
                | TlbOp::InvalidateStage1 { .. }
                | TlbOp::InvalidateVmid { .. }
        )),
        "{:?}",
        fx.tlb()
    );
}

#[test]
fn restricting_permissions_broadcasts_after_the_write() {
    let mut fx = Fixture::new();
    let ipa = 0x4000_0000;
    fx.map(ipa, PAGE, 0x8000_0000, rw()).unwrap();
    let (table, index) = fx.slot(ipa, 3);
    let old = fx.mem.read(table, index);
    fx.clear_logs();
    fx.protect(ipa, PAGE, Prot::R).unwrap();
    let new = Pte::leaf(3, PhysAddr::new(0x8000_0000), Prot::R, 0);
    let mut expect = vec![Event::Write { table, index, old, new }];
    expect.extend(bbm_leaf(ipa, 3).map(Event::Tlb));
    expect.push(Event::Tlb(TlbOp::DsbIshst));
    assert_eq!(fx.mem.events, expect, "written in place, then broadcast invalidation");
}

#[test]
fn a_software_bits_only_change_emits_no_tlb_invalidation() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, 2 * PAGE, 0x8000_0000, rw()).unwrap();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, rw()).unwrap();
    fx.clear_logs();
    fx.update(0x4000_0000, 2 * PAGE, Update::SetSoftware(3)).unwrap();
    fx.update(0x4020_0000, BLOCK_2M, Update::SetSoftware(9)).unwrap();
    // Remapping with other software bits only is the same kind of change.
    fx.map(0x4000_0000, PAGE, 0x8000_0000, rw().with_sw(4)).unwrap();
    assert_eq!(fx.leaf(0x4000_0000).0.sw(), 4);
    assert_eq!(fx.leaf(0x4000_1000).0.sw(), 3);
    assert_eq!(fx.leaf(0x4020_0000).0.sw(), 9);
    assert!(!fx.tlb().iter().any(is_invalidation), "{:?}", fx.tlb());
    assert!(!fx.mem.events.iter().any(|e| matches!(e, Event::Write { new, .. } if new.is_zero())));
}

#[test]
fn unmapping_everything_returns_every_table_page() {
    let mut fx = Fixture::new();
    fx.topup(16);
    fx.map(0x4000_0000, 5 * PAGE, 0x8000_0000, rw()).unwrap();
    fx.map(0x4020_0000, 3 * BLOCK_2M + PAGE, 0x8020_0000, rw()).unwrap();
    fx.map(BLOCK_1G * 3, BLOCK_1G, PA_OFFSET, rw()).unwrap();
    fx.map(BLOCK_1G * 4 - PAGE, 2 * PAGE, 0x9000_0000, rw().pages()).unwrap();
    fx.annotate(BLOCK_1G * 7 + 0x5000, 3 * PAGE, ann(4, 2)).unwrap();
    fx.update(BLOCK_1G * 8, 4 * PAGE, Update::AnnotatePages(ann(5, 0))).unwrap();
    assert!(fx.check_refcounts() > 0);
    let tables = fx.tables();
    fx.clear_logs();
    let span = fx.s2.span();
    fx.s2.unmap(&mut fx.mem, &mut fx.cache, span).unwrap();
    assert_eq!(fx.check_refcounts(), 0);
    assert_eq!(fx.unused_pages(), fx.baseline);
    assert!(fx.nonzero_leaves().is_empty());
    fx.check_maintenance(&tables);
    for t in &tables[1..] {
        assert!(fx.mem.arena.is_free(t.page), "table {} not returned", t.page);
    }
}

#[test]
fn unlinking_a_table_invalidates_the_vmid_before_freeing_its_page() {
    let mut fx = Fixture::new();
    let ipa = 0x4000_0000;
    fx.map(ipa, PAGE, 0x8000_0000, rw()).unwrap();
    let (root, ri) = fx.slot(ipa, 1);
    let (l2, l2i) = fx.slot(ipa, 2);
    let l3 = fx.mem.read(l2, l2i).addr();
    fx.clear_logs();
    fx.unmap(ipa, PAGE).unwrap();
    let events = &fx.mem.events;
    for (parent, index, page) in [(l2, l2i, l3), (root, ri, l2)] {
        let cut = position(
            events,
            Event::Write { table: parent, index, old: Pte::table(page), new: Pte::ZERO },
        );
        let free = position(events, Event::Free(page));
        let vmid = events[cut..free]
            .iter()
            .position(|e| *e == Event::Tlb(TlbOp::InvalidateVmid { vmid: VMID }));
        assert!(vmid.is_some(), "table {page} freed before the VMID was invalidated: {events:?}");
    }
    assert_eq!(fx.unused_pages(), fx.baseline);
}

#[test]
fn replacing_paged_tables_by_a_block_frees_them_after_invalidation() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, BLOCK_2M, 0x8000_0000, rw().pages()).unwrap();
    let used = fx.baseline - fx.unused_pages();
    let tables = fx.tables();
    fx.clear_logs();
    fx.map(0x4000_0000, BLOCK_2M, 0x9000_0000, rw()).unwrap();
    assert_eq!(fx.leaf(0x4000_0000), (Pte::leaf(2, PhysAddr::new(0x9000_0000), Prot::RW, 0), 2));
    assert_eq!(fx.baseline - fx.unused_pages(), used - 1);
    assert_eq!(fx.check_refcounts(), 1);
    fx.check_maintenance(&tables);
}

// ---------------------------------------------------------------------------
// Annotations (behaviours 1, 5, 9)
// ---------------------------------------------------------------------------

#[test]
fn annotation_reads_back_as_an_invalid_entry_with_the_same_owner_and_meta() {
    let mut fx = Fixture::new();
    let a = ann(0xbeef, (1 << META_BITS) - 1);
    fx.annotate(0x4000_0000, PAGE, a).unwrap();
    let (pte, level) = fx.leaf(0x4000_0000);
    assert_eq!(level, 3);
    assert_eq!(pte.0 & 1, 0, "bit 0 clear");
    assert_eq!(pte.annotation(), Some(a));
    assert_eq!(pte.annotation().unwrap().owner(), OwnerId(0xbeef));
    assert_eq!(pte.annotation().unwrap().meta(), (1 << META_BITS) - 1);
}

#[test]
fn owner_0_annotation_on_a_live_component_table_is_refused() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, 4 * PAGE, 0x8000_0000, rw()).unwrap();
    fx.annotate(0x4000_4000, PAGE, ann(3, 0)).unwrap();
    let snap = fx.snapshot();
    fx.clear_logs();
    for (ipa, size) in [(0x4000_0000, PAGE), (0x4000_4000, PAGE), (0x4000_0000, BLOCK_1G)] {
        assert_eq!(fx.annotate(ipa, size, Annotation::DEFAULT), Err(Error::InvalidArgument));
        let update = Update::Annotate(Annotation::DEFAULT);
        assert_eq!(
            fx.s2.pages_needed(&fx.mem, range(ipa, size), update),
            Err(Error::InvalidArgument)
        );
    }
    assert!(fx.snapshot() == snap);
    assert!(fx.mem.events.is_empty());
}

#[test]
fn owner_0_annotation_is_allowed_once_a_component_table_is_torn_down() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, 4 * PAGE, 0x8000_0000, rw()).unwrap();
    fx.annotate(0x4000_4000, PAGE, ann(3, 0)).unwrap();
    fx.s2.start_teardown();
    assert!(fx.s2.is_dying());
    let tables = fx.tables();
    fx.clear_logs();
    fx.annotate(0x4000_0000, 5 * PAGE, Annotation::DEFAULT).unwrap();
    assert!(fx.nonzero_leaves().is_empty());
    assert_eq!(fx.check_refcounts(), 0);
    assert_eq!(fx.unused_pages(), fx.baseline);
    fx.check_maintenance(&tables);
    assert!(fx.tlb().contains(&TlbOp::InvalidateIpa {
        vmid: VMID,
        ipa: Ipa::new(0x4000_3000),
        level: 3
    }));
}

#[test]
fn owner_0_annotation_is_allowed_on_the_ledger() {
    let mut fx = Fixture::ledger();
    fx.annotate(0x4000_0000, 4 * PAGE, ann(3, 7)).unwrap();
    fx.annotate(0x4000_1000, PAGE, Annotation::DEFAULT).unwrap();
    assert_eq!(fx.leaf(0x4000_1000), (Pte::ZERO, 3));
    assert_eq!(fx.leaf(0x4000_2000), (Pte::annotated(ann(3, 7)), 3));
    assert_eq!(fx.check_refcounts(), 2);
}

#[test]
fn per_page_annotations_naming_owner_0_are_refused_everywhere() {
    let mut ledger = Fixture::ledger();
    let update = Update::AnnotatePages(Annotation::DEFAULT);
    assert_eq!(ledger.update(0x4000_0000, PAGE, update), Err(Error::InvalidArgument));
    let mut dying = Fixture::new();
    dying.s2.start_teardown();
    assert_eq!(dying.update(0x4000_0000, PAGE, update), Err(Error::InvalidArgument));
}

#[test]
fn annotating_a_whole_2mib_block_writes_one_level_2_entry() {
    for mut fx in [Fixture::new(), Fixture::ledger()] {
        let a = ann(4, 77);
        assert_eq!(fx.needed(0x4020_0000, BLOCK_2M, Update::Annotate(a)), 1);
        fx.annotate(0x4020_0000, BLOCK_2M, a).unwrap();
        assert_eq!(fx.leaf(0x4020_0000), (Pte::annotated(a), 2));
        assert_eq!(fx.leaf(0x403f_f000), (Pte::annotated(a), 2));
        assert_eq!(fx.leaf(0x4040_0000), (Pte::ZERO, 2));
        assert_eq!(fx.nonzero_leaves(), vec![(0x4020_0000, 2, Pte::annotated(a))]);
        assert_eq!(fx.check_refcounts(), 1);
    }
}

#[test]
fn annotating_a_whole_1gib_block_writes_one_level_1_entry() {
    for mut fx in [Fixture::new(), Fixture::ledger()] {
        let a = ann(4, 78);
        fx.annotate(BLOCK_1G, BLOCK_1G, a).unwrap();
        assert_eq!(fx.nonzero_leaves(), vec![(BLOCK_1G, 1, Pte::annotated(a))]);
        assert_eq!(fx.check_refcounts(), 0);
        assert_eq!(fx.cache.len(), CACHE_PAGES);
    }
}

#[test]
fn annotating_a_whole_block_mapped_in_pages_frees_its_table() {
    let mut fx = Fixture::new();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, rw().pages()).unwrap();
    let tables = fx.tables();
    fx.clear_logs();
    let a = ann(6, 1);
    fx.annotate(0x4020_0000, BLOCK_2M, a).unwrap();
    assert_eq!(fx.nonzero_leaves(), vec![(0x4020_0000, 2, Pte::annotated(a))]);
    assert_eq!(fx.check_refcounts(), 1);
    fx.check_maintenance(&tables);
}

#[test]
fn annotating_a_whole_block_with_owner_0_on_a_ledger_frees_the_subtree() {
    let mut fx = Fixture::ledger();
    fx.annotate(0x4020_3000, 3 * PAGE, ann(5, 1)).unwrap();
    fx.annotate(0x4040_0000, PAGE, ann(5, 2)).unwrap();
    assert_eq!(fx.check_refcounts(), 3);
    let (l2, _) = fx.slot(0x4020_0000, 2);
    fx.clear_logs();
    fx.annotate(0x4020_0000, BLOCK_2M, Annotation::DEFAULT).unwrap();
    // The zero moved up: the level-2 entry covers the whole 2 MiB.
    assert_eq!(fx.leaf(0x4020_3000), (Pte::ZERO, 2));
    assert_eq!(fx.mem.arena.page_count(l2), 1 + 1);
    assert_eq!(fx.check_refcounts(), 2);
    assert!(fx.tlb().is_empty());
    // Clearing the last block frees the level-2 table too.
    fx.annotate(0x4040_0000, BLOCK_2M, Annotation::DEFAULT).unwrap();
    assert_eq!(fx.leaf(0x4040_0000), (Pte::ZERO, 1));
    assert_eq!(fx.check_refcounts(), 0);
    assert_eq!(fx.unused_pages(), fx.baseline);
    assert!(fx.tlb().is_empty());
}

#[test]
fn annotating_a_whole_1gib_with_owner_0_on_a_ledger_frees_every_table_below() {
    let mut fx = Fixture::ledger();
    fx.topup(16);
    fx.annotate(BLOCK_1G + 0x3000, PAGE, ann(5, 1)).unwrap();
    fx.update(BLOCK_1G + 5 * BLOCK_2M, 2 * PAGE, Update::AnnotatePages(ann(5, 10))).unwrap();
    fx.annotate(BLOCK_1G + 9 * BLOCK_2M, BLOCK_2M, ann(5, 3)).unwrap();
    assert_eq!(fx.check_refcounts(), 3);
    fx.annotate(BLOCK_1G, BLOCK_1G, Annotation::DEFAULT).unwrap();
    assert_eq!(fx.leaf(BLOCK_1G + 0x3000), (Pte::ZERO, 1));
    assert_eq!(fx.check_refcounts(), 0);
    assert_eq!(fx.unused_pages(), fx.baseline);
}

#[test]
fn partial_owner_0_annotation_frees_tables_that_become_empty() {
    let mut fx = Fixture::ledger();
    fx.annotate(0x4020_3000, 3 * PAGE, ann(5, 1)).unwrap();
    fx.annotate(0x4020_0000, 0x10_0000, Annotation::DEFAULT).unwrap();
    assert_eq!(fx.leaf(0x4020_3000), (Pte::ZERO, 1));
    assert_eq!(fx.check_refcounts(), 0);
    assert_eq!(fx.unused_pages(), fx.baseline);
}

#[test]
fn an_annotation_whose_meta_overflows_is_refused_and_changes_nothing() {
    assert_eq!(Annotation::new(OwnerId(1), 1 << META_BITS), Err(Error::InvalidArgument));
    assert_eq!(Annotation::new(OwnerId::DEFAULT, 1), Err(Error::InvalidArgument));
    let mut fx = Fixture::ledger();
    fx.annotate(0x4000_0000, PAGE, ann(1, 1)).unwrap();
    let last = (1 << META_BITS) - 1;
    let snap = fx.snapshot();
    fx.clear_logs();
    let overflow = Update::AnnotatePages(ann(2, last - 1));
    assert_eq!(fx.update(0x4000_0000, 3 * PAGE, overflow), Err(Error::InvalidArgument));
    assert_eq!(
        fx.s2.pages_needed(&fx.mem, range(0x4000_0000, 3 * PAGE), overflow),
        Err(Error::InvalidArgument)
    );
    assert!(fx.snapshot() == snap);
    assert!(fx.mem.events.is_empty());
    // Exactly reaching the largest meta is fine.
    fx.update(0x4000_0000, 2 * PAGE, overflow).unwrap();
    assert_eq!(fx.leaf(0x4000_1000).0.annotation().unwrap().meta(), last);
}

#[test]
fn annotate_pages_writes_metadata_counting_up_per_page() {
    let mut fx = Fixture::new();
    fx.map(0x401f_c000, PAGE, 0x8000_0000, rw()).unwrap();
    let tables = fx.tables();
    fx.clear_logs();
    let first = ann(3, 10);
    let start = 0x4020_0000 - 4 * PAGE;
    fx.update(start, 8 * PAGE, Update::AnnotatePages(first)).unwrap();
    for i in 0..8 {
        let (pte, level) = fx.leaf(start + i * PAGE);
        assert_eq!(level, 3);
        assert_eq!(pte.annotation(), Some(ann(3, 10 + i)), "page {i}");
    }
    assert_eq!(fx.leaf(start + 8 * PAGE), (Pte::ZERO, 3));
    assert_eq!(fx.check_refcounts(), 3);
    fx.check_maintenance(&tables);
}

#[test]
fn annotating_valid_pages_of_a_component_table_invalidates_them() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, 2 * PAGE, 0x8000_0000, rw()).unwrap();
    let tables = fx.tables();
    fx.clear_logs();
    fx.annotate(0x4000_0000, 2 * PAGE, ann(2, 5)).unwrap();
    let mut expect = bbm_leaf(0x4000_0000, 3).to_vec();
    expect.extend(bbm_leaf(0x4000_1000, 3));
    expect.push(TlbOp::DsbIshst);
    assert_eq!(fx.tlb(), expect.as_slice());
    fx.check_maintenance(&tables);
}

// ---------------------------------------------------------------------------
// Ledger
// ---------------------------------------------------------------------------

#[test]
fn ledger_tables_emit_no_tlb_operations() {
    let mut fx = Fixture::ledger();
    fx.topup(16);
    fx.map(0x4000_0000, 4 * PAGE, 0x8000_0000, rw()).unwrap();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, rw()).unwrap();
    fx.map(0x4000_0000, PAGE, 0x9000_0000, rw()).unwrap(); // break-before-make
    fx.protect(0x4000_1000, PAGE, Prot::RWX).unwrap(); // relax
    fx.protect(0x4000_2000, PAGE, Prot::R).unwrap(); // restrict
    fx.unmap(0x4020_1000, PAGE).unwrap(); // split
    fx.annotate(0x4000_3000, PAGE, ann(1, 1)).unwrap();
    fx.update(0x4040_0000, 3 * PAGE, Update::AnnotatePages(ann(1, 5))).unwrap();
    fx.map(0x4040_0000, BLOCK_2M, 0x8040_0000, rw()).unwrap(); // table -> block
    fx.s2.write_protect(&mut fx.mem, range(0x4000_0000, BLOCK_1G)).unwrap();
    fx.annotate(BLOCK_1G, BLOCK_1G, Annotation::DEFAULT).unwrap();
    fx.check_refcounts();
    assert!(fx.tlb().is_empty(), "{:?}", fx.tlb());
    let Fixture { mut mem, s2, .. } = fx;
    s2.destroy(&mut mem);
    assert!(mem.arena.tlb_log.is_empty(), "{:?}", mem.arena.tlb_log);
}

// ---------------------------------------------------------------------------
// Greedy identity map (behaviours 11-15)
// ---------------------------------------------------------------------------

/// Runs one greedy fault and checks it mapped `expect` (identity, `prot`),
/// inside `permitted`, containing the fault, and changed no non-zero leaf
/// outside it.
fn assert_greedy(fx: &mut Fixture, fault: u64, permitted: IpaRange, prot: Prot, expect: IpaRange) {
    let before = fx.nonzero_leaves();
    let tables = fx.tables();
    fx.clear_logs();
    let got = fx.idmap(fault, permitted, prot).unwrap();
    assert_eq!(got, expect, "granule for a fault at {fault:#x} in {permitted:?}");
    assert!(got.contains(Ipa::new(fault)));
    assert!(permitted.covers(got.start().raw(), got.size()));
    let (pte, level) = fx.leaf(fault);
    assert_eq!(level_size(level), got.size());
    assert_eq!(pte, Pte::leaf(level, PhysAddr::new(got.start().raw()), prot, 0), "identity leaf");
    let after = fx.nonzero_leaves();
    let outside = |l: &&Leaf| l.0 + level_size(l.1) <= got.start().raw() || l.0 >= got.end().raw();
    assert!(before.iter().all(|l| outside(&l)), "the granule was not empty");
    let before: Vec<&Leaf> = before.iter().filter(outside).collect();
    let after_out: Vec<&Leaf> = after.iter().filter(outside).collect();
    assert_eq!(before, after_out, "an entry outside the granule changed");
    assert_eq!(after.len(), before.len() + 1);
    fx.check_refcounts();
    fx.check_maintenance(&tables);
}

#[test]
fn greedy_idmap_maps_a_1gib_block_when_the_range_allows() {
    let mut fx = Fixture::new();
    let permitted = range(BLOCK_1G, 2 * BLOCK_1G);
    let fault = BLOCK_1G + BLOCK_1G / 2 + 0x1234;
    assert_greedy(&mut fx, fault, permitted, Prot::RWX, range(BLOCK_1G, BLOCK_1G));
    assert_eq!(fx.check_refcounts(), 0);
}

#[test]
fn greedy_idmap_maps_a_2mib_block_inside_a_2mib_aligned_range() {
    let mut fx = Fixture::new();
    let permitted = range(0x4020_0000, 3 * BLOCK_2M);
    assert_greedy(&mut fx, 0x4050_1000, permitted, Prot::RWX, range(0x4040_0000, BLOCK_2M));
    assert_greedy(&mut fx, 0x4020_0000, permitted, Prot::RWX, range(0x4020_0000, BLOCK_2M));
}

#[test]
fn greedy_idmap_maps_a_page_inside_a_small_unaligned_range() {
    let mut fx = Fixture::new();
    let permitted = range(0x4000_3000, 5 * PAGE);
    assert_greedy(&mut fx, 0x4000_6abc, permitted, Prot::RWX, range(0x4000_6000, PAGE));
    assert_greedy(&mut fx, 0x4000_3000, permitted, Prot::RWX, range(0x4000_3000, PAGE));
    assert_greedy(&mut fx, 0x4000_7fff, permitted, Prot::RWX, range(0x4000_7000, PAGE));
}

#[test]
fn greedy_idmap_uses_blocks_only_where_the_range_covers_them() {
    let mut fx = Fixture::new();
    let permitted = range(0x401f_f000, 0x4060_1000 - 0x401f_f000);
    let dev = Prot::DEVICE_RW;
    assert_greedy(&mut fx, 0x4020_0000, permitted, dev, range(0x4020_0000, BLOCK_2M));
    assert_greedy(&mut fx, 0x401f_f000, permitted, dev, range(0x401f_f000, PAGE));
    assert_greedy(&mut fx, 0x4060_0000, permitted, dev, range(0x4060_0000, PAGE));
    assert_greedy(&mut fx, 0x405f_ffff, permitted, dev, range(0x4040_0000, BLOCK_2M));
}

#[test]
fn greedy_idmap_never_changes_an_entry_outside_the_granule() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, PAGE, 0x4000_0000, Mapping::new(Prot::RWX)).unwrap();
    fx.map(0x4000_2000, PAGE, 0x4000_2000, Mapping::new(Prot::R)).unwrap();
    fx.annotate(0x4000_4000, PAGE, ann(2, 8)).unwrap();
    fx.map(0x4020_0000, BLOCK_2M, 0x4020_0000, Mapping::new(Prot::RWX)).unwrap();
    fx.annotate(0x4060_0000, BLOCK_2M, ann(3, 1)).unwrap();
    fx.map(0x0900_0000, 4 * PAGE, 0x0900_0000, Mapping::new(Prot::DEVICE_RW)).unwrap();
    let ram = range(0x4000_0000, 3 * BLOCK_1G);
    let all = range(0, 1 << 40);
    assert_greedy(&mut fx, 0x4000_1000, ram, Prot::RWX, range(0x4000_1000, PAGE));
    assert_greedy(&mut fx, 0x4000_3000, ram, Prot::RWX, range(0x4000_3000, PAGE));
    assert_greedy(&mut fx, 0x4000_5000, ram, Prot::RWX, range(0x4000_5000, PAGE));
    assert_greedy(&mut fx, 0x4040_0000, ram, Prot::RWX, range(0x4040_0000, BLOCK_2M));
    assert_greedy(&mut fx, 0x4080_0000, ram, Prot::RWX, range(0x4080_0000, BLOCK_2M));
    assert_greedy(&mut fx, 0x8000_0000, ram, Prot::RWX, range(0x8000_0000, BLOCK_1G));
    assert_greedy(&mut fx, 0x0900_4000, all, Prot::DEVICE_RW, range(0x0900_4000, PAGE));
    assert_greedy(&mut fx, 0x0920_0000, all, Prot::DEVICE_RW, range(0x0920_0000, BLOCK_2M));
}

#[test]
fn greedy_idmap_picks_a_smaller_level_next_to_an_existing_mapping() {
    let mut fx = Fixture::new();
    let all = range(0, 1 << 40);
    fx.map(0x4000_0000, PAGE, 0x4000_0000, Mapping::new(Prot::RWX)).unwrap();
    assert_greedy(&mut fx, 0x4000_5000, all, Prot::RWX, range(0x4000_5000, PAGE));
    assert_greedy(&mut fx, 0x4020_0000, all, Prot::RWX, range(0x4020_0000, BLOCK_2M));
    assert_greedy(&mut fx, 0x4_0000_0000, all, Prot::RWX, range(0x4_0000_0000, BLOCK_1G));
}

#[test]
fn greedy_idmap_never_maps_a_level_0_block() {
    let mut fx = Fixture::with(Geometry::new(44).unwrap(), TableKind::Component, ARENA_PAGES);
    let all = range(0, 1 << 44);
    let fault = 3 * level_size(0) + 0x1234_5000;
    assert_greedy(&mut fx, fault, all, Prot::RWX, range(3 * level_size(0), BLOCK_1G));
}

#[test]
fn a_repeated_greedy_fault_reports_exists_and_changes_nothing() {
    let mut fx = Fixture::new();
    let permitted = range(0x4000_0000, BLOCK_1G);
    fx.idmap(0x4000_5000, permitted, Prot::RWX).unwrap();
    let snap = fx.snapshot();
    fx.clear_logs();
    assert_eq!(fx.idmap(0x4000_5000, permitted, Prot::RWX), Err(Error::Exists));
    assert_eq!(fx.idmap(0x7fff_f000, permitted, Prot::RWX), Err(Error::Exists));
    assert!(fx.snapshot() == snap);
    assert!(fx.mem.events.is_empty());
}

#[test]
fn a_greedy_fault_on_an_annotated_page_is_refused_with_permission() {
    let mut fx = Fixture::new();
    fx.annotate(0x4000_5000, PAGE, ann(2, 0)).unwrap();
    fx.annotate(0x4060_0000, BLOCK_2M, ann(2, 1)).unwrap();
    let permitted = range(0x4000_0000, BLOCK_1G);
    let snap = fx.snapshot();
    fx.clear_logs();
    assert_eq!(fx.idmap(0x4000_5000, permitted, Prot::RWX), Err(Error::Permission));
    assert_eq!(fx.idmap(0x4061_2000, permitted, Prot::RWX), Err(Error::Permission));
    assert!(fx.snapshot() == snap);
    assert!(fx.mem.events.is_empty());
}

#[test]
fn a_greedy_fault_outside_the_permitted_range_is_refused() {
    let mut fx = Fixture::new();
    let permitted = range(0x4000_0000, BLOCK_2M);
    let snap = fx.snapshot();
    assert_eq!(fx.idmap(0x3fff_f000, permitted, Prot::RWX), Err(Error::InvalidArgument));
    assert_eq!(fx.idmap(0x4020_0000, permitted, Prot::RWX), Err(Error::InvalidArgument));
    let beyond = range(1 << 40, BLOCK_2M);
    assert_eq!(fx.idmap(1 << 40, beyond, Prot::RWX), Err(Error::InvalidArgument));
    assert_eq!(
        fx.idmap(0x4000_0000, permitted, Prot::DEVICE | Prot::RWX),
        Err(Error::InvalidArgument)
    );
    assert!(fx.snapshot() == snap);
}

#[test]
fn greedy_idmap_recovers_from_out_of_memory_by_dropping_mmio() {
    let mut fx = Fixture::new();
    // Earlier faults: MMIO pages, RAM pages, a RAM block, an annotated page.
    fx.map(0x0900_0000, 16 * PAGE, 0x0900_0000, Mapping::new(Prot::DEVICE_RW)).unwrap();
    fx.map(0x4000_0000, 8 * PAGE, 0x4000_0000, Mapping::new(Prot::RWX)).unwrap();
    fx.map(0x4020_0000, BLOCK_2M, 0x4020_0000, Mapping::new(Prot::RWX)).unwrap();
    fx.annotate(0x4000_8000, PAGE, ann(2, 4)).unwrap();
    // Every other table page is in use elsewhere.
    fx.cache.drain(&mut fx.mem);
    let held: Vec<PhysAddr> = core::iter::from_fn(|| fx.mem.arena.alloc_page()).collect();
    assert!(!held.is_empty());
    let ram = range(0x4000_0000, 0x8010_0000 - 0x4000_0000);
    let fault = 0x8000_3000;
    let snap = fx.snapshot();
    assert_eq!(fx.idmap(fault, ram, Prot::RWX), Err(Error::OutOfMemory));
    assert!(fx.snapshot() == snap, "a failed fault changed the table");
    assert_eq!(fx.cache.topup(&mut fx.mem, 2), Err(Error::OutOfMemory));
    fx.cache.drain(&mut fx.mem);
    // Recovery: drop every MMIO mapping, top up, retry once.
    let before = fx.nonzero_leaves();
    let mmio: Vec<Leaf> = before
        .iter()
        .copied()
        .filter(|l| l.2.is_valid() && l.2.prot().contains(Prot::DEVICE))
        .collect();
    assert_eq!(mmio.len(), 16);
    for &(ipa, level, _) in &mmio {
        fx.unmap(ipa, level_size(level)).unwrap();
    }
    fx.topup(2);
    let got = fx.idmap(fault, ram, Prot::RWX).unwrap();
    assert_eq!(got, range(fault, PAGE));
    let after = fx.nonzero_leaves();
    let kept: Vec<Leaf> = before.into_iter().filter(|l| !mmio.contains(l)).collect();
    let others: Vec<Leaf> = after.into_iter().filter(|l| l.0 != fault).collect();
    assert_eq!(kept, others, "a RAM mapping or annotation was lost");
    fx.check_refcounts();
}

// ---------------------------------------------------------------------------
// Walker (behaviours 27, 28, 30, 31)
// ---------------------------------------------------------------------------

#[test]
fn leaf_visits_include_annotated_and_zero_invalid_entries() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, PAGE, 0x8000_0000, rw()).unwrap();
    let a = ann(2, 3);
    fx.annotate(0x4000_1000, PAGE, a).unwrap();
    let leaves = fx.leaves(range(0x4000_0000, 4 * PAGE));
    assert_eq!(
        leaves,
        vec![
            (0x4000_0000, 3, Pte::leaf(3, PhysAddr::new(0x8000_0000), Prot::RW, 0)),
            (0x4000_1000, 3, Pte::annotated(a)),
            (0x4000_2000, 3, Pte::ZERO),
            (0x4000_3000, 3, Pte::ZERO),
        ]
    );
}

#[test]
fn misaligned_or_empty_or_wrapping_ranges_are_rejected_by_ipa_range() {
    assert_eq!(IpaRange::new(Ipa::new(0x4000_0800), PAGE), None);
    assert_eq!(IpaRange::new(Ipa::new(0x4000_0000), 0x800), None);
    assert_eq!(IpaRange::new(Ipa::new(0x4000_0000), PAGE + 1), None);
    assert_eq!(IpaRange::new(Ipa::new(0x4000_0000), 0), None);
    assert_eq!(IpaRange::new(Ipa::new(!0xfff), 2 * PAGE), None);
    assert_eq!(IpaRange::pages(Ipa::new(0), 0), None);
    assert_eq!(IpaRange::pages(Ipa::new(0), u64::MAX), None);
    assert!(IpaRange::new(Ipa::new(0x4000_1000), PAGE).is_some());
}

#[test]
fn a_walk_visits_an_entry_meeting_the_range_whole() {
    let mut fx = Fixture::new();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, rw()).unwrap();
    let leaves = fx.leaves(range(0x4020_5000, PAGE));
    assert_eq!(leaves, vec![(0x4020_0000, 2, fx.leaf(0x4020_0000).0)]);
    let empty = fx.leaves(range(0x1_4000_3000, 2 * PAGE));
    assert_eq!(empty, vec![(0x1_4000_0000, 1, Pte::ZERO)]);
}

#[test]
fn a_walk_beyond_the_ipa_space_is_refused() {
    let mut fx = Fixture::new();
    let mut visitor = |_: &mut Traced, _: &Visit, _: VisitKind| -> Result<()> { Ok(()) };
    let beyond = range((1 << 40) - PAGE, 2 * PAGE);
    assert_eq!(
        fx.s2.walk(&mut fx.mem, beyond, WalkFlags::LEAF, &mut visitor),
        Err(Error::InvalidArgument)
    );
}

#[test]
fn a_retry_stops_the_walk_unless_ignore_retry_is_set() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, 4 * PAGE, 0x8000_0000, rw()).unwrap();
    let r = range(0x4000_0000, 6 * PAGE);
    for (flags, result, visits) in [
        (WalkFlags::LEAF, Err(Error::Retry), 2),
        (WalkFlags::LEAF | WalkFlags::IGNORE_RETRY, Ok(()), 6),
    ] {
        let mut seen = Vec::new();
        let mut visitor = |_: &mut Traced, v: &Visit, _: VisitKind| -> Result<()> {
            seen.push(v.ipa.raw());
            if seen.len() == 2 { Err(Error::Retry) } else { Ok(()) }
        };
        assert_eq!(fx.s2.walk(&mut fx.mem, r, flags, &mut visitor), result, "{flags:?}");
        assert_eq!(seen.len(), visits, "{flags:?}");
        assert_eq!(seen, (0..visits as u64).map(|i| 0x4000_0000 + i * PAGE).collect::<Vec<_>>());
    }
    // Other errors stop the walk even with IGNORE_RETRY.
    let mut seen = 0;
    let mut visitor = |_: &mut Traced, _: &Visit, _: VisitKind| -> Result<()> {
        seen += 1;
        if seen == 2 { Err(Error::Permission) } else { Ok(()) }
    };
    let flags = WalkFlags::LEAF | WalkFlags::IGNORE_RETRY;
    assert_eq!(fx.s2.walk(&mut fx.mem, r, flags, &mut visitor), Err(Error::Permission));
    assert_eq!(seen, 2);
}

#[test]
fn a_table_replaced_by_a_block_in_table_pre_is_not_descended() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, 2 * PAGE, 0x8000_0000, rw()).unwrap();
    let block = Pte::leaf(2, PhysAddr::new(0x8000_0000), Prot::RW, 0);
    let mut visits = Vec::new();
    let mut visitor = |mem: &mut Traced, v: &Visit, kind: VisitKind| -> Result<()> {
        visits.push((kind, v.level, v.ipa.raw(), v.pte));
        if kind == VisitKind::TablePre && v.level == 2 {
            mem.write(v.table, v.index, block);
            mem.free_page(v.pte.addr());
        }
        Ok(())
    };
    let flags = WalkFlags::LEAF | WalkFlags::TABLE_PRE | WalkFlags::TABLE_POST;
    fx.s2.walk(&mut fx.mem, range(0x4000_0000, BLOCK_2M), flags, &mut visitor).unwrap();
    let (root, ri) = fx.slot(0x4000_0000, 1);
    let l1 = fx.mem.read(root, ri);
    let shape: Vec<(VisitKind, u8, u64)> = visits.iter().map(|v| (v.0, v.1, v.2)).collect();
    assert_eq!(
        shape,
        vec![
            (VisitKind::TablePre, 1, 0x4000_0000),
            (VisitKind::TablePre, 2, 0x4000_0000),
            (VisitKind::Leaf, 2, 0x4000_0000),
            (VisitKind::TablePost, 1, 0x4000_0000),
        ]
    );
    assert_eq!(visits[2].3, block, "the leaf visit sees the new entry");
    assert_eq!(visits[3].3, l1);
    assert_eq!(fx.leaf(0x4000_1000), (block, 2));
    assert_eq!(fx.check_refcounts(), 1);
}

#[test]
fn table_post_visits_come_after_the_children() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, PAGE, 0x8000_0000, rw()).unwrap();
    fx.map(0x4020_0000, PAGE, 0x8020_0000, rw()).unwrap();
    let mut visits = Vec::new();
    let mut visitor = |_: &mut Traced, v: &Visit, kind: VisitKind| -> Result<()> {
        visits.push((kind, v.level, v.ipa.raw()));
        Ok(())
    };
    let flags = WalkFlags::LEAF | WalkFlags::TABLE_PRE | WalkFlags::TABLE_POST;
    fx.s2.walk(&mut fx.mem, range(0x4000_0000, 2 * BLOCK_2M), flags, &mut visitor).unwrap();
    let mut expect = vec![(VisitKind::TablePre, 1, 0x4000_0000)];
    for block in [0x4000_0000, 0x4020_0000] {
        expect.push((VisitKind::TablePre, 2, block));
        expect.extend((0..512).map(|i| (VisitKind::Leaf, 3, block + i * PAGE)));
        expect.push((VisitKind::TablePost, 2, block));
    }
    expect.push((VisitKind::TablePost, 1, 0x4000_0000));
    assert_eq!(visits, expect);
}

#[test]
fn write_protect_skips_invalid_entries_and_removes_w_from_every_valid_leaf() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, 4 * PAGE, 0x8000_0000, rw().with_sw(2)).unwrap();
    fx.map(0x4000_4000, PAGE, 0x8000_4000, Mapping::new(Prot::R)).unwrap();
    fx.annotate(0x4000_5000, PAGE, ann(2, 1)).unwrap();
    fx.map(0x4000_7000, PAGE, 0x8000_7000, Mapping::new(Prot::RWX)).unwrap();
    fx.map(0x4000_8000, PAGE, 0x0900_0000, Mapping::new(Prot::DEVICE_RW)).unwrap();
    fx.map(0x4020_0000, BLOCK_2M, 0x8020_0000, rw()).unwrap();
    fx.map(0x4040_0000, PAGE, 0x8040_0000, rw()).unwrap();
    let r = range(0x4000_0000, 0x4020_1000 - 0x4000_0000);
    let before_in = fx.leaves(r);
    let outside = fx.leaf(0x4040_0000);
    let tables = fx.tables();
    let cached = fx.cache.len();
    fx.clear_logs();
    assert_eq!(fx.s2.write_protect(&mut fx.mem, r), Ok(()));
    let after_in = fx.leaves(r);
    assert_eq!(before_in.len(), after_in.len());
    let mut changed = 0;
    for (b, a) in before_in.iter().zip(&after_in) {
        assert_eq!((b.0, b.1), (a.0, a.1), "same shape: no split");
        if b.2.is_valid() {
            assert_eq!(a.2, b.2.with_prot(b.2.prot() - Prot::W - Prot::DEVICE), "{:#x}", b.0);
            assert!(!a.2.prot().contains(Prot::W));
            changed += usize::from(b.2.prot().contains(Prot::W));
        } else {
            assert_eq!(a.2, b.2, "invalid entry at {:#x} untouched", b.0);
        }
    }
    assert_eq!(changed, 4 + 1 + 1 + 1);
    let broadcasts = fx.tlb().iter().filter(|op| matches!(op, TlbOp::InvalidateIpa { .. })).count();
    assert_eq!(broadcasts, changed);
    assert_eq!(fx.leaf(0x4040_0000), outside);
    assert_eq!(fx.leaf(0x4020_0000).1, 2);
    assert_eq!(fx.cache.len(), cached);
    fx.check_maintenance(&tables);
    // Nothing left to change, or nothing valid at all: still Ok.
    assert_eq!(fx.s2.write_protect(&mut fx.mem, r), Ok(()));
    assert_eq!(fx.s2.write_protect(&mut fx.mem, range(0x8000_0000, BLOCK_2M)), Ok(()));
    assert_eq!(
        fx.s2.write_protect(&mut fx.mem, range((1 << 40) - PAGE, 2 * PAGE)),
        Err(Error::InvalidArgument)
    );
}

// ---------------------------------------------------------------------------
// Argument checks (behaviours 2, 23)
// ---------------------------------------------------------------------------

#[test]
fn a_range_beyond_the_ipa_space_is_refused() {
    let mut fx = Fixture::new();
    let (ipa, size) = ((1 << 40) - PAGE, 2 * PAGE);
    let snap = fx.snapshot();
    assert_eq!(fx.map(ipa, size, 0x8000_0000, rw()), Err(Error::InvalidArgument));
    assert_eq!(fx.unmap(ipa, size), Err(Error::InvalidArgument));
    assert_eq!(fx.protect(ipa, size, Prot::R), Err(Error::InvalidArgument));
    assert_eq!(fx.annotate(ipa, size, ann(1, 0)), Err(Error::InvalidArgument));
    assert_eq!(
        fx.s2.pages_needed(&fx.mem, range(ipa, size), Update::Unmap),
        Err(Error::InvalidArgument)
    );
    assert_eq!(fx.s2.get_leaf(&fx.mem, Ipa::new(1 << 40)), Err(Error::InvalidArgument));
    assert!(fx.snapshot() == snap);
    // The last page of the space is fine.
    fx.map((1 << 40) - PAGE, PAGE, 0x8000_0000, rw()).unwrap();
}

#[test]
fn a_pa_range_that_overflows_or_exceeds_48_bits_is_refused() {
    let mut fx = Fixture::new();
    let top = !(PAGE - 1);
    assert_eq!(fx.map(0x4000_0000, 2 * PAGE, top, rw()), Err(Error::InvalidArgument));
    let oa_end = 1 << 48;
    assert_eq!(fx.map(0x4000_0000, 2 * PAGE, oa_end - PAGE, rw()), Err(Error::InvalidArgument));
    assert_eq!(fx.map(0x4000_0000, PAGE, oa_end, rw()), Err(Error::InvalidArgument));
    assert_eq!(fx.check_refcounts(), 0);
    fx.map(0x4000_0000, PAGE, oa_end - PAGE, rw()).unwrap();
    assert_eq!(fx.leaf(0x4000_0000).0.addr(), PhysAddr::new(oa_end - PAGE));
}

#[test]
fn executable_device_and_other_malformed_requests_are_refused() {
    let mut fx = Fixture::new();
    fx.map(0x4000_0000, PAGE, 0x8000_0000, rw()).unwrap();
    let snap = fx.snapshot();
    let exec_dev = Mapping::new(Prot::DEVICE | Prot::R | Prot::X);
    assert_eq!(fx.map(0x4000_1000, PAGE, 0x0900_0000, exec_dev), Err(Error::InvalidArgument));
    let none = Mapping::new(Prot::empty());
    assert_eq!(fx.map(0x4000_1000, PAGE, 0x8000_1000, none), Err(Error::InvalidArgument));
    assert_eq!(fx.map(0x4000_1000, PAGE, 0x8000_1800, rw()), Err(Error::InvalidArgument));
    assert_eq!(
        fx.map(0x4000_1000, PAGE, 0x8000_1000, rw().with_sw(0x10)),
        Err(Error::InvalidArgument)
    );
    assert_eq!(fx.protect(0x4000_0000, PAGE, Prot::empty()), Err(Error::InvalidArgument));
    assert_eq!(
        fx.protect(0x4000_0000, PAGE, Prot::DEVICE | Prot::R | Prot::X),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        fx.update(0x4000_0000, PAGE, Update::SetSoftware(0x10)),
        Err(Error::InvalidArgument)
    );
    assert!(fx.snapshot() == snap);
    let misaligned_root = PhysAddr::new(ARENA_BASE + PAGE);
    assert_eq!(
        Stage2::new(Geometry::IPA_40, misaligned_root, VMID, TableKind::Component).err(),
        Some(Error::InvalidArgument)
    );
}

// ---------------------------------------------------------------------------
// Destroy (behaviour 9)
// ---------------------------------------------------------------------------

fn populated() -> Fixture {
    let mut fx = Fixture::new();
    fx.topup(16);
    fx.map(0x4000_0000, 5 * PAGE, 0x8000_0000, rw()).unwrap();
    fx.map(0x4020_0000, BLOCK_2M + PAGE, 0x8020_0000, rw()).unwrap();
    fx.map(BLOCK_1G * 5, BLOCK_1G, PA_OFFSET, rw()).unwrap();
    fx.annotate(BLOCK_1G * 7 + 0x5000, PAGE, ann(3, 3)).unwrap();
    fx.clear_logs();
    fx
}

#[test]
fn destroy_frees_every_table_page_and_the_root() {
    let fx = populated();
    let pages: Vec<PhysAddr> = fx.tables().iter().map(|t| t.page).collect();
    assert_eq!(pages.len(), 1 + 5);
    let Fixture { mut mem, mut cache, s2, .. } = fx;
    let root = s2.root();
    s2.destroy(&mut mem);
    cache.drain(&mut mem);
    assert_eq!(mem.arena.free_pages(), ARENA_PAGES);
    assert!(pages.iter().all(|&p| mem.arena.is_free(p)));
    assert!(mem.arena.is_free(root.add(PAGE)), "second root page");
}

#[test]
fn destroy_invalidates_the_vmid_before_returning_any_table_page() {
    let fx = populated();
    let tables = fx.tables();
    let Fixture { mut mem, s2, .. } = fx;
    s2.destroy(&mut mem);
    let events = &mem.events;
    let first_free = events.iter().position(|e| matches!(e, Event::Free(_))).expect("pages freed");
    let vmid = events.iter().position(|e| *e == Event::Tlb(TlbOp::InvalidateVmid { vmid: VMID }));
    assert!(
        vmid.is_some_and(|v| v < first_free),
        "table page {:?} returned to the page source at event {first_free} before the VMID \
         invalidation (event {vmid:?}); {} table pages were linked",
        events[first_free],
        tables.len() - 1
    );
}

// ---------------------------------------------------------------------------
// Random operation sequences against a page-by-page model (behaviour 6)
// ---------------------------------------------------------------------------

/// The model window: 8 MiB straddling the 1 GiB boundary, 2 MiB aligned.
const WIN_BASE: u64 = BLOCK_1G - 2 * BLOCK_2M;
const WIN_PAGES: u64 = 2048;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PageModel {
    Zero,
    Mapped { pa: u64, prot: Prot, sw: u8 },
    Annotated(Annotation),
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Map { mapping: Mapping, offset: u64 },
    Unmap,
    Protect(Prot),
    SetSoftware(u8),
    Annotate(Annotation),
    AnnotatePages(Annotation),
}

impl Step {
    fn update(self, ipa: u64) -> Update {
        match self {
            Step::Map { mapping, offset } => {
                Update::Map { pa: PhysAddr::new(ipa + offset), mapping }
            }
            Step::Unmap => Update::Unmap,
            Step::Protect(prot) => Update::Protect(prot),
            Step::SetSoftware(sw) => Update::SetSoftware(sw),
            Step::Annotate(a) => Update::Annotate(a),
            Step::AnnotatePages(a) => Update::AnnotatePages(a),
        }
    }

    fn apply(self, model: &mut [PageModel], first: u64) {
        for (i, page) in model.iter_mut().enumerate() {
            let ipa = WIN_BASE + (first + i as u64) * PAGE;
            match (self, &mut *page) {
                (Step::Map { mapping, offset }, _) => {
                    *page =
                        PageModel::Mapped { pa: ipa + offset, prot: mapping.prot, sw: mapping.sw };
                }
                (Step::Unmap, _) => *page = PageModel::Zero,
                (Step::Protect(new), PageModel::Mapped { prot, .. }) => {
                    let device = *prot & Prot::DEVICE;
                    *prot = if device.is_empty() { new } else { device | (new - Prot::X) };
                }
                (Step::SetSoftware(new), PageModel::Mapped { sw, .. }) => *sw = new,
                (Step::Annotate(a), _) if a.is_default() => *page = PageModel::Zero,
                (Step::Annotate(a), _) => *page = PageModel::Annotated(a),
                (Step::AnnotatePages(a), _) => {
                    *page = PageModel::Annotated(ann(a.owner().0, a.meta() + i as u64));
                }
                _ => {}
            }
        }
    }
}

fn step_strategy(ledger: bool) -> impl Strategy<Value = Step> {
    let prot = prop_oneof![
        Just(Prot::R),
        Just(Prot::RW),
        Just(Prot::RWX),
        Just(Prot::DEVICE_RW),
        Just(Prot::DEVICE | Prot::R),
    ];
    let access = prop_oneof![
        Just(Prot::R),
        Just(Prot::RW),
        Just(Prot::RWX),
        Just(Prot::R | Prot::X),
        Just(Prot::W),
    ];
    let min_owner = if ledger { 0 } else { 1 };
    let annotation =
        (min_owner..4u16, 0..1000u64).prop_map(|(o, m)| ann(o, if o == 0 { 0 } else { m }));
    let first = (1..4u16, 0..1000u64).prop_map(|(o, m)| ann(o, m));
    let map = (prot, 0..16u8, any::<bool>(), prop_oneof![Just(PA_OFFSET), Just(PA_OFFSET + PAGE)])
        .prop_map(|(prot, sw, pages, offset)| {
            let m = Mapping::new(prot).with_sw(sw);
            Step::Map { mapping: if pages { m.pages() } else { m }, offset }
        });
    prop_oneof![
        4 => map,
        2 => Just(Step::Unmap),
        2 => access.prop_map(Step::Protect),
        1 => (0..16u8).prop_map(Step::SetSoftware),
        2 => annotation.prop_map(Step::Annotate),
        1 => first.prop_map(Step::AnnotatePages),
    ]
}

fn span_strategy() -> impl Strategy<Value = (u64, u64)> {
    let start = prop_oneof![0..WIN_PAGES, (0..WIN_PAGES / 512).prop_map(|b| b * 512)];
    let len = prop_oneof![1..=8u64, Just(512u64), Just(1024u64), 1..=WIN_PAGES];
    (start, len).prop_map(|(s, l)| (s, l.min(WIN_PAGES - s)))
}

fn check_model(fx: &Fixture, model: &[PageModel]) {
    for (i, page) in model.iter().enumerate() {
        let ipa = WIN_BASE + i as u64 * PAGE;
        let (pte, level) = fx.leaf(ipa);
        match *page {
            PageModel::Zero => assert!(pte.is_zero(), "page {ipa:#x}: {pte:?} L{level}"),
            PageModel::Annotated(a) => assert_eq!(pte, Pte::annotated(a), "page {ipa:#x}"),
            PageModel::Mapped { pa, prot, sw } => {
                assert!(pte.is_leaf(level), "page {ipa:#x}: {pte:?} L{level}");
                let base = pte.addr().raw();
                assert_eq!(base % level_size(level), 0, "page {ipa:#x} leaf alignment");
                assert_eq!(base + (ipa & (level_size(level) - 1)), pa, "page {ipa:#x} PA");
                assert_eq!(pte, Pte::leaf(level, pte.addr(), prot, sw), "page {ipa:#x} attrs");
            }
        }
    }
    assert!(fx.leaf(WIN_BASE - PAGE).0.is_zero());
    assert!(fx.leaf(WIN_BASE + WIN_PAGES * PAGE).0.is_zero());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_updates_keep_refcounts_tlb_discipline_and_the_page_model(
        ledger in any::<bool>(),
        steps in prop::collection::vec(
            (any::<bool>(), 0..3usize, span_strategy()),
            1..24,
        ),
        seeds in prop::collection::vec(step_strategy(false), 24),
        ledger_seeds in prop::collection::vec(step_strategy(true), 24),
    ) {
        let kind = if ledger { TableKind::Ledger } else { TableKind::Component };
        let mut fx = Fixture::with(Geometry::IPA_40, kind, 128);
        let mut model = vec![PageModel::Zero; WIN_PAGES as usize];
        let ops = if ledger { &ledger_seeds } else { &seeds };
        for (n, &(short, extra, (first, pages))) in steps.iter().enumerate() {
            let step = ops[n];
            let ipa = WIN_BASE + first * PAGE;
            let size = pages * PAGE;
            let update = step.update(ipa);
            let needed = fx.needed(ipa, size, update);
            fx.cache.drain(&mut fx.mem);
            if short && needed > 0 {
                fx.topup(needed - 1);
                let snap = fx.snapshot();
                fx.clear_logs();
                prop_assert_eq!(fx.update(ipa, size, update), Err(Error::OutOfMemory));
                prop_assert!(fx.snapshot() == snap, "OutOfMemory changed the table");
                prop_assert!(fx.mem.events.is_empty());
            }
            fx.topup(needed + extra);
            let tables = fx.tables();
            let snap = fx.snapshot();
            fx.clear_logs();
            match fx.update(ipa, size, update) {
                Ok(()) => {}
                Err(Error::Retry) => {
                    prop_assert!(fx.snapshot() == snap, "Retry changed the table");
                    prop_assert!(fx.mem.events.is_empty());
                }
                Err(e) => prop_assert!(false, "{:?} over {:#x}+{:#x}: {:?}", step, ipa, size, e),
            }
            prop_assert_eq!(fx.cache.len(), extra, "pages_needed said {}", needed);
            fx.check_refcounts();
            fx.check_maintenance(&tables);
            step.apply(&mut model[first as usize..(first + pages) as usize], first);
            check_model(&fx, &model);
        }
        fx.cache.drain(&mut fx.mem);
        fx.unmap(WIN_BASE, WIN_PAGES * PAGE).unwrap();
        prop_assert_eq!(fx.check_refcounts(), 0);
        prop_assert_eq!(fx.unused_pages(), fx.baseline);
    }
}

#[test]
fn pages_only_remap_over_an_identical_block_changes_nothing() {
    let mut f = Fixture::new();
    f.map(0x4000_0000, 2 << 20, 0x4000_0000, rw()).unwrap();
    let before = f.snapshot();
    assert_eq!(f.map(0x4000_1000, 0x1000, 0x4000_1000, rw().pages()), Err(Error::Retry));
    assert!(before == f.snapshot(), "the block was split for nothing");
}

#[test]
fn execute_only_protect_over_device_memory_is_refused() {
    let mut f = Fixture::new();
    f.map(0x900_0000, 0x1000, 0x900_0000, Mapping::new(Prot::DEVICE_RW)).unwrap();
    let before = f.snapshot();
    assert_eq!(f.protect(0x900_0000, 0x1000, Prot::X), Err(Error::InvalidArgument));
    assert!(before == f.snapshot());
    assert_eq!(f.protect(0x900_0000, 0x1000, Prot::R), Ok(()));
    assert_eq!(f.leaf(0x900_0000).0.prot(), Prot::DEVICE | Prot::R);
}
