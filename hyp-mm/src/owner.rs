//! Page ownership: who owns each page of managed memory, who may map it,
//! and the transitions that move pages between owners.
//!
//! # Components and states
//!
//! A *component* is a guest or a PD with its own stage-2 table, named by an
//! [`OwnerId`]; owner 0 is the *default owner*, the memory manager's pool of
//! free pages. In a component's table a page is in one of these states:
//!
//! | state            | entry in the component's table                          |
//! |------------------|---------------------------------------------------------|
//! | `Owned`          | valid leaf, SW state 0: the component owns it alone     |
//! | `SharedOwned`    | valid leaf, SW state 1: owned, mapped by borrowers too  |
//! | `SharedBorrowed` | valid leaf, SW state 2 (+ bit 2 if lent): someone else's |
//! | `NoPage`         | invalid: zero, or an annotation "lent out" (see below)  |
//!
//! The **ledger** is a table of the same format indexed by physical address
//! over the managed memory. Zero means "free, held by the default owner";
//! a non-zero page annotation records the owner, the owner's IPA frame for
//! the page (a reverse map), whether it is lent, and how many borrowers map
//! it and how many pins they hold.
//!
//! # Transitions
//!
//! | call          | initiator before → after          | completer before → after       | ledger                 |
//! |---------------|-----------------------------------|--------------------------------|------------------------|
//! | `donate`      | Owned (or free) → NoPage          | NoPage → Owned                 | owner := completer     |
//! | `share`       | Owned/SharedOwned → SharedOwned   | NoPage → SharedBorrowed        | borrowers + 1          |
//! | `unshare`     | SharedOwned → Owned at 0 borrowers | SharedBorrowed → NoPage       | borrowers − 1          |
//! | `lend`        | Owned → NoPage (annotated "lent") | NoPage → SharedBorrowed (lent) | lent, borrowers = 1    |
//! | `relinquish`  | borrower: SharedBorrowed → NoPage, the owner gets its page back; owner: Owned → NoPage, the page is zeroed and freed | | |
//! | `reclaim`     | dying component only: Owned → NoPage, zeroed, freed; borrowed pages are relinquished | | owner := 0 |
//!
//! A guest's in-place share (pKVM's MEM_SHARE) is `share` with the guest as
//! initiator: its own leaf keeps the same IPA and PA, only the software
//! state changes.
//!
//! # Rules
//!
//! - Every request is checked whole before anything changes: arguments,
//!   the state of every page in every table involved, and the table pages
//!   the commit needs (the sum of what each table update needs; it can
//!   only over-reserve). A refused request changes nothing.
//! - A multi-page request covers pages that are contiguous in the initiator's
//!   IPA space and in physical memory.
//! - Only managed memory changes hands: device memory and anything outside
//!   the ledger's range are refused with [`Error::Permission`].

use crate::addr::{Ipa, IpaRange, PAGE_SHIFT, PAGE_SIZE, PhysAddr};
use crate::desc::{Annotation, OwnerId, Prot, Pte};
use crate::error::{Error, Result};
use crate::mem::{MemCache, MmOps};
use crate::table::{Mapping, Stage2, TableKind, Update};

/// Page state of a valid leaf, kept in software bits [56:55].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PageState {
    /// The component owns the page and nobody else maps it.
    Owned,
    /// The component owns the page and has shared it.
    SharedOwned,
    /// The component maps a page someone else owns.
    SharedBorrowed,
    /// The component cannot access the page.
    NoPage,
}

/// Software-bit encodings of the page states (bits [58:55] of a leaf).
mod sw {
    pub const OWNED: u8 = 0;
    pub const SHARED_OWNED: u8 = 1;
    pub const SHARED_BORROWED: u8 = 2;
    /// Set with `SHARED_BORROWED` when the page was lent, not shared.
    pub const LENT: u8 = 4;
    pub const STATE_MASK: u8 = 3;
}

/// Most borrowers one page may have: the width of the ledger's counter.
pub const MAX_BORROWERS: u8 = 127;
/// Most pins on one page: the width of the ledger's counter.
pub const MAX_PINS: u8 = 127;

/// What the ledger records for a page that is not free.
///
/// Metadata layout: `[31:0]` owner's IPA frame, `[32]` lent,
/// `[39:33]` borrowers, `[46:40]` pins.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Record {
    /// The owner.
    pub owner: OwnerId,
    /// The page's IPA frame in the owner's table.
    pub frame: u64,
    /// Whether the page is lent (the owner cannot access it).
    pub lent: bool,
    /// Components that map the page without owning it.
    pub borrowers: u8,
    /// Pins held by borrowers; a pinned page cannot be unshared.
    pub pins: u8,
}

impl Record {
    const FRAME_BITS: u32 = 32;

    fn annotation(self) -> Annotation {
        let meta = self.frame
            | (u64::from(self.lent) << 32)
            | (u64::from(self.borrowers) << 33)
            | (u64::from(self.pins) << 40);
        Annotation::new(self.owner, meta).expect("record fields fit their widths")
    }

    fn from_annotation(a: Annotation) -> Option<Record> {
        if a.is_default() {
            return None;
        }
        let meta = a.meta();
        Some(Record {
            owner: a.owner(),
            frame: meta & ((1 << Self::FRAME_BITS) - 1),
            lent: meta & (1 << 32) != 0,
            borrowers: ((meta >> 33) & 0x7f) as u8,
            pins: ((meta >> 40) & 0x7f) as u8,
        })
    }
}

