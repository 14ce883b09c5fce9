//! Property tests: random sequences of ownership transitions checked
//! against a reference model after every step, and random stage-2 updates
//! checked against a model of every page.
//!
//! Both use a small address universe so that requests collide often. After
//! every step they check the result against the model (the exact error
//! where the model can tell), the whole state against the model, the
//! invariant checker, the table pages (refcounts, no empty table left
//! linked, no page leaked) and, for a refused request, that table memory,
//! refcounts, the cache and the zeroing log are exactly as before.

extern crate std;

use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use crate::addr::{Ipa, IpaRange, PAGE_SIZE, PhysAddr};
use crate::desc::{
    Annotation, ENTRIES, FIRST_BLOCK_LEVEL, LAST_LEVEL, OwnerId, Prot, Pte, level_size,
};
use crate::error::Error;
use crate::geometry::Geometry;
use crate::host::Arena;
use crate::mem::{MemCache, MmOps, VmId};
use crate::owner::{
    LentMark, MAX_BORROWERS, MAX_PINS, MAX_RUN_STEPS, PageState, PageView, Record, Transfer,
};
use crate::owner_tests::{POOL, POOL_SIZE, World};
use crate::table::{Mapping, Stage2, TableKind, Update};

type Res = core::result::Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

// ---- checks shared by both properties ----

/// A table's contents, read straight from memory.
struct Contents {
    /// Reachable non-root table pages.
    tables: usize,
    /// Every non-zero leaf: first IPA, level and entry, in address order.
    leaves: Vec<(Ipa, u8, Pte)>,
}

/// Walks a table's memory: every reachable non-root table page is live, its
/// refcount is 1 + its non-zero entries, and it has at least one (an empty
/// table is unlinked and freed).
fn contents(mem: &Arena, table: &Stage2) -> core::result::Result<Contents, String> {
    fn rec(
        mem: &Arena,
        out: &mut Contents,
        page: PhysAddr,
        level: u8,
        base: u64,
        entries: usize,
    ) -> core::result::Result<u32, String> {
        let mut counted = 0;
        let size = level_size(level);
        for i in 0..entries {
            let pte = mem.read(page, i);
            if pte.is_zero() {
                continue;
            }
            let ipa = base + i as u64 * size;
            counted += 1;
            if pte.is_table(level) {
                let next = pte.addr();
                ensure!(!mem.is_free(next), "table {page} links free page {next}");
                out.tables += 1;
                let below = rec(mem, out, next, level + 1, ipa, ENTRIES)?;
                let found = mem.page_count(next);
                ensure!(found == below + 1, "table {next}: refcount {found}, {below} entries");
                ensure!(below > 0, "empty table {next} left linked at level {}", level + 1);
            } else {
                out.leaves.push((Ipa::new(ipa), level, pte));
            }
        }
        Ok(counted)
    }
    let g = table.geometry();
    let mut out = Contents { tables: 0, leaves: Vec::new() };
    rec(mem, &mut out, table.root(), g.start_level(), 0, g.root_entries())?;
    Ok(out)
}

/// Shrinks or fills `cache` to exactly `pages` pages.
fn set_cache(mem: &mut Arena, cache: &mut MemCache, pages: usize) {
    while cache.len() > pages {
        let page = cache.pop(mem).expect("cache holds pages");
        mem.free_page(page);
    }
    cache.topup(mem, pages).expect("arena has room");
}

/// What "changed nothing" compares: table memory and refcounts, the cache
/// and the zeroing log.
type Before = ((Vec<u64>, Vec<u32>), usize, usize);

fn before(mem: &Arena, cache: &MemCache) -> Before {
    (mem.snapshot(), cache.len(), mem.zeroed.len())
}

fn unchanged(mem: &Arena, cache: &MemCache, then: &Before, what: &str) -> Res {
    let now = mem.snapshot();
    ensure!(now.1 == then.0.1, "{what}: refcounts changed");
    ensure!(now.0 == then.0.0, "{what}: table memory changed");
    ensure!(cache.len() == then.1, "{what}: cache went from {} to {}", then.1, cache.len());
    ensure!(mem.zeroed.len() == then.2, "{what}: pages were zeroed");
    Ok(())
}

// ===================================================================
// Property 1: ownership transitions against a reference model.
// ===================================================================

/// Components of the world, by index: GUEST, VMM, OTHER.
const COMPONENTS: usize = 3;
/// Table pages of the arena: small, so that snapshots are cheap.
const ARENA_PAGES: usize = 256;
/// Cache level between requests: more than any request here needs.
const FULL_CACHE: usize = 32;
/// Pages of a concatenated 40-bit root.
const ROOT_PAGES: usize = 2;

const GIB: u64 = 1 << 30;
const BLOCK: u64 = 2 << 20;
const BLOCK_PAGES: u64 = BLOCK / PAGE_SIZE;

/// 16 free pages straddling a 2 MiB boundary of the pool (so runs cross
/// ledger tables), then a 2 MiB aligned block of the pool for block
/// donations, then the pool's last page and the page below the pool.
const PA_SLOTS: u8 = 20;
const SMALL_PA: u64 = POOL + BLOCK - 8 * PAGE_SIZE;
const BIG_PA: u64 = POOL + 2 * BLOCK;

fn pool_pa(slot: u8) -> u64 {
    match slot {
        0..16 => SMALL_PA + u64::from(slot) * PAGE_SIZE,
        16 => BIG_PA,
        17 => BIG_PA + 511 * PAGE_SIZE,
        18 => POOL + POOL_SIZE - PAGE_SIZE,
        _ => POOL - PAGE_SIZE,
    }
}

/// Device memory, outside the pool: four pages and a 2 MiB aligned block.
const DEV_PA: u64 = 0x0900_0000;
const DEV_BLOCK_PA: u64 = 0x0800_0000;

/// Component `c`'s IPA slots: 12 pages straddling a 2 MiB boundary, then
/// pages of a 2 MiB aligned window that takes block mappings.
const IPA_SLOTS: u8 = 16;

fn base(c: usize) -> u64 {
    0x8000_0000 + c as u64 * GIB
}

fn big_ipa(c: usize) -> u64 {
    base(c) + 2 * BLOCK
}

fn comp_ipa(c: usize, slot: u8) -> u64 {
    match slot {
        0..12 => base(c) + BLOCK - 6 * PAGE_SIZE + u64::from(slot) * PAGE_SIZE,
        _ => big_ipa(c) + [0, 1, 2, 511][usize::from(slot - 12)] * PAGE_SIZE,
    }
}

fn id(c: usize) -> OwnerId {
    OwnerId(c as u16 + 1)
}

fn index(id: OwnerId) -> usize {
    usize::from(id.0) - 1
}

fn managed(pa: u64) -> bool {
    (POOL..POOL + POOL_SIZE).contains(&pa)
}

/// A generated operation: addresses are slots of the universe, or picks
/// among what the model currently holds (resolved when the step runs, so
/// that unshare, relinquish and pin often hit something real).
#[derive(Clone, Copy, Debug)]
enum Op {
    /// Default owner → component; with no IPA slot, at the slot of the
    /// same rank as the pool slot, so that neighbours stay neighbours.
    Donate {
        pa: u8,
        to: usize,
        ipa: Option<u8>,
        pages: u64,
        prot: Prot,
    },
    /// 512 pages from the pool's block to `to`'s block window, shifted by a
    /// page (no block mapping) or not.
    DonateBlock {
        to: usize,
        shift: bool,
    },
    /// Component → component donation.
    Give {
        from: usize,
        ipa: u8,
        to: usize,
        to_ipa: u8,
        pages: u64,
        prot: Prot,
    },
    Share {
        from: usize,
        ipa: u8,
        to: usize,
        to_ipa: u8,
        pages: u64,
        prot: Prot,
    },
    Unshare {
        from: usize,
        ipa: u8,
        to: usize,
        to_ipa: u8,
        pages: u64,
    },
    Lend {
        from: usize,
        ipa: u8,
        to: usize,
        to_ipa: u8,
        pages: u64,
        prot: Prot,
    },
    Relinquish {
        who: usize,
        ipa: u8,
        pages: u64,
    },
    Pin {
        who: usize,
        ipa: u8,
        pages: u64,
    },
    Unpin {
        who: usize,
        ipa: u8,
        pages: u64,
    },
    /// Share, lend or give (`kind` 0, 1, 2) the `pick`-th page some
    /// component maps as its own; with no IPA slot, to the same offset in
    /// the completer's space, so that neighbours stay neighbours.
    FromOwned {
        kind: u8,
        pick: u16,
        to: u8,
        to_ipa: Option<u8>,
        pages: u64,
        prot: Prot,
    },
    /// Unshare, relinquish, pin or unpin (`kind` 0..4) from the `pick`-th
    /// borrowing mapping.
    AtBorrowed {
        kind: u8,
        pick: u16,
        pages: u64,
    },
    /// The owner relinquishes the `pick`-th page it owns (balloon).
    RelinquishOwned {
        pick: u16,
        pages: u64,
    },
    MapDevice {
        who: usize,
        ipa: u8,
        dev: u8,
        pages: u64,
    },
    /// Default owner → component one page at a time, each with its own
    /// access, at the slots of the same rank as the pool slots.
    DonateEach {
        pa: u8,
        to: usize,
        pages: u64,
        prots: [Prot; 4],
    },
    /// Share or lend (`kind` 0, 1) pages from the `pick`-th owned page one
    /// at a time, to the same offsets in the completer's space: later
    /// multi-page requests then span pages given separately.
    FromOwnedEach {
        kind: u8,
        pick: u16,
        to: u8,
        pages: u64,
        prot: Prot,
    },
    /// 2 MiB of device memory as one block in `who`'s block window.
    MapDeviceBlock {
        who: usize,
    },
    Teardown {
        who: usize,
    },
    /// Reclaim the whole IPA space, or `pages` from a slot.
    Reclaim {
        who: usize,
        at: Option<(u8, u64)>,
    },
    /// Remove a torn-down component and add it back with a fresh table.
    Readd {
        who: usize,
    },
    /// The next request runs with only this many pages in the cache.
    Starve(u8),
}

