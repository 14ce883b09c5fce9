//! Fuzz target `ops`: a sequence of ownership transitions and stage-2
//! updates, decoded from the input with `arbitrary` and applied to a fresh
//! world (a ledger over 64 MiB of managed memory, three components, and a
//! scratch stage-2 table of its own).
//!
//! After every operation it asserts that the invariant checker passes, that
//! every table page is accounted for with the right refcount and no empty
//! table is left linked, and that a refused operation left table memory,
//! refcounts, the cache and the zeroing log exactly as they were. A scratch
//! update also takes exactly the table pages it said it needs, and is
//! refused when the cache is one page short. At the end, tearing everything
//! down gives every page back.
//!
//! Addresses come from a small universe (a few pages straddling 2 MiB
//! boundaries, block windows, the edges of managed memory) so that requests
//! collide often.
#![no_main]

use arbitrary::Arbitrary;
use hyp_mm::desc::{ENTRIES, level_size};
use hyp_mm::host::Arena;
use hyp_mm::{
    Annotation, Error, Geometry, Ipa, IpaRange, Mapping, MemCache, MmOps, OwnerId, Ownership,
    PAGE_SIZE, PageState, PageView, PhysAddr, Prot, Stage2, TableKind, Transfer, Update, VmId,
};
use libfuzzer_sys::fuzz_target;

/// Managed memory: 64 MiB at 1 GiB.
const POOL: u64 = 0x4000_0000;
const POOL_SIZE: u64 = 64 << 20;
const GIB: u64 = 1 << 30;
const BLOCK: u64 = 2 << 20;
const BLOCK_PAGES: u64 = BLOCK / PAGE_SIZE;
/// Components have ids 1..=COMPONENTS.
const COMPONENTS: u16 = 3;
/// Table pages for the ledger and the components: small, so that a
/// snapshot per operation stays cheap.
const ARENA_PAGES: usize = 128;
/// Table pages for the scratch table.
const SCRATCH_PAGES: usize = 256;
/// Cache level between operations: more than any one of them needs here.
const CACHE: usize = 16;
/// Longest sequence run; the rest of the input is ignored.
const MAX_OPS: usize = 64;
/// Device memory outside the pool: pages, and a 2 MiB aligned block.
const DEV_PA: u64 = 0x0900_0000;
const DEV_BLOCK_PA: u64 = 0x0800_0000;

/// Sixteen pool pages straddling a 2 MiB boundary, a 2 MiB aligned block's
/// first and last page, the pool's last page, the page below the pool.
fn pool_pa(slot: u8) -> u64 {
    match slot % 20 {
        s @ 0..16 => POOL + BLOCK - 8 * PAGE_SIZE + u64::from(s) * PAGE_SIZE,
        16 => POOL + 2 * BLOCK,
        17 => POOL + 2 * BLOCK + 511 * PAGE_SIZE,
        18 => POOL + POOL_SIZE - PAGE_SIZE,
        _ => POOL - PAGE_SIZE,
    }
}

fn comp(c: u8) -> OwnerId {
    OwnerId(u16::from(c) % COMPONENTS + 1)
}

fn base(id: OwnerId) -> u64 {
    0x8000_0000 + u64::from(id.0 - 1) * GIB
}

fn big_ipa(id: OwnerId) -> u64 {
    base(id) + 2 * BLOCK
}

/// Twelve pages straddling a 2 MiB boundary, and pages of a 2 MiB aligned
/// window that takes block mappings.
fn comp_ipa(id: OwnerId, slot: u8) -> u64 {
    match slot % 16 {
        s @ 0..12 => base(id) + BLOCK - 6 * PAGE_SIZE + u64::from(s) * PAGE_SIZE,
        s => big_ipa(id) + [0, 1, 2, 511][usize::from(s - 12)] * PAGE_SIZE,
    }
}

/// 0..=4 pages.
fn pages(n: u8) -> u64 {
    u64::from(n % 5)
}

/// Valid accesses, and two that every operation refuses.
fn prot(p: u8) -> Prot {
    [
        Prot::R,
        Prot::RW,
        Prot::RWX,
        Prot::W,
        Prot::X,
        Prot::DEVICE_RW,
        Prot::empty(),
        Prot::DEVICE | Prot::X,
    ][usize::from(p % 8)]
}