/// The annotation a lender keeps in its own table for a lent page: its
/// physical frame and the access it had, so that the page can be given
/// back. Metadata: `[35:0]` physical frame, `[39:36]` prot, `[40]` marker.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LentMark {
    /// Physical address of the page.
    pub pa: PhysAddr,
    /// The lender's access before it lent the page.
    pub prot: Prot,
}

impl LentMark {
    const MARKER: u64 = 1 << 40;

    fn annotation(self, owner: OwnerId) -> Annotation {
        let meta = self.pa.frame() | (u64::from(self.prot.bits()) << 36) | Self::MARKER;
        Annotation::new(owner, meta).expect("lent mark fits")
    }

    fn from_annotation(a: Annotation) -> Option<LentMark> {
        let meta = a.meta();
        (meta & Self::MARKER != 0).then(|| LentMark {
            pa: PhysAddr::from_frame(meta & ((1 << 36) - 1)),
            prot: Prot::from_bits_truncate(((meta >> 36) & 0xf) as u8),
        })
    }
}

/// How a component's table covers one page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PageView {
    /// Nothing: the entry is zero.
    Empty,
    /// A valid mapping.
    Mapped {
        /// The physical page.
        pa: PhysAddr,
        /// Access and memory type.
        prot: Prot,
        /// Ownership state.
        state: PageState,
        /// For `SharedBorrowed`: the page was lent, not shared.
        lent: bool,
    },
    /// The component lent this page out.
    Lent(LentMark),
    /// Some other annotation.
    Annotated(Annotation),
}

impl PageView {
    fn of(pte: Pte) -> PageView {
        match pte.annotation() {
            Some(a) if a.is_default() => PageView::Empty,
            Some(a) => LentMark::from_annotation(a).map_or(PageView::Annotated(a), PageView::Lent),
            None => PageView::Mapped {
                pa: pte.addr(),
                prot: pte.prot(),
                state: match pte.sw() & sw::STATE_MASK {
                    sw::OWNED => PageState::Owned,
                    sw::SHARED_OWNED => PageState::SharedOwned,
                    _ => PageState::SharedBorrowed,
                },
                lent: pte.sw() & sw::LENT != 0,
            },
        }
    }

    /// The state of the page for this component.
    #[must_use]
    pub fn state(self) -> PageState {
        match self {
            PageView::Mapped { state, .. } => state,
            _ => PageState::NoPage,
        }
    }
}

/// The two sides and the pages of a transition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Transfer {
    /// The initiator.
    pub from: OwnerId,
    /// The first page in the initiator: an IPA, or for the default owner a
    /// physical address.
    pub from_addr: u64,
    /// The completer.
    pub to: OwnerId,
    /// The first page in the completer.
    pub to_ipa: Ipa,
    /// Number of 4 KiB pages.
    pub pages: u64,
}

/// The ownership state of managed memory: the ledger and every component's
/// table. Holds at most `N - 1` components (ids 1..N).
pub struct Ownership<const N: usize> {
    ledger: Stage2,
    managed: IpaRange,
    components: [Option<Stage2>; N],
}

/// One table update of a transition's commit.
#[derive(Clone, Copy, Debug)]
struct Step {
    table: OwnerId,
    range: IpaRange,
    update: Update,
}

/// The table updates of one request, checked before any is applied.
struct Plan {
    steps: [Option<Step>; Plan::MAX],
    len: usize,
}

impl Plan {
    /// Enough for the largest transition: unmap, map, ledger, and one per
    /// run of the owner's state changes (bounded by `MAX_RUN_STEPS`).
    const MAX: usize = 3 + MAX_RUN_STEPS;

    fn new() -> Self {
        Plan { steps: [None; Plan::MAX], len: 0 }
    }

    fn push(&mut self, table: OwnerId, range: IpaRange, update: Update) -> Result<()> {
        let slot = self.steps.get_mut(self.len).ok_or(Error::InvalidArgument)?;
        *slot = Some(Step { table, range, update });
        self.len += 1;
        Ok(())
    }

    fn iter(&self) -> impl Iterator<Item = Step> + '_ {
        self.steps[..self.len].iter().flatten().copied()
    }
}

/// Most separate runs of owner-state changes one request may produce (a
/// request whose pages alternate between states more often is refused as
/// too fragmented; split it).
pub const MAX_RUN_STEPS: usize = 16;

impl<const N: usize> Ownership<N> {
    /// Starts from an empty ledger (`TableKind::Ledger`, identity over
    /// physical addresses) covering the managed memory `managed` (physical
    /// addresses, expressed as the ledger's IPA range).
    pub fn new(ledger: Stage2, managed: IpaRange) -> Result<Self> {
        if ledger.kind() != TableKind::Ledger || managed.end().raw() > ledger.geometry().ipa_limit()
        {
            return Err(Error::InvalidArgument);
        }
        Ok(Ownership { ledger, managed, components: [const { None }; N] })
    }

    /// Adds component `id` with its (empty) table.
    pub fn add_component(&mut self, id: OwnerId, table: Stage2) -> Result<()> {
        if table.kind() != TableKind::Component {
            return Err(Error::InvalidArgument);
        }
        let slot = self.slot_mut(id)?;
        if slot.is_some() {
            return Err(Error::Exists);
        }
        *slot = Some(table);
        Ok(())
    }

