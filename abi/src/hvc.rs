//! The guest-hypervisor ABI: the SMCCC calls a guest makes to Tenure (its
//! memory calls and PSCI), their registers and their return codes.
//!
//! # Calling convention
//!
//! A guest at EL1 traps with `hvc #0` (or `smc #0`: its device tree's
//! `/psci` node names the conduit) following the Arm SMC Calling Convention
//! (SMCCC, Arm DEN0028): the function id in `w0`, arguments in `x1..=x17`,
//! results in `x0..=x3`. A function id packs (SMCCC, "Function
//! Identifiers"): bit 31 fast call, bit 30 SMC64, bits 29:24 the owning
//! service, bits 15:0 the function number.
//!
//! The memory calls are the pKVM vendor-hypervisor calls with Linux's
//! numbering (`include/linux/arm-smccc.h`, `ARM_SMCCC_VENDOR_HYP_KVM_*`:
//! fast, SMC64, owner 6), so a Linux guest's pKVM memory-sharing driver
//! drives Tenure unchanged:
//!
//! | call | `x1` | `x2` | `x3` | returns |
//! |---|---|---|---|---|
//! | [`Function::HypMeminfo`] | 0 | 0 | 0 | `x0` = [`GRANULE`], `x1` = [`MEMINFO_HAS_RANGE`] |
//! | [`Function::MemShare`] | IPA of the first granule | granules (0: one) | 0 | `x0` = [`Ret`], `x1` = granules done |
//! | [`Function::MemUnshare`] | same | same | 0 | same |
//! | [`Function::MemRelinquish`] | same | same | 0 | same |
//!
//! Share makes the guest's own pages readable by the host in place (same
//! IPA, same physical page); unshare makes them private again; relinquish
//! gives them up for good (the hypervisor zeroes them before anyone else
//! sees them). A request covers whole granules; Tenure does all of it or
//! none of it, so on success `x1` equals the count asked for.
//!
//! Invariant: a refused call changes nothing. The hypervisor decodes the
//! registers with [`MemRange::decode`] (malformed: [`Ret::InvalidParameter`])
//! and only then looks at page states (not the caller's to change:
//! [`Ret::Denied`]).

/// Bytes in one granule of the memory calls (4 KiB, the stage-2 granule).
pub const GRANULE: u64 = 4096;

/// `x1` bit of [`Function::HypMeminfo`]'s answer: the memory calls take a
/// granule count in `x2` (Linux's `KVM_FUNC_HAS_RANGE`).
pub const MEMINFO_HAS_RANGE: u64 = 1 << 0;

/// The SMCCC owning-service number of vendor-specific hypervisor calls
/// (`ARM_SMCCC_OWNER_VENDOR_HYP`).
pub const OWNER_VENDOR_HYP: u32 = 6;
/// The SMCCC owning-service number of standard secure services, PSCI
/// among them (`ARM_SMCCC_OWNER_STANDARD`).
pub const OWNER_STANDARD: u32 = 4;
/// The SMCCC owning-service number of the Arm architecture calls
/// (`ARM_SMCCC_OWNER_ARCH`).
pub const OWNER_ARCH: u32 = 0;

/// An SMCCC function id (Linux's `ARM_SMCCC_CALL_VAL`): a fast
/// call (`fast`) or a yielding one, SMC64 (`smc64`) or SMC32, the owning
/// service and the function number.
#[must_use]
pub const fn function_id(fast: bool, smc64: bool, owner: u32, number: u16) -> u32 {
    ((fast as u32) << 31) | ((smc64 as u32) << 30) | ((owner & 0x3f) << 24) | number as u32
}

/// The calls Tenure answers, in `w0`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum Function {
    /// SMCCC_VERSION (SMC32, architecture call 0): `x0` = the SMCCC
    /// version the hypervisor implements.
    SmcccVersion = function_id(true, false, OWNER_ARCH, 0),
    /// PSCI_VERSION (SMC32, PSCI function 0).
    PsciVersion = function_id(true, false, OWNER_STANDARD, 0),
    /// PSCI SYSTEM_OFF (SMC32, PSCI function 8): stop the guest for good.
    SystemOff = function_id(true, false, OWNER_STANDARD, 8),
    /// PSCI SYSTEM_RESET (SMC32, PSCI function 9): reboot the guest.
    SystemReset = function_id(true, false, OWNER_STANDARD, 9),
    /// HYP_MEMINFO (`ARM_SMCCC_KVM_FUNC_HYP_MEMINFO` = 2): the granule of
    /// the memory calls and whether they take a range.
    HypMeminfo = function_id(true, true, OWNER_VENDOR_HYP, 2),
    /// MEM_SHARE (`ARM_SMCCC_KVM_FUNC_MEM_SHARE` = 3): share owned pages
    /// with the host, in place.
    MemShare = function_id(true, true, OWNER_VENDOR_HYP, 3),
    /// MEM_UNSHARE (`ARM_SMCCC_KVM_FUNC_MEM_UNSHARE` = 4): take shared
    /// pages back.
    MemUnshare = function_id(true, true, OWNER_VENDOR_HYP, 4),
    /// MEM_RELINQUISH (`ARM_SMCCC_KVM_FUNC_MEM_RELINQUISH` = 9): give
    /// owned pages up.
    MemRelinquish = function_id(true, true, OWNER_VENDOR_HYP, 9),
}

