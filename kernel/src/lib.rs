//! Tenure's EL2 microkernel.
//!
//! The pure logic (boot checks, exception decoding, the PL011 register
//! block) builds and is tested on the host; everything that touches the
//! CPU (`arch`) builds only for `aarch64-unknown-none`.
//!
//! Invariants: the kernel names no board address (all of them come from
//! the boot image's [`tenure_boot_image::BoardInfo`]), and it trusts the
//! image only after [`tenure_boot_image::Image::parse`] has checked it.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod boot;
pub mod console;
pub mod exception;
pub mod gic;
pub mod pl011;
pub mod system;
pub mod vcpu;

#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod guest;
#[cfg(target_os = "none")]
pub mod run;
