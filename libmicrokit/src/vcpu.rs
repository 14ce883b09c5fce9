//! vCPUs and the memory manager's stage-2 control: Microkit's
//! `microkit_vcpu_*` calls as methods of [`Vcpu`], and the kernel's
//! stage-2 methods as methods of [`Stage2Control`].
//!
//! Each method is one `Invoke` syscall ([`tenure_abi::vcpu`] gives the
//! labels and argument registers). What goes into the registers is built
//! by plain functions ([`Vcpu::invocation`], [`Stage2Control::invocation`])
//! that the host tests check; the methods that trap exist on the target
//! only. The kernel checks every argument (an INTID below 1020, a priority
//! up to 31, a list register that exists, an address in the guest pool)
//! and refuses with [`Error::InvalidArgument`]; the runtime does not check
//! them a second time.
//!
//! | Microkit | here |
//! |---|---|
//! | `microkit_vcpu_restart(vcpu, pc)` | `Vcpu::restart` |
//! | `microkit_vcpu_stop(vcpu)` | `Vcpu::stop` |
//! | `microkit_vcpu_arm_read_reg(vcpu, reg)` | `Vcpu::arm_read_reg` |
//! | `microkit_vcpu_arm_write_reg(vcpu, reg, value)` | `Vcpu::arm_write_reg` |
//! | `microkit_vcpu_arm_inject_irq(vcpu, irq, prio, group, index)` | `Vcpu::arm_inject_irq` (no group: GICv2 list registers here carry group 0) |
//! | `microkit_vcpu_arm_ack_vppi(vcpu, irq)` | `Vcpu::arm_ack_vppi` |
//!
//! Microkit crashes the PD when the kernel refuses one of these; here the
//! refusal comes back as a [`tenure_abi::Error`], for the VMM to decide.

use crate::ipc::MessageInfo;
use tenure_abi::vcpu::{VcpuReg, stage2_method, vcpu_method};
use tenure_abi::{Error, MAX_CHANNEL_ID, Slot};

/// A vCPU this PD controls, by the `id` system.xml gives it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Vcpu(usize);

impl Vcpu {
    /// vCPU `index`; panics (at compile time in a `const`) beyond 61.
    #[must_use]
    pub const fn new(index: usize) -> Self {
        assert!(index <= MAX_CHANNEL_ID as usize, "vCPU ids are 0..=61");
        Vcpu(index)
    }

    /// The vCPU id.
    #[must_use]
    pub const fn index(self) -> usize {
        self.0
    }

    /// The capability slot of this vCPU.
    #[must_use]
    pub const fn slot(self) -> Slot {
        Slot::vcpu(self.0 as u8)
    }

    /// The registers of `call` on this vCPU.
    #[must_use]
    pub const fn invocation(self, call: VcpuCall) -> Invocation {
        let (method, arg, mrs) = match call {
            VcpuCall::Restart { pc } => (vcpu_method::RESTART, pc, Mrs::None),
            VcpuCall::Stop => (vcpu_method::STOP, 0, Mrs::None),
            VcpuCall::ReadReg(reg) => (vcpu_method::READ_REG, reg.raw(), Mrs::None),
            VcpuCall::WriteReg(reg, value) => (vcpu_method::WRITE_REG, reg.raw(), Mrs::One(value)),
            VcpuCall::InjectIrq { irq, priority, list_register } => (
                vcpu_method::INJECT_IRQ,
                irq as u64,
                Mrs::Two(priority as u64, list_register as u64),
            ),
            VcpuCall::AckVppi { irq } => (vcpu_method::ACK_VPPI, irq as u64, Mrs::None),
        };
        Invocation::new(self.slot(), method, arg, mrs)
    }
}

/// A register `Vcpu::arm_read_reg` and `Vcpu::arm_write_reg` name:
/// a general-purpose register or one of the ABI's named registers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reg {
    /// `xN`, N in `0..=30` (build with [`Reg::x`]).
    X(u8),
    /// A named register (PC, PSTATE, the EL1 system registers).
    Named(VcpuReg),
}

impl Reg {
    /// The PC.
    pub const PC: Reg = Reg::Named(VcpuReg::Pc);
    /// PSTATE.
    pub const PSTATE: Reg = Reg::Named(VcpuReg::Pstate);

    /// `xN`; `None` for N above 30 (31 encodes the zero register or SP in
    /// instructions, neither of which is a saved register).
    #[must_use]
    pub const fn x(n: u64) -> Option<Reg> {
        if n <= 30 { Some(Reg::X(n as u8)) } else { None }
    }