#[derive(Arbitrary, Clone, Copy, Debug)]
enum Op {
    Donate {
        pa: u8,
        to: u8,
        ipa: u8,
        pages: u8,
        prot: u8,
    },
    /// 512 pages from the pool's block to `to`'s block window, shifted by a
    /// page or not.
    DonateBlock {
        to: u8,
        shift: bool,
    },
    Give {
        from: u8,
        ipa: u8,
        to: u8,
        to_ipa: u8,
        pages: u8,
        prot: u8,
    },
    Share {
        from: u8,
        ipa: u8,
        to: u8,
        to_ipa: u8,
        pages: u8,
        prot: u8,
    },
    Unshare {
        from: u8,
        ipa: u8,
        to: u8,
        to_ipa: u8,
        pages: u8,
    },
    Lend {
        from: u8,
        ipa: u8,
        to: u8,
        to_ipa: u8,
        pages: u8,
        prot: u8,
    },
    Relinquish {
        who: u8,
        ipa: u8,
        pages: u8,
    },
    Pin {
        who: u8,
        ipa: u8,
        pages: u8,
    },
    Unpin {
        who: u8,
        ipa: u8,
        pages: u8,
    },
    MapDevice {
        who: u8,
        ipa: u8,
        dev: u8,
        pages: u8,
    },
    MapDeviceBlock {
        who: u8,
    },
    Teardown {
        who: u8,
    },
    /// Reclaim the whole IPA space, or pages from a slot.
    Reclaim {
        who: u8,
        whole: bool,
        ipa: u8,
        pages: u8,
    },
    /// Remove a torn-down component and add it back with a fresh table.
    Readd {
        who: u8,
    },
    /// The next ownership request runs with only this many cache pages.
    Starve(u8),
    /// An update of the scratch table; `cache` picks a full cache, exactly
    /// the pages the update needs, or one fewer.
    Scratch {
        op: TableOp,
        cache: u8,
    },
    /// Identity-map on a fault in the scratch table.
    Fault {
        at: Span,
        within: Span,
        prot: u8,
    },
    WriteProtect(Span),
    ScratchTeardown,
}

/// A page range of the scratch table in its first few GiB, often at the
/// edges of blocks.
#[derive(Arbitrary, Clone, Copy, Debug)]
struct Span {
    gib: u8,
    block: u16,
    page: u16,
    len: u8,
    count: u16,
}

impl Span {
    fn range(self) -> IpaRange {
        let edge = |v: u16| match v % 8 {
            0 => 0,
            1 => 1,
            2 => 511,
            _ => u64::from(v >> 3) % 512,
        };
        let start = u64::from(self.gib % 4) * (GIB / PAGE_SIZE)
            + edge(self.block) * BLOCK_PAGES
            + edge(self.page);
        let n = u64::from(self.count);
        let pages = match self.len % 3 {
            0 => 1 + n % 16,
            1 => (1 + n % 3) * BLOCK_PAGES + (n / 3) % 3 - 1,
            _ => GIB / PAGE_SIZE + n % 3 - 1,
        };
        IpaRange::pages(Ipa::new(start * PAGE_SIZE), pages).expect("non-empty")
    }
}

#[derive(Arbitrary, Clone, Copy, Debug)]
enum TableOp {
    Map { span: Span, pa_off: u8, prot: u8, sw: u8, pages_only: bool },
    Unmap(Span),
    Protect { span: Span, prot: u8 },
    SetSoftware { span: Span, sw: u8 },
    Annotate { span: Span, owner: u8, meta: u8 },
}

/// Shrinks or fills `cache` to `pages`; `false` if the arena ran dry.
fn set_cache(mem: &mut Arena, cache: &mut MemCache, pages: usize) -> bool {
    while cache.len() > pages {
        let page = cache.pop(mem).expect("cache holds pages");
        mem.free_page(page);
    }
    cache.topup(mem, pages).is_ok()
}

