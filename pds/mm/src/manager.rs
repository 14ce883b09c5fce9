//! The memory manager's state and the handling of each request.
//!
//! Every request goes through [`Manager::dispatch`] (or [`Manager::serve`]
//! once decoded) in four steps:
//!
//! 1. **check**: the request's words were decoded by the ABI; here the
//!    caller's authority (it controls the guest; it has a window), the
//!    declared ranges (guest RAM, devices, the window) and the pages'
//!    states are checked. hyp-mm checks the rest (every page's state in
//!    every table, table memory) before it writes anything.
//! 2. **commit**: hyp-mm applies the transition, which cannot fail once
//!    checked. A refusal at any point before has changed no table, no
//!    ledger record, no data page.
//! 3. **maintenance**: the TLB invalidations and cache cleans the commit
//!    needs go to the kernel in one batch ([`crate::control`]).
//! 4. In debug builds, hyp-mm's invariant checker runs over the ledger and
//!    every table.
//!
//! A refusal from hyp-mm is explained by reading the pages again: its
//! `Permission`, `NotFound` and `InvalidArgument` become the protocol's
//! more precise codes (not owned, already shared, not shared, device
//! memory, not contiguous, already mapped) where the pages show why.

use crate::config::{
    ANCHOR_BYTES, ANCHOR_OWNER, COMPONENTS, ClientId, Config, GEOMETRY, GuestConfig, MAX_CLIENTS,
    MAX_GUESTS, PoolLayout, ROOT_PAGES, SetupError, WINDOW_SPAN, Window, client_owner, guest_owner,
};
use crate::control::{Batch, Batched, Stage2Control};
use hyp_mm::desc::{FIRST_BLOCK_LEVEL, LAST_LEVEL, level_size};
use hyp_mm::owner::PageView;
use hyp_mm::{
    Annotation, Ipa, IpaRange, MemCache, MmOps, OwnerId, PAGE_SIZE, PageState, PhysAddr, Prot,
    Stage2, TableKind, Transfer, VmId,
};
use tenure_abi::mm::{
    Access, Direction, FaultAddr, GuestId, MAX_REPLY_WORDS, Message, MmError, Outcome, PageInfo,
    PageRange, Reply, Request, Target, WalkFlags, encode_reply,
};

/// Table pages the cache holds between requests: enough for any request
/// of up to 512 pages (two tables per level below the root for each of the
/// three tables a transition touches, with room to spare).
pub const CACHE_PAGES: usize = 16;

/// The access a page mm populates from its pool gets: guests may run code
/// from RAM; a PD's window holds data only.
const GUEST_RAM: Prot = Prot::RWX;
const WINDOW_RAM: Prot = Prot::RW;

/// Which transition a two-sided request is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Donate,
    Share,
    Lend,
    Unshare,
}

/// The memory manager: the ledger, every guest's and window's table, the
/// table-page cache, and the declared configuration.
pub struct Manager<M: MmOps, K: Stage2Control> {
    mem: M,
    control: K,
    own: hyp_mm::Ownership<COMPONENTS>,
    cache: MemCache,
    batch: Batch,
    config: Config,
    roots: PhysAddr,
    /// Where the search for a free pool page starts (next fit).
    rover: u64,
    /// Pool pages each guest owns (entry `i` is guest `i + 1`), against
    /// its limit: populated into it or donated to it, until it gives them
    /// back (relinquish, donate to its controller) or is torn down.
    held: [u64; MAX_GUESTS],
}

/// hyp-mm's refusals as protocol codes, when the pages say nothing more.
#[must_use]
pub fn code(error: hyp_mm::Error) -> MmError {
    match error {
        hyp_mm::Error::InvalidArgument => MmError::BadArgument,
        hyp_mm::Error::Permission => MmError::NotOwned,
        hyp_mm::Error::Busy => MmError::Busy,
        hyp_mm::Error::OutOfMemory => MmError::OutOfTableMemory,
        hyp_mm::Error::NotFound => MmError::NotMapped,
        hyp_mm::Error::Exists | hyp_mm::Error::Retry => MmError::AlreadyMapped,
    }
}

/// hyp-mm's access bits for a protocol access.
fn prot(access: Access) -> Prot {
    Prot::from_bits_truncate(access.bits()) & Prot::RWX
}

/// Upper bound on the table pages one table needs to map `pages` pages
/// into an empty range: the tables at each level the range can touch.
fn tables_for(pages: u64) -> usize {
    let l3 = pages.div_ceil(512) + 1;
    let l2 = pages.div_ceil(512 * 512) + 1;
    usize::try_from(l3 + l2).unwrap_or(usize::MAX)
}