/// An operation with its addresses resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Donate { from: Option<usize>, from_addr: u64, to: usize, to_ipa: u64, pages: u64, prot: Prot },
    Share { from: usize, from_ipa: u64, to: usize, to_ipa: u64, pages: u64, prot: Prot },
    Unshare { from: usize, from_ipa: u64, to: usize, to_ipa: u64, pages: u64 },
    Lend { from: usize, from_ipa: u64, to: usize, to_ipa: u64, pages: u64, prot: Prot },
    Relinquish { who: usize, ipa: u64, pages: u64 },
    Pin { who: usize, ipa: u64, pages: u64 },
    Unpin { who: usize, ipa: u64, pages: u64 },
    MapDevice { who: usize, ipa: u64, pa: u64, pages: u64 },
    Teardown { who: usize },
    Reclaim { who: usize, ipa: u64, pages: u64 },
    Readd { who: usize },
}

/// A page as the model sees it in a component's table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Page {
    Mapped { pa: u64, prot: Prot, state: PageState, lent: bool },
    Lent { pa: u64, prot: Prot },
}

impl Page {
    fn view(self) -> PageView {
        match self {
            Page::Mapped { pa, prot, state, lent } => {
                PageView::Mapped { pa: PhysAddr::new(pa), prot, state, lent }
            }
            Page::Lent { pa, prot } => PageView::Lent(LentMark { pa: PhysAddr::new(pa), prot }),
        }
    }
}

#[derive(Clone, Default, Debug)]
struct Comp {
    dying: bool,
    pages: BTreeMap<u64, Page>,
}

/// The reference model: the ledger by physical page and every component's
/// pages by IPA, with the rules of `owner.rs`'s module docs.
#[derive(Clone, Debug)]
struct Model {
    ledger: BTreeMap<u64, Record>,
    comps: [Comp; COMPONENTS],
    /// Pages the last request zeroes.
    zeroed: Vec<u64>,
}

type MResult<T> = core::result::Result<T, Error>;

impl Model {
    fn new() -> Model {
        Model { ledger: BTreeMap::new(), comps: Default::default(), zeroed: Vec::new() }
    }

    fn page(&self, c: usize, ipa: u64) -> Option<Page> {
        self.comps[c].pages.get(&ipa).copied()
    }

    fn range(pages: u64) -> MResult<()> {
        if pages == 0 { Err(Error::InvalidArgument) } else { Ok(()) }
    }

    /// Physical pages wholly inside managed memory; wholly outside is
    /// `Permission`, straddling its edge is malformed.
    fn check_managed(pa: u64, pages: u64) -> MResult<()> {
        let end = pa + pages * PAGE_SIZE;
        if managed(pa) && managed(end - 1) {
            Ok(())
        } else if end <= POOL || pa >= POOL + POOL_SIZE {
            Err(Error::Permission)
        } else {
            Err(Error::InvalidArgument)
        }
    }

    fn check_pair(
        &self,
        from: Option<usize>,
        from_addr: u64,
        to: usize,
        pages: u64,
    ) -> MResult<()> {
        if from == Some(to) {
            return Err(Error::InvalidArgument);
        }
        Model::range(pages)?;
        if from.is_none() {
            Model::check_managed(from_addr, pages)?;
        }
        if self.comps[to].dying {
            return Err(Error::Permission);
        }
        Ok(())
    }

    /// Every page is a managed page `c` maps as its own, in a state `ok`
    /// accepts, with access `need`, physically contiguous.
    fn check_owned(
        &self,
        c: usize,
        ipa: u64,
        pages: u64,
        need: Prot,
        ok: impl Fn(PageState, &Record) -> bool,
    ) -> MResult<u64> {
        let mut first = None;
        for i in 0..pages {
            let at = ipa + i * PAGE_SIZE;
            let (pa, prot, state) = match self.page(c, at) {
                Some(Page::Mapped { pa, prot, state, .. }) => (pa, prot, state),
                None => return Err(Error::NotFound),
                Some(Page::Lent { .. }) => return Err(Error::Permission),
            };
            if !managed(pa) || prot.contains(Prot::DEVICE) {
                return Err(Error::Permission);
            }
            let base = *first.get_or_insert(pa);
            if pa != base + i * PAGE_SIZE {
                return Err(Error::InvalidArgument);
            }
            let record = self.ledger.get(&pa).ok_or(Error::Permission)?;
            if record.owner != id(c) || record.frame != at / PAGE_SIZE || !ok(state, record) {
                return Err(Error::Permission);
            }
            if !prot.contains(need - Prot::DEVICE) {
                return Err(Error::Permission);
            }
        }
        first.ok_or(Error::InvalidArgument)
    }

    fn check_empty(&self, c: usize, ipa: u64, pages: u64) -> MResult<()> {
        let end = ipa + pages * PAGE_SIZE;
        match self.comps[c].pages.range(ipa..end).next() {
            Some(_) => Err(Error::Permission),
            None => Ok(()),
        }
    }

    /// Every page of `c` at `ipa..` borrows `pa + i`, shared or lent as
    /// `lent` says, unpinned, from contiguous owner frames.
    fn check_borrowed(&self, c: usize, ipa: u64, pages: u64, pa: u64, lent: bool) -> MResult<()> {
        let mut head: Option<Record> = None;
        for i in 0..pages {
            let want = pa + i * PAGE_SIZE;
            match self.page(c, ipa + i * PAGE_SIZE) {
                Some(Page::Mapped { state: PageState::SharedBorrowed, pa: p, lent: l, .. })
                    if p == want && l == lent => {}
                None => return Err(Error::NotFound),
                Some(_) => return Err(Error::Permission),
            }
            let record = *self.ledger.get(&want).ok_or(Error::Permission)?;
            if record.pins != 0 {
                return Err(Error::Busy);
            }
            let head = *head.get_or_insert(record);
            if record.owner != head.owner || record.frame != head.frame + i || record.lent != lent {
                return Err(Error::InvalidArgument);
            }
        }
        Ok(())
    }

    /// The borrower of `pa` lets go: the owner gets a lent page back, or a
    /// shared one back to `Owned` when no borrower is left.
    fn end_borrow(&mut self, pa: u64) {
        let record = self.ledger.get_mut(&pa).expect("borrowed page has a record");
        record.borrowers -= 1;
        let owner = index(record.owner);
        let ipa = record.frame * PAGE_SIZE;
        let page = self.comps[owner].pages.get_mut(&ipa).expect("the owner holds the page");
        if record.lent {
            record.lent = false;
            let Page::Lent { pa: p, prot } = *page else { panic!("lent page not marked lent") };
            *page = Page::Mapped { pa: p, prot, state: PageState::Owned, lent: false };
        } else if record.borrowers == 0 {
            let Page::Mapped { state, .. } = page else { panic!("shared page not mapped") };
            *state = PageState::Owned;
        }
    }

    /// The borrowing mapping at `ipa..+pages` in `c` goes away.
    fn end_borrows(&mut self, c: usize, ipa: u64, pa: u64, pages: u64) {
        for i in 0..pages {
            self.comps[c].pages.remove(&(ipa + i * PAGE_SIZE));
            self.end_borrow(pa + i * PAGE_SIZE);
        }
    }

