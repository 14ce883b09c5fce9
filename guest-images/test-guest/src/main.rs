//! The test guest: a bare-metal arm64 program that boots as a Linux
//! `Image` at EL1, reads its device tree, runs the probes its bootargs
//! name and prints one TAP line each (README.md).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod hostile;
#[cfg(target_os = "none")]
mod run;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "test-guest is a bare-metal guest: build it for aarch64-unknown-none (guest-images/build.sh)"
    );
}
