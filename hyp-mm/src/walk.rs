//! A range walker over a stage-2 table with leaf, table-pre and table-post
//! visits (the shape of Linux's `kvm_pgtable_walk`).
//!
//! Rules:
//! - Every entry whose span meets the range is visited, including invalid
//!   (annotated or zero) leaves.
//! - A visit's error stops the walk and is returned, except
//!   [`Error::Retry`] when the walk was started with
//!   [`WalkFlags::IGNORE_RETRY`]: then the walk goes on with the next entry.
//! - After a table-pre visit the entry is read again: if the visitor
//!   replaced the table by something else, the walker does not descend into
//!   the old subtree and visits the new entry as a leaf instead.

use crate::addr::{Ipa, IpaRange, PhysAddr};
use crate::desc::{ENTRIES, Pte, level_size};
use crate::error::{Error, Result};
use crate::geometry::Geometry;
use crate::mem::MmOps;
use bitflags::bitflags;

bitflags! {
    /// Which visits a walk makes and how it treats [`Error::Retry`].
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct WalkFlags: u8 {
        /// Visit leaves: valid blocks and pages, and invalid entries.
        const LEAF = 1 << 0;
        /// Visit a table entry before descending into it.
        const TABLE_PRE = 1 << 1;
        /// Visit a table entry after its subtree.
        const TABLE_POST = 1 << 2;
        /// Continue past visits that return [`Error::Retry`] (write-protect
        /// must reach every entry); without it the first retry stops the walk.
        const IGNORE_RETRY = 1 << 3;
    }
}

/// Which visit of an entry this is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VisitKind {
    /// A leaf: valid block or page, or invalid entry.
    Leaf,
    /// A table entry, before the walker descends into it.
    TablePre,
    /// A table entry, after its subtree was walked.
    TablePost,
}

/// The entry being visited.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Visit {
    /// First IPA the entry spans.
    pub ipa: Ipa,
    /// Level of the table holding the entry.
    pub level: u8,
    /// The table holding the entry.
    pub table: PhysAddr,
    /// Index of the entry in that table.
    pub index: usize,
    /// The entry as read before the visit.
    pub pte: Pte,
}

impl Visit {
    /// Bytes the entry spans.
    #[must_use]
    pub fn size(&self) -> u64 {
        level_size(self.level)
    }
}

/// Something called for the entries of a walk.
pub trait Visitor<M: MmOps> {
    /// Visits one entry. The visitor may rewrite it through `mem`.
    fn visit(&mut self, mem: &mut M, visit: &Visit, kind: VisitKind) -> Result<()>;
}

impl<M: MmOps, F: FnMut(&mut M, &Visit, VisitKind) -> Result<()>> Visitor<M> for F {
    fn visit(&mut self, mem: &mut M, visit: &Visit, kind: VisitKind) -> Result<()> {
        self(mem, visit, kind)
    }
}

/// The entries of a table at `level` whose first IPA is `base` that meet
/// `range`: `(index, first IPA of the entry)` pairs, in order.
pub(crate) fn entries_in(
    geometry: Geometry,
    level: u8,
    base: u64,
    range: IpaRange,
) -> impl Iterator<Item = (usize, u64)> {
    let size = level_size(level);
    let count = if level == geometry.start_level() { geometry.root_entries() } else { ENTRIES };
    let span_end = base + count as u64 * size;
    let lo = range.start().raw().max(base);
    let hi = range.end().raw().min(span_end);
    let (first, last) = if lo < hi {
        (((lo - base) / size) as usize, ((hi - 1 - base) / size) as usize)
    } else {
        (1, 0)
    };
    (first..=last).map(move |i| (i, base + i as u64 * size))
}

/// Walks `range` of the table rooted at `root`.
pub fn walk<M: MmOps, V: Visitor<M>>(
    mem: &mut M,
    geometry: Geometry,
    root: PhysAddr,
    range: IpaRange,
    flags: WalkFlags,
    visitor: &mut V,
) -> Result<()> {
    let mut walker = Walker { geometry, range, flags, visitor };
    walker.table(mem, root, geometry.start_level(), 0)
}

struct Walker<'v, V> {
    geometry: Geometry,
    range: IpaRange,
    flags: WalkFlags,
    visitor: &'v mut V,
}

impl<V> Walker<'_, V> {
    fn table<M: MmOps>(&mut self, mem: &mut M, table: PhysAddr, level: u8, base: u64) -> Result<()>
    where
        V: Visitor<M>,
    {
        for (index, ipa) in entries_in(self.geometry, level, base, self.range) {
            let visit =
                Visit { ipa: Ipa::new(ipa), level, table, index, pte: mem.read(table, index) };
            match self.entry(mem, visit) {
                Err(Error::Retry) if self.flags.contains(WalkFlags::IGNORE_RETRY) => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn entry<M: MmOps>(&mut self, mem: &mut M, mut visit: Visit) -> Result<()>
    where
        V: Visitor<M>,
    {
        if visit.pte.is_table(visit.level) && self.flags.contains(WalkFlags::TABLE_PRE) {
            self.visitor.visit(mem, &visit, VisitKind::TablePre)?;
            visit.pte = mem.read(visit.table, visit.index);
        }
        if !visit.pte.is_table(visit.level) {
            if self.flags.contains(WalkFlags::LEAF) {
                self.visitor.visit(mem, &visit, VisitKind::Leaf)?;
            }
            return Ok(());
        }
        self.table(mem, visit.pte.addr(), visit.level + 1, visit.ipa.raw())?;
        if self.flags.contains(WalkFlags::TABLE_POST) {
            visit.pte = mem.read(visit.table, visit.index);
            self.visitor.visit(mem, &visit, VisitKind::TablePost)?;
        }
        Ok(())
    }
}
