//! A stage-2 table and the operations that change it: map, unmap, protect,
//! annotate, greedy identity map and write-protect.
//!
//! Every operation runs in two passes over the same decisions:
//!
//! 1. **prepare** walks the range without writing and counts the table pages
//!    the update needs (a split of a block or annotation, or a new table
//!    under an empty entry); if the [`MemCache`] holds fewer, the operation
//!    fails with [`Error::OutOfMemory`] and nothing has changed;
//! 2. **commit** repeats the walk and writes, popping exactly that many
//!    pages; it cannot fail.
//!
//! Invariants kept by every commit:
//! - a non-root table page's refcount is 1 + its non-zero entries, and a
//!   table whose entries are all zero is unlinked and returned to the page
//!   source (after TLB maintenance, so no walker can still reach it);
//! - a valid entry is never replaced by another valid one with a different
//!   address, memory type or size without break-before-make: write zero,
//!   invalidate, then write the new entry (Arm ARM D8.16.1);
//! - a leaf maps a block only where both the IPA and the PA are aligned to
//!   the block size, and never at level 0.

use crate::addr::{Ipa, IpaRange, PAGE_SIZE, PhysAddr};
use crate::desc::{
    Annotation, Change, ENTRIES, FIRST_BLOCK_LEVEL, LAST_LEVEL, OwnerId, Prot, Pte, level_size,
};
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::mem::{MemCache, MmOps, TlbOp, VmId};
use crate::walk::{Visit, VisitKind, WalkFlags, entries_in, walk};

/// Largest output address a descriptor holds (bits [47:12]).
const OA_LIMIT: u64 = 1 << 48;

/// What a table records, which decides the rules for owner 0.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TableKind {
    /// The default owner's ledger over physical memory: never walked by
    /// hardware, so it needs no TLB maintenance; annotating owner 0 frees.
    Ledger,
    /// A guest's or PD's stage-2 table, walked by hardware under its VMID.
    Component,
}

/// How to map a range.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mapping {
    /// Access and memory type.
    pub prot: Prot,
    /// Software bits [58:55] of every leaf (the page state).
    pub sw: u8,
    /// Use 4 KiB pages only, never blocks.
    pub pages_only: bool,
}

impl Mapping {
    /// A mapping with `prot`, software bits 0, blocks where alignment allows.
    #[must_use]
    pub const fn new(prot: Prot) -> Self {
        Mapping { prot, sw: 0, pages_only: false }
    }

    /// The same mapping with software bits `sw`.
    #[must_use]
    pub const fn with_sw(self, sw: u8) -> Self {
        Mapping { sw, ..self }
    }

    /// The same mapping in 4 KiB pages only.
    #[must_use]
    pub const fn pages(self) -> Self {
        Mapping { pages_only: true, ..self }
    }
}

/// A change to apply over a range; see [`Stage2::update`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Update {
    /// Map the range to physical memory from `pa` on.
    Map {
        /// Physical address the first page of the range maps.
        pa: PhysAddr,
        /// Attributes.
        mapping: Mapping,
    },
    /// Clear every entry (valid or annotated) to zero.
    Unmap,
    /// Set the access of every valid leaf (device leaves stay
    /// non-executable); invalid entries are left alone.
    Protect(Prot),
    /// Set the software bits of every valid leaf.
    SetSoftware(u8),
    /// Write an annotation into every entry, at the largest level the range
    /// allows.
    Annotate(Annotation),
    /// Write an annotation per page whose metadata counts up by one per
    /// page from the given first value (a reverse map).
    AnnotatePages(Annotation),
}

/// What one entry needs, decided identically by prepare and commit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    /// Leave it.
    Skip,
    /// Replace it by this entry.
    Write(Pte),
    /// Work below it: walk its table, splitting it into one first if it is
    /// not a table.
    Descend,
}

/// A stage-2 translation table (or the ledger, which has the same format).
#[derive(Debug)]
pub struct Stage2 {
    root: PhysAddr,
    geometry: Geometry,
    vmid: VmId,
    kind: TableKind,
    dying: bool,
}

