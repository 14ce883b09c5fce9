//! Guests: the methods of vCPU capabilities and of the memory manager's
//! stage-2 control capability, and what a guest exit tells the VMM.
//!
//! # vCPUs
//!
//! A vCPU is scheduled like a PD (its VM's priority, budget and period)
//! and runs the guest at EL1 over the VM's stage-2 table. It starts
//! stopped; its VMM sets its registers and restarts it. Every guest exit
//! the kernel does not handle itself stops the vCPU and reaches the VMM's
//! `fault` entry as a fault message, badge `BADGE_FAULT | vcpu id`, whose
//! label is an [`Exit`]; replying resumes the vCPU where it stopped (the
//! VMM moves the PC past what it emulated with [`VcpuReg::Pc`]).
//!
//! | exit | MR0 | MR1 | MR2 | MR3 |
//! |---|---|---|---|---|
//! | [`Exit::VmFault`] | PC | IPA | ESR_EL2 | guest VA (FAR_EL2) |
//! | [`Exit::VcpuFault`] | PC | 0 | ESR_EL2 | 0 |
//! | [`Exit::VgicMaintenance`] | list register index, or `u64::MAX` | 0 | 0 | 0 |
//! | [`Exit::VppiEvent`] | INTID | 0 | 0 | 0 |
//!
//! `VcpuFault` covers HVC (the PC is past the HVC), SMC (trapped: the PC
//! is at the SMC), WFI and WFE (trapped: the PC is at the instruction) and
//! trapped system register accesses; ESR_EL2's class tells them apart
//! (Arm ARM D24.2.40, ESR_EL2).
//!
//! # Stage-2 control
//!
//! The memory-manager PD holds one [`crate::Slot::STAGE2_CONTROL`]
//! capability. Physical addresses it passes must lie in the guest pool the
//! boot image declares; the kernel refuses anything else with
//! `InvalidArgument` and changes nothing.

/// Methods on a vCPU capability: the label of `x1` in `Invoke`, with the
/// argument in `x6` and further ones in message registers.
pub mod vcpu_method {
    /// Start the vCPU at the PC in `x6` (the other registers as set).
    pub const RESTART: u64 = 1;
    /// Stop the vCPU.
    pub const STOP: u64 = 2;
    /// Read register `x6` (a [`super::VcpuReg`]); the value returns in `x1`.
    pub const READ_REG: u64 = 3;
    /// Write MR0 to register `x6` (a [`super::VcpuReg`]).
    pub const WRITE_REG: u64 = 4;
    /// Make virtual interrupt `x6` (an INTID below 1020) pending in list
    /// register MR1 at priority MR0 (0..=31, GICv2's 5 bits), with a
    /// maintenance exit when the guest ends it.
    pub const INJECT_IRQ: u64 = 5;
    /// Unmask the virtual timer's interrupt after a
    /// [`super::Exit::VppiEvent`].
    pub const ACK_VPPI: u64 = 6;
}

/// Methods on the stage-2 control capability.
pub mod stage2_method {
    /// Install the stage-2 table of VM `x6` (its index in system.xml
    /// order): root at MR0 (8 KiB aligned: two concatenated level-1
    /// pages), under the VM's VMID, which MR1 must name.
    pub const INSTALL: u64 = 1;
    /// Stop every vCPU of VM `x6`, forget its table and invalidate every
    /// TLB entry of its VMID, so that its table may be taken apart.
    pub const UNINSTALL: u64 = 2;
    /// Invalidate the stage-2 and combined TLB entries of VMID `x6` for
    /// IPAs `[MR0, MR1)`.
    pub const INVALIDATE_RANGE: u64 = 3;
    /// Invalidate every TLB entry of VMID `x6`.
    pub const INVALIDATE_VMID: u64 = 4;
    /// Clean and invalidate `MR1` bytes from physical address `MR0` to the
    /// point of coherency.
    pub const CLEAN_TO_POC: u64 = 5;
    /// Link the level-2 table at MR0 into PD `x6`'s stage-2 table as its
    /// window: the 1 GiB at [`super::WINDOW_IPA`].
    pub const LINK_WINDOW: u64 = 6;
}

/// Where a client PD of the memory manager sees its window: 1 GiB of its
/// address space (the first of its upper half, well away from the stack
/// and IPC buffer at its top) whose level-2 table the memory manager owns.
pub const WINDOW_IPA: u64 = 0x80_0000_0000;
/// Size of a window.
pub const WINDOW_SIZE: u64 = 1 << 30;

/// Why a vCPU stopped: the label of its fault message (seL4's MCS
/// numbering, as libvmm decodes it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum Exit {
    /// A stage-2 translation or permission fault.
    VmFault = 6,
    /// A list register with a maintenance request was ended by the guest.
    VgicMaintenance = 7,
    /// HVC, SMC, WFI/WFE or a trapped system register access.
    VcpuFault = 8,
    /// The virtual timer fired.
    VppiEvent = 9,
}