impl<M: MmOps, K: Stage2Control> Manager<M, K> {
    /// Starts a memory manager over `layout`'s pool, whose root area holds
    /// zeroes and whose table pages `mem`'s page source hands out (and no
    /// other page); creates every client's window table, anchors its
    /// level-2 table and has the kernel link that into the client.
    pub fn new(
        mut mem: M,
        mut control: K,
        layout: &PoolLayout,
        config: Config,
    ) -> Result<Self, SetupError> {
        validate(&config, layout)?;
        let roots = layout.roots();
        let ledger = Stage2::new(GEOMETRY, roots, VmId(0), TableKind::Ledger)
            .map_err(|_| SetupError::Pool)?;
        let mut own =
            hyp_mm::Ownership::new(ledger, layout.managed()).map_err(|_| SetupError::Pool)?;
        let mut cache = MemCache::new();
        let mut batch = Batch::new();
        for (i, client) in config.clients.iter().enumerate() {
            let Some(Window { vmid, range }) = client.as_ref().and_then(|c| c.window) else {
                continue;
            };
            let id = ClientId(i as u8);
            let owner = client_owner(id);
            let root = root_of(roots, owner);
            let mut table = Stage2::new(GEOMETRY, root, vmid, TableKind::Component)
                .map_err(|_| SetupError::Pool)?;
            // The window's level-2 table, kept alive by its anchor (see
            // `ANCHOR_BYTES`), is what the kernel links into the client.
            let span = window_span(range).ok_or(SetupError::Config)?;
            let anchor = IpaRange::new(span.start().add(WINDOW_SPAN - ANCHOR_BYTES), ANCHOR_BYTES)
                .ok_or(SetupError::Config)?;
            let mark = Annotation::new(ANCHOR_OWNER, 0).map_err(|_| SetupError::Config)?;
            cache.topup(&mut mem, CACHE_PAGES).map_err(|_| SetupError::TableMemory)?;
            let mut ops = Batched { mem: &mut mem, control: &mut control, batch: &mut batch };
            table.annotate(&mut ops, &mut cache, anchor, mark).map_err(|_| SetupError::Config)?;
            let entry = mem.read(root, GEOMETRY.index(span.start(), GEOMETRY.start_level()));
            if !entry.is_table(GEOMETRY.start_level()) {
                return Err(SetupError::Config);
            }
            own.add_component(owner, table).map_err(|_| SetupError::Config)?;
            control.link_window(id, vmid, span, entry.addr()).map_err(|_| SetupError::Kernel)?;
        }
        // Nothing was valid before the anchors: the batch holds nothing
        // the kernel must hear of, but sending it costs nothing.
        batch.send(&mut control);
        cache.topup(&mut mem, CACHE_PAGES).map_err(|_| SetupError::TableMemory)?;
        let rover = layout.managed().start().raw();
        Ok(Manager { mem, control, own, cache, batch, config, roots, rover, held: [0; MAX_GUESTS] })
    }

    /// Serves one PPC: `caller` is the client the channel belongs to,
    /// `label` and `words` the message. Never panics on any input.
    pub fn dispatch(
        &mut self,
        caller: ClientId,
        label: u64,
        words: &[u64],
    ) -> Message<MAX_REPLY_WORDS> {
        encode_reply(Request::decode(label, words).and_then(|r| self.serve(caller, r)))
    }

    /// Serves a decoded request from `caller`.
    pub fn serve(&mut self, caller: ClientId, request: Request) -> Outcome {
        let outcome = self.handle(caller, request);
        self.batch.send(&mut self.control);
        self.batch.freed_tables = 0;
        self.refill();
        #[cfg(debug_assertions)]
        if let Err(v) = self.own.check_invariants(&self.mem) {
            panic!("ownership invariant broken after {request:?}: {v:?}");
        }
        outcome
    }

    /// The ownership state (ledger and tables), for inspection.
    #[must_use]
    pub fn ownership(&self) -> &hyp_mm::Ownership<COMPONENTS> {
        &self.own
    }

    /// Table and data memory.
    #[must_use]
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Table and data memory, mutable: tests write guest data with it.
    #[cfg(test)]
    pub(crate) fn mem_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// The kernel's side.
    #[must_use]
    pub fn control(&self) -> &K {
        &self.control
    }

    /// The kernel's side, mutable.
    #[cfg(test)]
    pub(crate) fn control_mut(&mut self) -> &mut K {
        &mut self.control
    }

