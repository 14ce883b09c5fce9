//! vCPUs: what a guest's EL1 state is while it does not run, how the
//! kernel saves and restores it, and the GICv2 virtual interface control
//! (GICH) whose list registers inject virtual interrupts.
//!
//! A vCPU's general-purpose registers, PC and PSTATE live in its
//! `run::Context` like a PD's (the exception entry saves them); its EL1
//! system registers, virtual timer and list registers live in a
//! [`VcpuState`], loaded while it runs and saved when anything else runs.
//! The kernel itself is built soft-float, so the FP/SIMD registers belong
//! to the PD or vCPU that used them last (`run` switches them lazily).
//!
//! Encodings: Arm Architecture Reference Manual for A-profile (DDI 0487
//! K.a) D24.2 (HCR_EL2, CPTR_EL2, SCTLR_EL1, HPFAR_EL2, PAR_EL1) and the
//! Arm Generic Interrupt Controller Architecture Specification v2
//! (IHI 0048B) section 5.3 (GICH registers, GICH_LR layout).

use tenure_abi::vcpu::VcpuReg;

/// HCR_EL2 while a guest runs: RW (EL1 is AArch64), TACR (ACTLR_EL1,
/// which controls the core's implementation-defined behaviour for every
/// guest and PD, traps), TIDCP (so do the implementation-defined system
/// registers), TSC (SMC traps), TWE and TWI (WFE and WFI trap), AMO, IMO
/// and FMO (physical SErrors, IRQs and FIQs come to EL2; the guest gets
/// virtual ones), VM (stage 2 on). No TGE and no DC: the guest's own
/// stage 1 runs at EL1. docs/el1-state.md has the whole table.
pub const HCR_GUEST: u64 = (1 << 31)
    | (1 << 21)
    | (1 << 20)
    | (1 << 19)
    | (1 << 14)
    | (1 << 13)
    | (1 << 5)
    | (1 << 4)
    | (1 << 3)
    | 1;

/// SPSR_EL2 a vCPU starts with: EL1h, D, A, I and F masked (the arm64
/// boot protocol's entry state).
pub const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// SCTLR_EL1 a vCPU starts with: the RES1 bits of ARMv8.0 (29:28, 23:22,
/// 20, 11), MMU and caches off.
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

/// Whether `spsr` is a PSTATE a VMM may give its guest: AArch64 at EL1h,
/// EL1t or EL0t. Anything else (EL2, AArch32) would let the guest return
/// into a mode it must never reach.
#[must_use]
pub fn guest_pstate_ok(spsr: u64) -> bool {
    matches!(spsr & 0b1_1111, 0b0_0000 | 0b0_0100 | 0b0_0101)
}

/// The system registers a [`VcpuState`] holds, in [`VcpuReg`] order from
/// [`VcpuReg::SpEl1`] on (PC, PSTATE and SP_EL0 live in the context).
pub const SYSREGS: usize = VcpuReg::COUNT - VcpuReg::SpEl1 as usize;

/// Index in [`VcpuState::regs`] of `reg`, for registers kept there.
#[must_use]
pub fn sysreg_index(reg: VcpuReg) -> Option<usize> {
    (reg as usize).checked_sub(VcpuReg::SpEl1 as usize)
}

/// Most list registers a GICv2 has (GICH_VTR.ListRegs is 6 bits).
pub const MAX_LRS: usize = 64;

/// A vCPU's state outside the general-purpose registers.
#[derive(Clone, Copy, Debug)]
pub struct VcpuState {
    /// The system registers, in [`VcpuReg`] order from SP_EL1.
    pub regs: [u64; SYSREGS],
    /// GICH_HCR, GICH_VMCR and GICH_APR.
    pub gich: [u32; 3],
    /// The list registers.
    pub lrs: [u32; MAX_LRS],
    /// The virtual timer's interrupt is masked until the VMM acks it.
    pub vppi_masked: bool,
}

impl VcpuState {
    /// An unused slot.
    pub const ZERO: VcpuState =
        VcpuState { regs: [0; SYSREGS], gich: [0; 3], lrs: [0; MAX_LRS], vppi_masked: false };

    /// A vCPU as it first starts: MMU off, timer off, no interrupts,
    /// reading `mpidr` as its MPIDR_EL1.
    #[must_use]
    pub fn new(mpidr: u64) -> Self {
        let mut regs = [0; SYSREGS];
        let mut set = |reg, value| {
            if let Some(i) = sysreg_index(reg) {
                regs[i] = value;
            }
        };
        set(VcpuReg::SctlrEl1, SCTLR_EL1_RESET);
        // VMPIDR_EL2 bit 31 is RES1.
        set(VcpuReg::Vmpidr, mpidr | (1 << 31));
        // GICH_HCR.En: the virtual CPU interface forwards list registers.
        VcpuState { regs, gich: [1, 0, 0], lrs: [0; MAX_LRS], vppi_masked: false }
    }
}