    fn check_pin(&self, c: usize, ipa: u64, pages: u64) -> MResult<u64> {
        Model::range(pages)?;
        let (pa, lent) = match self.page(c, ipa) {
            Some(Page::Mapped { state: PageState::SharedBorrowed, pa, lent, .. }) => (pa, lent),
            None => return Err(Error::NotFound),
            Some(_) => return Err(Error::Permission),
        };
        for i in 0..pages {
            match self.page(c, ipa + i * PAGE_SIZE) {
                Some(Page::Mapped { state: PageState::SharedBorrowed, pa: p, lent: l, .. })
                    if p == pa + i * PAGE_SIZE && l == lent => {}
                _ => return Err(Error::Permission),
            }
        }
        Ok(pa)
    }

    fn check_saturation(&self, pa: u64, pages: u64, ok: impl Fn(&Record) -> bool) -> MResult<()> {
        for i in 0..pages {
            let record = self.ledger.get(&(pa + i * PAGE_SIZE)).ok_or(Error::Permission)?;
            if !ok(record) {
                return Err(Error::Busy);
            }
        }
        Ok(())
    }

    /// Applies `call` if the model allows it; on error changes nothing.
    fn apply(&mut self, call: Call) -> MResult<()> {
        let mut next = self.clone();
        next.zeroed.clear();
        next.apply_in_place(call)?;
        *self = next;
        Ok(())
    }

    fn apply_in_place(&mut self, call: Call) -> MResult<()> {
        match call {
            Call::Donate { from, from_addr, to, to_ipa, pages, prot } => {
                self.check_pair(from, from_addr, to, pages)?;
                let pa = match from {
                    None => {
                        if (0..pages)
                            .any(|i| self.ledger.contains_key(&(from_addr + i * PAGE_SIZE)))
                        {
                            return Err(Error::Permission);
                        }
                        from_addr
                    }
                    Some(f) => self.check_owned(f, from_addr, pages, Prot::empty(), |s, _| {
                        s == PageState::Owned
                    })?,
                };
                self.check_empty(to, to_ipa, pages)?;
                for i in 0..pages {
                    if let Some(f) = from {
                        self.comps[f].pages.remove(&(from_addr + i * PAGE_SIZE));
                    }
                    let page = Page::Mapped {
                        pa: pa + i * PAGE_SIZE,
                        prot,
                        state: PageState::Owned,
                        lent: false,
                    };
                    self.comps[to].pages.insert(to_ipa + i * PAGE_SIZE, page);
                    let record = Record {
                        owner: id(to),
                        frame: to_ipa / PAGE_SIZE + i,
                        lent: false,
                        borrowers: 0,
                        pins: 0,
                    };
                    self.ledger.insert(pa + i * PAGE_SIZE, record);
                }
            }
            Call::Share { from, from_ipa, to, to_ipa, pages, prot } => {
                self.check_pair(Some(from), from_ipa, to, pages)?;
                let max = MAX_BORROWERS;
                let pa = self.check_owned(from, from_ipa, pages, prot, |s, r| {
                    s != PageState::SharedBorrowed && r.borrowers < max
                })?;
                self.check_saturation(pa, pages, |r| r.borrowers < max)?;
                self.check_empty(to, to_ipa, pages)?;
                for i in 0..pages {
                    let at = from_ipa + i * PAGE_SIZE;
                    if let Some(Page::Mapped { state, .. }) = self.comps[from].pages.get_mut(&at) {
                        *state = PageState::SharedOwned;
                    }
                    let page = Page::Mapped {
                        pa: pa + i * PAGE_SIZE,
                        prot,
                        state: PageState::SharedBorrowed,
                        lent: false,
                    };
                    self.comps[to].pages.insert(to_ipa + i * PAGE_SIZE, page);
                    self.ledger.get_mut(&(pa + i * PAGE_SIZE)).expect("checked").borrowers += 1;
                }
            }
            Call::Unshare { from, from_ipa, to, to_ipa, pages } => {
                self.check_pair(Some(from), from_ipa, to, pages)?;
                let pa = self.check_owned(from, from_ipa, pages, Prot::empty(), |s, _| {
                    s == PageState::SharedOwned
                })?;
                self.check_borrowed(to, to_ipa, pages, pa, false)?;
                self.end_borrows(to, to_ipa, pa, pages);
            }
            Call::Lend { from, from_ipa, to, to_ipa, pages, prot } => {
                self.check_pair(Some(from), from_ipa, to, pages)?;
                let pa =
                    self.check_owned(from, from_ipa, pages, prot, |s, _| s == PageState::Owned)?;
                let Some(Page::Mapped { prot: own, .. }) = self.page(from, from_ipa) else {
                    unreachable!("checked")
                };
                for i in 0..pages {
                    match self.page(from, from_ipa + i * PAGE_SIZE) {
                        Some(Page::Mapped { prot, .. }) if prot == own => {}
                        _ => return Err(Error::InvalidArgument),
                    }
                }
                self.check_empty(to, to_ipa, pages)?;
                for i in 0..pages {
                    let p = pa + i * PAGE_SIZE;
                    self.comps[from]
                        .pages
                        .insert(from_ipa + i * PAGE_SIZE, Page::Lent { pa: p, prot: own });
                    let page =
                        Page::Mapped { pa: p, prot, state: PageState::SharedBorrowed, lent: true };
                    self.comps[to].pages.insert(to_ipa + i * PAGE_SIZE, page);
                    let record = self.ledger.get_mut(&p).expect("checked");
                    record.lent = true;
                    record.borrowers = 1;
                }
            }
            Call::Relinquish { who, ipa, pages } => {
                Model::range(pages)?;
                match self.page(who, ipa) {
                    Some(Page::Mapped { state: PageState::SharedBorrowed, pa, lent, .. }) => {
                        self.check_borrowed(who, ipa, pages, pa, lent)?;
                        self.end_borrows(who, ipa, pa, pages);
                    }
                    Some(Page::Mapped { state: PageState::Owned, .. }) => {
                        let pa = self.check_owned(who, ipa, pages, Prot::empty(), |s, _| {
                            s == PageState::Owned
                        })?;
                        for i in 0..pages {
                            self.comps[who].pages.remove(&(ipa + i * PAGE_SIZE));
                            self.ledger.remove(&(pa + i * PAGE_SIZE));
                            self.zeroed.push(pa + i * PAGE_SIZE);
                        }
                    }
                    None => return Err(Error::NotFound),
                    Some(_) => return Err(Error::Permission),
                }
            }
            Call::Pin { who, ipa, pages } => {
                let pa = self.check_pin(who, ipa, pages)?;
                self.check_saturation(pa, pages, |r| r.pins < MAX_PINS)?;
                for i in 0..pages {
                    self.ledger.get_mut(&(pa + i * PAGE_SIZE)).expect("checked").pins += 1;
                }
            }
            Call::Unpin { who, ipa, pages } => {
                let pa = self.check_pin(who, ipa, pages)?;
                self.check_saturation(pa, pages, |r| r.pins > 0)?;
                for i in 0..pages {
                    self.ledger.get_mut(&(pa + i * PAGE_SIZE)).expect("checked").pins -= 1;
                }
            }
            Call::MapDevice { who, ipa, pa, pages } => {
                if Model::check_managed(pa, pages) != Err(Error::Permission)
                    || self.comps[who].dying
                {
                    return Err(Error::Permission);
                }
                self.check_empty(who, ipa, pages)?;
                for i in 0..pages {
                    let page = Page::Mapped {
                        pa: pa + i * PAGE_SIZE,
                        prot: Prot::DEVICE_RW,
                        state: PageState::Owned,
                        lent: false,
                    };
                    self.comps[who].pages.insert(ipa + i * PAGE_SIZE, page);
                }
            }
            Call::Teardown { who } => self.comps[who].dying = true,
            Call::Reclaim { who, ipa, pages } => {
                if !self.comps[who].dying {
                    return Err(Error::InvalidArgument);
                }
                let end = ipa + pages * PAGE_SIZE;
                // (owner, lent, frame, pa, pages) runs, as `owner::Runs`
                // merges them.
                let mut runs: Vec<(OwnerId, bool, u64, u64, u64)> = Vec::new();
                for (_, page) in self.comps[who].pages.range(ipa..end) {
                    match *page {
                        Page::Mapped { state: PageState::SharedBorrowed, pa, .. } => {
                            let r = self.ledger.get(&pa).ok_or(Error::Permission)?;
                            if r.pins != 0 {
                                return Err(Error::Busy);
                            }
                            let full = runs.len() == MAX_RUN_STEPS;
                            match runs.last_mut() {
                                Some(last)
                                    if last.0 == r.owner
                                        && last.1 == r.lent
                                        && last.2 + last.4 == r.frame
                                        && last.3 + last.4 * PAGE_SIZE == pa =>
                                {
                                    last.4 += 1;
                                }
                                _ if full => return Err(Error::InvalidArgument),
                                _ => runs.push((r.owner, r.lent, r.frame, pa, 1)),
                            }
                        }
                        Page::Mapped { state: PageState::Owned, .. } => {}
                        Page::Mapped { .. } | Page::Lent { .. } => return Err(Error::Busy),
                    }
                }
                let taken: Vec<(u64, Page)> =
                    self.comps[who].pages.range(ipa..end).map(|(&k, &v)| (k, v)).collect();
                for (at, page) in taken {
                    self.comps[who].pages.remove(&at);
                    match page {
                        Page::Mapped { state: PageState::SharedBorrowed, pa, .. } => {
                            self.end_borrow(pa);
                        }
                        Page::Mapped { pa, .. } if managed(pa) => {
                            self.ledger.remove(&pa);
                            self.zeroed.push(pa);
                        }
                        _ => {}
                    }
                }
            }
            Call::Readd { who } => {
                if !self.comps[who].dying {
                    return Err(Error::InvalidArgument);
                }
                if !self.comps[who].pages.is_empty() {
                    return Err(Error::Busy);
                }
                self.comps[who] = Comp::default();
            }
        }
        Ok(())
    }

