//! The SMCCC calls a guest makes, over HVC or SMC, and the VMM's answer
//! to each: PSCI (Arm DEN0022, "Arm Power State Coordination Interface",
//! version 1.0 as answered here), the SMCCC architecture calls (Arm
//! DEN0028, "SMC Calling Convention", 1.1) and Tenure's vendor-hypervisor
//! memory calls ([`tenure_abi::hvc`]).
//!
//! Answers are pure: a [`Call`] in, an [`Answer`] out. The memory calls
//! are decoded here (a malformed request is answered INVALID_PARAMETER at
//! once) and forwarded to mm by [`crate::memory`].
//!
//! One vCPU: CPU_ON cannot start another one (the only CPU is on already:
//! ALREADY_ON; any other target does not exist: INVALID_PARAMETERS), and
//! CPU_OFF of the only CPU stops the guest as SYSTEM_OFF does. CPU_SUSPEND
//! returns at once, as a WFI the VMM steps over would (KVM does the same).

use tenure_abi::hvc::{
    Function, GRANULE, MEMINFO_HAS_RANGE, MemRange, OWNER_ARCH, OWNER_STANDARD, Ret, function_id,
};
use tenure_abi::mm::IPA_BITS;

/// The PSCI version answered: 1.0 (DEN0022, PSCI_VERSION: major in bits
/// 30:16, minor in bits 15:0).
pub const PSCI_VERSION: u64 = 1 << 16;
/// The SMCCC version answered: 1.1 (DEN0028, SMCCC_VERSION; same layout).
pub const SMCCC_VERSION: u64 = (1 << 16) | 1;
/// MIGRATE_INFO_TYPE's answer: no Trusted OS, or one that needs no
/// migration (DEN0022, MIGRATE_INFO_TYPE).
pub const MIGRATE_INFO_TYPE_NONE: u64 = 2;
/// The affinity fields of an MPIDR (Aff3 in bits 39:32, Aff2..Aff0 in
/// bits 23:0); the only vCPU has affinity 0.
pub const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

/// PSCI function ids the VMM answers beyond those [`Function`] lists
/// (DEN0022, chapter 5, "PSCI function IDs"): fast calls of the standard
/// service, SMC32 and where defined SMC64.
pub mod psci {
    use super::{OWNER_STANDARD, function_id};

    /// CPU_SUSPEND, SMC32.
    pub const CPU_SUSPEND_32: u32 = function_id(true, false, OWNER_STANDARD, 1);
    /// CPU_SUSPEND, SMC64.
    pub const CPU_SUSPEND_64: u32 = function_id(true, true, OWNER_STANDARD, 1);
    /// CPU_OFF (SMC32 only).
    pub const CPU_OFF: u32 = function_id(true, false, OWNER_STANDARD, 2);
    /// CPU_ON, SMC32.
    pub const CPU_ON_32: u32 = function_id(true, false, OWNER_STANDARD, 3);
    /// CPU_ON, SMC64.
    pub const CPU_ON_64: u32 = function_id(true, true, OWNER_STANDARD, 3);
    /// AFFINITY_INFO, SMC32.
    pub const AFFINITY_INFO_32: u32 = function_id(true, false, OWNER_STANDARD, 4);
    /// AFFINITY_INFO, SMC64.
    pub const AFFINITY_INFO_64: u32 = function_id(true, true, OWNER_STANDARD, 4);
    /// MIGRATE_INFO_TYPE (SMC32 only).
    pub const MIGRATE_INFO_TYPE: u32 = function_id(true, false, OWNER_STANDARD, 6);
    /// PSCI_FEATURES (SMC32 only).
    pub const PSCI_FEATURES: u32 = function_id(true, false, OWNER_STANDARD, 0xa);
}

/// SMCCC_ARCH_FEATURES (DEN0028, SMCCC_ARCH_FEATURES): whether an architecture call is
/// implemented.
pub const SMCCC_ARCH_FEATURES: u32 = function_id(true, false, OWNER_ARCH, 1);