impl Function {
    /// Every call, for tables and tests.
    pub const ALL: [Function; 8] = [
        Function::SmcccVersion,
        Function::PsciVersion,
        Function::SystemOff,
        Function::SystemReset,
        Function::HypMeminfo,
        Function::MemShare,
        Function::MemUnshare,
        Function::MemRelinquish,
    ];

    /// Decodes `w0` (the upper half of `x0` is ignored, as SMCCC says);
    /// `None` for a call Tenure does not answer, which returns
    /// [`Ret::NotSupported`].
    #[must_use]
    pub const fn from_raw(x0: u64) -> Option<Self> {
        let id = x0 as u32;
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == id {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// The function id.
    #[must_use]
    pub const fn id(self) -> u32 {
        self as u32
    }

    /// The name Linux gives the call, for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Function::SmcccVersion => "SMCCC_VERSION",
            Function::PsciVersion => "PSCI_VERSION",
            Function::SystemOff => "SYSTEM_OFF",
            Function::SystemReset => "SYSTEM_RESET",
            Function::HypMeminfo => "HYP_MEMINFO",
            Function::MemShare => "MEM_SHARE",
            Function::MemUnshare => "MEM_UNSHARE",
            Function::MemRelinquish => "MEM_RELINQUISH",
        }
    }
}

/// Return codes in `x0`: SMCCC's (`SMCCC_RET_*`) and Tenure's
/// own [`Ret::Denied`], all negative as SMCCC requires of errors.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(i64)]
pub enum Ret {
    /// `SMCCC_RET_SUCCESS`: the call did all it was asked.
    #[doc(alias = "SMCCC_RET_SUCCESS")]
    Success = 0,
    /// `SMCCC_RET_NOT_SUPPORTED`: no such function.
    #[doc(alias = "SMCCC_RET_NOT_SUPPORTED")]
    NotSupported = -1,
    /// `SMCCC_RET_NOT_REQUIRED`: the call has nothing to do here (defined
    /// by SMCCC; no memory call returns it).
    #[doc(alias = "SMCCC_RET_NOT_REQUIRED")]
    NotRequired = -2,
    /// `SMCCC_RET_INVALID_PARAMETER`: a malformed request, whatever the
    /// state of memory: an address not granule-aligned or beyond the IPA
    /// space, a range that wraps, a reserved register not zero.
    #[doc(alias = "SMCCC_RET_INVALID_PARAMETER")]
    InvalidParameter = -3,
    /// Tenure's: a well-formed request for pages that are not the caller's
    /// to change that way: not its RAM (outside it, or device memory), or
    /// in the wrong state (sharing a shared page, unsharing a private one).
    /// SMCCC leaves codes below -3 to each service; pKVM answers
    /// INVALID_PARAMETER here, and Linux's guest driver treats every
    /// non-zero code alike.
    Denied = -4,
}

impl Ret {
    /// Decodes `x0`; `None` for a value that is no code of this ABI (a
    /// successful HYP_MEMINFO, for instance, returns the granule instead).
    #[must_use]
    pub const fn from_raw(x0: u64) -> Option<Self> {
        Some(match x0 as i64 {
            0 => Ret::Success,
            -1 => Ret::NotSupported,
            -2 => Ret::NotRequired,
            -3 => Ret::InvalidParameter,
            -4 => Ret::Denied,
            _ => return None,
        })
    }

    /// The value in `x0`.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self as i64 as u64
    }

    /// The name of the code, for reports.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Ret::Success => "SUCCESS",
            Ret::NotSupported => "NOT_SUPPORTED",
            Ret::NotRequired => "NOT_REQUIRED",
            Ret::InvalidParameter => "INVALID_PARAMETER",
            Ret::Denied => "DENIED",
        }
    }
}

/// The granules a memory call names, decoded from `x1..=x3`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MemRange {
    /// IPA of the first granule.
    pub start: u64,
    /// Number of granules, at least 1.
    pub granules: u64,
}