    /// Every page `c` maps as its own, in address order.
    fn owned(&self) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for (c, comp) in self.comps.iter().enumerate() {
            for (&ipa, page) in &comp.pages {
                if let Page::Mapped { pa, state: PageState::Owned | PageState::SharedOwned, .. } =
                    *page
                    && managed(pa)
                {
                    out.push((c, ipa));
                }
            }
        }
        out
    }

    /// Every borrowing mapping: component, IPA, page.
    fn borrowed(&self) -> Vec<(usize, u64, u64)> {
        let mut out = Vec::new();
        for (c, comp) in self.comps.iter().enumerate() {
            for (&ipa, page) in &comp.pages {
                if let Page::Mapped { pa, state: PageState::SharedBorrowed, .. } = *page {
                    out.push((c, ipa, pa));
                }
            }
        }
        out
    }
}

/// The world, the model and the bookkeeping of one run.
struct Harness {
    w: World,
    model: Model,
    starve: Option<usize>,
    next_vmid: u16,
}

impl Harness {
    fn new() -> Harness {
        let w = World::sized(ARENA_PAGES, FULL_CACHE);
        Harness { w, model: Model::new(), starve: None, next_vmid: 10 }
    }

    /// Resolves an operation against the model's current state; `None` when
    /// it picks from an empty set or names no range.
    fn resolve(&self, op: Op) -> Option<Call> {
        let m = &self.model;
        Some(match op {
            Op::Donate { pa, to, ipa, pages, prot } => Call::Donate {
                from: None,
                from_addr: pool_pa(pa),
                to,
                to_ipa: comp_ipa(to, ipa.unwrap_or(pa % 12)),
                pages,
                prot,
            },
            Op::DonateBlock { to, shift } => Call::Donate {
                from: None,
                from_addr: BIG_PA,
                to,
                to_ipa: big_ipa(to) + u64::from(shift) * PAGE_SIZE,
                pages: BLOCK_PAGES,
                prot: Prot::RWX,
            },
            Op::Give { from, ipa, to, to_ipa, pages, prot } => Call::Donate {
                from: Some(from),
                from_addr: comp_ipa(from, ipa),
                to,
                to_ipa: comp_ipa(to, to_ipa),
                pages,
                prot,
            },
            Op::Share { from, ipa, to, to_ipa, pages, prot } => Call::Share {
                from,
                from_ipa: comp_ipa(from, ipa),
                to,
                to_ipa: comp_ipa(to, to_ipa),
                pages,
                prot,
            },
            Op::Unshare { from, ipa, to, to_ipa, pages } => Call::Unshare {
                from,
                from_ipa: comp_ipa(from, ipa),
                to,
                to_ipa: comp_ipa(to, to_ipa),
                pages,
            },
            Op::Lend { from, ipa, to, to_ipa, pages, prot } => Call::Lend {
                from,
                from_ipa: comp_ipa(from, ipa),
                to,
                to_ipa: comp_ipa(to, to_ipa),
                pages,
                prot,
            },
            Op::Relinquish { who, ipa, pages } => {
                Call::Relinquish { who, ipa: comp_ipa(who, ipa), pages }
            }
            Op::Pin { who, ipa, pages } => Call::Pin { who, ipa: comp_ipa(who, ipa), pages },
            Op::Unpin { who, ipa, pages } => Call::Unpin { who, ipa: comp_ipa(who, ipa), pages },
            Op::FromOwned { kind, pick, to, to_ipa, pages, prot } => {
                let owned = m.owned();
                let (from, from_ipa) = *owned.get(usize::from(pick) % owned.len().max(1))?;
                let to = (from + 1 + usize::from(to % 2)) % COMPONENTS;
                let to_ipa = to_ipa.map_or(from_ipa - base(from) + base(to), |s| comp_ipa(to, s));
                match kind % 3 {
                    0 => Call::Share { from, from_ipa, to, to_ipa, pages, prot },
                    1 => Call::Lend { from, from_ipa, to, to_ipa, pages, prot },
                    _ => Call::Donate {
                        from: Some(from),
                        from_addr: from_ipa,
                        to,
                        to_ipa,
                        pages,
                        prot,
                    },
                }
            }
            Op::AtBorrowed { kind, pick, pages } => {
                let borrowed = m.borrowed();
                let (who, ipa, pa) = *borrowed.get(usize::from(pick) % borrowed.len().max(1))?;
                match kind % 4 {
                    0 => {
                        let record = m.ledger.get(&pa)?;
                        Call::Unshare {
                            from: index(record.owner),
                            from_ipa: record.frame * PAGE_SIZE,
                            to: who,
                            to_ipa: ipa,
                            pages,
                        }
                    }
                    1 => Call::Relinquish { who, ipa, pages },
                    2 => Call::Pin { who, ipa, pages },
                    _ => Call::Unpin { who, ipa, pages },
                }
            }
            Op::RelinquishOwned { pick, pages } => {
                let owned = m.owned();
                let (who, ipa) = *owned.get(usize::from(pick) % owned.len().max(1))?;
                Call::Relinquish { who, ipa, pages }
            }
            Op::MapDevice { who, ipa, dev, pages } => Call::MapDevice {
                who,
                ipa: comp_ipa(who, ipa),
                pa: DEV_PA + u64::from(dev) * PAGE_SIZE,
                pages: pages.max(1),
            },
            Op::MapDeviceBlock { who } => {
                Call::MapDevice { who, ipa: big_ipa(who), pa: DEV_BLOCK_PA, pages: BLOCK_PAGES }
            }
            Op::Teardown { who } => Call::Teardown { who },
            Op::Reclaim { who, at: None } => {
                Call::Reclaim { who, ipa: 0, pages: Geometry::IPA_40.ipa_limit() / PAGE_SIZE }
            }
            Op::Reclaim { who, at: Some((slot, pages)) } => {
                Call::Reclaim { who, ipa: comp_ipa(who, slot), pages: pages.max(1) }
            }
            Op::Readd { who } => Call::Readd { who },
            Op::Starve(_) | Op::DonateEach { .. } | Op::FromOwnedEach { .. } => return None,
        })
    }