    /// Table pages in the cache.
    #[must_use]
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Where the root of declared guest `id`'s table is, whether or not
    /// the guest exists now.
    #[must_use]
    pub fn guest_root(&self, id: GuestId) -> Option<PhysAddr> {
        self.config.guest(id.get()).map(|_| root_of(self.roots, guest_owner(id.get())))
    }

    /// Brings the cache back to [`CACHE_PAGES`]: a large request may have
    /// grown it, and a commit takes pages out of it. Runs after the batch
    /// was sent, so no page freed by the request can be reused before the
    /// TLBs forgot it.
    fn refill(&mut self) {
        while self.cache.len() > CACHE_PAGES {
            if let Some(page) = self.cache.pop(&mut self.mem) {
                self.mem.free_page(page);
            }
        }
        // Short of table memory, the next request that needs a table is
        // refused with OutOfTableMemory; nothing else is affected.
        let _ = self.cache.topup(&mut self.mem, CACHE_PAGES);
    }

    /// Makes sure the cache can hold what a transition over `pages` pages
    /// of `tables` tables may need.
    fn reserve(&mut self, pages: u64, tables: usize) {
        let want = tables_for(pages).saturating_mul(tables);
        let _ = self.cache.topup(&mut self.mem, want.max(CACHE_PAGES));
    }

    fn handle(&mut self, caller: ClientId, request: Request) -> Outcome {
        match request {
            Request::CreateGuest { guest } => self.create(caller, guest),
            Request::Donate { transfer, access } => {
                self.transfer(caller, Kind::Donate, transfer, access)
            }
            Request::Share { transfer, access } => {
                self.transfer(caller, Kind::Share, transfer, access)
            }
            Request::Lend { transfer, access } => {
                self.transfer(caller, Kind::Lend, transfer, access)
            }
            Request::Unshare(transfer) => self.transfer(caller, Kind::Unshare, transfer, Access::R),
            Request::Reclaim(transfer) => self.reclaim(caller, transfer),
            Request::Relinquish { target, range } => self.relinquish(caller, target, range),
            Request::Populate { target, addr, flags } => self.populate(caller, target, addr, flags),
            Request::MapDevice { guest, addr, flags } => {
                self.map_device(caller, guest, addr, flags)
            }
            Request::Teardown { guest } => self.teardown(caller, guest),
            Request::Query { target, addr } => self.query(caller, target, addr),
        }
    }

    // ---- authority and declared ranges ----

    /// Guest `id`'s configuration, if `caller` controls it.
    fn declared(&self, caller: ClientId, id: GuestId) -> Result<GuestConfig, MmError> {
        match self.config.guest(id.get()) {
            Some(g) if g.controller == caller => Ok(*g),
            _ => Err(MmError::NoSuchGuest),
        }
    }

    /// Guest `id`'s owner id and configuration, if it exists and `caller`
    /// controls it.
    fn guest(&self, caller: ClientId, id: GuestId) -> Result<(OwnerId, GuestConfig), MmError> {
        let config = self.declared(caller, id)?;
        let owner = guest_owner(id.get());
        self.own.component(owner).map_err(|_| MmError::NoSuchGuest)?;
        Ok((owner, config))
    }

    /// The caller's window.
    fn window(&self, caller: ClientId) -> Result<(OwnerId, Window), MmError> {
        let window = self.config.client(caller).and_then(|c| c.window);
        window.map(|w| (client_owner(caller), w)).ok_or(MmError::NotDeclared)
    }

    /// `range` lies in the guest's RAM.
    fn in_ram(config: &GuestConfig, range: PageRange) -> Result<(), MmError> {
        let size = range.pages() * PAGE_SIZE;
        if config.ram_covers(range.start(), size) {
            Ok(())
        } else if config.meets_device(range.start(), size) {
            Err(MmError::DeviceMemory)
        } else {
            Err(MmError::NotDeclared)
        }
    }

    /// `range` lies in the window.
    fn in_window(window: &Window, range: PageRange) -> Result<(), MmError> {
        if window.range.covers(range.start(), range.pages() * PAGE_SIZE) {
            Ok(())
        } else {
            Err(MmError::NotDeclared)
        }
    }

    /// The owner id a one-sided request names, with `range` checked
    /// against what is declared for it.
    fn target(
        &self,
        caller: ClientId,
        target: Target,
        range: PageRange,
    ) -> Result<OwnerId, MmError> {
        match target {
            Target::Caller => {
                let (owner, window) = self.window(caller)?;
                Self::in_window(&window, range)?;
                Ok(owner)
            }
            Target::Guest(id) => {
                let (owner, config) = self.guest(caller, id)?;
                Self::in_ram(&config, range)?;
                Ok(owner)
            }
        }
    }

