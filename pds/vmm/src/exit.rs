//! A guest exit, decoded: the fault message's label ([`Exit`]) and its
//! four message registers (the table in [`tenure_abi::vcpu`]) become an
//! [`Event`], reading the guest's `x0..=x3` for an SMCCC call.
//!
//! The label and registers come from the kernel, the ESR's instruction
//! fields describe what the guest did: both are decoded with total
//! functions, so any exit decodes to an event or to [`VmmError`], never to
//! a panic.

use crate::VmmError;
use crate::esr::{Class, DataAbort, Esr, Fault, SysReg, Wfx};
use crate::smccc::{Call, Conduit};
use crate::vcpu::GuestVcpu;
use microkit::Reg;
use tenure_abi::vcpu::Exit;

/// What the guest did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// A stage-2 data abort.
    DataAbort {
        /// The PC of the access.
        pc: u64,
        /// The IPA accessed.
        ipa: u64,
        /// The guest virtual address, unless FnV says it is not valid.
        va: Option<u64>,
        /// The syndrome.
        abort: DataAbort,
        /// ESR_EL2.IL.
        il: bool,
    },
    /// A stage-2 instruction abort.
    InstructionAbort {
        /// The PC of the fetch.
        pc: u64,
        /// The IPA fetched from.
        ipa: u64,
        /// The guest virtual address, unless FnV says it is not valid.
        va: Option<u64>,
        /// The fault.
        fault: Fault,
        /// ESR_EL2.IL.
        il: bool,
    },
    /// An SMCCC call.
    Call {
        /// HVC or SMC.
        conduit: Conduit,
        /// The instruction's immediate (SMCCC calls use 0).
        imm: u16,
        /// The function id and arguments.
        call: Call,
        /// The exit's PC: past an HVC, at an SMC.
        pc: u64,
    },
    /// A trapped WFI or WFE.
    Wait {
        /// Which one.
        kind: Wfx,
        /// Its PC.
        pc: u64,
    },
    /// A trapped system register access.
    SysReg {
        /// The access.
        access: SysReg,
        /// Its PC.
        pc: u64,
        /// ESR_EL2.IL.
        il: bool,
    },
    /// A `VcpuFault` of a class the VMM does not handle.
    OtherTrap {
        /// The syndrome.
        esr: Esr,
        /// The PC.
        pc: u64,
    },
    /// The virtual timer fired.
    Vppi {
        /// Its INTID, as the kernel reports it.
        intid: u64,
    },
    /// The guest ended an interrupt whose list register asked for
    /// maintenance.
    Maintenance {
        /// The list register, or `u64::MAX`.
        list_register: u64,
    },
}

/// Decodes an exit: its fault label and MR0..MR3.
pub fn decode(label: u64, mrs: [u64; 4], vcpu: &mut impl GuestVcpu) -> Result<Event, VmmError> {
    let [pc, ipa, esr, far] = mrs;
    let esr = Esr(esr);
    let va = |fault: Fault| (!fault.far_not_valid).then_some(far);
    match Exit::from_label(label) {
        None => Err(VmmError::UnknownExit(label)),
        Some(Exit::VppiEvent) => Ok(Event::Vppi { intid: mrs[0] }),
        Some(Exit::VgicMaintenance) => Ok(Event::Maintenance { list_register: mrs[0] }),
        Some(Exit::VmFault) => match esr.class() {
            Class::DataAbort(abort) => {
                Ok(Event::DataAbort { pc, ipa, va: va(abort.fault), abort, il: esr.il() })
            }
            Class::InstructionAbort(fault) => {
                Ok(Event::InstructionAbort { pc, ipa, va: va(fault), fault, il: esr.il() })
            }
            _ => Err(VmmError::MalformedExit(esr.0)),
        },
        Some(Exit::VcpuFault) => Ok(match esr.class() {
            Class::Hvc(imm) => {
                Event::Call { conduit: Conduit::Hvc, imm, call: read_call(vcpu)?, pc }
            }
            Class::Smc(imm) => {
                Event::Call { conduit: Conduit::Smc, imm, call: read_call(vcpu)?, pc }
            }
            Class::Wfx(kind) => Event::Wait { kind, pc },
            Class::SysReg(access) => Event::SysReg { access, pc, il: esr.il() },
            Class::DataAbort(_) | Class::InstructionAbort(_) | Class::Other(_) => {
                Event::OtherTrap { esr, pc }
            }
        }),
    }
}

