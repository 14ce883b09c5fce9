//! The memory manager's core: it owns every guest's stage-2 table, the
//! window tables of the PDs it serves, and the ownership ledger over the
//! guest memory pool, and it serves the mm protocol
//! ([`tenure_abi::mm`]).
//!
//! The mm PD (`src/main.rs`, the `mm` binary) serves this library from its
//! `protected` entry: it decodes what system.xml declares for it
//! ([`Declared`]), maps the channel a call arrives on to a [`ClientId`],
//! hands the label and message words to [`Manager::dispatch`], and replies
//! with the label and words it returns. Table memory is reached through
//! hyp-mm's [`hyp_mm::MmOps`] (on the target, [`PoolOps`] over
//! `window::Window`, the PD's own mapping of the pool at a fixed offset);
//! the kernel's part (installing guest roots, linking windows, TLB
//! invalidation, cache cleaning) through [`Stage2Control`], which the PD
//! implements over its stage-2 control capability. Everything but that
//! binary and `window` is tested on the host with hyp-mm's host arena and
//! a recording [`Stage2Control`].
//!
//! Invariants: a refused request changes no table, no ledger record and no
//! data page; every page that leaves a guest is zeroed and cleaned to the
//! point of coherency before anyone else can map it; decoding and serving
//! never panic on any message.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(target_os = "none"), forbid(unsafe_code))]
#![cfg_attr(target_os = "none", deny(unsafe_code))]

pub mod config;
pub mod control;
pub mod manager;
pub mod pool;
#[cfg(test)]
mod tests;
#[cfg(target_os = "none")]
pub mod window;

pub use config::{
    ClientConfig, ClientId, ClientLink, Config, Declared, DeviceRange, GuestConfig, PoolLayout,
    SetupError, Window,
};
pub use control::{Refused, Stage2Control};
pub use manager::Manager;
pub use pool::{PoolOps, PoolWords};
