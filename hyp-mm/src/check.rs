//! The invariant checker: run by tests after every step, and by the memory
//! manager after every request in debug builds.
//!
//! It checks, over the ledger and every component table:
//! - every non-root table page is live and its refcount is exactly 1 + its
//!   non-zero entries;
//! - the ledger holds page-level records only, inside managed memory, naming
//!   existing owners;
//! - every managed page has exactly one owner: the ledger's record, whose
//!   table maps the page at the recorded frame (or keeps a lent mark for it)
//!   in the matching state, and no other component maps it as its own;
//! - a valid mapping of a managed page exists only in its owner or a
//!   borrower, and a borrower implies a shared (or lent) owner; the
//!   borrowers the ledger counts are exactly the borrowing mappings.
//!
//! It allocates nothing and only reads.

use crate::addr::{Ipa, PAGE_SIZE, PhysAddr};
use crate::desc::{ENTRIES, LAST_LEVEL, OwnerId, level_size};
use crate::error::Error;
use crate::mem::MmOps;
use crate::owner::{Ownership, PageState, PageView, Record};
use crate::table::Stage2;

/// The first broken invariant found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Violation {
    /// A reachable table page's refcount is not 1 + its non-zero entries
    /// (0 means the page was freed while still linked).
    Refcount {
        /// The table page.
        table: PhysAddr,
        /// 1 + non-zero entries.
        expected: u32,
        /// The recorded refcount.
        found: u32,
    },
    /// The ledger holds a record above page level or outside managed memory.
    LedgerShape {
        /// First address the entry covers.
        pa: PhysAddr,
    },
    /// A ledger record names an owner that does not exist.
    UnknownOwner {
        /// The page.
        pa: PhysAddr,
        /// The recorded owner.
        owner: OwnerId,
    },
    /// The recorded owner's table does not hold the page where the record
    /// says, in a state that matches the record.
    OwnerMismatch {
        /// The page.
        pa: PhysAddr,
        /// The recorded owner.
        owner: OwnerId,
    },
    /// A component maps a managed page it neither owns nor borrows.
    StrayMapping {
        /// The component.
        component: OwnerId,
        /// Where it maps the page.
        ipa: Ipa,
        /// The page.
        pa: PhysAddr,
    },
    /// The number of borrowing mappings differs from the ledger's count.
    BorrowerCount {
        /// Sum of the ledger's borrower counts.
        recorded: u64,
        /// Borrowing mappings found in component tables.
        mapped: u64,
    },
}

impl<const N: usize> Ownership<N> {
    /// Checks every invariant; returns the first violation.
    pub fn check_invariants<M: MmOps>(&self, mem: &M) -> Result<(), Violation> {
        let mut recorded = 0u64;
        let mut mapped = 0u64;
        check_refcounts(mem, self.ledger())?;
        let mut violation = None;
        let ledger = self.ledger();
        let _ = ledger.leaves(mem, ledger.span(), &mut |ipa, level, pte| {
            if pte.is_zero() {
                return Ok(());
            }
            let pa = PhysAddr::new(ipa.raw());
            let result = match self.record(mem, pa) {
                Ok(Some(record))
                    if level == LAST_LEVEL && !pte.is_valid() && self.managed().contains(ipa) =>
                {
                    recorded += u64::from(record.borrowers);
                    self.check_owner(mem, pa, record)
                }
                _ => Err(Violation::LedgerShape { pa }),
            };
            result.map_err(|v| {
                violation = Some(v);
                Error::InvalidArgument
            })
        });
        if let Some(v) = violation {
            return Err(v);
        }
        for (id, table) in self.components() {
            check_refcounts(mem, table)?;
            let _ = table.leaves(mem, table.span(), &mut |ipa, level, pte| {
                if !pte.is_valid() {
                    return Ok(());
                }
                for page in 0..level_size(level) / PAGE_SIZE {
                    let ipa = ipa.add(page * PAGE_SIZE);
                    let pa = pte.addr().add(page * PAGE_SIZE);
                    match self.check_mapping(mem, id, ipa, pa) {
                        Ok(borrowed) => mapped += u64::from(borrowed),
                        Err(v) => {
                            violation = Some(v);
                            return Err(Error::InvalidArgument);
                        }
                    }
                }
                Ok(())
            });
            if let Some(v) = violation {
                return Err(v);
            }
        }
        if recorded != mapped {
            return Err(Violation::BorrowerCount { recorded, mapped });
        }
        Ok(())
    }

    /// The owner named by `record` holds `pa` at the recorded frame.
    fn check_owner<M: MmOps>(
        &self,
        mem: &M,
        pa: PhysAddr,
        record: Record,
    ) -> Result<(), Violation> {
        let owner = record.owner;
        if self.component(owner).is_err() {
            return Err(Violation::UnknownOwner { pa, owner });
        }
        let view = self.view(mem, owner, Ipa::from_frame(record.frame));
        let ok = match view {
            Ok(PageView::Mapped { pa: p, state, .. }) if p == pa && !record.lent => {
                (state == PageState::Owned && record.borrowers == 0)
                    || (state == PageState::SharedOwned && record.borrowers > 0)
            }
            Ok(PageView::Lent(mark)) => record.lent && record.borrowers == 1 && mark.pa == pa,
            _ => false,
        };
        if ok { Ok(()) } else { Err(Violation::OwnerMismatch { pa, owner }) }
    }

    /// A valid mapping of `pa` at `ipa` in `id`'s table is allowed; returns
    /// whether it is a borrowing one.
    fn check_mapping<M: MmOps>(
        &self,
        mem: &M,
        id: OwnerId,
        ipa: Ipa,
        pa: PhysAddr,
    ) -> Result<bool, Violation> {
        if !self.managed().contains(Ipa::new(pa.raw())) {
            return Ok(false); // device or unmanaged memory: not tracked
        }
        let stray = Violation::StrayMapping { component: id, ipa, pa };
        let record = self.record(mem, pa).ok().flatten().ok_or(stray)?;
        let state = self.view(mem, id, ipa).map_err(|_| stray)?.state();
        match state {
            PageState::Owned | PageState::SharedOwned
                if record.owner == id && record.frame == ipa.frame() =>
            {
                Ok(false)
            }
            PageState::SharedBorrowed if record.owner != id && record.borrowers > 0 => Ok(true),
            _ => Err(stray),
        }
    }
}

/// Every table page below the root has refcount 1 + non-zero entries.
fn check_refcounts<M: MmOps>(mem: &M, table: &Stage2) -> Result<(), Violation> {
    let g = table.geometry();
    fn rec<M: MmOps>(
        mem: &M,
        t: PhysAddr,
        level: u8,
        n: usize,
        root: bool,
    ) -> Result<(), Violation> {
        let mut counted = 0;
        for i in 0..n {
            let pte = mem.read(t, i);
            counted += u32::from(pte.is_counted());
            if pte.is_table(level) {
                rec(mem, pte.addr(), level + 1, ENTRIES, false)?;
            }
        }
        let found = mem.page_count(t);
        if !root && found != counted + 1 {
            return Err(Violation::Refcount { table: t, expected: counted + 1, found });
        }
        Ok(())
    }
    rec(mem, table.root(), g.start_level(), g.root_entries(), true)
}