fn read_call(vcpu: &mut impl GuestVcpu) -> Result<Call, VmmError> {
    let mut x = [0; 4];
    for (n, slot) in x.iter_mut().enumerate() {
        *slot = vcpu.read(Reg::X(n as u8))?;
    }
    Ok(Call::new(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esr::{AccessSize, IL, ec};
    use crate::vcpu::fake::FakeVcpu;

    #[test]
    fn an_hvc_reads_the_call_from_x0_to_x3() {
        let mut v = FakeVcpu::default();
        for (n, val) in [0xc600_0003, 0x4010_0000, 1, 0].into_iter().enumerate() {
            v.set_x(n as u64, val);
        }
        let e = decode(8, [0x4008_0004, 0, (ec::HVC64 << 26) | IL, 0], &mut v).unwrap();
        assert_eq!(
            e,
            Event::Call {
                conduit: Conduit::Hvc,
                imm: 0,
                call: Call { function: 0xc600_0003, args: [0x4010_0000, 1, 0] },
                pc: 0x4008_0004,
            }
        );
    }

    #[test]
    fn a_vm_fault_is_an_abort_with_its_addresses() {
        let mut v = FakeVcpu::default();
        let esr = (ec::DABT_LOW << 26) | IL | (1 << 24) | (2 << 22) | (1 << 6) | 0b000111;
        let Event::DataAbort { pc, ipa, va, abort, .. } =
            decode(6, [0x4008_0000, 0x0900_0000, esr, 0x0900_0000], &mut v).unwrap()
        else {
            panic!("not a data abort")
        };
        assert_eq!((pc, ipa, va), (0x4008_0000, 0x0900_0000, Some(0x0900_0000)));
        assert_eq!(abort.access.unwrap().size, AccessSize::Word);
        // FnV: the VA is not known.
        let esr = (ec::IABT_LOW << 26) | IL | (1 << 10) | 0b000111;
        let e = decode(6, [1, 2, esr, 3], &mut v).unwrap();
        assert!(matches!(e, Event::InstructionAbort { va: None, .. }));
    }

    #[test]
    fn interrupt_exits_carry_their_numbers() {
        let mut v = FakeVcpu::default();
        assert_eq!(decode(9, [27, 0, 0, 0], &mut v), Ok(Event::Vppi { intid: 27 }));
        assert_eq!(
            decode(7, [u64::MAX, 0, 0, 0], &mut v),
            Ok(Event::Maintenance { list_register: u64::MAX })
        );
    }

    #[test]
    fn garbage_is_an_error_or_an_other_trap() {
        let mut v = FakeVcpu::default();
        assert_eq!(decode(0, [0; 4], &mut v), Err(VmmError::UnknownExit(0)));
        assert_eq!(decode(u64::MAX, [0; 4], &mut v), Err(VmmError::UnknownExit(u64::MAX)));
        // A VmFault whose ESR is no abort.
        assert_eq!(
            decode(6, [0, 0, ec::HVC64 << 26, 0], &mut v),
            Err(VmmError::MalformedExit(0x5800_0000))
        );
        assert!(matches!(decode(8, [0, 0, u64::MAX, 0], &mut v), Ok(Event::OtherTrap { .. })));
        // A refused register read is reported, not guessed.
        let mut refusing = FakeVcpu { refuse: Some(Reg::X(2)), ..FakeVcpu::default() };
        assert_eq!(
            decode(8, [0, 0, ec::SMC64 << 26, 0], &mut refusing),
            Err(VmmError::Vcpu(tenure_abi::Error::InvalidState))
        );
    }
}
