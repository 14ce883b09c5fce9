//! What the VMM needs of its guest's vCPU, and the PSTATE fields it
//! sets (Arm ARM C5.2, SPSR_EL2: the form PSTATE is saved in on an exit).

use microkit::Reg;
use tenure_abi::Error;

/// The vCPU, as the VMM uses it. On the target each method is one
/// invocation on the vCPU capability ([`microkit::Vcpu`] implements it);
/// host tests use a fake that records registers.
pub trait GuestVcpu {
    /// Reads a register of the stopped vCPU.
    fn read(&mut self, reg: Reg) -> Result<u64, Error>;
    /// Writes a register of the stopped vCPU.
    fn write(&mut self, reg: Reg, value: u64) -> Result<(), Error>;
    /// Makes virtual interrupt `irq` pending in list register
    /// `list_register` at GICv2 priority `priority` (0..=31).
    fn inject_irq(&mut self, irq: u16, priority: u8, list_register: u8) -> Result<(), Error>;
    /// Unmasks the virtual timer's interrupt `irq` after a VPPI exit.
    fn ack_vppi(&mut self, irq: u16) -> Result<(), Error>;
}

#[cfg(target_os = "none")]
impl GuestVcpu for microkit::Vcpu {
    fn read(&mut self, reg: Reg) -> Result<u64, Error> {
        self.arm_read_reg(reg)
    }

    fn write(&mut self, reg: Reg, value: u64) -> Result<(), Error> {
        self.arm_write_reg(reg, value)
    }

    fn inject_irq(&mut self, irq: u16, priority: u8, list_register: u8) -> Result<(), Error> {
        self.arm_inject_irq(irq, priority, list_register)
    }

    fn ack_vppi(&mut self, irq: u16) -> Result<(), Error> {
        self.arm_ack_vppi(irq)
    }
}

/// PSTATE as SPSR_ELx holds it.
pub mod pstate {
    /// M, bits 4:0: the mode; bit 4 set means AArch32.
    pub const M_MASK: u64 = 0x1f;
    /// M bit 4, nRW: the guest was in AArch32 state.
    pub const NRW: u64 = 1 << 4;
    /// M = EL0t.
    pub const EL0T: u64 = 0b0000;
    /// M = EL1t: EL1 on SP_EL0.
    pub const EL1T: u64 = 0b0100;
    /// M = EL1h: EL1 on SP_EL1.
    pub const EL1H: u64 = 0b0101;
    /// F, bit 6: FIQs masked.
    pub const F: u64 = 1 << 6;
    /// I, bit 7: IRQs masked.
    pub const I: u64 = 1 << 7;
    /// A, bit 8: SErrors masked.
    pub const A: u64 = 1 << 8;
    /// D, bit 9: debug exceptions masked.
    pub const D: u64 = 1 << 9;
    /// D, A, I and F together.
    pub const DAIF: u64 = D | A | I | F;
    /// EL1h with every exception masked: how a guest is entered, and how
    /// an exception taken to EL1 leaves PSTATE (Arm ARM D1, "Exception
    /// entry").
    pub const EL1H_MASKED: u64 = EL1H | DAIF;
}

#[cfg(test)]
pub(crate) mod fake {
    //! A vCPU for host tests: a register file and a log of interrupt
    //! calls, with an optional register that refuses access.

    use super::{Error, GuestVcpu, Reg};
    use tenure_abi::vcpu::VcpuReg;

    /// The registers a [`FakeVcpu`] holds: x0..x30 then the named ones.
    pub const REGS: usize = VcpuReg::COUNT;

    /// A vCPU in memory.
    #[derive(Clone, Debug)]
    pub struct FakeVcpu {
        /// Every register, by its ABI number.
        pub regs: [u64; REGS],
        /// `(irq, priority, list register)` of each injection.
        pub injected: Vec<(u16, u8, u8)>,
        /// INTIDs acked.
        pub acked: Vec<u16>,
        /// Registers written, in order.
        pub writes: Vec<(Reg, u64)>,
        /// A register whose reads and writes the "kernel" refuses.
        pub refuse: Option<Reg>,
    }

    impl Default for FakeVcpu {
        fn default() -> Self {
            FakeVcpu {
                regs: [0; REGS],
                injected: Vec::new(),
                acked: Vec::new(),
                writes: Vec::new(),
                refuse: None,
            }
        }
    }

    impl FakeVcpu {
        /// The value of `reg`.
        pub fn get(&self, reg: Reg) -> u64 {
            self.regs[reg.raw() as usize]
        }

        /// Sets `reg` without logging a write.
        pub fn set(&mut self, reg: Reg, value: u64) {
            self.regs[reg.raw() as usize] = value;
        }

        /// Sets `xN`.
        pub fn set_x(&mut self, n: u64, value: u64) {
            self.set(Reg::x(n).unwrap(), value);
        }

        /// `xN`.
        pub fn x(&self, n: u64) -> u64 {
            self.get(Reg::x(n).unwrap())
        }

        /// A named register.
        pub fn named(&self, reg: VcpuReg) -> u64 {
            self.get(Reg::Named(reg))
        }
    }

    impl GuestVcpu for FakeVcpu {
        fn read(&mut self, reg: Reg) -> Result<u64, Error> {
            if self.refuse == Some(reg) {
                return Err(Error::InvalidState);
            }
            Ok(self.get(reg))
        }

        fn write(&mut self, reg: Reg, value: u64) -> Result<(), Error> {
            if self.refuse == Some(reg) {
                return Err(Error::InvalidState);
            }
            self.writes.push((reg, value));
            self.set(reg, value);
            Ok(())
        }

        fn inject_irq(&mut self, irq: u16, priority: u8, list_register: u8) -> Result<(), Error> {
            self.injected.push((irq, priority, list_register));
            Ok(())
        }

        fn ack_vppi(&mut self, irq: u16) -> Result<(), Error> {
            self.acked.push(irq);
            Ok(())
        }
    }
}
