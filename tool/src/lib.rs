//! The `tenure` host tool as a library; `main.rs` is a thin command line.
#![forbid(unsafe_code)]

pub mod board;
pub mod cli;
pub mod el2_map;
pub mod elf;
pub mod image;
pub mod layout;
pub mod patch;
pub mod pd_tables;
pub mod qemu;
pub mod sdf;
pub mod system_image;