/// Reachable non-root table pages of `table`, after checking that each is
/// live, has refcount 1 + its non-zero entries, and holds at least one.
fn table_pages(mem: &Arena, table: &Stage2) -> usize {
    fn rec(mem: &Arena, page: PhysAddr, level: u8, entries: usize, tables: &mut usize) -> u32 {
        let mut counted = 0;
        for i in 0..entries {
            let pte = mem.read(page, i);
            if pte.is_zero() {
                continue;
            }
            counted += 1;
            if pte.is_table(level) {
                let next = pte.addr();
                assert!(!mem.is_free(next), "table {page} links free page {next}");
                *tables += 1;
                let below = rec(mem, next, level + 1, ENTRIES, tables);
                let found = mem.page_count(next);
                assert_eq!(found, below + 1, "refcount of table {next}");
                assert!(below > 0, "empty table {next} left linked");
            } else if pte.is_valid() {
                assert!(pte.addr().is_aligned(level_size(level)), "misaligned leaf {pte:?}");
                assert!(!pte.is_contiguous(), "contiguous hint in {pte:?}");
            }
        }
        counted
    }
    let g = table.geometry();
    let mut tables = 0;
    rec(mem, table.root(), g.start_level(), g.root_entries(), &mut tables);
    tables
}

type Snapshot = ((Vec<u64>, Vec<u32>), usize, usize);

fn snapshot(mem: &Arena, cache: &MemCache) -> Snapshot {
    (mem.snapshot(), cache.len(), mem.zeroed.len())
}

fn assert_unchanged(mem: &Arena, cache: &MemCache, before: &Snapshot, what: &dyn core::fmt::Debug) {
    let now = mem.snapshot();
    assert!(now.1 == before.0.1, "{what:?}: refused, but refcounts changed");
    assert!(now.0 == before.0.0, "{what:?}: refused, but table memory changed");
    assert_eq!(cache.len(), before.1, "{what:?}: refused, but the cache changed");
    assert_eq!(mem.zeroed.len(), before.2, "{what:?}: refused, but pages were zeroed");
}

struct World {
    mem: Arena,
    cache: MemCache,
    own: Ownership<4>,
    scratch_mem: Arena,
    scratch_cache: MemCache,
    scratch: Stage2,
    starve: Option<usize>,
    next_vmid: u16,
}

impl World {
    fn new() -> World {
        let g = Geometry::IPA_40;
        let mut mem = Arena::new(PhysAddr::new(0x1_0000_0000), ARENA_PAGES);
        let root = mem.alloc_contiguous(g.root_pages()).expect("arena");
        let ledger = Stage2::new(g, root, VmId(0), TableKind::Ledger).expect("root");
        let managed = IpaRange::new(Ipa::new(POOL), POOL_SIZE).expect("pool");
        let mut own = Ownership::new(ledger, managed).expect("ledger");
        for c in 1..=COMPONENTS {
            let root = mem.alloc_contiguous(g.root_pages()).expect("arena");
            let table = Stage2::new(g, root, VmId(c), TableKind::Component).expect("root");
            own.add_component(OwnerId(c), table).expect("new id");
        }
        let mut cache = MemCache::new();
        assert!(set_cache(&mut mem, &mut cache, CACHE));
        let mut scratch_mem = Arena::new(PhysAddr::new(0x2_0000_0000), SCRATCH_PAGES);
        let root = scratch_mem.alloc_contiguous(g.root_pages()).expect("arena");
        let scratch = Stage2::new(g, root, VmId(100), TableKind::Component).expect("root");
        World {
            mem,
            cache,
            own,
            scratch_mem,
            scratch_cache: MemCache::new(),
            scratch,
            starve: None,
            next_vmid: 10,
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Starve(n) => self.starve = Some(usize::from(n % 4)),
            Op::Scratch { op, cache } => self.scratch_update(op, cache),
            Op::Fault { at, within, prot: p } => {
                let (at, within) = (at.range().start(), within.range());
                let (mem, cache) = (&mut self.scratch_mem, &mut self.scratch_cache);
                assert!(set_cache(mem, cache, CACHE));
                let before = snapshot(mem, cache);
                if let Err(e) = self.scratch.idmap_greedy(mem, cache, at, within, prot(p)) {
                    assert_unchanged(mem, cache, &before, &(op, e));
                }
                self.check_scratch();
            }
            Op::WriteProtect(span) => {
                let r = self.scratch.write_protect(&mut self.scratch_mem, span.range());
                assert_eq!(r, Ok(()), "write-protect reaches everything");
                self.check_scratch();
            }
            Op::ScratchTeardown => self.scratch.start_teardown(),
            op => self.ownership(op),
        }
    }