/// GICH_LR (GICv2, IHI 0048B 5.3.10) for a software interrupt `virq`
/// pending at `priority` (0..=31, the upper five bits of GICv2's
/// priority), group 0, asking for a maintenance interrupt when the guest
/// ends it (EOI, bit 19).
#[must_use]
pub fn lr_pending(virq: u32, priority: u32) -> u32 {
    (virq & 0x3ff) | (1 << 19) | ((priority & 0x1f) << 23) | (0b01 << 28)
}

/// Whether a list register holds an interrupt that is pending or active.
#[must_use]
pub fn lr_in_use(lr: u32) -> bool {
    (lr >> 28) & 0b11 != 0
}

/// GICH register offsets (IHI 0048B table 5-5).
pub mod gich {
    /// Hypervisor control.
    pub const HCR: usize = 0x0;
    /// VGIC type: ListRegs in bits 5:0 (number of LRs minus one).
    pub const VTR: usize = 0x4;
    /// Virtual machine control.
    pub const VMCR: usize = 0x8;
    /// End of interrupt status, LRs 0..31.
    pub const EISR0: usize = 0x20;
    /// End of interrupt status, LRs 32..63.
    pub const EISR1: usize = 0x24;
    /// Active priorities.
    pub const APR: usize = 0xf0;
    /// List register 0; LR n is at `LR0 + 4 n`.
    pub const LR0: usize = 0x100;
}

/// Whether a data or instruction fault status code (ESR_EL2.ISS[5:0])
/// is a permission fault, for which HPFAR_EL2 may not hold the IPA unless
/// the fault happened on a stage-1 table walk (ISS bit 7, S1PTW).
#[must_use]
pub fn hpfar_unreliable(esr: u64) -> bool {
    let fsc = esr & 0x3f;
    let s1ptw = esr & (1 << 7) != 0;
    (0b00_1100..=0b00_1111).contains(&fsc) && !s1ptw
}

/// The IPA of a stage-2 fault from HPFAR_EL2 (FIPA, bits 39:4 = IPA
/// bits 47:12) and the page offset of FAR_EL2.
#[must_use]
pub fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    ((hpfar & 0x0000_0fff_ffff_fff0) << 8) | (far & 0xfff)
}

/// The physical address a successful `AT` left in PAR_EL1 (bits 47:12),
/// with the page offset of `va`; `None` if the translation failed (F).
#[must_use]
pub fn par_address(par: u64, va: u64) -> Option<u64> {
    (par & 1 == 0).then_some((par & 0x0000_ffff_ffff_f000) | (va & 0xfff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_el1_and_el0_aarch64_pstates_are_accepted() {
        assert!(guest_pstate_ok(SPSR_EL1H_MASKED));
        assert!(guest_pstate_ok(0x3c4)); // EL1t
        assert!(guest_pstate_ok(0)); // EL0t
        assert!(!guest_pstate_ok(0x3c9), "EL2h");
        assert!(!guest_pstate_ok(0x3c8), "EL2t");
        assert!(!guest_pstate_ok(0x3cd), "EL3h");
        assert!(!guest_pstate_ok(0x3d3), "AArch32 SVC");
    }

    #[test]
    fn sysregs_follow_the_abi_order() {
        assert_eq!(sysreg_index(VcpuReg::SpEl1), Some(0));
        assert_eq!(sysreg_index(VcpuReg::Vmpidr), Some(SYSREGS - 1));
        assert_eq!(sysreg_index(VcpuReg::Pc), None);
        assert_eq!(sysreg_index(VcpuReg::SpEl0), None);
        let state = VcpuState::new(3);
        assert_eq!(state.regs[sysreg_index(VcpuReg::Vmpidr).unwrap()], 0x8000_0003);
        assert_eq!(state.regs[sysreg_index(VcpuReg::SctlrEl1).unwrap()], SCTLR_EL1_RESET);
    }

    #[test]
    fn list_registers_encode_gicv2_fields() {
        let lr = lr_pending(27, 0x1f);
        assert_eq!(lr & 0x3ff, 27);
        assert_eq!((lr >> 23) & 0x1f, 0x1f);
        assert_eq!((lr >> 28) & 0b11, 0b01, "pending");
        assert!(lr & (1 << 19) != 0, "maintenance on EOI");
        assert!(lr_in_use(lr));
        assert!(!lr_in_use(1 << 19), "ended: EOI bit alone");
    }

    #[test]
    fn fault_addresses_decode() {
        // HPFAR_EL2.FIPA holds IPA[47:12] at bits 39:4.
        assert_eq!(fault_ipa(0x4_0001 << 4, 0x1234_5678), 0x4000_1678);
        assert_eq!(par_address(0x4000_1000, 0xffff_0000_0000_0abc), Some(0x4000_1abc));
        assert_eq!(par_address(0x4000_1001, 0), None);
        // Permission fault, level 3 (0b001111), not on a walk: use AT.
        assert!(hpfar_unreliable(0x0f));
        assert!(!hpfar_unreliable(0x0f | 1 << 7));
        // Translation fault, level 3: HPFAR is good.
        assert!(!hpfar_unreliable(0x07));
    }
}