    /// The hyp-mm transfer a two-sided request names: the caller's window
    /// on one side, a guest it controls on the other.
    fn sides(&self, caller: ClientId, t: &tenure_abi::mm::Transfer) -> Result<Transfer, MmError> {
        let (guest, config) = self.guest(caller, t.guest)?;
        let (window_owner, window) = self.window(caller)?;
        let (from, to, guest_pages, window_pages) = match t.direction {
            Direction::ToGuest => (window_owner, guest, t.to, t.from),
            Direction::FromGuest => (guest, window_owner, t.from, t.to),
        };
        Self::in_window(&window, window_pages)?;
        Self::in_ram(&config, guest_pages)?;
        Ok(Transfer {
            from,
            from_addr: t.from.start(),
            to,
            to_ipa: Ipa::new(t.to.start()),
            pages: t.from.pages(),
        })
    }

    /// The pages guest `id` owns.
    fn held_mut(&mut self, id: GuestId) -> Option<&mut u64> {
        self.held.get_mut(usize::from(id.get()).checked_sub(1)?)
    }

    /// Pages the pool holds for guest `id`.
    #[must_use]
    pub fn held(&self, id: GuestId) -> u64 {
        usize::from(id.get()).checked_sub(1).and_then(|i| self.held.get(i)).copied().unwrap_or(0)
    }

    /// Refuses `pages` more pages for guest `id` past its limit.
    fn within_limit(&self, id: GuestId, config: &GuestConfig, pages: u64) -> Result<(), MmError> {
        match self.held(id).checked_add(pages) {
            Some(total) if total <= config.limit => Ok(()),
            _ => Err(MmError::OverLimit),
        }
    }

    /// Counts `pages` pages into (`gained`) or out of guest `id`'s
    /// holding, once the request that moved them has succeeded.
    fn account(&mut self, id: GuestId, pages: u64, gained: bool) {
        if let Some(held) = self.held_mut(id) {
            *held = if gained { held.saturating_add(pages) } else { held.saturating_sub(pages) };
        }
    }

    // ---- requests ----

    fn create(&mut self, caller: ClientId, id: GuestId) -> Outcome {
        let config = self.declared(caller, id)?;
        let owner = guest_owner(id.get());
        if self.own.component(owner).is_ok() {
            return Err(MmError::GuestExists);
        }
        let root = root_of(self.roots, owner);
        debug_assert!(
            (0..ROOT_PAGES * 512).all(|i| self.mem.read(root, i).is_zero()),
            "a free root slot is zero"
        );
        let table = Stage2::new(GEOMETRY, root, config.vmid, TableKind::Component).map_err(code)?;
        self.control.install(id, config.vmid, root).map_err(|_| MmError::KernelRefused)?;
        self.own.add_component(owner, table).map_err(code)?;
        Ok(Reply::Done)
    }

    fn transfer(
        &mut self,
        caller: ClientId,
        kind: Kind,
        t: tenure_abi::mm::Transfer,
        access: Access,
    ) -> Outcome {
        let tr = self.sides(caller, &t)?;
        let prot = prot(access);
        if kind == Kind::Donate && t.direction == Direction::ToGuest {
            let (_, config) = self.guest(caller, t.guest)?;
            self.within_limit(t.guest, &config, tr.pages)?;
        }
        // The physical pages, for the clean a new guest mapping needs.
        let pa = match self.own.view(&self.mem, tr.from, Ipa::new(tr.from_addr)) {
            Ok(PageView::Mapped { pa, .. }) => Some(pa),
            _ => None,
        };
        self.reserve(tr.pages, 3);
        let mut ops =
            Batched { mem: &mut self.mem, control: &mut self.control, batch: &mut self.batch };
        let cache = &mut self.cache;
        let result = match kind {
            Kind::Donate => self.own.donate(&mut ops, cache, tr, prot),
            Kind::Share => self.own.share(&mut ops, cache, tr, prot),
            Kind::Lend => self.own.lend(&mut ops, cache, tr, prot),
            Kind::Unshare => self.own.unshare(&mut ops, cache, tr),
        };
        if let Err(e) = result {
            return Err(self.explain(kind, &tr, prot, e));
        }
        if kind == Kind::Donate {
            self.account(t.guest, tr.pages, t.direction == Direction::ToGuest);
        }
        if t.direction == Direction::ToGuest
            && kind != Kind::Unshare
            && let Some(pa) = pa
        {
            self.batch.clean(&mut self.control, pa, tr.pages * PAGE_SIZE);
        }
        Ok(Reply::Done)
    }