    fn ownership(&mut self, op: Op) {
        let starved = self.starve.take();
        if let Some(pages) = starved {
            set_cache(&mut self.mem, &mut self.cache, pages);
        }
        let before = snapshot(&self.mem, &self.cache);
        let result = self.request(op);
        if let Err(e) = result {
            assert_unchanged(&self.mem, &self.cache, &before, &(op, e));
            assert!(e != Error::Retry, "{op:?}: a request never reports Retry");
            assert!(
                e != Error::OutOfMemory || starved.is_some(),
                "{op:?}: out of memory with {} cache pages",
                before.1
            );
        }
        assert!(set_cache(&mut self.mem, &mut self.cache, CACHE), "arena ran dry");
        // A refused request changed nothing, so what held before still does.
        if result.is_ok() {
            self.check();
        }
    }

    fn request(&mut self, op: Op) -> Result<(), Error> {
        let (mem, cache, own) = (&mut self.mem, &mut self.cache, &mut self.own);
        let transfer = |from: u8, ipa: u8, to: u8, to_ipa: u8, n: u8| {
            let (from, to) = (comp(from), comp(to));
            let (from_addr, to_ipa) = (comp_ipa(from, ipa), Ipa::new(comp_ipa(to, to_ipa)));
            Transfer { from, from_addr, to, to_ipa, pages: pages(n) }
        };
        match op {
            Op::Donate { pa, to, ipa, pages: n, prot: p } => {
                let to = comp(to);
                let t = Transfer {
                    from: OwnerId::DEFAULT,
                    from_addr: pool_pa(pa),
                    to,
                    to_ipa: Ipa::new(comp_ipa(to, ipa)),
                    pages: pages(n),
                };
                own.donate(mem, cache, t, prot(p))
            }
            Op::DonateBlock { to, shift } => {
                let to = comp(to);
                let t = Transfer {
                    from: OwnerId::DEFAULT,
                    from_addr: POOL + 2 * BLOCK,
                    to,
                    to_ipa: Ipa::new(big_ipa(to) + u64::from(shift) * PAGE_SIZE),
                    pages: BLOCK_PAGES,
                };
                own.donate(mem, cache, t, Prot::RWX)
            }
            Op::Give { from, ipa, to, to_ipa, pages: n, prot: p } => {
                own.donate(mem, cache, transfer(from, ipa, to, to_ipa, n), prot(p))
            }
            Op::Share { from, ipa, to, to_ipa, pages: n, prot: p } => {
                own.share(mem, cache, transfer(from, ipa, to, to_ipa, n), prot(p))
            }
            Op::Unshare { from, ipa, to, to_ipa, pages: n } => {
                own.unshare(mem, cache, transfer(from, ipa, to, to_ipa, n))
            }
            Op::Lend { from, ipa, to, to_ipa, pages: n, prot: p } => {
                own.lend(mem, cache, transfer(from, ipa, to, to_ipa, n), prot(p))
            }
            Op::Relinquish { who, ipa, pages: n } => {
                let who = comp(who);
                own.relinquish(mem, cache, who, Ipa::new(comp_ipa(who, ipa)), pages(n))
            }
            Op::Pin { who, ipa, pages: n } => {
                let who = comp(who);
                own.pin(mem, who, Ipa::new(comp_ipa(who, ipa)), pages(n))
            }
            Op::Unpin { who, ipa, pages: n } => {
                let who = comp(who);
                own.unpin(mem, who, Ipa::new(comp_ipa(who, ipa)), pages(n))
            }
            Op::MapDevice { who, ipa, dev, pages: n } => {
                let who = comp(who);
                let range = IpaRange::pages(Ipa::new(comp_ipa(who, ipa)), pages(n).max(1))
                    .expect("non-empty");
                let pa = PhysAddr::new(DEV_PA + u64::from(dev % 4) * PAGE_SIZE);
                own.map_device(mem, cache, who, range, pa)
            }
            Op::MapDeviceBlock { who } => {
                let who = comp(who);
                let range = IpaRange::new(Ipa::new(big_ipa(who)), BLOCK).expect("block");
                own.map_device(mem, cache, who, range, PhysAddr::new(DEV_BLOCK_PA))
            }
            Op::Teardown { who } => own.start_teardown(comp(who)),
            Op::Reclaim { who, whole, ipa, pages: n } => {
                let who = comp(who);
                let range = if whole {
                    IpaRange::new(Ipa::new(0), Geometry::IPA_40.ipa_limit())
                } else {
                    IpaRange::pages(Ipa::new(comp_ipa(who, ipa)), pages(n).max(1))
                };
                own.reclaim(mem, cache, who, range.expect("non-empty"))
            }
            Op::Readd { who } => {
                let who = comp(who);
                let table = own.remove_component(mem, who)?;
                table.destroy(mem);
                let g = Geometry::IPA_40;
                let root = mem.alloc_contiguous(g.root_pages()).expect("the old root is free");
                let table = Stage2::new(g, root, VmId(self.next_vmid), TableKind::Component)
                    .expect("aligned root");
                self.next_vmid += 1;
                own.add_component(who, table)
            }
            Op::Starve(_)
            | Op::Scratch { .. }
            | Op::Fault { .. }
            | Op::WriteProtect(_)
            | Op::ScratchTeardown => unreachable!("not an ownership request"),
        }
    }

