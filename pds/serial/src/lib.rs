//! The serial console protocol and multiplexer.
//!
//! Each client PD shares two rings with the serial PD (one each way) in a
//! memory region system.xml maps into both, plus a channel to notify over.
//! The serial PD labels each line of a client's output with the client's
//! name, and sends keyboard input to one client at a time; typing the
//! escape byte (Ctrl-], 0x1d) and then a client's number switches input to
//! it.
//!
//! Everything here is plain logic, tested on the host, but for
//! [`client::region_at`], which turns the address system.xml gives into a
//! region; the PD binary (`src/main.rs`) adds the UART and the event loop.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod client;
pub mod mux;
pub mod region;
pub mod ring;
