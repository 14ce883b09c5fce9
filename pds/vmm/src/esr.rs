//! ESR_EL2, the syndrome of a guest exit: its exception class and the
//! instruction-specific fields the VMM acts on (Arm ARM D24.2.40,
//! ESR_EL2, and the ISS encodings of each class listed there).
//!
//! Every bit pattern decodes: a class the VMM does not know is
//! [`Class::Other`], and fields are plain bit extractions, so no ESR the
//! kernel passes can make decoding fail.

/// ESR_ELx.EC, bits 31:26.
const EC_SHIFT: u32 = 26;
/// ESR_ELx.IL, bit 25: the trapped instruction was 32 bits wide.
pub const IL: u64 = 1 << 25;
/// Mask of ESR_ELx.ISS, bits 24:0.
const ISS_MASK: u64 = (1 << 25) - 1;

/// Exception classes (ESR_ELx.EC) the VMM distinguishes.
pub mod ec {
    /// Unknown reason; also what an injected undefined instruction
    /// reports.
    pub const UNKNOWN: u64 = 0x00;
    /// WFI, WFE, WFIT or WFET trapped (HCR_EL2.TWI / TWE).
    pub const WFX: u64 = 0x01;
    /// HVC from AArch64.
    pub const HVC64: u64 = 0x16;
    /// SMC from AArch64, trapped by HCR_EL2.TSC.
    pub const SMC64: u64 = 0x17;
    /// MSR, MRS or a System instruction trapped from AArch64.
    pub const SYSREG: u64 = 0x18;
    /// Instruction abort from a lower exception level.
    pub const IABT_LOW: u64 = 0x20;
    /// Instruction abort taken without a change of exception level.
    pub const IABT_CUR: u64 = 0x21;
    /// Data abort from a lower exception level.
    pub const DABT_LOW: u64 = 0x24;
    /// Data abort taken without a change of exception level.
    pub const DABT_CUR: u64 = 0x25;
}

/// A raw ESR_EL2 value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Esr(pub u64);

/// What an ESR's class says the guest did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    /// A data abort from the guest ([`ec::DABT_LOW`]).
    DataAbort(DataAbort),
    /// An instruction abort from the guest ([`ec::IABT_LOW`]).
    InstructionAbort(Fault),
    /// HVC with its immediate.
    Hvc(u16),
    /// A trapped SMC with its immediate.
    Smc(u16),
    /// A trapped WFI, WFE, WFIT or WFET.
    Wfx(Wfx),
    /// A trapped system register access or System instruction.
    SysReg(SysReg),
    /// Any other class, by its EC.
    Other(u8),
}

impl Esr {
    /// ESR_ELx.EC.
    #[must_use]
    pub const fn ec(self) -> u64 {
        (self.0 >> EC_SHIFT) & 0x3f
    }

    /// ESR_ELx.ISS.
    #[must_use]
    pub const fn iss(self) -> u64 {
        self.0 & ISS_MASK
    }

    /// Whether the instruction was 32 bits wide (always, for AArch64).
    #[must_use]
    pub const fn il(self) -> bool {
        self.0 & IL != 0
    }

    /// The class and its decoded fields.
    #[must_use]
    pub const fn class(self) -> Class {
        let iss = self.iss();
        match self.ec() {
            ec::DABT_LOW => Class::DataAbort(DataAbort::from_iss(iss)),
            ec::IABT_LOW => Class::InstructionAbort(Fault::from_iss(iss)),
            ec::HVC64 => Class::Hvc(iss as u16),
            ec::SMC64 => Class::Smc(iss as u16),
            ec::WFX => Class::Wfx(Wfx::from_iss(iss)),
            ec::SYSREG => Class::SysReg(SysReg::from_iss(iss)),
            other => Class::Other(other as u8),
        }
    }
}

/// What kind of fault a data or instruction fault status code (DFSC /
/// IFSC, ISS bits 5:0) reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultKind {
    /// Address size fault (0b0000LL).
    AddressSize,
    /// Translation fault (0b0001LL): nothing is mapped.
    Translation,
    /// Access flag fault (0b0010LL).
    AccessFlag,
    /// Permission fault (0b0011LL).
    Permission,
    /// Any other status: external aborts, alignment, TLB conflicts...
    Other,
}

/// The fault status and the fields data and instruction aborts share.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fault {
    /// The status code, ISS bits 5:0.
    pub status: u8,
    /// FnV, bit 10: FAR is not valid.
    pub far_not_valid: bool,
    /// EA, bit 9: an external abort type.
    pub external: bool,
    /// S1PTW, bit 7: the fault was on the guest's own stage-1 table walk.
    pub stage1_walk: bool,
}

