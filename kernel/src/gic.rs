//! The GICv2 (GIC-400 on the Raspberry Pi 4) as the kernel uses it: one
//! CPU, every interrupt a PD handles routed to it, masked at the
//! distributor from delivery until the PD acknowledges it.
//!
//! Offsets follow the GICv2 Architecture Specification (Arm IHI 0048B),
//! sections 4.1.2 (distributor) and 4.1.3 (CPU interface).

use core::mem::offset_of;

/// The distributor registers the kernel uses, from offset 0.
#[repr(C)]
pub struct Distributor {
    /// 0x000 GICD_CTLR.
    pub ctlr: u32,
    /// 0x004 GICD_TYPER.
    pub typer: u32,
    _reserved0: [u32; 30],
    /// 0x080 GICD_IGROUPRn.
    pub igroupr: [u32; 32],
    /// 0x100 GICD_ISENABLERn.
    pub isenabler: [u32; 32],
    /// 0x180 GICD_ICENABLERn.
    pub icenabler: [u32; 32],
    /// 0x200 GICD_ISPENDRn.
    pub ispendr: [u32; 32],
    /// 0x280 GICD_ICPENDRn.
    pub icpendr: [u32; 32],
    /// 0x300 GICD_ISACTIVERn.
    pub isactiver: [u32; 32],
    /// 0x380 GICD_ICACTIVERn.
    pub icactiver: [u32; 32],
    /// 0x400 GICD_IPRIORITYRn (one byte per interrupt).
    pub ipriorityr: [u32; 255],
    _reserved1: u32,
    /// 0x800 GICD_ITARGETSRn (one byte per interrupt).
    pub itargetsr: [u32; 255],
    _reserved2: u32,
    /// 0xC00 GICD_ICFGRn (two bits per interrupt).
    pub icfgr: [u32; 64],
}

/// The CPU interface registers the kernel uses.
#[repr(C)]
pub struct CpuInterface {
    /// 0x00 GICC_CTLR.
    pub ctlr: u32,
    /// 0x04 GICC_PMR.
    pub pmr: u32,
    /// 0x08 GICC_BPR.
    pub bpr: u32,
    /// 0x0C GICC_IAR.
    pub iar: u32,
    /// 0x10 GICC_EOIR.
    pub eoir: u32,
}

/// INTIDs from 1020 up are special: 1023 means "nothing pending".
pub const SPURIOUS: u32 = 1020;
/// Interrupts a GICv2 can have.
pub const MAX_INTID: u32 = 1019;

/// Where one interrupt's bits are: register index and bit (or byte) mask.
#[must_use]
pub const fn enable_bit(intid: u32) -> (usize, u32) {
    ((intid / 32) as usize, 1 << (intid % 32))
}

/// Register index and shift of an interrupt's two-bit config field.
#[must_use]
pub const fn config_field(intid: u32) -> (usize, u32) {
    ((intid / 16) as usize, (intid % 16) * 2 + 1)
}

/// Register index and shift of an interrupt's byte in a byte-per-
/// interrupt register array (priority, targets).
#[must_use]
pub const fn byte_field(intid: u32) -> (usize, u32) {
    ((intid / 4) as usize, (intid % 4) * 8)
}

const _: () = {
    assert!(offset_of!(Distributor, igroupr) == 0x80);
    assert!(offset_of!(Distributor, isenabler) == 0x100);
    assert!(offset_of!(Distributor, icenabler) == 0x180);
    assert!(offset_of!(Distributor, ipriorityr) == 0x400);
    assert!(offset_of!(Distributor, itargetsr) == 0x800);
    assert!(offset_of!(Distributor, icfgr) == 0xC00);
    assert!(offset_of!(CpuInterface, iar) == 0x0C);
    assert!(offset_of!(CpuInterface, eoir) == 0x10);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_an_interrupt_are_where_the_spec_puts_them() {
        assert_eq!(enable_bit(33), (1, 1 << 1));
        assert_eq!(config_field(33), (2, 3), "ICFGR2, bit 3 = Int_config[1] of INTID 33");
        assert_eq!(byte_field(33), (8, 8));
        assert_eq!(enable_bit(26), (0, 1 << 26));
    }
}