/// PSCI return codes (DEN0022, chapter 5, "Return error codes").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(i64)]
pub enum PsciRet {
    /// SUCCESS.
    Success = 0,
    /// NOT_SUPPORTED.
    NotSupported = -1,
    /// INVALID_PARAMETERS.
    InvalidParameters = -2,
    /// ALREADY_ON.
    AlreadyOn = -4,
}

impl PsciRet {
    /// The value in `x0`.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self as i64 as u64
    }
}

/// How the guest made the call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Conduit {
    /// HVC: the exit's PC is already past the instruction.
    Hvc,
    /// SMC, trapped: the exit's PC is at the instruction, which the VMM
    /// steps over.
    Smc,
}

/// A call as the guest's registers hold it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Call {
    /// The function id, `w0` (SMCCC ignores the upper half of `x0`).
    pub function: u32,
    /// `x1..=x3`.
    pub args: [u64; 3],
}

impl Call {
    /// The call in `x0..=x3`.
    #[must_use]
    pub const fn new(x: [u64; 4]) -> Call {
        Call { function: x[0] as u32, args: [x[1], x[2], x[3]] }
    }

    /// Whether the function id names an SMC64 call (bit 30).
    #[must_use]
    pub const fn smc64(&self) -> bool {
        self.function & (1 << 30) != 0
    }

    /// Argument `i` (1..=3) as the call's convention reads it: SMC32 calls
    /// see only the low 32 bits of each register (DEN0028, "SMC32/HVC32
    /// argument passing").
    #[must_use]
    pub const fn arg(&self, i: usize) -> u64 {
        let x = self.args[i - 1];
        if self.smc64() { x } else { x as u32 as u64 }
    }
}

/// A memory call to forward to mm.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemOp {
    /// MEM_SHARE.
    Share,
    /// MEM_UNSHARE.
    Unshare,
    /// MEM_RELINQUISH.
    Relinquish,
}

/// Why the guest stops.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Halt {
    /// PSCI SYSTEM_OFF.
    PowerOff,
    /// PSCI CPU_OFF of the only vCPU.
    CpuOff,
    /// PSCI SYSTEM_RESET: load the guest again and start it afresh.
    Reset,
}

/// What the VMM does with a call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Answer {
    /// Write `x0..=x3` and resume.
    Return([u64; 4]),
    /// Forward a well-formed memory call to mm.
    Memory(MemOp, MemRange),
    /// Stop the guest; no registers change.
    Halt(Halt),
}

const fn ret(x0: u64) -> Answer {
    Answer::Return([x0, 0, 0, 0])
}

const fn not_supported() -> Answer {
    ret(Ret::NotSupported.raw())
}

/// Whether `function` is one PSCI_FEATURES reports as implemented (PSCI
/// functions answered here, and SMCCC_VERSION, which DEN0022's
/// PSCI_FEATURES lets a caller ask about).
const fn psci_implemented(function: u32) -> bool {
    use psci::{
        AFFINITY_INFO_32, AFFINITY_INFO_64, CPU_OFF, CPU_ON_32, CPU_ON_64, CPU_SUSPEND_32,
        CPU_SUSPEND_64, MIGRATE_INFO_TYPE, PSCI_FEATURES,
    };
    matches!(
        function,
        CPU_SUSPEND_32
            | CPU_SUSPEND_64
            | CPU_OFF
            | CPU_ON_32
            | CPU_ON_64
            | AFFINITY_INFO_32
            | AFFINITY_INFO_64
            | MIGRATE_INFO_TYPE
            | PSCI_FEATURES
    ) || function == Function::PsciVersion.id()
        || function == Function::SystemOff.id()
        || function == Function::SystemReset.id()
        || function == Function::SmcccVersion.id()
}