impl Stage2 {
    /// Takes over the zeroed root at `root` (of `geometry.root_pages()`
    /// pages, aligned to its size).
    pub fn new(geometry: Geometry, root: PhysAddr, vmid: VmId, kind: TableKind) -> Result<Self> {
        if !root.is_aligned(geometry.root_bytes()) {
            return Err(Error::InvalidArgument);
        }
        Ok(Stage2 { root, geometry, vmid, kind, dying: false })
    }

    /// The root table (what VTTBR_EL2.BADDR holds).
    #[must_use]
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The table's geometry.
    #[must_use]
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The VMID its TLB entries are tagged with.
    #[must_use]
    pub fn vmid(&self) -> VmId {
        self.vmid
    }

    /// Ledger or component table.
    #[must_use]
    pub fn kind(&self) -> TableKind {
        self.kind
    }

    /// Marks the table as being torn down: from now on owner 0 may be
    /// written into it and its pages may be reclaimed.
    pub fn start_teardown(&mut self) {
        self.dying = true;
    }

    /// Whether [`Stage2::start_teardown`] was called.
    #[must_use]
    pub fn is_dying(&self) -> bool {
        self.dying
    }

    /// The whole address space as a range.
    #[must_use]
    pub fn span(&self) -> IpaRange {
        IpaRange::new(Ipa::new(0), self.geometry.ipa_limit())
            .expect("the IPA space is a valid range")
    }

    /// Walks `range` with `visitor`; see [`crate::walk`].
    pub fn walk<M: MmOps, V: crate::walk::Visitor<M>>(
        &self,
        mem: &mut M,
        range: IpaRange,
        flags: WalkFlags,
        visitor: &mut V,
    ) -> Result<()> {
        self.check_range(range)?;
        walk(mem, self.geometry, self.root, range, flags, visitor)
    }

    /// Calls `f` with the first IPA, level and value of every leaf (valid,
    /// annotated or zero) that meets `range`, in address order, without
    /// changing anything; stops at the first error `f` returns.
    pub fn leaves<M: MmOps, F: FnMut(Ipa, u8, Pte) -> Result<()>>(
        &self,
        mem: &M,
        range: IpaRange,
        f: &mut F,
    ) -> Result<()> {
        self.check_range(range)?;
        self.leaves_at(mem, range, self.root, self.geometry.start_level(), 0, f)
    }

    fn leaves_at<M: MmOps, F: FnMut(Ipa, u8, Pte) -> Result<()>>(
        &self,
        mem: &M,
        range: IpaRange,
        table: PhysAddr,
        level: u8,
        base: u64,
        f: &mut F,
    ) -> Result<()> {
        for (index, ipa) in entries_in(self.geometry, level, base, range) {
            let pte = mem.read(table, index);
            if pte.is_table(level) {
                self.leaves_at(mem, range, pte.addr(), level + 1, ipa, f)?;
            } else {
                f(Ipa::new(ipa), level, pte)?;
            }
        }
        Ok(())
    }

    /// The first non-zero leaf at or after `from` that starts before `end`:
    /// its first IPA, level and value. Zero entries are skipped whole, so
    /// stepping through a sparse table this way costs what it holds.
    pub fn next_leaf<M: MmOps>(&self, mem: &M, from: Ipa, end: Ipa) -> Option<(Ipa, u8, Pte)> {
        let size = end.raw().checked_sub(from.raw())?;
        let range = IpaRange::new(from, size)?;
        let mut found = None;
        let _ = self.leaves(mem, range, &mut |ipa, level, pte| {
            if pte.is_zero() {
                return Ok(());
            }
            found = Some((ipa, level, pte));
            Err(Error::Exists)
        });
        found
    }

    /// The entry that translates `ipa` and its level: a valid leaf, or the
    /// invalid entry (annotated or zero) where the walk ends.
    pub fn get_leaf<M: MmOps>(&self, mem: &M, ipa: Ipa) -> Result<(Pte, u8)> {
        if ipa.raw() >= self.geometry.ipa_limit() {
            return Err(Error::InvalidArgument);
        }
        let mut table = self.root;
        let mut level = self.geometry.start_level();
        loop {
            let pte = mem.read(table, self.geometry.index(ipa, level));
            if !pte.is_table(level) {
                return Ok((pte, level));
            }
            table = pte.addr();
            level += 1;
        }
    }

