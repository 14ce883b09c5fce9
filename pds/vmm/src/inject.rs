//! Exceptions the VMM injects into its guest: a synchronous external
//! abort for an access to nothing, an undefined instruction for a trap
//! the VMM does not emulate.
//!
//! The VMM does what the CPU would do on taking the exception to EL1
//! (Arm ARM D1, "Exception entry"), as KVM's `inject_abt64` and
//! `inject_undef64` do, through the stopped vCPU's registers:
//!
//! 1. ELR_EL1 = the PC of the instruction that trapped (it did not
//!    complete: the guest's handler sees it as the faulting one);
//! 2. SPSR_EL1 = the guest's PSTATE;
//! 3. ESR_EL1 = the syndrome below, FAR_EL1 = the faulting virtual address
//!    (aborts only);
//! 4. PSTATE = EL1h with D, A, I and F masked;
//! 5. PC = VBAR_EL1 + the vector offset: the synchronous entry of the
//!    table for where the guest was (Arm ARM D1, "Exception vectors"):
//!    0x000 from EL1 on SP_EL0, 0x200 from EL1 on SP_EL1, 0x400 from
//!    AArch64 EL0, 0x600 from AArch32 EL0.
//!
//! The syndrome (Arm ARM D24.2.40 for the fields, ESR_EL1 sharing them):
//! EC 0x25 (data abort, same EL) or 0x24 (from EL0), 0x21 / 0x20 for
//! instruction aborts, 0x00 (unknown reason) for an undefined instruction;
//! IL copied from the exit's ESR_EL2; and for aborts a fault status of
//! 0b010000, "synchronous external abort, not on translation table walk",
//! which is what a bus returns for an address nothing decodes. When the
//! exit's FAR was not valid (ESR_EL2.FnV), FnV is set and FAR_EL1 is 0.
//!
//! PSTATE.PAN, SSBS and the other optional fields are left to their
//! defaults: the guests Tenure runs (the test guest; Linux with PAN off in
//! early boot) take the exception through their own vectors either way.

use crate::esr::{IL, ec};
use crate::vcpu::{GuestVcpu, pstate};
use microkit::Reg;
use tenure_abi::Error;
use tenure_abi::mm::MmError;
use tenure_abi::vcpu::VcpuReg;

/// The fault status of a synchronous external abort not on a translation
/// table walk (DFSC / IFSC 0b010000).
pub const FSC_EXTERNAL: u64 = 0b01_0000;
/// ISS.FnV, bit 10: FAR is not valid.
pub const FNV: u64 = 1 << 10;
/// VBAR_EL1 bits 10:0 are RES0: the table is 2 KiB aligned.
const VBAR_MASK: u64 = !0x7ff;

/// The exception to inject.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Exception {
    /// A data abort at this virtual address (`None`: not known).
    DataAbort(Option<u64>),
    /// An instruction abort at this virtual address (`None`: not known).
    InstructionAbort(Option<u64>),
    /// An undefined instruction.
    Undefined,
}

/// Why the VMM injected an exception.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reason {
    /// The address is neither RAM nor a device.
    Outside,
    /// An access to an emulated device the syndrome does not describe
    /// (ISV clear: a load or store pair, a writeback form...), or one that
    /// runs past the device's end.
    Undecodable,
    /// An instruction fetch from a device.
    ExecuteDevice,
    /// A permission fault, or a fault status other than translation or
    /// access flag, on guest RAM.
    Unexpected,
    /// mm refused to map a passthrough device (system.xml does not
    /// declare it for this guest).
    DeviceRefused,
    /// A trapped system register access or instruction the VMM does not
    /// emulate.
    Untrapped,
    /// A translation fault on a page mm has mapped already: retrying
    /// would fault again.
    Refault,
    /// mm refused to give the guest the page (its memory limit, or an
    /// empty pool).
    MemoryRefused(MmError),
}

/// What the VMM wrote into the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Injected {
    /// The exception.
    pub exception: Exception,
    /// Why.
    pub reason: Reason,
    /// ESR_EL1 as written.
    pub esr: u64,
    /// The PC the guest resumes at: its vector.
    pub vector: u64,
}

/// The offset of the synchronous vector for an exception taken from
/// `pstate` to EL1. A guest never runs at EL2 or EL3; should PSTATE claim
/// so, the EL1h vector is used.
#[must_use]
pub const fn vector_offset(pstate: u64) -> u64 {
    if pstate & pstate::NRW != 0 {
        return 0x600;
    }
    match pstate & pstate::M_MASK {
        pstate::EL0T => 0x400,
        pstate::EL1T => 0x000,
        _ => 0x200,
    }
}

/// The ESR_EL1 of `exception` taken from `pstate`; `il` from the exit.
#[must_use]
pub const fn syndrome(exception: Exception, pstate: u64, il: bool) -> u64 {
    let from_el0 = pstate & pstate::NRW != 0 || pstate & pstate::M_MASK == pstate::EL0T;
    let (class, far) = match exception {
        Exception::DataAbort(far) => (if from_el0 { ec::DABT_LOW } else { ec::DABT_CUR }, far),
        Exception::InstructionAbort(far) => {
            (if from_el0 { ec::IABT_LOW } else { ec::IABT_CUR }, far)
        }
        Exception::Undefined => (ec::UNKNOWN, Some(0)),
    };
    let mut esr = class << 26;
    if il {
        esr |= IL;
    }
    if !matches!(exception, Exception::Undefined) {
        esr |= FSC_EXTERNAL;
        if far.is_none() {
            esr |= FNV;
        }
    }
    esr
}