    /// Marks component `id` as being torn down: its pages may now be
    /// reclaimed, and nothing more may be given to it.
    pub fn start_teardown(&mut self, id: OwnerId) -> Result<()> {
        self.component_mut(id)?.start_teardown();
        Ok(())
    }

    /// Removes a torn-down component whose table holds nothing any more,
    /// and hands its table back (for [`Stage2::destroy`]).
    pub fn remove_component<M: MmOps>(&mut self, mem: &mut M, id: OwnerId) -> Result<Stage2> {
        let table = self.component(id)?;
        if !table.is_dying() {
            return Err(Error::InvalidArgument);
        }
        let mut busy = false;
        let mut find = |_: &mut M, v: &crate::walk::Visit, _| {
            busy |= !v.pte.is_zero();
            Ok(())
        };
        table.walk(mem, table.span(), crate::walk::WalkFlags::LEAF, &mut find)?;
        if busy {
            return Err(Error::Busy);
        }
        self.slot_mut(id)?.take().ok_or(Error::NotFound)
    }

    /// The ledger.
    #[must_use]
    pub fn ledger(&self) -> &Stage2 {
        &self.ledger
    }

    /// The managed physical memory, as the ledger's IPA range.
    #[must_use]
    pub fn managed(&self) -> IpaRange {
        self.managed
    }

    /// The table of component `id`.
    pub fn component(&self, id: OwnerId) -> Result<&Stage2> {
        self.components.get(usize::from(id.0)).and_then(Option::as_ref).ok_or(Error::NotFound)
    }