    /// The entry that covers the page at `ipa` as a page-level entry: a
    /// block is narrowed to the page's part of it, an annotation is returned
    /// as it is.
    pub fn page<M: MmOps>(&self, mem: &M, ipa: Ipa) -> Result<Pte> {
        let (pte, level) = self.get_leaf(mem, ipa)?;
        Ok(pte.page_at(ipa.raw() & (level_size(level) - 1)))
    }

    /// Maps `range` to physical memory from `pa`, with blocks wherever the
    /// IPA and PA alignment allow (unless `mapping.pages_only`). Existing
    /// entries are replaced (break-before-make where needed); identical ones
    /// are left alone, and [`Error::Retry`] reports that every entry was
    /// already exactly as asked.
    pub fn map<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        range: IpaRange,
        pa: PhysAddr,
        mapping: Mapping,
    ) -> Result<()> {
        self.update(mem, cache, range, Update::Map { pa, mapping })
    }

    /// Clears `range` to zero, freeing tables that become empty.
    pub fn unmap<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        range: IpaRange,
    ) -> Result<()> {
        self.update(mem, cache, range, Update::Unmap).or_else(ignore_retry)
    }

    /// Sets the access of every valid leaf in `range`, splitting blocks that
    /// straddle its ends; relaxation is done in place with local TLB
    /// invalidation, restriction with broadcast invalidation.
    pub fn protect<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        range: IpaRange,
        prot: Prot,
    ) -> Result<()> {
        self.update(mem, cache, range, Update::Protect(prot)).or_else(ignore_retry)
    }

    /// Writes `annotation` into every entry of `range`, as a single entry
    /// wherever the range covers a whole aligned block. Annotating a whole
    /// block with owner 0 frees its subtree and leaves one zero entry a level
    /// up. Owner 0 is refused on a component table unless it is being torn
    /// down.
    pub fn annotate<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        range: IpaRange,
        annotation: Annotation,
    ) -> Result<()> {
        self.update(mem, cache, range, Update::Annotate(annotation)).or_else(ignore_retry)
    }

    /// Table pages an update of `range` would take from the cache now.
    pub fn pages_needed<M: MmOps>(
        &self,
        mem: &M,
        range: IpaRange,
        update: Update,
    ) -> Result<usize> {
        let op = self.check(mem, range, update)?;
        Ok(self.prepare(mem, &op, range, Source::Table(self.root), self.geometry.start_level(), 0))
    }

    /// Applies `update` to `range`: check the arguments, count the table
    /// pages needed, refuse with [`Error::OutOfMemory`] if the cache is
    /// short, then commit. Returns [`Error::Retry`] if nothing changed.
    pub fn update<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        range: IpaRange,
        update: Update,
    ) -> Result<()> {
        let op = self.check(mem, range, update)?;
        let needed =
            self.prepare(mem, &op, range, Source::Table(self.root), self.geometry.start_level(), 0);
        if needed > cache.len() {
            return Err(Error::OutOfMemory);
        }
        let mut commit = Commit { table: self, mem, cache, op, range, changed: 0 };
        commit.table_at(self.root, self.geometry.start_level(), 0);
        let changed = commit.changed;
        if changed == 0 {
            return Err(Error::Retry);
        }
        if self.kind == TableKind::Component {
            mem.tlb(TlbOp::DsbIshst);
        }
        Ok(())
    }

    /// Handles a fault at `fault` by identity-mapping the largest block that
    /// contains it, lies inside `permitted` and meets no existing entry.
    /// Returns the range mapped. A fault on an annotated entry is refused
    /// with [`Error::Permission`]; one on a valid mapping reports
    /// [`Error::Exists`]; a fault outside `permitted` is an
    /// [`Error::InvalidArgument`].
    pub fn idmap_greedy<M: MmOps>(
        &mut self,
        mem: &mut M,
        cache: &mut MemCache,
        fault: Ipa,
        permitted: IpaRange,
        prot: Prot,
    ) -> Result<IpaRange> {
        if !permitted.contains(fault) {
            return Err(Error::InvalidArgument);
        }
        let (pte, level) = self.get_leaf(mem, fault)?;
        if pte.is_valid() {
            return Err(Error::Exists);
        }
        if !pte.is_zero() {
            return Err(Error::Permission);
        }
        // The zero entry at `level` means its whole span is empty, so any
        // granule at `level` or below that contains the fault is free; take
        // the largest one inside `permitted`. At most one try per level.
        for l in level.max(FIRST_BLOCK_LEVEL)..=LAST_LEVEL {
            let size = level_size(l);
            let start = fault.align_down(size);
            if permitted.covers(start.raw(), size) {
                let range = IpaRange::new(start, size).ok_or(Error::InvalidArgument)?;
                self.map(mem, cache, range, PhysAddr::new(start.raw()), Mapping::new(prot))?;
                return Ok(range);
            }
        }
        Err(Error::InvalidArgument)
    }

    /// Removes write access from every valid leaf that meets `range`,
    /// whole (a block is not split), skipping invalid entries. This is the
    /// walk that must reach everything: it continues past entries it
    /// cannot change.
    pub fn write_protect<M: MmOps>(&mut self, mem: &mut M, range: IpaRange) -> Result<()> {
        let this = &*self;
        let mut visitor = |mem: &mut M, visit: &Visit, _kind: VisitKind| -> Result<()> {
            if !visit.pte.is_valid() || !visit.pte.prot().contains(Prot::W) {
                return Err(Error::Retry);
            }
            let new = visit.pte.with_prot(visit.pte.prot() - Prot::W);
            let delta = this.replace(mem, visit, new);
            this.adjust(mem, visit.table, delta);
            Ok(())
        };
        self.walk(mem, range, WalkFlags::LEAF | WalkFlags::IGNORE_RETRY, &mut visitor)
    }

    /// Frees every table page and the root. The caller has taken every page
    /// out of the table first (for a guest: reclaimed them all).
    pub fn destroy<M: MmOps>(self, mem: &mut M) {
        let level = self.geometry.start_level();
        // Unlink everything, invalidate once, and only then free: no walker
        // may hold a page that is back in the page source. Until the root is
        // freed, an unlinked table is remembered as its descriptor with the
        // valid bit clear; every other entry is cleared.
        for index in 0..self.geometry.root_entries() {
            let pte = mem.read(self.root, index);
            let unlinked = if pte.is_table(level) { Pte(pte.0 & !1) } else { Pte::ZERO };
            mem.write(self.root, index, unlinked);
        }
        if self.kind == TableKind::Component {
            self.tlb_table(mem);
        }
        for index in 0..self.geometry.root_entries() {
            let unlinked = mem.read(self.root, index);
            if unlinked.is_counted() {
                self.free_subtree(mem, unlinked.addr(), level + 1);
            }
        }
        for page in 0..self.geometry.root_pages() as u64 {
            mem.free_page(self.root.add(page * PAGE_SIZE));
        }
    }

    fn check_range(&self, range: IpaRange) -> Result<()> {
        if range.end().raw() > self.geometry.ipa_limit() {
            return Err(Error::InvalidArgument);
        }
        Ok(())
    }

    /// Validates the arguments of an update and resolves it to an [`Op`].
    fn check<M: MmOps>(&self, mem: &M, range: IpaRange, update: Update) -> Result<Op> {
        self.check_range(range)?;
        Ok(match update {
            Update::Map { pa, mapping } => {
                mapping.prot.validate()?;
                let end = pa.checked_add(range.size()).ok_or(Error::InvalidArgument)?;
                if !pa.is_aligned(PAGE_SIZE) || end.raw() > OA_LIMIT || mapping.sw > 0xf {
                    return Err(Error::InvalidArgument);
                }
                let first_leaf = if mapping.pages_only { LAST_LEVEL } else { FIRST_BLOCK_LEVEL };
                Op::Map {
                    offset: pa.raw().wrapping_sub(range.start().raw()),
                    page: Pte::leaf(LAST_LEVEL, PhysAddr::new(0), mapping.prot, mapping.sw),
                    first_leaf,
                }
            }
            Update::Unmap => Op::Unmap,
            Update::Protect(prot) => {
                prot.validate()?;
                if !prot.intersects(Prot::RW) {
                    self.check_no_device_leaf(mem, range)?;
                }
                Op::Protect(prot)
            }
            Update::SetSoftware(sw) if sw <= 0xf => Op::SetSoftware(sw),
            Update::SetSoftware(_) => return Err(Error::InvalidArgument),
            Update::Annotate(annotation) => {
                self.check_annotation(annotation)?;
                Op::Annotate { first: annotation, per_page: false, start: range.start().raw() }
            }
            Update::AnnotatePages(first) => {
                self.check_annotation(first)?;
                let last = first.meta().checked_add(range.page_count() - 1);
                if first.owner() == OwnerId::DEFAULT
                    || last.is_none_or(|m| m >> crate::desc::META_BITS != 0)
                {
                    return Err(Error::InvalidArgument);
                }
                Op::Annotate { first, per_page: true, start: range.start().raw() }
            }
        })
    }

    /// Device leaves are never executable, so execute-only access would
    /// leave one with no access at all: refused if `range` holds any.
    fn check_no_device_leaf<M: MmOps>(&self, mem: &M, range: IpaRange) -> Result<()> {
        self.leaves(mem, range, &mut |_, _, pte| {
            if pte.is_valid() && pte.prot().contains(Prot::DEVICE) {
                Err(Error::InvalidArgument)
            } else {
                Ok(())
            }
        })
    }

    fn check_annotation(&self, annotation: Annotation) -> Result<()> {
        let is_default = annotation.owner() == OwnerId::DEFAULT;
        if is_default && self.kind == TableKind::Component && !self.dying {
            return Err(Error::InvalidArgument);
        }
        Ok(())
    }

    /// Counts the table pages an update needs below the entries of one
    /// table, real or about to be split off `Source::Split`.
    fn prepare<M: MmOps>(
        &self,
        mem: &M,
        op: &Op,
        range: IpaRange,
        source: Source,
        level: u8,
        base: u64,
    ) -> usize {
        if level == LAST_LEVEL {
            return 0; // pages never need a table below them
        }
        let entry = |(index, ipa): (usize, u64)| {
            let old = match source {
                Source::Table(table) => mem.read(table, index),
                Source::Split(parent) => parent.split_child(level - 1, index),
            };
            let covered = range.covers(ipa, level_size(level));
            match op.decide(level, ipa, old, covered) {
                Action::Descend if old.is_table(level) => {
                    self.prepare(mem, op, range, Source::Table(old.addr()), level + 1, ipa)
                }
                Action::Descend => {
                    1 + self.prepare(mem, op, range, Source::Split(old), level + 1, ipa)
                }
                Action::Skip | Action::Write(_) => 0,
            }
        };
        let mut entries = entries_in(self.geometry, level, base, range);
        match source {
            Source::Table(_) => entries.map(entry).sum(),
            // The entries a split would create differ only in address, by a
            // constant stride, and only the first and last can be partly
            // covered: every entry in between needs what the second needs.
            Source::Split(_) => {
                let Some(first) = entries.next() else { return 0 };
                let Some(last) = entries.last() else { return entry(first) };
                let between = last.0 - first.0 - 1;
                let second = (first.0 + 1, first.1 + level_size(level));
                let middle = if between > 0 { between * entry(second) } else { 0 };
                entry(first) + middle + entry(last)
            }
        }
    }

    /// Replaces the entry `at` (whose current value is `at.pte`) by `new`,
    /// with the TLB maintenance the change needs, freeing a replaced
    /// subtree. Returns how the table's count of non-zero entries changed,
    /// for the caller to apply with [`Stage2::adjust`] (once per table in a
    /// commit, not once per entry).
    #[must_use]
    #[inline(always)]
    fn replace<M: MmOps>(&self, mem: &mut M, at: &Visit, new: Pte) -> i32 {
        let Visit { table, index, level, pte: old, .. } = *at;
        let ipa = at.ipa.raw();
        let change = old.change(new, level);
        match change {
            Change::None => return 0,
            Change::Install | Change::Software => mem.write(table, index, new),
            Change::Relax => {
                mem.write(table, index, new);
                self.tlb_relax(mem, ipa, level);
            }
            Change::Restrict => {
                mem.write(table, index, new);
                self.tlb_leaf(mem, ipa, level);
            }
            Change::Remove | Change::BreakBeforeMake => {
                mem.write(table, index, Pte::ZERO);
                if old.is_table(level) {
                    self.tlb_table(mem);
                    self.free_subtree(mem, old.addr(), level + 1);
                } else {
                    self.tlb_leaf(mem, ipa, level);
                }
                if new != Pte::ZERO {
                    mem.write(table, index, new);
                }
            }
        }
        i32::from(new.is_counted()) - i32::from(old.is_counted())
    }

    /// Adds `delta` to the refcount of `table` (the root keeps none).
    fn adjust<M: MmOps>(&self, mem: &mut M, table: PhysAddr, delta: i32) {
        if delta != 0 && table != self.root {
            let count = mem.page_count(table);
            mem.set_page_count(table, count.wrapping_add_signed(delta));
        }
    }

    /// Returns a subtree's table pages to the page source. The caller has
    /// unlinked it and invalidated the TLBs.
    fn free_subtree<M: MmOps>(&self, mem: &mut M, table: PhysAddr, level: u8) {
        if level < LAST_LEVEL {
            for index in 0..ENTRIES {
                let pte = mem.read(table, index);
                if pte.is_table(level) {
                    self.free_subtree(mem, pte.addr(), level + 1);
                }
            }
        }
        mem.set_page_count(table, 0);
        mem.free_page(table);
    }

    /// Invalidation after a leaf at `ipa` became invalid or lost access
    /// (Linux `__kvm_tlb_flush_vmid_ipa`): stage 2 first, then the combined
    /// stage-1+2 entries that may hold the old translation.
    fn tlb_leaf<M: MmOps>(&self, mem: &mut M, ipa: u64, level: u8) {
        if self.kind == TableKind::Component {
            let vmid = self.vmid;
            mem.tlb(TlbOp::DsbIshst);
            mem.tlb(TlbOp::InvalidateIpa { vmid, ipa: Ipa::new(ipa), level });
            mem.tlb(TlbOp::DsbIsh);
            mem.tlb(TlbOp::InvalidateStage1 { vmid });
            mem.tlb(TlbOp::DsbIsh);
            mem.tlb(TlbOp::Isb);
        }
    }

    /// Invalidation after a table was unlinked: walk caches may hold it
    /// anywhere in its span, so the whole VMID goes.
    fn tlb_table<M: MmOps>(&self, mem: &mut M) {
        if self.kind == TableKind::Component {
            mem.tlb(TlbOp::DsbIshst);
            mem.tlb(TlbOp::InvalidateVmid { vmid: self.vmid });
            mem.tlb(TlbOp::DsbIsh);
            mem.tlb(TlbOp::Isb);
        }
    }

    /// Invalidation after a permission relaxation: a stale entry only
    /// causes a spurious fault, so this CPU is enough.
    fn tlb_relax<M: MmOps>(&self, mem: &mut M, ipa: u64, level: u8) {
        if self.kind == TableKind::Component {
            mem.tlb(TlbOp::DsbIshst);
            mem.tlb(TlbOp::InvalidateIpaLocal { vmid: self.vmid, ipa: Ipa::new(ipa), level });
            mem.tlb(TlbOp::DsbNsh);
            mem.tlb(TlbOp::Isb);
        }
    }
}