    /// The owner takes back pages the completer borrows from it.
    fn reclaim(&mut self, caller: ClientId, t: tenure_abi::mm::Transfer) -> Outcome {
        let tr = self.sides(caller, &t)?;
        for page in 0..tr.pages {
            let ipa = tr.to_ipa.add(page * PAGE_SIZE);
            let pa = match self.own.view(&self.mem, tr.to, ipa).map_err(code)? {
                PageView::Mapped { state: PageState::SharedBorrowed, pa, .. } => pa,
                _ => return Err(MmError::NotShared),
            };
            let record = self.own.record(&self.mem, pa).ok().flatten();
            let from_frame = Ipa::new(tr.from_addr).frame() + page;
            if !record.is_some_and(|r| r.owner == tr.from && r.frame == from_frame) {
                return Err(MmError::NotShared);
            }
        }
        self.reserve(tr.pages, 3);
        let mut ops =
            Batched { mem: &mut self.mem, control: &mut self.control, batch: &mut self.batch };
        self.own.relinquish(&mut ops, &mut self.cache, tr.to, tr.to_ipa, tr.pages).map_err(code)?;
        Ok(Reply::Done)
    }

    fn relinquish(&mut self, caller: ClientId, target: Target, range: PageRange) -> Outcome {
        let who = self.target(caller, target, range)?;
        let ipa = Ipa::new(range.start());
        // What leaves the guest's holding: the pages it owns, not those it
        // gives back to a lender.
        let owned = (0..range.pages())
            .filter(|&p| {
                let view = self.own.view(&self.mem, who, ipa.add(p * PAGE_SIZE));
                matches!(view, Ok(PageView::Mapped { state: PageState::Owned, .. }))
            })
            .count() as u64;
        self.reserve(range.pages(), 3);
        let mut ops =
            Batched { mem: &mut self.mem, control: &mut self.control, batch: &mut self.batch };
        let result = self.own.relinquish(&mut ops, &mut self.cache, who, ipa, range.pages());
        result.map_err(|e| match self.own.view(&self.mem, who, ipa) {
            Ok(PageView::Lent(_)) | Ok(PageView::Mapped { state: PageState::SharedOwned, .. }) => {
                MmError::AlreadyShared
            }
            Ok(PageView::Mapped { pa, prot, .. }) if self.is_device(pa, prot) => {
                MmError::DeviceMemory
            }
            _ => code(e),
        })?;
        if let Target::Guest(id) = target {
            self.account(id, owned, false);
        }
        Ok(Reply::Done)
    }

    fn populate(
        &mut self,
        caller: ClientId,
        target: Target,
        addr: FaultAddr,
        flags: WalkFlags,
    ) -> Outcome {
        let page = PageRange::new(addr.page(), 1)?;
        let who = self.target(caller, target, page)?;
        let ipa = Ipa::new(page.start());
        match self.own.view(&self.mem, who, ipa).map_err(code)? {
            PageView::Empty => {}
            PageView::Mapped { .. } if flags.contains(WalkFlags::IGNORE_RETRY) => {
                return Ok(Reply::Mapped { ipa: ipa.raw(), pages: 0 });
            }
            _ => return Err(MmError::AlreadyMapped),
        }
        if let Target::Guest(id) = target {
            let (_, config) = self.guest(caller, id)?;
            self.within_limit(id, &config, 1)?;
        }
        let pa = self.find_free().ok_or(MmError::PoolExhausted)?;
        let prot = if target == Target::Caller { WINDOW_RAM } else { GUEST_RAM };
        let tr = Transfer {
            from: OwnerId::DEFAULT,
            from_addr: pa.raw(),
            to: who,
            to_ipa: ipa,
            pages: 1,
        };
        self.reserve(1, 2);
        let mut ops =
            Batched { mem: &mut self.mem, control: &mut self.control, batch: &mut self.batch };
        self.own.donate(&mut ops, &mut self.cache, tr, prot).map_err(code)?;
        // Free pages hold whatever was there before mm ran, so a page is
        // zeroed (and cleaned) on its way out of the pool as well as on its
        // way back in; the owner does not run before the reply.
        ops.zero_page(pa);
        self.rover = pa.raw() + PAGE_SIZE;
        if let Target::Guest(id) = target {
            self.account(id, 1, true);
        }
        Ok(Reply::Mapped { ipa: ipa.raw(), pages: 1 })
    }