    fn exec(&mut self, call: Call) -> MResult<()> {
        let World { mem, cache, own } = &mut self.w;
        let transfer = |from: usize, from_addr: u64, to: usize, to_ipa: u64, pages: u64| Transfer {
            from: id(from),
            from_addr,
            to: id(to),
            to_ipa: Ipa::new(to_ipa),
            pages,
        };
        match call {
            Call::Donate { from, from_addr, to, to_ipa, pages, prot } => {
                let mut t = transfer(0, from_addr, to, to_ipa, pages);
                t.from = from.map_or(OwnerId::DEFAULT, id);
                own.donate(mem, cache, t, prot)
            }
            Call::Share { from, from_ipa, to, to_ipa, pages, prot } => {
                own.share(mem, cache, transfer(from, from_ipa, to, to_ipa, pages), prot)
            }
            Call::Unshare { from, from_ipa, to, to_ipa, pages } => {
                own.unshare(mem, cache, transfer(from, from_ipa, to, to_ipa, pages))
            }
            Call::Lend { from, from_ipa, to, to_ipa, pages, prot } => {
                own.lend(mem, cache, transfer(from, from_ipa, to, to_ipa, pages), prot)
            }
            Call::Relinquish { who, ipa, pages } => {
                own.relinquish(mem, cache, id(who), Ipa::new(ipa), pages)
            }
            Call::Pin { who, ipa, pages } => own.pin(mem, id(who), Ipa::new(ipa), pages),
            Call::Unpin { who, ipa, pages } => own.unpin(mem, id(who), Ipa::new(ipa), pages),
            Call::MapDevice { who, ipa, pa, pages } => {
                let range = IpaRange::pages(Ipa::new(ipa), pages).expect("pages > 0");
                own.map_device(mem, cache, id(who), range, PhysAddr::new(pa))
            }
            Call::Teardown { who } => own.start_teardown(id(who)),
            Call::Reclaim { who, ipa, pages } => {
                let range = IpaRange::pages(Ipa::new(ipa), pages).expect("pages > 0");
                own.reclaim(mem, cache, id(who), range)
            }
            Call::Readd { who } => {
                let table = own.remove_component(mem, id(who))?;
                table.destroy(mem);
                let g = Geometry::IPA_40;
                let root = mem.alloc_contiguous(g.root_pages()).expect("arena has room");
                let vmid = VmId(self.next_vmid);
                self.next_vmid += 1;
                let table = Stage2::new(g, root, vmid, TableKind::Component).expect("aligned");
                own.add_component(id(who), table)
            }
        }
    }

    /// Runs one generated operation and checks everything.
    fn step(&mut self, op: Op) -> Res {
        if let Op::Starve(pages) = op {
            self.starve = Some(usize::from(pages));
            return Ok(());
        }
        for call in self.calls(op) {
            self.call(call)?;
        }
        Ok(())
    }

    /// The requests one operation stands for.
    fn calls(&self, op: Op) -> Vec<Call> {
        match op {
            Op::DonateEach { pa, to, pages, prots } => {
                let (pa, ipa) = (pool_pa(pa), comp_ipa(to, pa % 12));
                (0..pages.min(4))
                    .map(|i| Call::Donate {
                        from: None,
                        from_addr: pa + i * PAGE_SIZE,
                        to,
                        to_ipa: ipa + i * PAGE_SIZE,
                        pages: 1,
                        prot: prots[i as usize],
                    })
                    .collect()
            }
            Op::FromOwnedEach { kind, pick, to, pages, prot } => {
                let owned = self.model.owned();
                let Some(&(from, from_ipa)) = owned.get(usize::from(pick) % owned.len().max(1))
                else {
                    return Vec::new();
                };
                let to = (from + 1 + usize::from(to % 2)) % COMPONENTS;
                let to_ipa = from_ipa - base(from) + base(to);
                (0..pages)
                    .map(|i| {
                        let (from_ipa, to_ipa) = (from_ipa + i * PAGE_SIZE, to_ipa + i * PAGE_SIZE);
                        match kind % 2 {
                            0 => Call::Share { from, from_ipa, to, to_ipa, pages: 1, prot },
                            _ => Call::Lend { from, from_ipa, to, to_ipa, pages: 1, prot },
                        }
                    })
                    .collect()
            }
            op => self.resolve(op).into_iter().collect(),
        }
    }

    fn call(&mut self, call: Call) -> Res {
        let starved = self.starve.take();
        if let Some(pages) = starved {
            set_cache(&mut self.w.mem, &mut self.w.cache, pages);
        }
        let mut predicted = self.model.clone();
        let expected = predicted.apply(call);
        let then =
            (expected.is_err() || starved.is_some()).then(|| before(&self.w.mem, &self.w.cache));
        let zeroed_before = self.w.mem.zeroed.len();
        let actual = self.exec(call);
        match (expected, actual) {
            (Ok(()), Ok(())) => {
                let mut zeroed: Vec<u64> =
                    self.w.mem.zeroed[zeroed_before..].iter().map(|p| p.raw()).collect();
                let mut want = predicted.zeroed.clone();
                zeroed.sort_unstable();
                want.sort_unstable();
                ensure!(zeroed == want, "{call:?}: zeroed {zeroed:x?}, expected {want:x?}");
                self.model = predicted;
            }
            (Ok(()), Err(Error::OutOfMemory)) if let Some(then) = &then => {
                unchanged(&self.w.mem, &self.w.cache, then, &format!("{call:?} (starved)"))?;
                set_cache(&mut self.w.mem, &mut self.w.cache, FULL_CACHE);
                self.starve = None;
                return self.call(call);
            }
            (Err(e), Err(a)) if e == a => {
                let then = then.expect("taken for a refusal");
                unchanged(&self.w.mem, &self.w.cache, &then, &format!("{call:?} refused"))?;
                // Nothing changed, so everything checked before still holds.
                set_cache(&mut self.w.mem, &mut self.w.cache, FULL_CACHE);
                return Ok(());
            }
            (e, a) => return Err(format!("{call:?}: expected {e:?}, got {a:?}")),
        }
        set_cache(&mut self.w.mem, &mut self.w.cache, FULL_CACHE);
        self.check().map_err(|e| format!("after {call:?}: {e}"))
    }

    /// The whole state agrees with the model.
    fn check(&self) -> Res {
        let World { mem, cache, own } = &self.w;
        own.check_invariants(mem).map_err(|v| format!("invariant: {v:?}"))?;
        // Table pages: refcounts, no empty table, no page leaked.
        let ledger = contents(mem, own.ledger())?;
        let mut tables = ledger.tables;
        let mut comps = Vec::new();
        for c in 0..COMPONENTS {
            let table = contents(mem, own.component(id(c)).expect("exists"))?;
            tables += table.tables;
            comps.push(table);
        }
        let roots = (COMPONENTS + 1) * ROOT_PAGES;
        let total = tables + roots + cache.len() + mem.free_pages();
        ensure!(total == ARENA_PAGES, "{total} table pages accounted for, not {ARENA_PAGES}");
        // The ledger holds exactly the model's records.
        let mut records = 0;
        for &(ipa, level, _) in &ledger.leaves {
            ensure!(level == LAST_LEVEL, "ledger entry at level {level} at {ipa}");
            let pa = PhysAddr::new(ipa.raw());
            let record = own.record(mem, pa).map_err(|e| format!("record {pa}: {e:?}"))?;
            let want = self.model.ledger.get(&pa.raw()).copied();
            ensure!(record == want, "ledger at {pa}: {record:?}, model {want:?}");
            records += 1;
        }
        ensure!(records == self.model.ledger.len(), "ledger holds {records} records");
        for slot in 0..PA_SLOTS {
            let pa = pool_pa(slot);
            if !managed(pa) {
                continue;
            }
            let state = own.state(mem, OwnerId::DEFAULT, pa).map_err(|e| format!("{e:?}"))?;
            let free = !self.model.ledger.contains_key(&pa);
            let want = if free { PageState::Owned } else { PageState::NoPage };
            ensure!(state == want, "default owner's state of PA:{pa:#x}: {state:?}");
        }
        // Every component's table holds exactly the model's pages.
        for (c, (comp, found)) in self.model.comps.iter().zip(&comps).enumerate() {
            let table = own.component(id(c)).expect("exists");
            ensure!(table.is_dying() == comp.dying, "component {c} dying: {}", table.is_dying());
            let mut pages = 0;
            for &(ipa, level, pte) in &found.leaves {
                // One walk per leaf: the other pages of a block read the
                // same, one page further each.
                let first = own.view(mem, id(c), ipa).map_err(|e| format!("{e:?}"))?;
                for i in 0..level_size(level) / PAGE_SIZE {
                    let at = ipa.raw() + i * PAGE_SIZE;
                    let view = match first {
                        PageView::Mapped { pa, prot, state, lent } if pte.is_valid() => {
                            PageView::Mapped { pa: pa.add(i * PAGE_SIZE), prot, state, lent }
                        }
                        view => view,
                    };
                    let want = comp.pages.get(&at).map_or(PageView::Empty, |p| p.view());
                    ensure!(view == want, "component {c} at IPA:{at:#x}: {view:?}, model {want:?}");
                    pages += 1;
                }
            }
            ensure!(pages == comp.pages.len(), "component {c} maps {pages} pages");
            for slot in 0..IPA_SLOTS {
                let at = comp_ipa(c, slot);
                let state = own.state(mem, id(c), at).map_err(|e| format!("{e:?}"))?;
                let want = comp.pages.get(&at).map_or(PageState::NoPage, |p| p.view().state());
                ensure!(state == want, "component {c} state at IPA:{at:#x}: {state:?}");
            }
        }
        Ok(())
    }

