//! The PD runtime: Microkit's programming model in Rust, shaped like
//! rust-sel4's `sel4-microkit` so that PD code moves over with few changes.
//!
//! A PD is an ordinary `no_std` binary that names its entry with
//! [`protection_domain!`]: a function returning an `impl` [`Handler`]. The
//! runtime then waits for events and calls the handler: [`Handler::notified`]
//! with every channel signalled since the last wait, [`Handler::protected`]
//! for a protected procedure call, [`Handler::fault`] when a child faults.
//! A handler never re-enters: the next event is received only after the
//! current one returns.
//!
//! Everything here except [`sys`] is plain logic and is tested on the host;
//! [`sys`] holds the `svc` stubs and is built only for the target.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod channel;
pub mod event;
pub mod handler;
pub mod ipc;
#[doc(hidden)]
pub mod symbols;
#[cfg(target_os = "none")]
pub mod sys;
pub mod vcpu;

pub use channel::{Channel, ChannelSet, Child};
pub use handler::{DeferredAction, DeferredActionSlot, Handler, NullHandler};
pub use ipc::{MessageInfo, get_mr, set_mr, with_msg_regs, with_msg_regs_mut};
pub use tenure_abi as abi;
pub use vcpu::{Reg, Stage2Control, Vcpu};

/// A type with no values: what a PD's event loop "returns".
#[derive(Debug)]
pub enum Never {}