/// The VMM's answer to `call`.
#[must_use]
pub fn answer(call: &Call) -> Answer {
    if let Some(f) = Function::from_raw(call.function as u64) {
        return match f {
            Function::SmcccVersion => ret(SMCCC_VERSION),
            Function::PsciVersion => ret(PSCI_VERSION),
            Function::SystemOff => Answer::Halt(Halt::PowerOff),
            Function::SystemReset => Answer::Halt(Halt::Reset),
            Function::HypMeminfo => Answer::Return([GRANULE, MEMINFO_HAS_RANGE, 0, 0]),
            Function::MemShare => memory(call, MemOp::Share),
            Function::MemUnshare => memory(call, MemOp::Unshare),
            Function::MemRelinquish => memory(call, MemOp::Relinquish),
        };
    }
    match call.function {
        psci::PSCI_FEATURES => {
            let asked = call.arg(1) as u32;
            ret(if psci_implemented(asked) { 0 } else { PsciRet::NotSupported.raw() })
        }
        SMCCC_ARCH_FEATURES => {
            // Only the architecture calls answered here; the Spectre
            // workarounds (ARCH_WORKAROUND_1..3) are not offered.
            let asked = call.arg(1) as u32;
            let known = asked == Function::SmcccVersion.id() || asked == SMCCC_ARCH_FEATURES;
            ret(if known { 0 } else { Ret::NotSupported.raw() })
        }
        psci::CPU_SUSPEND_32 | psci::CPU_SUSPEND_64 => ret(PsciRet::Success.raw()),
        psci::CPU_OFF => Answer::Halt(Halt::CpuOff),
        psci::CPU_ON_32 | psci::CPU_ON_64 => {
            let on = call.arg(1) & MPIDR_AFFINITY == 0;
            ret(if on { PsciRet::AlreadyOn } else { PsciRet::InvalidParameters }.raw())
        }
        psci::AFFINITY_INFO_32 | psci::AFFINITY_INFO_64 => {
            // Level 0 only: other levels are optional since PSCI 1.0
            // (DEN0022, AFFINITY_INFO). State 0 is ON.
            let ours = call.arg(1) & MPIDR_AFFINITY == 0 && call.arg(2) == 0;
            ret(if ours { 0 } else { PsciRet::InvalidParameters.raw() })
        }
        psci::MIGRATE_INFO_TYPE => ret(MIGRATE_INFO_TYPE_NONE),
        _ => not_supported(),
    }
}

