//! The test guest's script, apart from the hardware: what the bootargs ask
//! for, which probes that means and what each one expects, and the TAP
//! lines it prints. Host-tested; the program that runs it at EL1 is
//! `main.rs` (target-only).
//!
//! A boot runs one plan: `bootargs::Plan` reads `/chosen/bootargs`
//! (`probes=...`, `expect=...`, `secret=...`), `probe` turns each probe
//! into hypercall steps with their expected return codes and says where
//! they point in the guest's memory (`probe::Layout`), and `tap` prints
//! the results, the plan line and the sentinel. `bench` holds what the
//! `bench` probe times and the `BENCH` lines it prints.
#![no_std]
#![forbid(unsafe_code)]

pub mod bench;
pub mod bootargs;
pub mod probe;
pub mod tap;