    /// The register number of the ABI: `x0..=x30` are 0..=30, the named
    /// registers follow.
    #[must_use]
    pub const fn raw(self) -> u64 {
        match self {
            Reg::X(n) => n as u64,
            Reg::Named(r) => r as u64,
        }
    }
}

/// A call on a vCPU capability.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VcpuCall {
    /// `RESTART`: run from `pc`, the other registers as set.
    Restart {
        /// Where the guest resumes.
        pc: u64,
    },
    /// `STOP`.
    Stop,
    /// `READ_REG`; the value comes back in `x1`.
    ReadReg(Reg),
    /// `WRITE_REG`: the value goes in MR0.
    WriteReg(Reg, u64),
    /// `INJECT_IRQ`.
    InjectIrq {
        /// The virtual INTID (below 1020).
        irq: u16,
        /// GICv2 priority, 0..=31 (the five bits of a list register).
        priority: u8,
        /// The list register to use.
        list_register: u8,
    },
    /// `ACK_VPPI`: unmask the virtual timer's interrupt.
    AckVppi {
        /// The INTID the `VppiEvent` named (as Microkit passes it).
        irq: u16,
    },
}

/// The memory manager's stage-2 control capability
/// ([`Slot::STAGE2_CONTROL`]); only the mm PD holds it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Stage2Control;

/// A call on the stage-2 control capability, one per
/// [`tenure_abi::vcpu::stage2_method`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stage2Call {
    /// `INSTALL`.
    Install {
        /// The VM, by its index in system.xml order.
        vm: u64,
        /// Physical address of the two concatenated level-1 root pages.
        root: u64,
        /// The VMID system.xml gives the VM.
        vmid: u64,
    },
    /// `UNINSTALL`.
    Uninstall {
        /// The VM, by its index in system.xml order.
        vm: u64,
    },
    /// `INVALIDATE_RANGE`: IPAs `[start, end)` of `vmid`.
    InvalidateRange {
        /// The VMID.
        vmid: u64,
        /// First IPA.
        start: u64,
        /// First IPA past the range.
        end: u64,
    },
    /// `INVALIDATE_VMID`.
    InvalidateVmid {
        /// The VMID.
        vmid: u64,
    },
    /// `CLEAN_TO_POC`.
    CleanToPoc {
        /// First physical address.
        pa: u64,
        /// Bytes.
        bytes: u64,
    },
    /// `LINK_WINDOW`.
    LinkWindow {
        /// The PD whose window it is, by its index in system.xml order.
        pd: u64,
        /// Physical address of the level-2 table.
        table: u64,
    },
}

impl Stage2Control {
    /// The registers of `call`.
    #[must_use]
    pub const fn invocation(self, call: Stage2Call) -> Invocation {
        let (method, arg, mrs) = match call {
            Stage2Call::Install { vm, root, vmid } => {
                (stage2_method::INSTALL, vm, Mrs::Two(root, vmid))
            }
            Stage2Call::Uninstall { vm } => (stage2_method::UNINSTALL, vm, Mrs::None),
            Stage2Call::InvalidateRange { vmid, start, end } => {
                (stage2_method::INVALIDATE_RANGE, vmid, Mrs::Two(start, end))
            }
            Stage2Call::InvalidateVmid { vmid } => {
                (stage2_method::INVALIDATE_VMID, vmid, Mrs::None)
            }
            Stage2Call::CleanToPoc { pa, bytes } => {
                (stage2_method::CLEAN_TO_POC, 0, Mrs::Two(pa, bytes))
            }
            Stage2Call::LinkWindow { pd, table } => {
                (stage2_method::LINK_WINDOW, pd, Mrs::One(table))
            }
        };
        Invocation::new(Slot::STAGE2_CONTROL, method, arg, mrs)
    }
}

/// Message registers an invocation passes.
#[derive(Clone, Copy)]
enum Mrs {
    None,
    One(u64),
    Two(u64, u64),
}

/// The registers of one `Invoke`: `x0` the slot, `x1` the message info
/// (label: the method; length: the message registers used), `x6` the
/// first argument, `x2`/`x3` message registers 0 and 1.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Invocation {
    /// The capability, `x0`.
    pub slot: Slot,
    /// The method and the number of message registers, `x1`.
    pub info: MessageInfo,
    /// The first argument, `x6`.
    pub arg: u64,
    /// MR0 and MR1, `x2` and `x3` (zero where unused).
    pub mrs: [u64; 2],
}