/// `unmap`, `protect` and `annotate` succeed when there was nothing to do.
fn ignore_retry(e: Error) -> Result<()> {
    if e == Error::Retry { Ok(()) } else { Err(e) }
}

/// Where prepare reads the entries of a level from.
#[derive(Clone, Copy)]
enum Source {
    /// An existing table.
    Table(PhysAddr),
    /// The table that splitting this entry (one level up) would create.
    Split(Pte),
}

/// An [`Update`] after argument checks, in the form the passes use.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// `page` is the leaf for physical page 0: attributes without address.
    Map {
        offset: u64,
        page: Pte,
        first_leaf: u8,
    },
    Unmap,
    Protect(Prot),
    SetSoftware(u8),
    Annotate {
        first: Annotation,
        per_page: bool,
        start: u64,
    },
}

impl Op {
    /// What the entry `old` at `level`, spanning from `ipa`, needs;
    /// `covered` says whether the range covers its whole span.
    #[inline(always)]
    fn decide(&self, level: u8, ipa: u64, old: Pte, covered: bool) -> Action {
        match *self {
            Op::Map { offset, page, first_leaf } => {
                let pa = ipa.wrapping_add(offset);
                if level >= FIRST_BLOCK_LEVEL && pa & (level_size(level) - 1) == 0 {
                    let new = page.moved(level, PhysAddr::new(pa));
                    // An identical block already translates the whole span
                    // as asked, even for a pages-only map: nothing to split.
                    if old == new {
                        return Action::Skip;
                    }
                    if covered && level >= first_leaf {
                        return Action::Write(new);
                    }
                }
                Action::Descend
            }
            Op::Unmap => match (old.is_zero(), covered) {
                (true, _) => Action::Skip,
                (false, true) => Action::Write(Pte::ZERO),
                (false, false) => Action::Descend,
            },
            Op::Protect(prot) => {
                let prot = if old.prot().contains(Prot::DEVICE) { prot - Prot::X } else { prot };
                Self::leaf_attrs(level, old, covered, old.with_prot(prot))
            }
            Op::SetSoftware(sw) => Self::leaf_attrs(level, old, covered, old.with_sw(sw)),
            Op::Annotate { first, per_page, start } => {
                if !per_page || level == LAST_LEVEL {
                    let nth = (ipa.saturating_sub(start)) / PAGE_SIZE;
                    let new = Pte::annotated(if per_page { first.nth(nth) } else { first });
                    if old == new {
                        return Action::Skip;
                    }
                    if covered {
                        return Action::Write(new);
                    }
                }
                Action::Descend
            }
        }
    }