impl Exit {
    /// The exit a fault label names, if it names one.
    #[must_use]
    pub const fn from_label(label: u64) -> Option<Exit> {
        match label {
            6 => Some(Exit::VmFault),
            7 => Some(Exit::VgicMaintenance),
            8 => Some(Exit::VcpuFault),
            9 => Some(Exit::VppiEvent),
            _ => None,
        }
    }
}

/// The registers `READ_REG` and `WRITE_REG` name: `x0`..`x30` are 0..=30,
/// then the rest in this order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum VcpuReg {
    /// The guest's PC (ELR_EL2 while it is stopped).
    Pc = 31,
    /// The guest's PSTATE (SPSR_EL2 while it is stopped).
    Pstate,
    /// SP_EL0.
    SpEl0,
    /// SP_EL1.
    SpEl1,
    /// ELR_EL1.
    ElrEl1,
    /// SPSR_EL1.
    SpsrEl1,
    /// SCTLR_EL1.
    SctlrEl1,
    /// CPACR_EL1.
    CpacrEl1,
    /// TTBR0_EL1.
    Ttbr0El1,
    /// TTBR1_EL1.
    Ttbr1El1,
    /// TCR_EL1.
    TcrEl1,
    /// MAIR_EL1.
    MairEl1,
    /// AMAIR_EL1.
    AmairEl1,
    /// CONTEXTIDR_EL1.
    ContextidrEl1,
    /// AFSR0_EL1.
    Afsr0El1,
    /// AFSR1_EL1.
    Afsr1El1,
    /// ESR_EL1.
    EsrEl1,
    /// FAR_EL1.
    FarEl1,
    /// PAR_EL1.
    ParEl1,
    /// VBAR_EL1.
    VbarEl1,
    /// TPIDR_EL1.
    TpidrEl1,
    /// TPIDR_EL0.
    TpidrEl0,
    /// TPIDRRO_EL0.
    TpidrroEl0,
    /// CSSELR_EL1: the cache level CCSIDR_EL1 describes.
    CsselrEl1,
    /// CNTKCTL_EL1.
    CntkctlEl1,
    /// CNTV_CTL_EL0.
    CntvCtl,
    /// CNTV_CVAL_EL0.
    CntvCval,
    /// CNTVOFF_EL2.
    Cntvoff,
    /// VMPIDR_EL2: the MPIDR_EL1 the guest reads.
    Vmpidr,
}

impl VcpuReg {
    /// Registers after `x30`, in order.
    pub const ALL: [VcpuReg; 29] = [
        VcpuReg::Pc,
        VcpuReg::Pstate,
        VcpuReg::SpEl0,
        VcpuReg::SpEl1,
        VcpuReg::ElrEl1,
        VcpuReg::SpsrEl1,
        VcpuReg::SctlrEl1,
        VcpuReg::CpacrEl1,
        VcpuReg::Ttbr0El1,
        VcpuReg::Ttbr1El1,
        VcpuReg::TcrEl1,
        VcpuReg::MairEl1,
        VcpuReg::AmairEl1,
        VcpuReg::ContextidrEl1,
        VcpuReg::Afsr0El1,
        VcpuReg::Afsr1El1,
        VcpuReg::EsrEl1,
        VcpuReg::FarEl1,
        VcpuReg::ParEl1,
        VcpuReg::VbarEl1,
        VcpuReg::TpidrEl1,
        VcpuReg::TpidrEl0,
        VcpuReg::TpidrroEl0,
        VcpuReg::CsselrEl1,
        VcpuReg::CntkctlEl1,
        VcpuReg::CntvCtl,
        VcpuReg::CntvCval,
        VcpuReg::Cntvoff,
        VcpuReg::Vmpidr,
    ];

    /// Number of registers, `x0` included.
    pub const COUNT: usize = 31 + Self::ALL.len();

    /// Decodes a register number; `None` for `x0..=x30` (those are plain
    /// indices) and for unknown numbers.
    #[must_use]
    pub fn from_raw(raw: u64) -> Option<VcpuReg> {
        let i = usize::try_from(raw.checked_sub(31)?).ok()?;
        Self::ALL.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_numbered_in_order_after_x30() {
        for (i, reg) in VcpuReg::ALL.iter().enumerate() {
            assert_eq!(*reg as u64, 31 + i as u64);
            assert_eq!(VcpuReg::from_raw(31 + i as u64), Some(*reg));
        }
        assert_eq!(VcpuReg::from_raw(30), None);
        assert_eq!(VcpuReg::from_raw(VcpuReg::COUNT as u64), None);
        assert_eq!(VcpuReg::from_raw(u64::MAX), None);
    }

    #[test]
    fn exits_round_trip_through_labels() {
        for exit in [Exit::VmFault, Exit::VgicMaintenance, Exit::VcpuFault, Exit::VppiEvent] {
            assert_eq!(Exit::from_label(exit as u64), Some(exit));
        }
        assert_eq!(Exit::from_label(3), None);
    }

    #[test]
    fn the_window_is_one_level_1_entry_below_the_stack() {
        const { assert!(WINDOW_IPA + WINDOW_SIZE < 0xff_ffff_e000 - (16 << 20)) };
        const { assert!(WINDOW_IPA.is_multiple_of(WINDOW_SIZE)) };
    }
}