impl Invocation {
    const fn new(slot: Slot, method: u64, arg: u64, mrs: Mrs) -> Invocation {
        let (count, mrs) = match mrs {
            Mrs::None => (0, [0, 0]),
            Mrs::One(a) => (1, [a, 0]),
            Mrs::Two(a, b) => (2, [a, b]),
        };
        // Methods are small constants and count is at most 2, always in
        // range of the message info word.
        let info = match MessageInfo::new(method, count) {
            Some(info) => info,
            None => MessageInfo::from_raw(0).unwrap(),
        };
        Invocation { slot, info, arg, mrs }
    }
}

/// What an invocation's `x0` and `x1` mean: an error code, and the
/// value `READ_REG` returns. A code this ABI does not define is reported
/// as [`Error::IllegalOperation`], never as success.
pub fn decode_result(x0: u64, x1: u64) -> Result<u64, Error> {
    match Error::from_raw(x0) {
        Some(Ok(())) => Ok(x1),
        Some(Err(e)) => Err(e),
        None => Err(Error::IllegalOperation),
    }
}

#[cfg(target_os = "none")]
impl Invocation {
    /// Traps into the kernel; the value `x1` returns on success.
    fn perform(self) -> Result<u64, Error> {
        let (x0, x1) = crate::sys::invoke(
            self.slot.0.into(),
            self.info.raw(),
            self.arg,
            self.mrs[0],
            self.mrs[1],
        );
        decode_result(x0, x1)
    }
}

#[cfg(target_os = "none")]
impl Vcpu {
    /// Starts the vCPU at `pc` (`microkit_vcpu_restart`).
    pub fn restart(self, pc: u64) -> Result<(), Error> {
        self.invocation(VcpuCall::Restart { pc }).perform().map(drop)
    }

    /// Stops the vCPU (`microkit_vcpu_stop`).
    pub fn stop(self) -> Result<(), Error> {
        self.invocation(VcpuCall::Stop).perform().map(drop)
    }

    /// Reads a register of the stopped vCPU (`microkit_vcpu_arm_read_reg`).
    pub fn arm_read_reg(self, reg: Reg) -> Result<u64, Error> {
        self.invocation(VcpuCall::ReadReg(reg)).perform()
    }

    /// Writes a register of the stopped vCPU
    /// (`microkit_vcpu_arm_write_reg`).
    pub fn arm_write_reg(self, reg: Reg, value: u64) -> Result<(), Error> {
        self.invocation(VcpuCall::WriteReg(reg, value)).perform().map(drop)
    }

    /// Makes virtual interrupt `irq` pending in list register
    /// `list_register` at `priority` (`microkit_vcpu_arm_inject_irq`).
    pub fn arm_inject_irq(self, irq: u16, priority: u8, list_register: u8) -> Result<(), Error> {
        self.invocation(VcpuCall::InjectIrq { irq, priority, list_register }).perform().map(drop)
    }

    /// Unmasks the virtual timer's interrupt after a `VppiEvent`
    /// (`microkit_vcpu_arm_ack_vppi`).
    pub fn arm_ack_vppi(self, irq: u16) -> Result<(), Error> {
        self.invocation(VcpuCall::AckVppi { irq }).perform().map(drop)
    }
}

#[cfg(target_os = "none")]
impl Stage2Control {
    /// Installs VM `vm`'s stage-2 table at `root` under `vmid`.
    pub fn install(self, vm: u64, root: u64, vmid: u64) -> Result<(), Error> {
        self.invocation(Stage2Call::Install { vm, root, vmid }).perform().map(drop)
    }

    /// Stops VM `vm`'s vCPUs and forgets its table.
    pub fn uninstall(self, vm: u64) -> Result<(), Error> {
        self.invocation(Stage2Call::Uninstall { vm }).perform().map(drop)
    }

    /// Invalidates the TLB entries of `vmid` for IPAs `[start, end)`.
    pub fn invalidate_range(self, vmid: u64, start: u64, end: u64) -> Result<(), Error> {
        self.invocation(Stage2Call::InvalidateRange { vmid, start, end }).perform().map(drop)
    }

    /// Invalidates every TLB entry of `vmid`.
    pub fn invalidate_vmid(self, vmid: u64) -> Result<(), Error> {
        self.invocation(Stage2Call::InvalidateVmid { vmid }).perform().map(drop)
    }