impl Fault {
    const fn from_iss(iss: u64) -> Fault {
        Fault {
            status: (iss & 0x3f) as u8,
            far_not_valid: iss & (1 << 10) != 0,
            external: iss & (1 << 9) != 0,
            stage1_walk: iss & (1 << 7) != 0,
        }
    }

    /// The kind of fault the status reports (Arm ARM D24.2.40, DFSC):
    /// bits 5:2 give the kind for the four that carry a level in bits 1:0.
    #[must_use]
    pub const fn kind(self) -> FaultKind {
        match self.status >> 2 {
            0b0000 => FaultKind::AddressSize,
            0b0001 => FaultKind::Translation,
            0b0010 => FaultKind::AccessFlag,
            0b0011 => FaultKind::Permission,
            _ => FaultKind::Other,
        }
    }
}

/// Bytes one access moves: ISS.SAS, bits 23:22.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum AccessSize {
    /// A byte.
    Byte = 1,
    /// A halfword.
    Half = 2,
    /// A word.
    Word = 4,
    /// A doubleword.
    Double = 8,
}

impl AccessSize {
    /// The size in bytes.
    #[must_use]
    pub const fn bytes(self) -> u64 {
        self as u64
    }

    /// The mask of the bits an access of this size moves.
    #[must_use]
    pub const fn mask(self) -> u64 {
        match self {
            AccessSize::Double => u64::MAX,
            s => (1 << (s.bytes() * 8)) - 1,
        }
    }
}

/// The instruction a data abort syndrome describes, when ISV says it
/// does: enough to emulate the access (Arm ARM D24.2.40, ISS encoding for
/// an exception from a Data Abort).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Access {
    /// SAS: bytes moved.
    pub size: AccessSize,
    /// SSE: a load sign-extends to the register's width.
    pub sign_extend: bool,
    /// SRT: the register moved (31 is the zero register).
    pub register: u8,
    /// SF: the register is 64 bits wide (else a W register).
    pub sixty_four: bool,
    /// AR: acquire / release semantics (nothing to emulate for MMIO).
    pub acquire_release: bool,
}

/// A data abort's syndrome.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DataAbort {
    /// The decoded instruction; `None` when ISV is clear (a load or store
    /// pair, a writeback form, SIMD...), which cannot be emulated.
    pub access: Option<Access>,
    /// WnR, bit 6: a write (also set by cache maintenance).
    pub write: bool,
    /// CM, bit 8: a cache maintenance or address translation instruction.
    pub cache_maintenance: bool,
    /// The fault status and shared fields.
    pub fault: Fault,
}

impl DataAbort {
    const fn from_iss(iss: u64) -> DataAbort {
        let isv = iss & (1 << 24) != 0;
        let size = match (iss >> 22) & 0b11 {
            0 => AccessSize::Byte,
            1 => AccessSize::Half,
            2 => AccessSize::Word,
            _ => AccessSize::Double,
        };
        let access = if isv {
            Some(Access {
                size,
                sign_extend: iss & (1 << 21) != 0,
                register: ((iss >> 16) & 0x1f) as u8,
                sixty_four: iss & (1 << 15) != 0,
                acquire_release: iss & (1 << 14) != 0,
            })
        } else {
            None
        };
        DataAbort {
            access,
            write: iss & (1 << 6) != 0,
            cache_maintenance: iss & (1 << 8) != 0,
            fault: Fault::from_iss(iss),
        }
    }
}

/// Which wait instruction trapped: ISS.TI, bits 1:0.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wfx {
    /// WFI.
    Wfi,
    /// WFE.
    Wfe,
    /// WFIT (FEAT_WFxT).
    Wfit,
    /// WFET (FEAT_WFxT).
    Wfet,
}

impl Wfx {
    const fn from_iss(iss: u64) -> Wfx {
        match iss & 0b11 {
            0 => Wfx::Wfi,
            1 => Wfx::Wfe,
            2 => Wfx::Wfit,
            _ => Wfx::Wfet,
        }
    }
}

/// A trapped MSR / MRS: the register's encoding and the transfer register
/// (Arm ARM D24.2.40, ISS encoding for an exception from MSR, MRS, or
/// System instruction execution in AArch64 state).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SysReg {
    /// Op0, bits 21:20.
    pub op0: u8,
    /// Op2, bits 19:17.
    pub op2: u8,
    /// Op1, bits 16:14.
    pub op1: u8,
    /// CRn, bits 13:10.
    pub crn: u8,
    /// Rt, bits 9:5.
    pub rt: u8,
    /// CRm, bits 4:1.
    pub crm: u8,
    /// Direction, bit 0: a read (MRS).
    pub read: bool,
}