    /// Ends the run as a memory manager would: borrowers let go, every
    /// component is torn down and reclaimed, then removed; the ledger ends
    /// empty and every table page is back.
    fn teardown(&mut self) -> Res {
        for (who, ipa, pa) in self.model.borrowed() {
            while self.model.ledger[&pa].pins > 0 {
                self.call(Call::Unpin { who, ipa, pages: 1 })?;
            }
        }
        for who in 0..COMPONENTS {
            self.call(Call::Teardown { who })?;
        }
        let span = Geometry::IPA_40.ipa_limit() / PAGE_SIZE;
        // Borrowers go first; owners are busy until their pages are back.
        // Components that borrow from each other break the cycle by
        // relinquishing what they borrow.
        let mut rounds = 0;
        while self.model.comps.iter().any(|c| !c.pages.is_empty()) {
            rounds += 1;
            ensure!(rounds <= COMPONENTS + 1, "teardown makes no progress");
            let mut progress = false;
            for who in 0..COMPONENTS {
                if !self.model.comps[who].pages.is_empty() {
                    self.call(Call::Reclaim { who, ipa: 0, pages: span })?;
                    progress |= self.model.comps[who].pages.is_empty();
                }
            }
            if !progress {
                for (who, ipa, _) in self.model.borrowed() {
                    self.call(Call::Relinquish { who, ipa, pages: 1 })?;
                    ensure!(self.model.page(who, ipa).is_none(), "relinquish {ipa:#x}");
                }
            }
        }
        for who in 0..COMPONENTS {
            self.call(Call::Readd { who })?;
        }
        ensure!(self.model.ledger.is_empty(), "model ledger not empty");
        let World { mem, cache, own } = &mut self.w;
        ensure!(contents(mem, own.ledger())?.leaves.is_empty(), "ledger not empty");
        cache.drain(mem);
        let free = ARENA_PAGES - (COMPONENTS + 1) * ROOT_PAGES;
        ensure!(mem.free_pages() == free, "{} pages free, not {free}", mem.free_pages());
        Ok(())
    }
}

fn comp() -> impl Strategy<Value = usize> {
    0..COMPONENTS
}

/// Two distinct components.
fn pair() -> impl Strategy<Value = (usize, usize)> {
    (0..COMPONENTS, 1..COMPONENTS).prop_map(|(from, d)| (from, (from + d) % COMPONENTS))
}

fn ipa_slot() -> impl Strategy<Value = u8> {
    prop_oneof![6 => 0..12u8, 1 => 12..IPA_SLOTS]
}

fn maybe_slot() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![Just(None), ipa_slot().prop_map(Some)]
}

fn pa_slot() -> impl Strategy<Value = u8> {
    prop_oneof![10 => 0..16u8, 1 => 16..PA_SLOTS]
}

/// Mostly one page, sometimes a few, rarely none.
fn pages() -> impl Strategy<Value = u64> {
    prop_oneof![1 => Just(0u64), 8 => Just(1u64), 6 => 2..=4u64]
}

fn prot() -> impl Strategy<Value = Prot> {
    prop_oneof![Just(Prot::R), Just(Prot::RW), Just(Prot::RWX)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (pa_slot(), comp(), maybe_slot(), pages(), prot())
            .prop_map(|(pa, to, ipa, pages, prot)| Op::Donate { pa, to, ipa, pages, prot }),
        1 => (comp(), any::<bool>()).prop_map(|(to, shift)| Op::DonateBlock { to, shift }),
        2 => (pair(), ipa_slot(), ipa_slot(), pages(), prot()).prop_map(
            |((from, to), ipa, to_ipa, pages, prot)| {
                Op::Give { from, ipa, to, to_ipa, pages, prot }
            }
        ),
        3 => (pair(), ipa_slot(), ipa_slot(), pages(), prot()).prop_map(
            |((from, to), ipa, to_ipa, pages, prot)| {
                Op::Share { from, ipa, to, to_ipa, pages, prot }
            }
        ),
        1 => (pair(), ipa_slot(), ipa_slot(), pages()).prop_map(
            |((from, to), ipa, to_ipa, pages)| Op::Unshare { from, ipa, to, to_ipa, pages }
        ),
        2 => (pair(), ipa_slot(), ipa_slot(), pages(), prot()).prop_map(
            |((from, to), ipa, to_ipa, pages, prot)| {
                Op::Lend { from, ipa, to, to_ipa, pages, prot }
            }
        ),
        2 => (comp(), ipa_slot(), pages())
            .prop_map(|(who, ipa, pages)| Op::Relinquish { who, ipa, pages }),
        1 => (comp(), ipa_slot(), pages())
            .prop_map(|(who, ipa, pages)| Op::Pin { who, ipa, pages }),
        1 => (comp(), ipa_slot(), pages())
            .prop_map(|(who, ipa, pages)| Op::Unpin { who, ipa, pages }),
        12 => (0..3u8, any::<u16>(), 0..2u8, maybe_slot(), pages(), prot()).prop_map(
            |(kind, pick, to, to_ipa, pages, prot)| {
                Op::FromOwned { kind, pick, to, to_ipa, pages, prot }
            }
        ),
        2 => (pa_slot(), comp(), 2..=4u64, [prot(), prot(), prot(), prot()])
            .prop_map(|(pa, to, pages, prots)| Op::DonateEach { pa, to, pages, prots }),
        3 => (0..2u8, any::<u16>(), 0..2u8, 2..=4u64, prot()).prop_map(
            |(kind, pick, to, pages, prot)| Op::FromOwnedEach { kind, pick, to, pages, prot }
        ),
        8 => (0..4u8, any::<u16>(), pages())
            .prop_map(|(kind, pick, pages)| Op::AtBorrowed { kind, pick, pages }),
        1 => (any::<u16>(), pages()).prop_map(|(pick, pages)| Op::RelinquishOwned { pick, pages }),
        2 => (comp(), ipa_slot(), 0..4u8, pages())
            .prop_map(|(who, ipa, dev, pages)| Op::MapDevice { who, ipa, dev, pages }),
        1 => comp().prop_map(|who| Op::MapDeviceBlock { who }),
        1 => comp().prop_map(|who| Op::Teardown { who }),
        2 => (comp(), proptest::option::of((ipa_slot(), pages())))
            .prop_map(|(who, at)| Op::Reclaim { who, at }),
        1 => comp().prop_map(|who| Op::Readd { who }),
        2 => (0..4u8).prop_map(Op::Starve),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random transitions agree with the model step by step, keep every
    /// invariant, change nothing when refused, and a full teardown returns
    /// every page.
    #[test]
    fn ownership_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        h.check().map_err(TestCaseError::fail)?;
        for op in ops {
            h.step(op).map_err(TestCaseError::fail)?;
        }
        h.teardown().map_err(TestCaseError::fail)?;
    }
}

/// Found by `ownership_matches_the_model`: pages lent one by one with
/// different access and relinquished together came back to the lender
/// with the first page's access.
#[test]
fn lent_pages_come_back_with_their_own_access() {
    let mut h = Harness::new();
    let (g, v) = (comp_ipa(0, 2), comp_ipa(1, 2));
    for (i, prot) in [(0, Prot::RWX), (1, Prot::R)] {
        let (pa, from_ipa, to_ipa) =
            (SMALL_PA + i * PAGE_SIZE, g + i * PAGE_SIZE, v + i * PAGE_SIZE);
        let donate =
            Call::Donate { from: None, from_addr: pa, to: 0, to_ipa: from_ipa, pages: 1, prot };
        h.call(donate).unwrap();
        h.call(Call::Lend { from: 0, from_ipa, to: 1, to_ipa, pages: 1, prot: Prot::R }).unwrap();
    }
    h.call(Call::Relinquish { who: 1, ipa: v, pages: 2 }).unwrap();
    h.teardown().unwrap();
}

/// Found by `ownership_matches_the_model`: a dying component that borrowed
/// one page at two IPAs dropped both borrows on reclaim, but the owner's
/// page stayed `SharedOwned`.
#[test]
fn a_page_borrowed_twice_is_owned_again_after_reclaim() {
    let mut h = Harness::new();
    let (g, v) = (comp_ipa(0, 9), comp_ipa(1, 0));
    let donate =
        Call::Donate { from: None, from_addr: SMALL_PA, to: 0, to_ipa: g, pages: 1, prot: Prot::R };
    h.call(donate).unwrap();
    for to_ipa in [v, v + PAGE_SIZE] {
        h.call(Call::Share { from: 0, from_ipa: g, to: 1, to_ipa, pages: 1, prot: Prot::R })
            .unwrap();
    }
    h.call(Call::Teardown { who: 1 }).unwrap();
    h.call(Call::Reclaim { who: 1, ipa: 0, pages: 1 << 28 }).unwrap();
    assert_eq!(h.model.page(0, g).map(Page::view).map(PageView::state), Some(PageState::Owned));
    h.teardown().unwrap();
}

