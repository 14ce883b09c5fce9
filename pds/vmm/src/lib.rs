//! The VMM's core: the pure logic of a virtual machine monitor for one
//! guest of one vCPU, tested on the host.
//!
//! A guest exit arrives as a fault message; [`Vmm::handle_exit`] decodes
//! it ([`exit`], [`esr`]) and decides ([`Decision`]):
//!
//! | exit | decision |
//! |---|---|
//! | data abort on guest RAM (translation, access flag) | mm `Populate`s the page; the guest retries (an abort injected if mm refuses, or mapped nothing new) |
//! | data abort on the emulated PL011 | emulated ([`pl011`]): UARTDR writes are console output; PC + 4 |
//! | data abort on the GIC distributor | reads as zero, writes ignored (no vGIC distributor yet); PC + 4 |
//! | data abort on a passthrough range (translation, access flag) | mm `MapDevice`s it; the guest retries (an abort injected if mm refuses, or mapped nothing new) |
//! | any other fault on RAM or a passthrough range (permission, alignment...) | an abort injected: retrying would fault again |
//! | cache maintenance on a device address | nothing to do; PC + 4 |
//! | any access to nothing, an undecodable device access, a fetch from a device | an abort injected ([`inject`]) |
//! | HVC / SMC | answered ([`smccc`]): PSCI, SMCCC, HYP_MEMINFO, the memory calls forwarded to mm ([`memory`]); PC + 4 after an SMC |
//! | WFI / WFE | stepped over: PC + 4 |
//! | trapped system register, any other trap | an undefined instruction injected |
//! | VPPI, maintenance | the timer's interrupt through a list register ([`vgic`]) |
//! | PSCI SYSTEM_OFF, CPU_OFF, SYSTEM_RESET | [`Decision::Halt`]: not resumed |
//!
//! The VMM reaches everything through small traits, which host tests fake:
//! the vCPU ([`GuestVcpu`]: register reads and writes, interrupt
//! injection), mm ([`MmClient`]: one PPC per request) and the console
//! ([`Console`]: the serial PD's client `Writer`). [`loader`] parses the
//! arm64 Image and plans where the kernel and the device tree (prebuilt,
//! as libvmm takes it: `guest-images/test-guest.dts`) go.
//!
//! # How the PD serves it
//!
//! The VMM PD's binary (`src/main.rs`, its system.xml contract in its
//! module docs) holds a [`Vmm`], the vCPU capability (its id patched from
//! the `vcpu`'s `setvar_id`), its channel to mm and its serial client
//! region. The guest's layout comes from the device tree it loads
//! ([`fdt::machine`]); the window is [`tenure_abi::vcpu::WINDOW_IPA`].
//!
//! - `init`: [`boot::boot`] under the guest id the tool patches into the
//!   VMM (its VM's index + 1): mm `CreateGuest`, then
//!   [`loader::plan`] the Image and device tree that system.xml prefills
//!   into read-only regions of the PD; for each page of the kernel and
//!   device tree, mm `Populate`s the page of the VMM's window at
//!   [`Layout::window_of`] its IPA, the VMM copies the bytes in and mm
//!   `Donate`s the page to the guest (RWX) at its IPA, cleaning it to the
//!   point of coherency; then [`loader::BootRegs::apply`] and
//!   `Vcpu::restart(plan.boot.pc)`.
//! - `fault(child, msg_info)`: the child is the vCPU; the label and
//!   MR0..MR3 go to [`exit::decode`] and [`Vmm::handle`]. If
//!   [`Decision::resumes`], the reply (an empty message) resumes the vCPU;
//!   otherwise no reply leaves it stopped. [`Halt::Reset`] is a fresh
//!   start: [`boot::reboot`] (mm `Teardown`, then `init`'s loading again,
//!   with the second device tree if system.xml gives one) and
//!   [`Vmm::reset`]. An `Err` is reported on the console and the guest
//!   stays stopped. A test guest's TAP, its `BENCH` lines and the VMM's
//!   own checks of it ([`selftest`]) go to the kernel's console; a stream
//!   of several boots or VMMs is numbered through and closed by its last
//!   PD ([`selftest::Relay`]).
//! - `notified`: the previous VMM of a TAP stream is done, if the VMM
//!   waits for one: it boots its guest then (guest console input and
//!   passthrough interrupts are still to come); `protected`: none, nobody
//!   calls the VMM.
//!
//! Invariants: no exit, whatever its label, registers or the guest's
//! registers hold, makes the VMM panic; a guest access to an address that
//! is neither RAM nor a device never goes unanswered (it is emulated,
//! mapped or aborted); every exception injected is counted and the last
//! one kept ([`Vmm::injections`]).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod boot;
pub mod console;
pub mod esr;
pub mod exit;
pub mod fdt;
pub mod inject;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod pl011;
pub mod selftest;
pub mod smccc;
#[cfg(test)]
mod tests;
pub mod vcpu;
pub mod vgic;
mod vmm;

pub use console::Console;
pub use layout::{Layout, LayoutError, Range, Region};
pub use memory::MmClient;
pub use smccc::Halt;
pub use vcpu::GuestVcpu;
pub use vmm::{Decision, Device, Vmm, load_value};

/// Why the VMM cannot go on with an exit: the guest stays stopped and
/// the PD reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmmError {
    /// The fault label names no exit.
    UnknownExit(u64),
    /// A `VmFault` whose ESR_EL2 (here) is no abort.
    MalformedExit(u64),
    /// The kernel refused a vCPU invocation.
    Vcpu(tenure_abi::Error),
}

impl From<tenure_abi::Error> for VmmError {
    fn from(e: tenure_abi::Error) -> Self {
        VmmError::Vcpu(e)
    }
}