impl SysReg {
    const fn from_iss(iss: u64) -> SysReg {
        SysReg {
            op0: ((iss >> 20) & 0b11) as u8,
            op2: ((iss >> 17) & 0b111) as u8,
            op1: ((iss >> 14) & 0b111) as u8,
            crn: ((iss >> 10) & 0xf) as u8,
            rt: ((iss >> 5) & 0x1f) as u8,
            crm: ((iss >> 1) & 0xf) as u8,
            read: iss & 1 != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esr(ec: u64, iss: u64) -> Esr {
        Esr((ec << 26) | IL | iss)
    }

    #[test]
    fn a_word_store_from_w1_decodes() {
        // str w1, [x0]: ISV, SAS word, SRT 1, WnR, translation fault level 3.
        let Class::DataAbort(d) =
            esr(ec::DABT_LOW, (1 << 24) | (2 << 22) | (1 << 16) | (1 << 6) | 0b000111).class()
        else {
            panic!("not a data abort")
        };
        let a = d.access.unwrap();
        assert_eq!(
            (a.size, a.register, a.sixty_four, a.sign_extend),
            (AccessSize::Word, 1, false, false)
        );
        assert!(d.write);
        assert_eq!(d.fault.kind(), FaultKind::Translation);
    }

    #[test]
    fn a_sign_extending_byte_load_into_x3_decodes() {
        // ldrsb x3, [x0]: ISV, SAS byte, SSE, SRT 3, SF, a read.
        let Class::DataAbort(d) =
            esr(ec::DABT_LOW, (1 << 24) | (1 << 21) | (3 << 16) | (1 << 15) | 0b000101).class()
        else {
            panic!("not a data abort")
        };
        let a = d.access.unwrap();
        assert_eq!(
            (a.size, a.register, a.sixty_four, a.sign_extend),
            (AccessSize::Byte, 3, true, true)
        );
        assert!(!d.write);
    }

    #[test]
    fn without_isv_there_is_no_access_to_emulate() {
        let Class::DataAbort(d) = esr(ec::DABT_LOW, (3 << 22) | (1 << 6) | 0b000111).class() else {
            panic!("not a data abort")
        };
        assert_eq!(d.access, None);
    }

    #[test]
    fn fault_kinds_follow_the_status_code() {
        let kind = |status: u8| {
            Fault { status, far_not_valid: false, external: false, stage1_walk: false }.kind()
        };
        assert_eq!(kind(0b000011), FaultKind::AddressSize);
        assert_eq!(kind(0b000100), FaultKind::Translation);
        assert_eq!(kind(0b001001), FaultKind::AccessFlag);
        assert_eq!(kind(0b001111), FaultKind::Permission);
        assert_eq!(kind(0b010000), FaultKind::Other);
        assert_eq!(kind(0b100001), FaultKind::Other);
    }

    #[test]
    fn calls_waits_and_sysregs_decode() {
        assert_eq!(esr(ec::HVC64, 0x1234).class(), Class::Hvc(0x1234));
        assert_eq!(esr(ec::SMC64, 0).class(), Class::Smc(0));
        assert_eq!(esr(ec::WFX, 0).class(), Class::Wfx(Wfx::Wfi));
        assert_eq!(esr(ec::WFX, 1).class(), Class::Wfx(Wfx::Wfe));
        // mrs x2, ctr_el0: op0 3, op1 3, CRn 0, CRm 0, op2 1, a read.
        let iss = (3 << 20) | (1 << 17) | (3 << 14) | (2 << 5) | 1;
        assert_eq!(
            esr(ec::SYSREG, iss).class(),
            Class::SysReg(SysReg { op0: 3, op2: 1, op1: 3, crn: 0, rt: 2, crm: 0, read: true })
        );
        assert_eq!(esr(0x3f, 0).class(), Class::Other(0x3f));
        assert_eq!(Esr(u64::MAX).ec(), 0x3f);
    }

    #[test]
    fn size_masks() {
        assert_eq!(AccessSize::Byte.mask(), 0xff);
        assert_eq!(AccessSize::Half.mask(), 0xffff);
        assert_eq!(AccessSize::Word.mask(), 0xffff_ffff);
        assert_eq!(AccessSize::Double.mask(), u64::MAX);
    }
}