// ===================================================================
// Property 2: stage-2 updates against a model of every page.
// ===================================================================

/// Table pages of the stage-2 property's arena.
const T_ARENA_PAGES: usize = 1024;
/// The IPA space the updates touch: 6 GiB from 0, in pages.
const T_SPAN_PAGES: u64 = 6 * GIB / PAGE_SIZE;

/// What a page holds: a mapping (the physical address of the segment's
/// first page) or an annotation; zero pages are absent.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Val {
    Leaf { pa: u64, prot: Prot, sw: u8 },
    Ann(Annotation),
}

impl Val {
    fn advance(self, pages: u64) -> Val {
        match self {
            Val::Leaf { pa, prot, sw } => Val::Leaf { pa: pa + pages * PAGE_SIZE, prot, sw },
            ann => ann,
        }
    }

    /// The page-level entry for this page.
    fn pte(self) -> Pte {
        match self {
            Val::Leaf { pa, prot, sw } => Pte::leaf(LAST_LEVEL, PhysAddr::new(pa), prot, sw),
            Val::Ann(a) => Pte::annotated(a),
        }
    }
}

/// Non-overlapping `[start, end)` page segments: start → (end, value).
#[derive(Clone, Default, Debug)]
struct Segs(BTreeMap<u64, (u64, Val)>);

impl Segs {
    fn split(&mut self, at: u64) {
        if let Some((&s, &(e, v))) = self.0.range(..at).next_back()
            && e > at
        {
            self.0.insert(s, (at, v));
            self.0.insert(at, (e, v.advance(at - s)));
        }
    }

    fn take(&mut self, s: u64, e: u64) -> Vec<(u64, u64, Val)> {
        self.split(s);
        self.split(e);
        let keys: Vec<u64> = self.0.range(s..e).map(|(&k, _)| k).collect();
        keys.into_iter()
            .map(|k| {
                let (end, v) = self.0.remove(&k).expect("listed");
                (k, end, v)
            })
            .collect()
    }

    fn set(&mut self, s: u64, e: u64, v: Option<Val>) {
        self.take(s, e);
        if let Some(v) = v {
            self.0.insert(s, (e, v));
        }
    }

    fn modify(&mut self, s: u64, e: u64, f: impl Fn(Val) -> Val) {
        for (a, b, v) in self.take(s, e) {
            self.0.insert(a, (b, f(v)));
        }
    }

    fn at(&self, page: u64) -> Option<Val> {
        let (&s, &(e, v)) = self.0.range(..=page).next_back()?;
        (page < e).then(|| v.advance(page - s))
    }

    /// The segments, merged where they continue each other.
    fn normalized(&self) -> Vec<(u64, u64, Val)> {
        let mut out = Vec::new();
        for (&s, &(e, v)) in &self.0 {
            push_merged(&mut out, s, e, v);
        }
        out
    }
}

fn push_merged(out: &mut Vec<(u64, u64, Val)>, s: u64, e: u64, v: Val) {
    if let Some(last) = out.last_mut()
        && last.1 == s
        && last.2.advance(s - last.0) == v
    {
        last.1 = e;
        return;
    }
    out.push((s, e, v));
}

#[derive(Clone, Copy, Debug)]
enum TOp {
    Map {
        start: u64,
        pages: u64,
        pa_off: u64,
        prot: Prot,
        sw: u8,
        pages_only: bool,
    },
    Unmap {
        start: u64,
        pages: u64,
    },
    Protect {
        start: u64,
        pages: u64,
        prot: Prot,
    },
    SetSw {
        start: u64,
        pages: u64,
        sw: u8,
    },
    Annotate {
        start: u64,
        pages: u64,
        owner: u16,
        meta: u64,
    },
    /// Annotate owner 0: refused on a live component table.
    Clear {
        start: u64,
        pages: u64,
    },
}

/// How full the cache is for a step: plenty, exactly what the update says
/// it needs, or one page short of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CacheLevel {
    Full,
    Exact,
    Short,
}

struct TableHarness {
    mem: Arena,
    cache: MemCache,
    table: Stage2,
    model: Segs,
}

impl TableHarness {
    fn new(dying: bool) -> TableHarness {
        let mut mem = Arena::new(PhysAddr::new(0x1_0000_0000), T_ARENA_PAGES);
        let g = Geometry::IPA_40;
        let root = mem.alloc_contiguous(g.root_pages()).expect("arena has room");
        let mut table = Stage2::new(g, root, VmId(1), TableKind::Component).expect("aligned");
        if dying {
            table.start_teardown();
        }
        TableHarness { mem, cache: MemCache::new(), table, model: Segs::default() }
    }

    /// The update, its range and what the model expects of it: `Ok(true)`
    /// when it changes something (so the call must succeed), `Ok(false)`
    /// when it changes nothing (success or `Retry` where the call reports
    /// it), or the error.
    fn predict(&self, op: TOp) -> (IpaRange, Update, bool, core::result::Result<Segs, Error>) {
        let range = |start: u64, pages: u64| {
            IpaRange::pages(Ipa::new(start * PAGE_SIZE), pages).expect("non-empty range")
        };
        let mut next = self.model.clone();
        let (r, update, reports_retry) = match op {
            TOp::Map { start, pages, pa_off, prot, sw, pages_only } => {
                let pa = start * PAGE_SIZE + pa_off;
                let mut mapping = Mapping::new(prot).with_sw(sw);
                if pages_only {
                    mapping = mapping.pages();
                }
                next.set(start, start + pages, Some(Val::Leaf { pa, prot, sw }));
                (range(start, pages), Update::Map { pa: PhysAddr::new(pa), mapping }, true)
            }
            TOp::Unmap { start, pages } => {
                next.set(start, start + pages, None);
                (range(start, pages), Update::Unmap, false)
            }
            TOp::Protect { start, pages, prot } => {
                let r = range(start, pages);
                let device = self.model.clone().take(start, start + pages).iter().any(
                    |(_, _, v)| matches!(v, Val::Leaf { prot, .. } if prot.contains(Prot::DEVICE)),
                );
                if device && !prot.intersects(Prot::RW) {
                    return (r, Update::Protect(prot), false, Err(Error::InvalidArgument));
                }
                next.modify(start, start + pages, |v| match v {
                    Val::Leaf { pa, prot: old, sw } if old.contains(Prot::DEVICE) => {
                        Val::Leaf { pa, prot: (prot - Prot::X) | Prot::DEVICE, sw }
                    }
                    Val::Leaf { pa, sw, .. } => Val::Leaf { pa, prot, sw },
                    ann => ann,
                });
                (range(start, pages), Update::Protect(prot), false)
            }
            TOp::SetSw { start, pages, sw } => {
                next.modify(start, start + pages, |v| match v {
                    Val::Leaf { pa, prot, .. } => Val::Leaf { pa, prot, sw },
                    ann => ann,
                });
                (range(start, pages), Update::SetSoftware(sw), true)
            }
            TOp::Annotate { start, pages, owner, meta } => {
                let a = Annotation::new(OwnerId(owner), meta).expect("fits");
                next.set(start, start + pages, Some(Val::Ann(a)));
                (range(start, pages), Update::Annotate(a), false)
            }
            TOp::Clear { start, pages } => {
                next.set(start, start + pages, None);
                let r = range(start, pages);
                let update = Update::Annotate(Annotation::DEFAULT);
                if !self.table.is_dying() {
                    return (r, update, false, Err(Error::InvalidArgument));
                }
                (r, update, false)
            }
        };
        (r, update, reports_retry, Ok(next))
    }

    /// Runs the update as the public API does: `map` and `update` report
    /// `Retry`, the others swallow it.
    fn exec(&mut self, op: TOp, range: IpaRange, update: Update) -> MResult<()> {
        let (mem, cache) = (&mut self.mem, &mut self.cache);
        match (op, update) {
            (TOp::Map { .. }, Update::Map { pa, mapping }) => {
                self.table.map(mem, cache, range, pa, mapping)
            }
            (TOp::Unmap { .. }, _) => self.table.unmap(mem, cache, range),
            (TOp::Protect { .. }, Update::Protect(prot)) => {
                self.table.protect(mem, cache, range, prot)
            }
            (TOp::Annotate { .. } | TOp::Clear { .. }, Update::Annotate(a)) => {
                self.table.annotate(mem, cache, range, a)
            }
            _ => self.table.update(mem, cache, range, update),
        }
    }