    fn map_device(
        &mut self,
        caller: ClientId,
        id: GuestId,
        addr: FaultAddr,
        flags: WalkFlags,
    ) -> Outcome {
        let (owner, config) = self.guest(caller, id)?;
        let device = *config.device_at(addr.page()).ok_or(MmError::NotDeclared)?;
        let table = self.own.component(owner).map_err(code)?;
        let (pte, level) = table.get_leaf(&self.mem, Ipa::new(addr.page())).map_err(code)?;
        if pte.is_valid() && flags.contains(WalkFlags::IGNORE_RETRY) {
            return Ok(Reply::Mapped { ipa: addr.page(), pages: 0 });
        }
        if !pte.is_zero() {
            return Err(MmError::AlreadyMapped);
        }
        // The zero entry at `level` says its whole span is empty, so any
        // granule at that level or below holding the fault is free: map the
        // largest that lies inside the device and whose IPA and PA share
        // its alignment (at most one try per level).
        for l in level.max(FIRST_BLOCK_LEVEL)..=LAST_LEVEL {
            let size = level_size(l);
            let start = addr.page() & !(size - 1);
            if !device.ipa.covers(start, size) || !device.pa_of(start).is_aligned(size) {
                continue;
            }
            let range = IpaRange::new(Ipa::new(start), size).ok_or(MmError::BadArgument)?;
            // A block or page at level `l` needs at most one table per level above it.
            self.reserve(1, 1);
            let mut ops =
                Batched { mem: &mut self.mem, control: &mut self.control, batch: &mut self.batch };
            let pa = device.pa_of(start);
            self.own.map_device(&mut ops, &mut self.cache, owner, range, pa).map_err(code)?;
            return Ok(Reply::Mapped { ipa: start, pages: size / PAGE_SIZE });
        }
        Err(MmError::BadArgument)
    }

    fn query(&mut self, caller: ClientId, target: Target, addr: FaultAddr) -> Outcome {
        let who = match target {
            Target::Caller => self.window(caller)?.0,
            Target::Guest(id) => self.guest(caller, id)?.0,
        };
        let view = self.own.view(&self.mem, who, Ipa::new(addr.page())).map_err(code)?;
        let borrowers =
            |pa| self.own.record(&self.mem, pa).ok().flatten().map_or(0, |r| r.borrowers);
        let (state, prot, borrowers) = match view {
            PageView::Mapped { pa, prot, state, lent } => {
                let state = match state {
                    PageState::SharedBorrowed if lent => tenure_abi::mm::PageState::Lent,
                    PageState::SharedBorrowed => tenure_abi::mm::PageState::SharedBorrowed,
                    PageState::SharedOwned => tenure_abi::mm::PageState::SharedOwned,
                    PageState::Owned | PageState::NoPage => tenure_abi::mm::PageState::Owned,
                };
                (state, prot, borrowers(pa))
            }
            PageView::Lent(mark) => (tenure_abi::mm::PageState::LentOut, mark.prot, 1),
            PageView::Empty | PageView::Annotated(_) => {
                (tenure_abi::mm::PageState::NoPage, Prot::empty(), 0)
            }
        };
        let access = Access::from_bits_truncate(prot.bits());
        Ok(Reply::Page(PageInfo { state, access, borrowers }))
    }

    /// Stops guest `id` and takes back everything: its borrowers let go of
    /// what it shared or lent, it lets go of what it borrows, its own pages
    /// are zeroed and freed, its device mappings and table pages go.
    fn teardown(&mut self, caller: ClientId, id: GuestId) -> Outcome {
        let (guest, config) = self.guest(caller, id)?;
        // Check: nothing the teardown must undo is pinned. Count the pages
        // that come back to the pool: owned, shared out or lent out.
        let (mut pages, mut busy) = (0, false);
        let (own, mem) = (&self.own, &self.mem);
        let table = own.component(guest).map_err(code)?;
        let managed = own.managed();
        table
            .leaves(mem, table.span(), &mut |ipa, level, pte| {
                if pte.is_zero()
                    || (pte.is_valid() && !managed.contains(Ipa::new(pte.addr().raw())))
                {
                    return Ok(());
                }
                for page in 0..level_size(level) / PAGE_SIZE {
                    let pa = match own.view(mem, guest, ipa.add(page * PAGE_SIZE)) {
                        Ok(PageView::Mapped { pa, state, .. }) => {
                            pages += u64::from(state != PageState::SharedBorrowed);
                            pa
                        }
                        Ok(PageView::Lent(mark)) => {
                            pages += 1;
                            mark.pa
                        }
                        _ => continue,
                    };
                    busy |= own.record(mem, pa).ok().flatten().is_some_and(|r| r.pins != 0);
                }
                Ok(())
            })
            .map_err(code)?;
        if busy {
            return Err(MmError::Busy);
        }
        // Commit: nothing below can be refused any more.
        self.control.uninstall(id, config.vmid);
        self.own.start_teardown(guest).map_err(code)?;
        let windows: [Option<OwnerId>; MAX_CLIENTS] = core::array::from_fn(|i| {
            let id = ClientId(i as u8);
            self.config.client(id).and_then(|c| c.window).map(|_| client_owner(id))
        });
        for window in windows.into_iter().flatten() {
            self.release_borrowed(window, Some(guest));
        }
        self.release_borrowed(guest, None);
        let span = self.own.component(guest).map_err(code)?.span();
        let mut ops =
            Batched { mem: &mut self.mem, control: &mut self.control, batch: &mut self.batch };
        let reclaimed = self.own.reclaim(&mut ops, &mut self.cache, guest, span);
        debug_assert_eq!(reclaimed, Ok(()), "a checked teardown reclaims everything");
        let removed = self.own.remove_component(&mut ops, guest);
        debug_assert!(removed.is_ok(), "an empty dying table is removed");
        let tables = self.batch.freed_tables;
        if let Some(held) = self.held_mut(id) {
            *held = 0;
        }
        Ok(Reply::TornDown { pages, tables })
    }