    fn scratch_update(&mut self, op: TableOp, level: u8) {
        let (range, update) = match op {
            TableOp::Map { span, pa_off, prot: p, sw, pages_only } => {
                let range = span.range();
                let big = range.page_count() > 4 * BLOCK_PAGES;
                let off = [0, GIB, BLOCK, PAGE_SIZE, 16 * GIB][usize::from(pa_off % 5)];
                // A large range maps blocks, never 4 KiB pages by the million.
                let off = if big && off == PAGE_SIZE { BLOCK } else { off };
                let mut mapping = Mapping::new(prot(p)).with_sw(sw % 16);
                if pages_only && !big {
                    mapping = mapping.pages();
                }
                let pa = PhysAddr::new(range.start().raw() + off);
                (range, Update::Map { pa, mapping })
            }
            TableOp::Unmap(span) => (span.range(), Update::Unmap),
            TableOp::Protect { span, prot: p } => (span.range(), Update::Protect(prot(p))),
            TableOp::SetSoftware { span, sw } => (span.range(), Update::SetSoftware(sw % 16)),
            TableOp::Annotate { span, owner, meta } => {
                let annotation = match owner % 4 {
                    0 => Annotation::DEFAULT,
                    o => Annotation::new(OwnerId(u16::from(o)), u64::from(meta % 4)).expect("fits"),
                };
                (span.range(), Update::Annotate(annotation))
            }
        };
        let (mem, cache) = (&mut self.scratch_mem, &mut self.scratch_cache);
        let needed = self.scratch.pages_needed(mem, range, update);
        let pages = match (needed, level % 4) {
            (Ok(n), 2) => n,
            (Ok(n), 3) => n.saturating_sub(1),
            (Ok(n), _) => n.max(CACHE),
            (Err(_), _) => CACHE,
        };
        if !set_cache(mem, cache, pages) {
            return; // the arena is full of tables: no room to try this
        }
        let before = snapshot(mem, cache);
        let result = match update {
            Update::Map { pa, mapping } => self.scratch.map(mem, cache, range, pa, mapping),
            Update::Unmap => self.scratch.unmap(mem, cache, range),
            Update::Protect(p) => self.scratch.protect(mem, cache, range, p),
            Update::Annotate(a) => self.scratch.annotate(mem, cache, range, a),
            update => self.scratch.update(mem, cache, range, update),
        };
        let used = before.1 - cache.len();
        match (needed, result) {
            (Ok(n), Ok(())) => assert_eq!(used, n, "{op:?}: took {used} pages, counted {n}"),
            (Ok(n), Err(Error::OutOfMemory)) if pages < n => {
                assert_unchanged(mem, cache, &before, &op);
            }
            (Ok(n), r) if pages < n => {
                panic!("{op:?}: {r:?} with {pages} of the {n} pages it needs")
            }
            (Ok(_), Err(Error::Retry)) => assert_unchanged(mem, cache, &before, &op),
            (Err(e), Err(r)) if e == r => assert_unchanged(mem, cache, &before, &op),
            (n, r) => panic!("{op:?}: pages_needed {n:?} but {r:?}"),
        }
        self.check_scratch();
    }

    fn check(&self) {
        let (mem, own) = (&self.mem, &self.own);
        if let Err(v) = own.check_invariants(mem) {
            panic!("invariant broken: {v:?}");
        }
        let mut tables = table_pages(mem, own.ledger()) + own.ledger().geometry().root_pages();
        for (_, table) in own.components() {
            tables += table_pages(mem, table) + table.geometry().root_pages();
        }
        let total = tables + self.cache.len() + mem.free_pages();
        assert_eq!(total, ARENA_PAGES, "table pages leaked or counted twice");
    }