    /// Cleans and invalidates `bytes` from physical address `pa` to the
    /// point of coherency.
    pub fn clean_to_poc(self, pa: u64, bytes: u64) -> Result<(), Error> {
        self.invocation(Stage2Call::CleanToPoc { pa, bytes }).perform().map(drop)
    }

    /// Links the level-2 table at `table` as PD `pd`'s window.
    pub fn link_window(self, pd: u64, table: u64) -> Result<(), Error> {
        self.invocation(Stage2Call::LinkWindow { pd, table }).perform().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(i: Invocation) -> (u16, u64, usize, u64, [u64; 2]) {
        (i.slot.0, i.info.label(), i.info.count(), i.arg, i.mrs)
    }

    #[test]
    fn vcpu_calls_use_the_abis_labels_and_registers() {
        let v = Vcpu::new(3);
        let slot = Slot::BASE_VCPU + 3;
        let cases = [
            (VcpuCall::Restart { pc: 0x4008_0000 }, (slot, 1, 0, 0x4008_0000, [0, 0])),
            (VcpuCall::Stop, (slot, 2, 0, 0, [0, 0])),
            (VcpuCall::ReadReg(Reg::PC), (slot, 3, 0, 31, [0, 0])),
            (VcpuCall::ReadReg(Reg::x(30).unwrap()), (slot, 3, 0, 30, [0, 0])),
            (VcpuCall::WriteReg(Reg::x(0).unwrap(), 7), (slot, 4, 1, 0, [7, 0])),
            (
                VcpuCall::WriteReg(Reg::Named(VcpuReg::EsrEl1), 0x9600_0010),
                (slot, 4, 1, VcpuReg::EsrEl1 as u64, [0x9600_0010, 0]),
            ),
            (
                VcpuCall::InjectIrq { irq: 27, priority: 31, list_register: 2 },
                (slot, 5, 2, 27, [31, 2]),
            ),
            (VcpuCall::AckVppi { irq: 27 }, (slot, 6, 0, 27, [0, 0])),
        ];
        for (call, want) in cases {
            assert_eq!(regs(v.invocation(call)), want, "{call:?}");
        }
    }

    #[test]
    fn stage2_calls_use_the_abis_labels_and_registers() {
        let s = Slot::STAGE2_CONTROL.0;
        let cases = [
            (
                Stage2Call::Install { vm: 1, root: 0x5000_0000, vmid: 9 },
                (s, 1, 2, 1, [0x5000_0000, 9]),
            ),
            (Stage2Call::Uninstall { vm: 1 }, (s, 2, 0, 1, [0, 0])),
            (
                Stage2Call::InvalidateRange { vmid: 9, start: 0x1000, end: 0x3000 },
                (s, 3, 2, 9, [0x1000, 0x3000]),
            ),
            (Stage2Call::InvalidateVmid { vmid: 9 }, (s, 4, 0, 9, [0, 0])),
            (
                Stage2Call::CleanToPoc { pa: 0x5000_1000, bytes: 4096 },
                (s, 5, 2, 0, [0x5000_1000, 4096]),
            ),
            (Stage2Call::LinkWindow { pd: 2, table: 0x5010_0000 }, (s, 6, 1, 2, [0x5010_0000, 0])),
        ];
        for (call, want) in cases {
            assert_eq!(regs(Stage2Control.invocation(call)), want, "{call:?}");
        }
    }

    #[test]
    fn registers_are_numbered_as_the_abi_says() {
        assert_eq!(Reg::x(31), None);
        assert_eq!(Reg::x(u64::MAX), None);
        assert_eq!(Reg::PSTATE.raw(), 32);
        for r in VcpuReg::ALL {
            assert_eq!(VcpuReg::from_raw(Reg::Named(r).raw()), Some(r));
        }
    }

    #[test]
    fn results_decode_to_values_or_errors() {
        assert_eq!(decode_result(0, 42), Ok(42));
        assert_eq!(decode_result(4, 42), Err(Error::InvalidArgument));
        assert_eq!(decode_result(1, 0), Err(Error::InvalidCapability));
        assert_eq!(decode_result(99, 0), Err(Error::IllegalOperation));
        assert_eq!(decode_result(u64::MAX, 0), Err(Error::IllegalOperation));
    }

    #[test]
    #[should_panic(expected = "vCPU ids are 0..=61")]
    fn vcpu_62_does_not_exist() {
        let _ = Vcpu::new(62);
    }
}