/// Injects `exception` into the stopped vCPU, which trapped at `pc`.
pub fn inject(
    vcpu: &mut impl GuestVcpu,
    exception: Exception,
    reason: Reason,
    pc: u64,
    il: bool,
) -> Result<Injected, Error> {
    let old = vcpu.read(Reg::PSTATE)?;
    let vbar = vcpu.read(Reg::Named(VcpuReg::VbarEl1))?;
    let esr = syndrome(exception, old, il);
    let vector = (vbar & VBAR_MASK).wrapping_add(vector_offset(old));
    vcpu.write(Reg::Named(VcpuReg::EsrEl1), esr)?;
    match exception {
        Exception::DataAbort(far) | Exception::InstructionAbort(far) => {
            vcpu.write(Reg::Named(VcpuReg::FarEl1), far.unwrap_or(0))?;
        }
        Exception::Undefined => {}
    }
    vcpu.write(Reg::Named(VcpuReg::ElrEl1), pc)?;
    vcpu.write(Reg::Named(VcpuReg::SpsrEl1), old)?;
    vcpu.write(Reg::PSTATE, pstate::EL1H_MASKED)?;
    vcpu.write(Reg::PC, vector)?;
    Ok(Injected { exception, reason, esr, vector })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::fake::FakeVcpu;

    #[test]
    fn a_data_abort_at_el1_looks_as_the_test_guest_expects() {
        let mut v = FakeVcpu::default();
        v.set(Reg::PSTATE, pstate::EL1H | pstate::F); // IRQs enabled
        v.set(Reg::Named(VcpuReg::VbarEl1), 0x4008_0800);
        let done = inject(
            &mut v,
            Exception::DataAbort(Some(0x4400_0000)),
            Reason::Outside,
            0x4008_1234,
            true,
        )
        .unwrap();
        // guest-images/README.md: "ESR_EL1 0x96000010 FAR_EL1 0x50000000".
        assert_eq!(done.esr, 0x9600_0010);
        assert_eq!(v.named(VcpuReg::EsrEl1), 0x9600_0010);
        assert_eq!(v.named(VcpuReg::FarEl1), 0x4400_0000);
        assert_eq!(v.named(VcpuReg::ElrEl1), 0x4008_1234);
        assert_eq!(v.named(VcpuReg::SpsrEl1), pstate::EL1H | pstate::F);
        assert_eq!(v.get(Reg::PSTATE), 0x3c5);
        assert_eq!(v.get(Reg::PC), 0x4008_0a00);
        assert_eq!(done.vector, 0x4008_0a00);
    }

    #[test]
    fn the_vector_and_class_follow_where_the_guest_was() {
        assert_eq!(vector_offset(pstate::EL1T), 0x000);
        assert_eq!(vector_offset(pstate::EL1H | pstate::DAIF), 0x200);
        assert_eq!(vector_offset(pstate::EL0T), 0x400);
        assert_eq!(vector_offset(pstate::NRW), 0x600);
        assert_eq!(vector_offset(0b1001), 0x200, "EL2h is no guest mode");
        let ec = |e, p| syndrome(e, p, true) >> 26;
        assert_eq!(ec(Exception::DataAbort(Some(0)), pstate::EL1H), 0x25);
        assert_eq!(ec(Exception::DataAbort(Some(0)), pstate::EL0T), 0x24);
        assert_eq!(ec(Exception::InstructionAbort(Some(0)), pstate::EL1T), 0x21);
        assert_eq!(ec(Exception::InstructionAbort(Some(0)), pstate::NRW), 0x20);
        assert_eq!(ec(Exception::Undefined, pstate::EL1H), 0);
    }

    #[test]
    fn an_unknown_far_sets_fnv() {
        let esr = syndrome(Exception::InstructionAbort(None), pstate::EL1H, true);
        assert_eq!(esr, (0x21 << 26) | IL | FNV | FSC_EXTERNAL);
        let mut v = FakeVcpu::default();
        v.set(Reg::Named(VcpuReg::FarEl1), 0x1234);
        inject(&mut v, Exception::DataAbort(None), Reason::Undecodable, 0, true).unwrap();
        assert_eq!(v.named(VcpuReg::FarEl1), 0);
    }

    #[test]
    fn an_undefined_instruction_leaves_far_alone_and_has_no_fault_status() {
        let mut v = FakeVcpu::default();
        v.set(Reg::PSTATE, pstate::EL1H);
        v.set(Reg::Named(VcpuReg::FarEl1), 0x1234);
        v.set(Reg::Named(VcpuReg::VbarEl1), 0x4000_07ff); // RES0 bits set
        let done =
            inject(&mut v, Exception::Undefined, Reason::Untrapped, 0x4008_0000, true).unwrap();
        assert_eq!(done.esr, IL);
        assert_eq!(v.named(VcpuReg::FarEl1), 0x1234);
        assert_eq!(v.get(Reg::PC), 0x4000_0200);
    }

    #[test]
    fn a_refused_register_is_an_error() {
        let mut v = FakeVcpu { refuse: Some(Reg::Named(VcpuReg::VbarEl1)), ..FakeVcpu::default() };
        let r = inject(&mut v, Exception::Undefined, Reason::Untrapped, 0, true);
        assert_eq!(r, Err(Error::InvalidState));
        assert!(v.writes.is_empty(), "nothing written before every read succeeded");
    }
}