impl MemRange {
    /// Decodes a memory call's `x1` (start IPA), `x2` (granules; 0 means
    /// one, as callers that predate ranges pass) and `x3` (reserved, zero)
    /// for a guest whose IPA space has `ipa_bits` bits: anything malformed
    /// is [`Ret::InvalidParameter`].
    pub const fn decode(x1: u64, x2: u64, x3: u64, ipa_bits: u32) -> Result<Self, Ret> {
        let granules = if x2 == 0 { 1 } else { x2 };
        if x3 != 0 || !x1.is_multiple_of(GRANULE) || ipa_bits > 64 {
            return Err(Ret::InvalidParameter);
        }
        let Some(bytes) = granules.checked_mul(GRANULE) else {
            return Err(Ret::InvalidParameter);
        };
        let Some(end) = x1.checked_add(bytes) else {
            return Err(Ret::InvalidParameter);
        };
        if ipa_bits < 64 && end > 1 << ipa_bits {
            return Err(Ret::InvalidParameter);
        }
        Ok(MemRange { start: x1, granules })
    }

    /// The first IPA after the range.
    #[must_use]
    pub const fn end(self) -> u64 {
        self.start + self.granules * GRANULE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_ids_are_linuxs() {
        // The values Linux's ARM_SMCCC_CALL_VAL gives (arm-smccc.h).
        assert_eq!(Function::HypMeminfo.id(), 0xc600_0002);
        assert_eq!(Function::MemShare.id(), 0xc600_0003);
        assert_eq!(Function::MemUnshare.id(), 0xc600_0004);
        assert_eq!(Function::MemRelinquish.id(), 0xc600_0009);
        assert_eq!(Function::SystemOff.id(), 0x8400_0008);
        assert_eq!(Function::SystemReset.id(), 0x8400_0009);
        assert_eq!(Function::PsciVersion.id(), 0x8400_0000);
        assert_eq!(Function::SmcccVersion.id(), 0x8000_0000);
    }

    #[test]
    fn functions_round_trip_and_unknown_ids_decode_to_none() {
        for f in Function::ALL {
            assert_eq!(Function::from_raw(f.id() as u64), Some(f));
            // SMCCC: the upper 32 bits of w0's register are ignored.
            assert_eq!(Function::from_raw(0xffff_ffff_0000_0000 | f.id() as u64), Some(f));
        }
        assert_eq!(Function::from_raw(0xc600_0005), None);
        assert_eq!(Function::from_raw(0x8600_0003), None); // SMC32 MEM_SHARE
    }

    #[test]
    fn return_codes_are_smcccs_and_round_trip() {
        assert_eq!(Ret::Success.raw(), 0);
        assert_eq!(Ret::NotSupported.raw(), u64::MAX);
        assert_eq!(Ret::InvalidParameter.raw(), (-3i64) as u64);
        for r in
            [Ret::Success, Ret::NotSupported, Ret::NotRequired, Ret::InvalidParameter, Ret::Denied]
        {
            assert_eq!(Ret::from_raw(r.raw()), Some(r));
        }
        assert_eq!(Ret::from_raw(4096), None);
        assert_eq!(Ret::from_raw((-5i64) as u64), None);
    }

    #[test]
    fn mem_range_decodes_well_formed_requests() {
        let one = MemRange::decode(0x4000_1000, 0, 0, 40).unwrap();
        assert_eq!(one, MemRange { start: 0x4000_1000, granules: 1 });
        assert_eq!(one.end(), 0x4000_2000);
        let three = MemRange::decode(0x4000_1000, 3, 0, 40).unwrap();
        assert_eq!(three.end(), 0x4000_4000);
        // The last granule of the IPA space.
        assert!(MemRange::decode((1 << 40) - GRANULE, 1, 0, 40).is_ok());
    }

    #[test]
    fn mem_range_refuses_malformed_requests() {
        let bad = Err(Ret::InvalidParameter);
        assert_eq!(MemRange::decode(0x4000_1010, 1, 0, 40), bad, "misaligned");
        assert_eq!(MemRange::decode(0x4000_1000, 1, 1, 40), bad, "reserved x3");
        assert_eq!(MemRange::decode(1 << 40, 1, 0, 40), bad, "beyond the IPA space");
        assert_eq!(MemRange::decode((1 << 40) - GRANULE, 2, 0, 40), bad, "ends beyond");
        assert_eq!(MemRange::decode(0x4000_1000, u64::MAX / GRANULE, 0, 40), bad, "wraps");
        assert_eq!(MemRange::decode(0x4000_1000, u64::MAX, 0, 40), bad, "count overflows");
    }
}