    /// Ids and tables of every component.
    pub fn components(&self) -> impl Iterator<Item = (OwnerId, &Stage2)> {
        self.components
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (OwnerId(i as u16), t)))
    }

    /// What the ledger says about the page at `pa`: `None` when it is free.
    pub fn record<M: MmOps>(&self, mem: &M, pa: PhysAddr) -> Result<Option<Record>> {
        if !self.managed.contains(Ipa::new(pa.raw())) {
            return Err(Error::InvalidArgument);
        }
        let pte = self.ledger.page(mem, Ipa::new(pa.raw()))?;
        Ok(pte.annotation().and_then(Record::from_annotation))
    }

    /// How component `id` sees the page at `ipa`.
    pub fn view<M: MmOps>(&self, mem: &M, id: OwnerId, ipa: Ipa) -> Result<PageView> {
        Ok(PageView::of(self.component(id)?.page(mem, ipa)?))
    }

    /// The state of the page at `addr` for `id`: for the default owner
    /// `addr` is a physical address and the page is `Owned` while free.
    pub fn state<M: MmOps>(&self, mem: &M, id: OwnerId, addr: u64) -> Result<PageState> {
        if id == OwnerId::DEFAULT {
            let free = self.record(mem, PhysAddr::new(addr))?.is_none();
            return Ok(if free { PageState::Owned } else { PageState::NoPage });
        }
        Ok(self.view(mem, id, Ipa::new(addr))?.state())
    }

    /// Gives `pages` pages from `from` (at `from_addr`: an IPA, or a
    /// physical address for the default owner) to `to` at `to_ipa`, mapped
    /// with `prot`. The initiator loses every access.
    pub fn donate<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        request: Transfer,
        prot: Prot,
    ) -> Result<()> {
        let Transfer { from, from_addr, to, to_ipa, pages } = request;
        let (src, dst) = self.check_pair(from, from_addr, to, to_ipa, pages)?;
        if prot.validate()?.contains(Prot::DEVICE) {
            return Err(Error::Permission);
        }
        let pa = if from == OwnerId::DEFAULT {
            let pa = PhysAddr::new(from_addr);
            self.check_free(mem, pa, pages)?;
            pa
        } else {
            self.check_owned(mem, from, src, Prot::empty(), |s, _| s == PageState::Owned)?
        };
        self.check_empty(mem, to, dst)?;
        let mut plan = Plan::new();
        if from != OwnerId::DEFAULT {
            plan.push(from, src, Update::Unmap)?;
        }
        let mapping = Mapping::new(prot).with_sw(sw::OWNED);
        plan.push(to, dst, Update::Map { pa, mapping })?;
        let record =
            Record { owner: to, frame: to_ipa.frame(), lent: false, borrowers: 0, pins: 0 };
        plan.push(
            OwnerId::DEFAULT,
            pa_range(pa, pages)?,
            Update::AnnotatePages(record.annotation()),
        )?;
        self.run(mem, cache, &plan)
    }

    /// Shares `pages` pages that `from` owns at `from_ipa` with `to`, mapped
    /// at `to_ipa` with `prot` (at most the owner's own access). The owner
    /// keeps its mapping, unchanged but for the page state.
    pub fn share<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        request: Transfer,
        prot: Prot,
    ) -> Result<()> {
        let Transfer { from, from_addr, to, to_ipa, pages } = request;
        let from_ipa = Ipa::new(from_addr);
        let (src, dst) = self.check_pair(from, from_ipa.raw(), to, to_ipa, pages)?;
        if from == OwnerId::DEFAULT {
            return Err(Error::InvalidArgument);
        }
        let pa = self.check_owned(mem, from, src, prot.validate()?, |state, record| {
            state != PageState::SharedBorrowed && record.borrowers < MAX_BORROWERS
        })?;
        self.check_saturation(mem, pa, pages, |r| r.borrowers < MAX_BORROWERS)?;
        self.check_empty(mem, to, dst)?;
        let mut plan = Plan::new();
        plan.push(from, src, Update::SetSoftware(sw::SHARED_OWNED))?;
        let mapping = Mapping::new(prot).with_sw(sw::SHARED_BORROWED);
        plan.push(to, dst, Update::Map { pa, mapping })?;
        self.run(mem, cache, &plan)?;
        self.edit_records(mem, pa, pages, |r| r.borrowers += 1);
        Ok(())
    }

    /// Ends a share: `to` stops mapping the pages at `to_ipa` that `from`
    /// shared from `from_ipa`; each page goes back to `Owned` for `from`
    /// when its last borrower is gone. A pinned page is [`Error::Busy`].
    pub fn unshare<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        request: Transfer,
    ) -> Result<()> {
        let Transfer { from, from_addr, to, to_ipa, pages } = request;
        let from_ipa = Ipa::new(from_addr);
        let (src, dst) = self.check_pair(from, from_ipa.raw(), to, to_ipa, pages)?;
        if from == OwnerId::DEFAULT {
            return Err(Error::InvalidArgument);
        }
        let pa =
            self.check_owned(mem, from, src, Prot::empty(), |s, _| s == PageState::SharedOwned)?;
        self.check_borrowed(mem, to, dst, pa, false)?;
        self.end_borrow(mem, cache, to, dst, pa)
    }

    /// Lends `pages` pages that `from` owns at `from_ipa` to `to`, mapped
    /// at `to_ipa` with `prot`: the owner loses access until the borrower
    /// relinquishes them, but stays their owner.
    pub fn lend<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        request: Transfer,
        prot: Prot,
    ) -> Result<()> {
        let Transfer { from, from_addr, to, to_ipa, pages } = request;
        let from_ipa = Ipa::new(from_addr);
        let (src, dst) = self.check_pair(from, from_ipa.raw(), to, to_ipa, pages)?;
        if from == OwnerId::DEFAULT {
            return Err(Error::InvalidArgument);
        }
        let pa =
            self.check_owned(mem, from, src, prot.validate()?, |s, _| s == PageState::Owned)?;
        let own_prot = match self.view(mem, from, from_ipa)? {
            PageView::Mapped { prot, .. } => prot,
            _ => return Err(Error::Permission),
        };
        self.check_uniform_prot(mem, from, src, own_prot)?;
        self.check_empty(mem, to, dst)?;
        let mut plan = Plan::new();
        let mark = LentMark { pa, prot: own_prot }.annotation(from);
        plan.push(from, src, Update::AnnotatePages(mark))?;
        let mapping = Mapping::new(prot).with_sw(sw::SHARED_BORROWED | sw::LENT);
        plan.push(to, dst, Update::Map { pa, mapping })?;
        self.run(mem, cache, &plan)?;
        self.edit_records(mem, pa, pages, |r| {
            r.lent = true;
            r.borrowers = 1;
        });
        Ok(())
    }

    /// `who` gives up `pages` pages at `ipa`. Borrowed pages (shared or
    /// lent) go back to their owner; pages `who` owns go back to the
    /// default owner, zeroed (a guest's MEM_RELINQUISH).
    pub fn relinquish<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        who: OwnerId,
        ipa: Ipa,
        pages: u64,
    ) -> Result<()> {
        let range = self.check_range(who, ipa, pages)?;
        match self.view(mem, who, ipa)? {
            PageView::Mapped { state: PageState::SharedBorrowed, pa, lent, .. } => {
                self.check_borrowed(mem, who, range, pa, lent)?;
                self.end_borrow(mem, cache, who, range, pa)
            }
            PageView::Mapped { state: PageState::Owned, .. } => {
                let pa =
                    self.check_owned(mem, who, range, Prot::empty(), |s, _| s == PageState::Owned)?;
                self.free_pages(mem, cache, who, range, pa)
            }
            PageView::Empty => Err(Error::NotFound),
            _ => Err(Error::Permission),
        }
    }

    /// Teardown only: takes back every page `who` holds in `range` (IPA,
    /// page aligned). Owned pages are zeroed and freed, borrowed pages are
    /// relinquished, holes are skipped. Pages `who` shared or lent out are
    /// [`Error::Busy`] until their borrowers let go. Refused with
    /// [`Error::InvalidArgument`] unless `who` is being torn down.
    pub fn reclaim<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        who: OwnerId,
        range: IpaRange,
    ) -> Result<()> {
        let table = self.component(who)?;
        if !table.is_dying() || range.end().raw() > table.geometry().ipa_limit() {
            return Err(Error::InvalidArgument);
        }
        // Check every mapped page, and collect the runs of borrowed pages,
        // whose owners' tables change: one update per run.
        let mut runs = Runs::new();
        self.for_each_page(mem, table, range, &mut |_, view| match view {
            PageView::Mapped { state: PageState::SharedBorrowed, pa, .. } => {
                let record = self.record(mem, pa)?.ok_or(Error::Permission)?;
                if record.pins != 0 {
                    return Err(Error::Busy);
                }
                runs.add(record.owner, record.lent, record.frame, pa)
            }
            PageView::Mapped { state: PageState::Owned, .. } | PageView::Annotated(_) => Ok(()),
            PageView::Mapped { pa, .. } if !self.is_managed(pa) => Ok(()),
            PageView::Mapped { .. } | PageView::Lent(_) => Err(Error::Busy),
            PageView::Empty => Ok(()),
        })?;
        let mut plan = Plan::new();
        for run in runs.iter() {
            self.plan_return(mem, &mut plan, run, &runs)?;
        }
        plan.push(who, range, Update::Unmap)?;
        self.reserve(mem, cache, &plan)?;
        // Commit: every check has passed and the cache holds enough. The
        // ledger changes as the walk goes, so the walk is a cursor that
        // holds no borrow between leaves.
        let mut cursor = range.start();
        while let Some((ipa, level, pte)) = self.component(who)?.next_leaf(mem, cursor, range.end())
        {
            let end = (ipa.raw() + crate::desc::level_size(level)).min(range.end().raw());
            let first = ipa.raw().max(cursor.raw());
            cursor = Ipa::new(end);
            if !pte.is_valid() {
                continue;
            }
            for addr in (first..end).step_by(PAGE_SIZE as usize) {
                let pa = pte.addr().add(addr - ipa.raw());
                match PageView::of(pte).state() {
                    PageState::Owned if self.is_managed(pa) => {
                        mem.zero_page(pa);
                        self.free_in_ledger(mem, cache, pa, 1);
                    }
                    PageState::SharedBorrowed => {
                        self.edit_records(mem, pa, 1, Record::drop_borrower)
                    }
                    _ => {}
                }
            }
        }
        self.commit(mem, cache, &plan);
        Ok(())
    }

    /// Calls `f` with the view of every page that `table` maps or annotates
    /// in `range` (zero entries are skipped whole, so a sparse table is
    /// walked in time proportional to what it holds).
    fn for_each_page<M: MmOps>(
        &self,
        mem: &M,
        table: &Stage2,
        range: IpaRange,
        f: &mut impl FnMut(Ipa, PageView) -> Result<()>,
    ) -> Result<()> {
        table.leaves(mem, range, &mut |ipa, level, pte| {
            if pte.is_zero() {
                return Ok(());
            }
            let size = crate::desc::level_size(level);
            let first = ipa.raw().max(range.start().raw());
            let last = (ipa.raw() + size).min(range.end().raw());
            for addr in (first..last).step_by(PAGE_SIZE as usize) {
                let page = Ipa::new(addr);
                let offset = addr - ipa.raw();
                let view = if pte.is_valid() {
                    let leaf = crate::desc::Pte(
                        pte.0 & !0x0000_ffff_ffff_f000 | (pte.addr().raw() + offset),
                    );
                    PageView::of(leaf)
                } else {
                    PageView::of(pte)
                };
                f(page, view)?;
            }
            Ok(())
        })
    }

    /// Maps device memory `pa..` (outside managed memory) at `range` in
    /// `who`'s table with device attributes: MMIO passthrough, which the
    /// memory manager does lazily, on the first fault. The entries must be
    /// empty.
    pub fn map_device<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        who: OwnerId,
        range: IpaRange,
        pa: PhysAddr,
    ) -> Result<()> {
        let phys = pa_range(pa, range.page_count())?;
        if self.check_managed(phys) != Err(Error::Permission) {
            return Err(Error::Permission);
        }
        let range = self.check_range(who, range.start(), range.page_count())?;
        if self.component(who)?.is_dying() {
            return Err(Error::Permission);
        }
        self.check_empty(mem, who, range)?;
        let mut plan = Plan::new();
        plan.push(who, range, Update::Map { pa, mapping: Mapping::new(Prot::DEVICE_RW) })?;
        self.run(mem, cache, &plan)
    }

    /// Pins `pages` pages that `who` borrows at `ipa` so that the owner
    /// cannot unshare them while they are in use (for example by DMA).
    pub fn pin<M: MmOps>(&mut self, mem: &mut M, who: OwnerId, ipa: Ipa, pages: u64) -> Result<()> {
        let pa = self.check_pin(mem, who, ipa, pages)?;
        self.check_saturation(mem, pa, pages, |r| r.pins < MAX_PINS)?;
        self.edit_records(mem, pa, pages, |r| r.pins += 1);
        Ok(())
    }

    /// Releases pins taken by [`Ownership::pin`].
    pub fn unpin<M: MmOps>(
        &mut self,
        mem: &mut M,
        who: OwnerId,
        ipa: Ipa,
        pages: u64,
    ) -> Result<()> {
        let pa = self.check_pin(mem, who, ipa, pages)?;
        self.check_saturation(mem, pa, pages, |r| r.pins > 0)?;
        self.edit_records(mem, pa, pages, |r| r.pins -= 1);
        Ok(())
    }

    // ---- checks (read only) ----

    fn slot_mut(&mut self, id: OwnerId) -> Result<&mut Option<Stage2>> {
        if id == OwnerId::DEFAULT {
            return Err(Error::InvalidArgument);
        }
        self.components.get_mut(usize::from(id.0)).ok_or(Error::InvalidArgument)
    }

    fn component_mut(&mut self, id: OwnerId) -> Result<&mut Stage2> {
        self.slot_mut(id)?.as_mut().ok_or(Error::NotFound)
    }

    fn table_mut(&mut self, id: OwnerId) -> &mut Stage2 {
        if id == OwnerId::DEFAULT {
            &mut self.ledger
        } else {
            self.component_mut(id).expect("planned steps name existing tables")
        }
    }

    fn is_managed(&self, pa: PhysAddr) -> bool {
        self.managed.contains(Ipa::new(pa.raw()))
    }

    /// The page range of `pages` pages at `ipa` in component `id`'s space.
    fn check_range(&self, id: OwnerId, ipa: Ipa, pages: u64) -> Result<IpaRange> {
        let table = self.component(id)?;
        let range = IpaRange::pages(ipa, pages).ok_or(Error::InvalidArgument)?;
        if range.end().raw() > table.geometry().ipa_limit() {
            return Err(Error::InvalidArgument);
        }
        Ok(range)
    }

    /// Validates the two sides of a transition: distinct, existing, the
    /// completer alive, both ranges inside their address spaces.
    fn check_pair(
        &self,
        from: OwnerId,
        from_addr: u64,
        to: OwnerId,
        to_ipa: Ipa,
        pages: u64,
    ) -> Result<(IpaRange, IpaRange)> {
        if from == to || to == OwnerId::DEFAULT {
            return Err(Error::InvalidArgument);
        }
        let src = if from == OwnerId::DEFAULT {
            let range = pa_range(PhysAddr::new(from_addr), pages)?;
            self.check_managed(range)?;
            range
        } else {
            self.check_range(from, Ipa::new(from_addr), pages)?
        };
        let dst = self.check_range(to, to_ipa, pages)?;
        if self.component(to)?.is_dying() {
            return Err(Error::Permission);
        }
        Ok((src, dst))
    }

    /// `range` (physical) lies in managed memory: a range wholly outside is
    /// [`Error::Permission`] (device or foreign memory), one straddling its
    /// edge is malformed.
    fn check_managed(&self, range: IpaRange) -> Result<()> {
        let (start, end) = (range.start().raw(), range.end().raw());
        if self.managed.covers(start, range.size()) {
            Ok(())
        } else if end <= self.managed.start().raw() || start >= self.managed.end().raw() {
            Err(Error::Permission)
        } else {
            Err(Error::InvalidArgument)
        }
    }

    /// Every page of `pa..+pages` is managed and free.
    fn check_free<M: MmOps>(&self, mem: &M, pa: PhysAddr, pages: u64) -> Result<()> {
        for page in 0..pages {
            if self.record(mem, pa.add(page * PAGE_SIZE))?.is_some() {
                return Err(Error::Permission);
            }
        }
        Ok(())
    }

    /// Every page of `range` in `id`'s table is a managed page that `id`
    /// owns, in a state `ok` accepts, with at least access `need`, backed by
    /// contiguous physical pages; returns the first page's address.
    fn check_owned<M: MmOps>(
        &self,
        mem: &M,
        id: OwnerId,
        range: IpaRange,
        need: Prot,
        ok: impl Fn(PageState, Record) -> bool,
    ) -> Result<PhysAddr> {
        let mut first = None;
        for page in 0..range.page_count() {
            let ipa = range.start().add(page * PAGE_SIZE);
            let (pa, prot, state) = match self.view(mem, id, ipa)? {
                PageView::Mapped { pa, prot, state, .. } => (pa, prot, state),
                PageView::Empty => return Err(Error::NotFound),
                _ => return Err(Error::Permission),
            };
            if !self.is_managed(pa) || prot.contains(Prot::DEVICE) {
                return Err(Error::Permission);
            }
            let base = *first.get_or_insert(pa);
            if pa != base.add(page * PAGE_SIZE) {
                return Err(Error::InvalidArgument);
            }
            let record = self.record(mem, pa)?.ok_or(Error::Permission)?;
            if record.owner != id || record.frame != ipa.frame() || !ok(state, record) {
                return Err(Error::Permission);
            }
            if !prot.contains(need - Prot::DEVICE) {
                return Err(Error::Permission);
            }
        }
        first.ok_or(Error::InvalidArgument)
    }

    /// Every page of `range` in `id`'s table has exactly access `prot`.
    fn check_uniform_prot<M: MmOps>(
        &self,
        mem: &M,
        id: OwnerId,
        range: IpaRange,
        prot: Prot,
    ) -> Result<()> {
        for ipa in range.page_addrs() {
            match self.view(mem, id, ipa)? {
                PageView::Mapped { prot: p, .. } if p == prot => {}
                _ => return Err(Error::InvalidArgument),
            }
        }
        Ok(())
    }

    /// Every page of `range` in `id`'s table is empty.
    fn check_empty<M: MmOps>(&self, mem: &M, id: OwnerId, range: IpaRange) -> Result<()> {
        let table = self.component(id)?;
        for ipa in range.page_addrs() {
            if !table.page(mem, ipa)?.is_zero() {
                return Err(Error::Permission);
            }
        }
        Ok(())
    }

    /// Every page of `range` in `id`'s table borrows the physical page
    /// `pa + i`, lent or shared as `lent` says, unpinned; the owners' IPA
    /// frames are contiguous too.
    fn check_borrowed<M: MmOps>(
        &self,
        mem: &M,
        id: OwnerId,
        range: IpaRange,
        pa: PhysAddr,
        lent: bool,
    ) -> Result<()> {
        let mut first: Option<Record> = None;
        for page in 0..range.page_count() {
            let want = pa.add(page * PAGE_SIZE);
            match self.view(mem, id, range.start().add(page * PAGE_SIZE))? {
                PageView::Mapped { state: PageState::SharedBorrowed, pa: p, lent: l, .. }
                    if p == want && l == lent => {}
                PageView::Empty => return Err(Error::NotFound),
                _ => return Err(Error::Permission),
            }
            let record = self.record(mem, want)?.ok_or(Error::Permission)?;
            if record.pins != 0 {
                return Err(Error::Busy);
            }
            let head = *first.get_or_insert(record);
            if record.owner != head.owner
                || record.frame != head.frame + page
                || record.lent != lent
            {
                return Err(Error::InvalidArgument);
            }
        }
        Ok(())
    }

    /// Every page of `pa..+pages` has a record `ok` accepts, else `Busy`.
    fn check_saturation<M: MmOps>(
        &self,
        mem: &M,
        pa: PhysAddr,
        pages: u64,
        ok: impl Fn(Record) -> bool,
    ) -> Result<()> {
        for page in 0..pages {
            let record = self.record(mem, pa.add(page * PAGE_SIZE))?.ok_or(Error::Permission)?;
            if !ok(record) {
                return Err(Error::Busy);
            }
        }
        Ok(())
    }

    fn check_pin<M: MmOps>(&self, mem: &M, who: OwnerId, ipa: Ipa, pages: u64) -> Result<PhysAddr> {
        let range = self.check_range(who, ipa, pages)?;
        let (pa, lent) = match self.view(mem, who, ipa)? {
            PageView::Mapped { state: PageState::SharedBorrowed, pa, lent, .. } => (pa, lent),
            PageView::Empty => return Err(Error::NotFound),
            _ => return Err(Error::Permission),
        };
        for page in 0..pages {
            match self.view(mem, who, range.start().add(page * PAGE_SIZE))? {
                PageView::Mapped { state: PageState::SharedBorrowed, pa: p, lent: l, .. }
                    if p == pa.add(page * PAGE_SIZE) && l == lent => {}
                _ => return Err(Error::Permission),
            }
        }
        Ok(pa)
    }

    // ---- commit helpers ----

    /// Checks that the cache holds every table page the plan may take.
    fn reserve<M: MmOps>(&self, mem: &M, cache: &MemCache, plan: &Plan) -> Result<()> {
        let mut needed = 0;
        for step in plan.iter() {
            let table = if step.table == OwnerId::DEFAULT {
                &self.ledger
            } else {
                self.component(step.table)?
            };
            needed += table.pages_needed(mem, step.range, step.update)?;
        }
        if needed > cache.len() {
            return Err(Error::OutOfMemory);
        }
        Ok(())
    }

    /// Applies a reserved plan. Cannot fail: every argument was checked and
    /// the cache holds at least what the steps take.
    fn commit<M: MmOps>(&mut self, mem: &mut M, cache: &mut MemCache, plan: &Plan) {
        for step in plan.iter() {
            let result = self.table_mut(step.table).update(mem, cache, step.range, step.update);
            debug_assert!(
                matches!(result, Ok(()) | Err(Error::Retry)),
                "commit step failed: {result:?}"
            );
        }
    }

    fn run<M: MmOps>(&mut self, mem: &mut M, cache: &mut MemCache, plan: &Plan) -> Result<()> {
        self.reserve(mem, cache, plan)?;
        self.commit(mem, cache, plan);
        Ok(())
    }

    /// Rewrites the ledger records of `pages` pages from `pa`. They exist as
    /// page-level annotations, so this needs no table page and cannot fail.
    fn edit_records<M: MmOps>(
        &mut self,
        mem: &mut M,
        pa: PhysAddr,
        pages: u64,
        edit: impl Fn(&mut Record),
    ) {
        for page in 0..pages {
            let at = pa.add(page * PAGE_SIZE);
            let ipa = Ipa::new(at.raw());
            let (pte, level) = self.ledger.get_leaf(mem, ipa).expect("managed page");
            let mut record =
                pte.annotation().and_then(Record::from_annotation).expect("checked record");
            debug_assert_eq!(level, crate::desc::LAST_LEVEL);
            edit(&mut record);
            let range = IpaRange::pages(ipa, 1).expect("one page");
            let mut no_pages = MemCache::new();
            let result = self.ledger.update(
                mem,
                &mut no_pages,
                range,
                Update::Annotate(record.annotation()),
            );
            debug_assert!(
                matches!(result, Ok(()) | Err(Error::Retry)),
                "ledger edit failed: {result:?}"
            );
        }
    }

    /// Frees `pages` pages from `pa` in the ledger (owner := default). They
    /// are page-level records, so clearing them needs no table page.
    fn free_in_ledger<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        pa: PhysAddr,
        pages: u64,
    ) {
        let range = pa_range(pa, pages).expect("checked range");
        let r = self.ledger.update(mem, cache, range, Update::Annotate(Annotation::DEFAULT));
        debug_assert!(matches!(r, Ok(()) | Err(Error::Retry)), "ledger free failed: {r:?}");
    }

    /// Ends the borrow of `range` in `who`'s table (pages from `pa`, already
    /// checked): the borrower's mapping goes, and the owner gets back what
    /// the borrow took.
    fn end_borrow<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        who: OwnerId,
        range: IpaRange,
        pa: PhysAddr,
    ) -> Result<()> {
        let record = self.record(mem, pa)?.ok_or(Error::Permission)?;
        let mut plan = Plan::new();
        let mut runs = Runs::new();
        for page in 0..range.page_count() {
            runs.add(record.owner, record.lent, record.frame + page, pa.add(page * PAGE_SIZE))?;
        }
        for run in runs.iter() {
            self.plan_return(mem, &mut plan, run, &runs)?;
        }
        plan.push(who, range, Update::Unmap)?;
        self.run(mem, cache, &plan)?;
        self.edit_records(mem, pa, range.page_count(), Record::drop_borrower);
        Ok(())
    }

    /// Plans what the owner gets back when a borrower lets go of `run`:
    /// its lent pages mapped again, or its shared pages back to `Owned`
    /// where the departing borrower is the last one.
    fn plan_return<M: MmOps>(&self, mem: &M, plan: &mut Plan, run: Run, runs: &Runs) -> Result<()> {
        let owner_range =
            IpaRange::pages(Ipa::from_frame(run.frame), run.pages).ok_or(Error::InvalidArgument)?;
        if run.lent {
            let (mut start, mut prot) = (0, None);
            for page in 0..=run.pages {
                let ipa = owner_range.start().add(page * PAGE_SIZE);
                let next = if page == run.pages {
                    None
                } else if let PageView::Lent(mark) = self.view(mem, run.owner, ipa)? {
                    Some(mark.prot)
                } else {
                    return Err(Error::Permission);
                };
                if next == prot {
                    continue;
                }
                if let Some(prot) = prot {
                    let ipa = owner_range.start().add(start * PAGE_SIZE);
                    let range = IpaRange::pages(ipa, page - start).ok_or(Error::InvalidArgument)?;
                    let pa = run.pa.add(start * PAGE_SIZE);
                    let mapping = Mapping::new(prot).with_sw(sw::OWNED);
                    plan.push(run.owner, range, Update::Map { pa, mapping })?;
                }
                (start, prot) = (page, next);
            }
            return Ok(());
        }
        // Shared: pages whose last borrower leaves go back to Owned, in runs.
        let mut start = None;
        for page in 0..=run.pages {
            let pa = run.pa.add(page * PAGE_SIZE);
            let last = page < run.pages
                && self
                    .record(mem, pa)?
                    .is_some_and(|r| u64::from(r.borrowers) == runs.holding(pa));
            match (last, start) {
                (true, None) => start = Some(page),
                (false, Some(s)) => {
                    let ipa = owner_range.start().add(s * PAGE_SIZE);
                    let range = IpaRange::pages(ipa, page - s).ok_or(Error::InvalidArgument)?;
                    plan.push(run.owner, range, Update::SetSoftware(sw::OWNED))?;
                    start = None;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Gives `who`'s owned pages in `range` (from `pa`) back to the default
    /// owner, zeroed.
    fn free_pages<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        who: OwnerId,
        range: IpaRange,
        pa: PhysAddr,
    ) -> Result<()> {
        let mut plan = Plan::new();
        plan.push(who, range, Update::Unmap)?;
        plan.push(
            OwnerId::DEFAULT,
            pa_range(pa, range.page_count())?,
            Update::Annotate(Annotation::DEFAULT),
        )?;
        self.reserve(mem, cache, &plan)?;
        for page in 0..range.page_count() {
            mem.zero_page(pa.add(page * PAGE_SIZE));
        }
        self.commit(mem, cache, &plan);
        Ok(())
    }
}

impl Record {
    fn drop_borrower(r: &mut Record) {
        r.borrowers -= 1;
        r.lent = false;
    }
}

/// The ledger range (identity: IPA = PA) of `pages` pages from `pa`.
fn pa_range(pa: PhysAddr, pages: u64) -> Result<IpaRange> {
    IpaRange::pages(Ipa::new(pa.raw()), pages).ok_or(Error::InvalidArgument)
}

/// A run of borrowed pages with one owner, all lent or all shared, and
/// contiguous owner frames and physical pages.
#[derive(Clone, Copy, Debug)]
struct Run {
    owner: OwnerId,
    lent: bool,
    frame: u64,
    pa: PhysAddr,
    pages: u64,
}

/// Up to [`MAX_RUN_STEPS`] runs, merged as pages arrive in order.
struct Runs {
    runs: [Option<Run>; MAX_RUN_STEPS],
    len: usize,
}

impl Runs {
    fn new() -> Self {
        Runs { runs: [None; MAX_RUN_STEPS], len: 0 }
    }

    fn add(&mut self, owner: OwnerId, lent: bool, frame: u64, pa: PhysAddr) -> Result<()> {
        if let Some(Some(last)) = self.len.checked_sub(1).map(|i| self.runs[i].as_mut())
            && last.owner == owner
            && last.lent == lent
            && last.frame + last.pages == frame
            && last.pa.add(last.pages << PAGE_SHIFT) == pa
        {
            last.pages += 1;
            return Ok(());
        }
        let slot = self.runs.get_mut(self.len).ok_or(Error::InvalidArgument)?;
        *slot = Some(Run { owner, lent, frame, pa, pages: 1 });
        self.len += 1;
        Ok(())
    }

    fn iter(&self) -> impl Iterator<Item = Run> + '_ {
        self.runs[..self.len].iter().flatten().copied()
    }

    fn holding(&self, pa: PhysAddr) -> u64 {
        self.iter().filter(|r| pa >= r.pa && pa < r.pa.add(r.pages << PAGE_SHIFT)).count() as u64
    }
}
