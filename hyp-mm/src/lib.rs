//! Arm64 stage-2 page tables with ownership annotations, and the
//! share / lend / donate state machine built on them.
//!
//! - [`desc`]: descriptor formats and annotations in invalid entries;
//! - [`geometry`]: IPA sizes, start levels, concatenated roots, VTCR_EL2;
//! - [`mem`]: what the host provides (table memory, refcounts, page source,
//!   TLB maintenance) and the preallocated [`MemCache`];
//! - [`walk`]: the range walker;
//! - [`table`]: map, unmap, protect, annotate, greedy identity map;
//! - [`owner`]: page states, the ledger and the ownership transitions;
//! - [`check`]: the invariant checker.
//!
//! The crate is `no_std`, allocates nothing, and contains no `unsafe`: the
//! host's [`MmOps`] implementation is the only place that touches memory.
#![no_std]
#![forbid(unsafe_code)]

pub mod addr;
pub mod check;
pub mod desc;
pub mod error;
pub mod geometry;
#[cfg(any(test, feature = "host"))]
pub mod host;
pub mod mem;
pub mod owner;
#[cfg(test)]
mod owner_tests;
#[cfg(test)]
mod prop_tests;
pub mod table;
#[cfg(test)]
mod table_tests;
pub mod walk;

pub use addr::{Ipa, IpaRange, PAGE_SIZE, PhysAddr};
pub use check::Violation;
pub use desc::{Annotation, OwnerId, Prot, Pte};
pub use error::{Error, Result};
pub use geometry::{Geometry, PaRange, VtcrBuilder};
pub use mem::{MemCache, MmOps, TlbOp, VmId};
pub use owner::{Ownership, PageState, PageView, Record, Transfer};
pub use table::{Mapping, Stage2, TableKind, Update};
pub use walk::{Visit, VisitKind, Visitor, WalkFlags};