fn memory(call: &Call, op: MemOp) -> Answer {
    match MemRange::decode(call.args[0], call.args[1], call.args[2], IPA_BITS) {
        Ok(range) => Answer::Memory(op, range),
        Err(code) => ret(code.raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(function: u32, args: [u64; 3]) -> Answer {
        answer(&Call { function, args })
    }

    fn x0(a: Answer) -> i64 {
        match a {
            Answer::Return(x) => x[0] as i64,
            other => panic!("not a return: {other:?}"),
        }
    }

    #[test]
    fn versions() {
        assert_eq!(x0(call(Function::PsciVersion.id(), [0; 3])), 0x1_0000);
        assert_eq!(x0(call(Function::SmcccVersion.id(), [0; 3])), 0x1_0001);
        // The upper half of x0 is ignored.
        assert_eq!(answer(&Call::new([0xffff_ffff_8400_0000, 0, 0, 0])), ret(PSCI_VERSION));
    }

    #[test]
    fn psci_features_lists_what_is_answered() {
        let features = |f: u32| x0(call(psci::PSCI_FEATURES, [u64::from(f), 0, 0]));
        for f in [
            Function::PsciVersion.id(),
            Function::SystemOff.id(),
            Function::SystemReset.id(),
            Function::SmcccVersion.id(),
            psci::CPU_ON_64,
            psci::CPU_SUSPEND_32,
            psci::PSCI_FEATURES,
        ] {
            assert_eq!(features(f), 0, "{f:#x}");
        }
        for f in [0x8400_0005, 0x8400_0012, Function::MemShare.id(), 0, u32::MAX] {
            assert_eq!(features(f), -1, "{f:#x}");
        }
        // SMC32: the upper half of x1 is ignored.
        assert_eq!(x0(call(psci::PSCI_FEATURES, [0xdead_0000_8400_0000, 0, 0])), 0);
    }

    #[test]
    fn power_calls_halt() {
        assert_eq!(call(Function::SystemOff.id(), [1, 2, 3]), Answer::Halt(Halt::PowerOff));
        assert_eq!(call(Function::SystemReset.id(), [0; 3]), Answer::Halt(Halt::Reset));
        assert_eq!(call(psci::CPU_OFF, [0; 3]), Answer::Halt(Halt::CpuOff));
    }

    #[test]
    fn cpu_on_is_refused_with_one_vcpu() {
        assert_eq!(x0(call(psci::CPU_ON_64, [0, 0x4008_0000, 0])), -4, "ALREADY_ON");
        assert_eq!(x0(call(psci::CPU_ON_64, [1, 0x4008_0000, 0])), -2, "no CPU 1");
        assert_eq!(x0(call(psci::CPU_ON_64, [1 << 32, 0, 0])), -2, "Aff3 1");
        assert_eq!(x0(call(psci::CPU_ON_32, [1 << 32, 0, 0])), -4, "SMC32: w1 is 0");
        // Non-affinity bits of MPIDR (U, MT) are not part of the target.
        assert_eq!(x0(call(psci::CPU_ON_64, [1 << 30, 0, 0])), -4);
    }

    #[test]
    fn affinity_info_and_migrate_info() {
        assert_eq!(x0(call(psci::AFFINITY_INFO_64, [0, 0, 0])), 0, "ON");
        assert_eq!(x0(call(psci::AFFINITY_INFO_64, [0, 1, 0])), -2, "level 1");
        assert_eq!(x0(call(psci::AFFINITY_INFO_64, [0x100, 0, 0])), -2, "no such CPU");
        assert_eq!(x0(call(psci::MIGRATE_INFO_TYPE, [0; 3])), 2);
        assert_eq!(x0(call(psci::CPU_SUSPEND_64, [0, 0x4008_0000, 0])), 0);
    }

    #[test]
    fn arch_features() {
        let f = |id: u32| x0(call(SMCCC_ARCH_FEATURES, [u64::from(id), 0, 0]));
        assert_eq!(f(Function::SmcccVersion.id()), 0);
        assert_eq!(f(SMCCC_ARCH_FEATURES), 0);
        assert_eq!(f(0x8000_8000), -1, "ARCH_WORKAROUND_1 is not offered");
    }

    #[test]
    fn meminfo_and_memory_calls() {
        assert_eq!(call(Function::HypMeminfo.id(), [0; 3]), Answer::Return([4096, 1, 0, 0]));
        let range = MemRange { start: 0x4010_0000, granules: 2 };
        assert_eq!(
            call(Function::MemShare.id(), [0x4010_0000, 2, 0]),
            Answer::Memory(MemOp::Share, range)
        );
        assert_eq!(
            call(Function::MemUnshare.id(), [0x4010_0000, 2, 0]),
            Answer::Memory(MemOp::Unshare, range)
        );
        assert_eq!(
            call(Function::MemRelinquish.id(), [0x4010_0000, 0, 0]),
            Answer::Memory(MemOp::Relinquish, MemRange { start: 0x4010_0000, granules: 1 })
        );
    }

    #[test]
    fn malformed_memory_calls_are_invalid_parameter() {
        let share = |x1, x2, x3| x0(call(Function::MemShare.id(), [x1, x2, x3]));
        assert_eq!(share(0x4010_0010, 1, 0), -3, "misaligned");
        assert_eq!(share(0x4010_0000, 1, 1), -3, "reserved x3");
        assert_eq!(share(1 << 56, 1, 0), -3, "beyond the IPA space");
        assert_eq!(share(0x4010_0000, u64::MAX, 0), -3, "wraps");
    }

    #[test]
    fn unknown_calls_are_not_supported() {
        for id in [0xc600_00fe, 0xc600_0005, 0x8600_0003, 0x8400_0012, 0xc400_0008, 0xbf00_0000, 0]
        {
            assert_eq!(call(id, [1, 2, 3]), Answer::Return([u64::MAX, 0, 0, 0]), "{id:#x}");
        }
    }
}