    fn check_scratch(&self) {
        let mem = &self.scratch_mem;
        let tables = table_pages(mem, &self.scratch) + self.scratch.geometry().root_pages();
        let total = tables + self.scratch_cache.len() + mem.free_pages();
        assert_eq!(total, SCRATCH_PAGES, "scratch table pages leaked or counted twice");
    }

    /// Every page some component borrows: component and IPA.
    fn borrowed(&self) -> Vec<(OwnerId, Ipa)> {
        let mut out = Vec::new();
        for (id, table) in self.own.components() {
            let _ = table.leaves(&self.mem, table.span(), &mut |ipa, level, pte| {
                if pte.is_valid() {
                    for i in 0..level_size(level) / PAGE_SIZE {
                        let at = ipa.add(i * PAGE_SIZE);
                        let view = self.own.view(&self.mem, id, at)?;
                        if view.state() == PageState::SharedBorrowed {
                            out.push((id, at));
                        }
                    }
                }
                Ok(())
            });
        }
        out
    }

    /// Tears every component down as the memory manager would, then checks
    /// that the ledger is empty and every table page is back.
    fn teardown(mut self) {
        let ids: Vec<OwnerId> = self.own.components().map(|(id, _)| id).collect();
        for &id in &ids {
            self.own.start_teardown(id).expect("exists");
        }
        let span = IpaRange::new(Ipa::new(0), Geometry::IPA_40.ipa_limit()).expect("span");
        for round in 0.. {
            assert!(round <= 4, "teardown makes no progress");
            let mut left = false;
            for &id in &ids {
                let (mem, cache) = (&mut self.mem, &mut self.cache);
                // Everything this target maps lies in the first 8 MiB of
                // each component's GiB; the emptiness check below looks at
                // the whole space.
                let window = IpaRange::new(Ipa::new(base(id)), 8 << 20).expect("window");
                match self.own.reclaim(mem, cache, id, window) {
                    Ok(()) | Err(Error::Busy) => {}
                    Err(e) => panic!("reclaim of {id:?}: {e:?}"),
                }
                assert!(set_cache(mem, cache, CACHE));
                let table = self.own.component(id).expect("exists");
                left |= table.next_leaf(&self.mem, Ipa::new(0), span.end()).is_some();
            }
            self.check();
            if !left {
                break;
            }
            // Pins and borrowers that borrow from each other hold things
            // up: unpin and relinquish every borrowed page.
            for (id, ipa) in self.borrowed() {
                let (mem, cache) = (&mut self.mem, &mut self.cache);
                let pa = match self.own.view(mem, id, ipa) {
                    Ok(PageView::Mapped { pa, .. }) => pa,
                    other => panic!("borrowed page reads {other:?}"),
                };
                while self.own.record(mem, pa).expect("managed").is_some_and(|r| r.pins > 0) {
                    self.own.unpin(mem, id, ipa, 1).expect("a borrower may unpin");
                }
                self.own.relinquish(mem, cache, id, ipa, 1).expect("a dying borrower lets go");
                assert!(set_cache(mem, cache, CACHE));
            }
            self.check();
        }
        for &id in &ids {
            let table = self.own.remove_component(&mut self.mem, id).expect("empty");
            table.destroy(&mut self.mem);
        }
        let ledger = self.own.ledger();
        assert!(ledger.next_leaf(&self.mem, Ipa::new(0), span.end()).is_none(), "ledger not empty");
        self.cache.drain(&mut self.mem);
        let free = ARENA_PAGES - ledger.geometry().root_pages();
        assert_eq!(self.mem.free_pages(), free, "table pages not returned");

        let (mem, cache) = (&mut self.scratch_mem, &mut self.scratch_cache);
        assert!(set_cache(mem, cache, CACHE));
        self.scratch.unmap(mem, cache, self.scratch.span()).expect("unmap everything");
        self.check_scratch();
        self.scratch_cache.drain(&mut self.scratch_mem);
        let free = SCRATCH_PAGES - self.scratch.geometry().root_pages();
        assert_eq!(self.scratch_mem.free_pages(), free, "scratch table pages not returned");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut world = World::new();
    for &op in ops.iter().take(MAX_OPS) {
        world.apply(op);
    }
    world.teardown();
});