    /// `who` lets go of every page it borrows (from `owner`, if given), a
    /// leaf at a time (a block comes from one request, so it goes at once).
    fn release_borrowed(&mut self, who: OwnerId, owner: Option<OwnerId>) {
        let Ok(table) = self.own.component(who) else { return };
        let span = table.span();
        let mut cursor = span.start();
        loop {
            let Ok(table) = self.own.component(who) else { return };
            let Some((ipa, level, _)) = table.next_leaf(&self.mem, cursor, span.end()) else {
                return;
            };
            let start = ipa.raw().max(cursor.raw());
            cursor = Ipa::new(ipa.raw() + level_size(level));
            let Ok(PageView::Mapped { state: PageState::SharedBorrowed, pa, .. }) =
                self.own.view(&self.mem, who, Ipa::new(start))
            else {
                continue;
            };
            let from = self.own.record(&self.mem, pa).ok().flatten().map(|r| r.owner);
            if owner.is_some() && from != owner {
                continue;
            }
            let pages = (cursor.raw() - start) / PAGE_SIZE;
            let mut ops =
                Batched { mem: &mut self.mem, control: &mut self.control, batch: &mut self.batch };
            let cache = &mut self.cache;
            if self.own.relinquish(&mut ops, cache, who, Ipa::new(start), pages).is_err() {
                for page in 0..pages {
                    let at = Ipa::new(start + page * PAGE_SIZE);
                    let r = self.own.relinquish(&mut ops, cache, who, at, 1);
                    debug_assert_eq!(r, Ok(()), "a borrowed page can be relinquished");
                }
            }
        }
    }

    // ---- helpers ----

    fn is_managed(&self, pa: PhysAddr) -> bool {
        self.own.managed().contains(Ipa::new(pa.raw()))
    }

    fn is_device(&self, pa: PhysAddr, prot: Prot) -> bool {
        prot.contains(Prot::DEVICE) || !self.is_managed(pa)
    }

    /// A free page of the pool, searching from the rover (next fit): the
    /// ledger's zero entries are free, and they are skipped whole.
    fn find_free(&self) -> Option<PhysAddr> {
        let managed = self.own.managed();
        let (start, end) = (managed.start().raw(), managed.end().raw());
        let rover = self.rover.clamp(start, end);
        self.free_in(rover, end).or_else(|| self.free_in(start, rover))
    }

    fn free_in(&self, mut cursor: u64, end: u64) -> Option<PhysAddr> {
        let ledger = self.own.ledger();
        while cursor < end {
            match ledger.next_leaf(&self.mem, Ipa::new(cursor), Ipa::new(end)) {
                None => return Some(PhysAddr::new(cursor)),
                Some((ipa, _, _)) if ipa.raw() > cursor => return Some(PhysAddr::new(cursor)),
                Some((ipa, level, _)) => cursor = ipa.raw() + level_size(level),
            }
        }
        None
    }