    /// Decision for updates that rewrite the attributes of valid leaves.
    fn leaf_attrs(level: u8, old: Pte, covered: bool, new: Pte) -> Action {
        if old.is_table(level) {
            Action::Descend
        } else if !old.is_valid() || old == new {
            Action::Skip
        } else if covered {
            Action::Write(new)
        } else {
            Action::Descend
        }
    }
}

/// The commit pass of one update.
struct Commit<'a, M> {
    table: &'a Stage2,
    mem: &'a mut M,
    cache: &'a mut MemCache,
    op: Op,
    range: IpaRange,
    changed: usize,
}

impl<M: MmOps> Commit<'_, M> {
    fn table_at(&mut self, table: PhysAddr, level: u8, base: u64) {
        let mut delta = 0;
        for (index, ipa) in entries_in(self.table.geometry, level, base, self.range) {
            let old = self.mem.read(table, index);
            let at = Visit { ipa: Ipa::new(ipa), level, table, index, pte: old };
            let covered = self.range.covers(ipa, level_size(level));
            match self.op.decide(level, ipa, old, covered) {
                Action::Skip => {}
                Action::Write(new) => {
                    delta += self.table.replace(self.mem, &at, new);
                    self.changed += 1;
                }
                Action::Descend => {
                    let child = if old.is_table(level) {
                        old.addr()
                    } else {
                        delta += self.split(&at);
                        self.mem.read(table, index).addr()
                    };
                    self.table_at(child, level + 1, ipa);
                    if self.mem.page_count(child) == 1 {
                        let linked = Visit { pte: Pte::table(child), ..at };
                        delta += self.table.replace(self.mem, &linked, Pte::ZERO);
                    }
                }
            }
        }
        self.table.adjust(self.mem, table, delta);
    }

    /// Replaces `old` (a block, annotation or zero) by a table holding the
    /// same contents one level down; returns the change in the parent's
    /// count of non-zero entries.
    fn split(&mut self, at: &Visit) -> i32 {
        let (level, old) = (at.level, at.pte);
        let child =
            self.cache.pop(self.mem).expect("prepare counted every table page the commit takes");
        if old.is_counted() {
            for i in 0..ENTRIES {
                self.mem.write(child, i, old.split_child(level, i));
            }
            self.mem.set_page_count(child, 1 + ENTRIES as u32);
        } else {
            self.mem.set_page_count(child, 1);
        }
        self.changed += 1;
        self.table.replace(self.mem, at, Pte::table(child))
    }
}