    fn step(&mut self, op: TOp, level: CacheLevel) -> Res {
        let (range, update, reports_retry, expected) = self.predict(op);
        let needed = self.table.pages_needed(&self.mem, range, update);
        let needed = match (&expected, needed) {
            (Ok(_), Ok(n)) => n,
            (Err(e), Err(a)) if *e == a => 0,
            (e, n) => {
                return Err(format!("{op:?}: pages_needed {n:?}, expected {:?}", e.as_ref().err()));
            }
        };
        let pages = match level {
            CacheLevel::Full => FULL_CACHE.max(needed),
            CacheLevel::Exact => needed,
            CacheLevel::Short => needed.saturating_sub(1),
        };
        set_cache(&mut self.mem, &mut self.cache, pages);
        let cached = self.cache.len();
        let refusal = expected.is_err() || pages < needed;
        let then = refusal.then(|| before(&self.mem, &self.cache));
        let actual = self.exec(op, range, update);
        let used = cached - self.cache.len();
        match (expected, actual) {
            (Ok(_), Err(Error::OutOfMemory)) if let Some(then) = &then => {
                unchanged(&self.mem, &self.cache, then, &format!("{op:?} short of pages"))?;
                return Ok(());
            }
            (Ok(_), _) if pages < needed => {
                return Err(format!("{op:?}: ran with {pages} pages of the {needed} it needs"));
            }
            (Ok(next), Ok(()) | Err(Error::Retry)) => {
                let changed = next.normalized() != self.model.normalized();
                ensure!(
                    actual.is_ok() || (reports_retry && !changed),
                    "{op:?}: {actual:?} although it changes the table"
                );
                ensure!(used == needed, "{op:?}: took {used} pages, prepare counted {needed}");
                self.model = next;
            }
            (Err(e), Err(a)) if e == a => {
                let then = then.expect("taken for a refusal");
                unchanged(&self.mem, &self.cache, &then, &format!("{op:?} refused"))?;
                return Ok(());
            }
            (e, a) => return Err(format!("{op:?}: expected {:?}, got {a:?}", e.err())),
        }
        self.check(range).map_err(|e| format!("after {op:?}: {e}"))
    }

    /// Leaf by leaf, the table holds the model's pages; pages at every
    /// segment edge read as the model says; table pages add up.
    fn check(&self, range: IpaRange) -> Res {
        let (mem, table) = (&self.mem, &self.table);
        let Contents { tables, leaves } = contents(mem, table)?;
        let total = tables + ROOT_PAGES + self.cache.len() + mem.free_pages();
        ensure!(total == T_ARENA_PAGES, "{total} table pages accounted for");
        let mut found = Vec::new();
        for (ipa, level, pte) in leaves {
            let size = level_size(level);
            let v = if pte.is_valid() {
                ensure!(level >= FIRST_BLOCK_LEVEL, "leaf at level {level}");
                ensure!(pte.addr().is_aligned(size), "misaligned block {pte:?} at {ipa}");
                let kind = if level == LAST_LEVEL { 0b11 } else { 0b01 };
                ensure!(pte.0 & 0b11 == kind, "{pte:?} at level {level}");
                ensure!(!pte.is_contiguous(), "contiguous hint at {ipa}");
                Val::Leaf { pa: pte.addr().raw(), prot: pte.prot(), sw: pte.sw() }
            } else {
                Val::Ann(pte.annotation().expect("invalid entry"))
            };
            let start = ipa.raw() / PAGE_SIZE;
            push_merged(&mut found, start, start + size / PAGE_SIZE, v);
        }
        let want = self.model.normalized();
        if found != want {
            return Err(format!("table {found:x?}\nmodel {want:x?}"));
        }
        let mut probes: Vec<u64> = vec![
            range.start().raw() / PAGE_SIZE,
            range.end().raw() / PAGE_SIZE - 1,
            range.end().raw() / PAGE_SIZE,
        ];
        for (s, e, _) in &want {
            probes.extend([s.saturating_sub(1), *s, e - 1, *e]);
        }
        let limit = table.geometry().ipa_limit() / PAGE_SIZE;
        for page in probes.into_iter().filter(|&p| p < limit) {
            let got = table.page(mem, Ipa::new(page * PAGE_SIZE)).map_err(|e| format!("{e:?}"))?;
            let want = self.model.at(page).map_or(Pte::ZERO, Val::pte);
            ensure!(got == want, "page {page:#x}: {got:?}, model {want:?}");
        }
        Ok(())
    }

    /// Unmapping everything frees every table page.
    fn finish(&mut self) -> Res {
        let span = self.table.span();
        self.table.unmap(&mut self.mem, &mut self.cache, span).map_err(|e| format!("{e:?}"))?;
        self.model = Segs::default();
        self.check(span)?;
        self.cache.drain(&mut self.mem);
        let free = T_ARENA_PAGES - ROOT_PAGES;
        ensure!(self.mem.free_pages() == free, "{} pages free, not {free}", self.mem.free_pages());
        Ok(())
    }
}

/// A first page: a GiB, a 2 MiB block in it and a page in that, each often
/// at an edge.
fn t_start() -> impl Strategy<Value = u64> {
    let edge = || prop_oneof![Just(0u64), Just(1), Just(511), 0..512u64];
    (0..4u64, edge(), edge()).prop_map(|(g, b, p)| g * (GIB / PAGE_SIZE) + b * BLOCK_PAGES + p)
}

/// A length: a few pages, a few blocks give or take a page, or a GiB give or
/// take a block or a page.
fn t_pages() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 1..=16u64,
        3 => (1..=3u64, 0..3u64).prop_map(|(k, d)| k * BLOCK_PAGES + d - 1),
        1 => (0..5u64).prop_map(|d| GIB / PAGE_SIZE + [0, 1, BLOCK_PAGES][d as usize % 3] - (d / 3)),
    ]
}

fn t_op() -> impl Strategy<Value = TOp> {
    let offsets = prop_oneof![Just(0u64), Just(GIB), Just(BLOCK), Just(PAGE_SIZE), Just(16 * GIB)];
    let prots = || prop_oneof![Just(Prot::R), Just(Prot::RW), Just(Prot::RWX), Just(Prot::X)];
    prop_oneof![
        5 => (t_start(), t_pages(), offsets, prots(), 0..4u8, any::<bool>(), any::<bool>()).prop_map(
            |(start, pages, pa_off, prot, sw, device, pages_only)| {
                // A large range maps blocks, never 4 KiB pages by the million.
                let big = pages > 4 * BLOCK_PAGES;
                let pa_off = if big && pa_off == PAGE_SIZE { BLOCK } else { pa_off };
                let prot = if device { Prot::DEVICE_RW } else { prot };
                TOp::Map { start, pages, pa_off, prot, sw, pages_only: pages_only && !big }
            }
        ),
        3 => (t_start(), t_pages()).prop_map(|(start, pages)| TOp::Unmap { start, pages }),
        2 => (t_start(), t_pages(), prots())
            .prop_map(|(start, pages, prot)| TOp::Protect { start, pages, prot }),
        1 => (t_start(), t_pages(), 0..4u8)
            .prop_map(|(start, pages, sw)| TOp::SetSw { start, pages, sw }),
        2 => (t_start(), t_pages(), 1..4u16, 0..3u64)
            .prop_map(|(start, pages, owner, meta)| TOp::Annotate { start, pages, owner, meta }),
        1 => (t_start(), t_pages()).prop_map(|(start, pages)| TOp::Clear { start, pages }),
    ]
}

fn cache_level() -> impl Strategy<Value = CacheLevel> {
    prop_oneof![
        6 => Just(CacheLevel::Full),
        2 => Just(CacheLevel::Exact),
        2 => Just(CacheLevel::Short),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random map / unmap / protect / annotate over a few GiB, mixing blocks
    /// and pages, agree page for page with the model; each update takes
    /// exactly the table pages it counted, is refused unchanged when the
    /// cache is one short, and unmapping everything gives every page back.
    #[test]
    fn stage2_matches_the_model(
        dying in proptest::bool::weighted(0.25),
        ops in proptest::collection::vec((t_op(), cache_level()), 1..40),
    ) {
        let mut h = TableHarness::new(dying);
        for (op, level) in ops {
            let end = match op {
                TOp::Map { start, pages, .. }
                | TOp::Unmap { start, pages }
                | TOp::Protect { start, pages, .. }
                | TOp::SetSw { start, pages, .. }
                | TOp::Annotate { start, pages, .. }
                | TOp::Clear { start, pages } => start + pages,
            };
            prop_assert!(end <= T_SPAN_PAGES);
            h.step(op, level).map_err(TestCaseError::fail)?;
        }
        h.finish().map_err(TestCaseError::fail)?;
    }
}