    /// Why hyp-mm refused a transition, read off the pages: the first page
    /// of the initiator that is not as the transition needs, then the
    /// first page of the completer; hyp-mm's own code when they say
    /// nothing more.
    fn explain(&self, kind: Kind, tr: &Transfer, want: Prot, error: hyp_mm::Error) -> MmError {
        use hyp_mm::Error::{InvalidArgument, NotFound, Permission};
        if !matches!(error, Permission | NotFound | InvalidArgument) {
            return code(error);
        }
        let mut first: Option<PhysAddr> = None;
        for page in 0..tr.pages {
            let ipa = Ipa::new(tr.from_addr + page * PAGE_SIZE);
            let Ok(view) = self.own.view(&self.mem, tr.from, ipa) else { return code(error) };
            match view {
                PageView::Empty => return MmError::NotMapped,
                PageView::Lent(_) if kind == Kind::Unshare => return MmError::NotShared,
                PageView::Lent(_) => return MmError::AlreadyShared,
                PageView::Annotated(_) => return MmError::NotOwned,
                PageView::Mapped { pa, prot, state, .. } => {
                    if self.is_device(pa, prot) {
                        return MmError::DeviceMemory;
                    }
                    match (kind, state) {
                        (_, PageState::SharedBorrowed) => return MmError::NotOwned,
                        (Kind::Donate | Kind::Lend, PageState::SharedOwned) => {
                            return MmError::AlreadyShared;
                        }
                        (Kind::Unshare, PageState::Owned) => return MmError::NotShared,
                        _ => {}
                    }
                    if matches!(kind, Kind::Share | Kind::Lend) && !prot.contains(want) {
                        return MmError::NotOwned;
                    }
                    if pa != first.get_or_insert(pa).add(page * PAGE_SIZE) {
                        return MmError::NotContiguous;
                    }
                }
            }
        }
        for page in 0..tr.pages {
            let ipa = tr.to_ipa.add(page * PAGE_SIZE);
            let Ok(view) = self.own.view(&self.mem, tr.to, ipa) else { return code(error) };
            match (kind, view) {
                (Kind::Unshare, PageView::Mapped { state, pa, lent: false, .. })
                    if state == PageState::SharedBorrowed
                        && first.is_some_and(|f| f.add(page * PAGE_SIZE) == pa) => {}
                (Kind::Unshare, _) => return MmError::NotShared,
                (_, PageView::Empty) => {}
                _ => return MmError::AlreadyMapped,
            }
        }
        code(error)
    }
}

/// The gigabyte (one level-1 entry) a window lies in, if it lies in one
/// and clear of the anchor at the gigabyte's end.
fn window_span(range: IpaRange) -> Option<IpaRange> {
    let start = range.start().align_down(WINDOW_SPAN);
    let usable = IpaRange::new(start, WINDOW_SPAN - ANCHOR_BYTES)?;
    usable.covers(range.start().raw(), range.size()).then_some(())?;
    IpaRange::new(start, WINDOW_SPAN)
}

/// The root slot of component `owner` in the root area: slot 0 is the
/// ledger's, then guests 1..=MAX_GUESTS, then the windows.
fn root_of(roots: PhysAddr, owner: OwnerId) -> PhysAddr {
    roots.add(u64::from(owner.0) * (ROOT_PAGES as u64) * PAGE_SIZE)
}

/// Refuses a configuration the manager cannot serve safely.
fn validate(config: &Config, layout: &PoolLayout) -> Result<(), SetupError> {
    let managed = layout.managed();
    let (pool, pool_bytes) = layout.pool();
    let mut vmids = [None; MAX_GUESTS + MAX_CLIENTS];
    let mut claim = |vmid: VmId| -> Result<(), SetupError> {
        if vmids.contains(&Some(vmid)) {
            return Err(SetupError::Config);
        }
        *vmids.iter_mut().find(|v| v.is_none()).ok_or(SetupError::Config)? = Some(vmid);
        Ok(())
    };
    for client in config.clients.iter().flatten() {
        if let Some(w) = client.window {
            claim(w.vmid)?;
            if w.range.end().raw() > GEOMETRY.ipa_limit() {
                return Err(SetupError::Config);
            }
        }
    }
    for guest in config.guests.iter().flatten() {
        claim(guest.vmid)?;
        if config.client(guest.controller).is_none() {
            return Err(SetupError::Config);
        }
        let ranges =
            guest.ram.iter().flatten().chain(guest.devices.iter().flatten().map(|d| &d.ipa));
        for r in ranges {
            if r.end().raw() > GEOMETRY.ipa_limit() {
                return Err(SetupError::Config);
            }
        }
        for d in guest.devices.iter().flatten() {
            let end = d.pa.checked_add(d.ipa.size()).ok_or(SetupError::Config)?;
            let overlaps = |start: u64, bytes: u64| d.pa.raw() < start + bytes && start < end.raw();
            if overlaps(managed.start().raw(), managed.size())
                || overlaps(pool.raw(), pool_bytes)
                || !d.pa.is_aligned(PAGE_SIZE)
                || end.raw() > 1 << 48
            {
                return Err(SetupError::Config);
            }
        }
    }
    Ok(())
}
