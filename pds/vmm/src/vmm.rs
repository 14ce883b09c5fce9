//! The decision for each exit: emulate, ask mm, answer, inject, or stop.

use crate::console::{Console, LineBuffer};
use crate::esr::{Access, DataAbort, Fault, FaultKind, Wfx};
use crate::exit::{self, Event};
use crate::inject::{self, Exception, Injected, Reason};
use crate::layout::{Layout, LayoutError, Region};
use crate::memory::{self, MemOutcome, MmClient};
use crate::smccc::{self, Answer, Call, Conduit, Halt};
use crate::vcpu::GuestVcpu;
use crate::vgic::{IrqDecision, ListRegisters};
use crate::{VmmError, pl011};
use microkit::Reg;
use tenure_abi::hvc::Ret;
use tenure_abi::mm::MmError;

/// Bytes of an A64 instruction: how far the PC moves past one the VMM
/// emulated.
const INSTRUCTION: u64 = 4;

/// An emulated device.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Device {
    /// The PL011.
    Pl011,
    /// The GIC distributor: reads as zero, ignores writes, until the vGIC
    /// distributor is emulated.
    GicDistributor,
}

/// What the VMM did about an exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Decision {
    /// An access to an emulated device, done; the PC moved past it.
    Emulated {
        /// The device.
        device: Device,
        /// The IPA accessed.
        ipa: u64,
        /// A store (else a load).
        write: bool,
        /// The value stored, or loaded into the register.
        value: u64,
    },
    /// A cache maintenance instruction on a device address: nothing to
    /// maintain; the PC moved past it.
    CacheMaintenance {
        /// The IPA.
        ipa: u64,
    },
    /// mm populated guest RAM; the guest retries the access.
    Populated {
        /// First IPA mapped.
        ipa: u64,
        /// Pages mapped (0: the page was there already).
        pages: u64,
    },
    /// mm mapped passthrough device memory; the guest retries the access.
    MappedDevice {
        /// First IPA mapped.
        ipa: u64,
        /// Pages mapped.
        pages: u64,
    },
    /// An SMCCC call answered in `x0..=x3` (past an SMC, the PC moved on).
    Answered {
        /// The conduit.
        conduit: Conduit,
        /// The function id.
        function: u32,
        /// `x0..=x3` as written.
        x: [u64; 4],
    },
    /// A memory call, forwarded to mm and answered.
    Memory {
        /// The function id.
        function: u32,
        /// What it came to.
        outcome: MemOutcome,
    },
    /// A WFI or WFE, stepped over.
    Waited(Wfx),
    /// An exception injected into the guest.
    Injected(Injected),
    /// An interrupt exit handled.
    Irq(IrqDecision),
    /// The guest stops: the VMM does not resume it.
    Halt(Halt),
}

impl Decision {
    /// Whether the VMM resumes the guest (replies to the fault).
    #[must_use]
    pub const fn resumes(&self) -> bool {
        !matches!(self, Decision::Halt(_))
    }
}

/// The VMM of one guest with one vCPU.
#[derive(Debug)]
pub struct Vmm {
    layout: Layout,
    line: LineBuffer,
    lrs: ListRegisters,
    injections: u64,
    last_injection: Option<Injected>,
}

impl Vmm {
    /// A VMM for the guest `layout` describes.
    pub fn new(layout: Layout) -> Result<Vmm, LayoutError> {
        layout.check()?;
        Ok(Vmm {
            layout,
            line: LineBuffer::new(),
            lrs: ListRegisters::new(),
            injections: 0,
            last_injection: None,
        })
    }

    /// The guest's layout.
    #[must_use]
    pub const fn layout(&self) -> &Layout {
        &self.layout
    }

    /// How many exceptions the VMM injected, and the last one.
    #[must_use]
    pub const fn injections(&self) -> (u64, Option<Injected>) {
        (self.injections, self.last_injection)
    }

    /// Sends the console's unfinished line (before reporting, or when the
    /// guest stops).
    pub fn flush_console(&mut self, console: &mut impl Console) {
        self.line.flush(console);
    }

    /// Forgets per-run state for a guest started afresh (SYSTEM_RESET):
    /// the list registers (the kernel's are clear after a restart) and the
    /// unfinished line.
    pub fn reset(&mut self, console: &mut impl Console) {
        self.line.flush(console);
        self.lrs = ListRegisters::new();
    }

    /// Handles the exit the fault message `label`, MR0..MR3 describes.
    pub fn handle_exit(
        &mut self,
        label: u64,
        mrs: [u64; 4],
        vcpu: &mut impl GuestVcpu,
        mm: &mut impl MmClient,
        console: &mut impl Console,
    ) -> Result<Decision, VmmError> {
        let event = exit::decode(label, mrs, vcpu)?;
        self.handle(event, vcpu, mm, console)
    }

    /// Handles a decoded exit.
    pub fn handle(
        &mut self,
        event: Event,
        vcpu: &mut impl GuestVcpu,
        mm: &mut impl MmClient,
        console: &mut impl Console,
    ) -> Result<Decision, VmmError> {
        let decision = match event {
            Event::DataAbort { pc, ipa, va, abort, il } => {
                self.data_abort(pc, ipa, va, abort, il, vcpu, mm, console)?
            }
            Event::InstructionAbort { pc, ipa, va, fault, il } => {
                self.instruction_abort(pc, ipa, va, fault, il, vcpu, mm)?
            }
            Event::Call { conduit, imm, call, pc } => {
                self.call(conduit, imm, &call, pc, vcpu, mm)?
            }
            Event::Wait { kind, pc } => {
                step(vcpu, pc)?;
                Decision::Waited(kind)
            }
            Event::SysReg { pc, il, .. } => {
                self.inject(vcpu, Exception::Undefined, Reason::Untrapped, pc, il)?
            }
            Event::OtherTrap { esr, pc } => {
                self.inject(vcpu, Exception::Undefined, Reason::Untrapped, pc, esr.il())?
            }
            Event::Vppi { intid } => Decision::Irq(self.lrs.vppi(intid, vcpu)?),
            Event::Maintenance { list_register } => {
                Decision::Irq(self.lrs.maintenance(list_register, vcpu)?)
            }
        };
        if !decision.resumes() {
            self.line.flush(console);
        }
        Ok(decision)
    }

    fn inject(
        &mut self,
        vcpu: &mut impl GuestVcpu,
        exception: Exception,
        reason: Reason,
        pc: u64,
        il: bool,
    ) -> Result<Decision, VmmError> {
        let done = inject::inject(vcpu, exception, reason, pc, il)?;
        self.injections += 1;
        self.last_injection = Some(done);
        Ok(Decision::Injected(done))
    }

    #[allow(clippy::too_many_arguments, reason = "one exit's fields and the VMM's three ports")]
    fn data_abort(
        &mut self,
        pc: u64,
        ipa: u64,
        va: Option<u64>,
        abort: DataAbort,
        il: bool,
        vcpu: &mut impl GuestVcpu,
        mm: &mut impl MmClient,
        console: &mut impl Console,
    ) -> Result<Decision, VmmError> {
        let abort_with = |reason| (Exception::DataAbort(va), reason);
        let (exception, reason) = match self.layout.region(ipa) {
            Region::Ram => match abort.fault.kind() {
                FaultKind::Translation | FaultKind::AccessFlag => {
                    match populated(memory::populate(mm, &self.layout, ipa)) {
                        Ok(done) => return Ok(done),
                        Err(reason) => abort_with(reason),
                    }
                }
                _ => abort_with(Reason::Unexpected),
            },
            _ if abort.cache_maintenance => {
                step(vcpu, pc)?;
                return Ok(Decision::CacheMaintenance { ipa });
            }
            // Only a missing mapping is mm's to fix: an alignment or
            // permission fault on a mapped device page would fault again.
            Region::Passthrough(_) => match abort.fault.kind() {
                FaultKind::Translation | FaultKind::AccessFlag => {
                    match memory::map_device(mm, &self.layout, ipa) {
                        Ok((ipa, pages)) if pages > 0 => {
                            return Ok(Decision::MappedDevice { ipa, pages });
                        }
                        Ok(_) => abort_with(Reason::Refault),
                        Err(_) => abort_with(Reason::DeviceRefused),
                    }
                }
                _ => abort_with(Reason::Unexpected),
            },
            Region::Pl011(offset) => {
                match self.device(Device::Pl011, offset, ipa, pc, abort, vcpu, console)? {
                    Some(done) => return Ok(done),
                    None => abort_with(Reason::Undecodable),
                }
            }
            Region::GicDistributor(offset) => {
                match self.device(Device::GicDistributor, offset, ipa, pc, abort, vcpu, console)? {
                    Some(done) => return Ok(done),
                    None => abort_with(Reason::Undecodable),
                }
            }
            Region::Outside => abort_with(Reason::Outside),
        };
        self.inject(vcpu, exception, reason, pc, il)
    }

    /// Emulates an access to `device`; `None` if the syndrome describes
    /// no access the VMM can emulate (no ISV, a stage-1 walk, an access
    /// running past the device's end).
    #[allow(clippy::too_many_arguments, reason = "one exit's fields and the VMM's two ports")]
    fn device(
        &mut self,
        device: Device,
        offset: u64,
        ipa: u64,
        pc: u64,
        abort: DataAbort,
        vcpu: &mut impl GuestVcpu,
        console: &mut impl Console,
    ) -> Result<Option<Decision>, VmmError> {
        let Some(access) =
            abort.access.filter(|&a| !abort.fault.stage1_walk && fits(device, offset, a))
        else {
            return Ok(None);
        };
        let value = self.emulate(device, offset, access, abort.write, vcpu, console)?;
        step(vcpu, pc)?;
        Ok(Some(Decision::Emulated { device, ipa, write: abort.write, value }))
    }

    fn emulate(
        &mut self,
        device: Device,
        offset: u64,
        access: Access,
        write: bool,
        vcpu: &mut impl GuestVcpu,
        console: &mut impl Console,
    ) -> Result<u64, VmmError> {
        let mask = access.size.mask();
        if write {
            let value = match Reg::x(access.register.into()) {
                Some(reg) => vcpu.read(reg)? & mask,
                None => 0, // the zero register
            };
            if device == Device::Pl011
                && let pl011::Write::Output(byte) = pl011::write(offset, value)
            {
                self.line.push(byte, console);
            }
            Ok(value)
        } else {
            let raw = match device {
                Device::Pl011 => pl011::read(offset, access.size.bytes()),
                Device::GicDistributor => 0,
            };
            let value = load_value(raw, access);
            if let Some(reg) = Reg::x(access.register.into()) {
                vcpu.write(reg, value)?;
            }
            Ok(value)
        }
    }

    #[allow(clippy::too_many_arguments, reason = "one exit's fields and the VMM's two ports")]
    fn instruction_abort(
        &mut self,
        pc: u64,
        ipa: u64,
        va: Option<u64>,
        fault: Fault,
        il: bool,
        vcpu: &mut impl GuestVcpu,
        mm: &mut impl MmClient,
    ) -> Result<Decision, VmmError> {
        let reason = match (self.layout.region(ipa), fault.kind()) {
            (Region::Ram, FaultKind::Translation | FaultKind::AccessFlag) => {
                match populated(memory::populate(mm, &self.layout, ipa)) {
                    Ok(done) => return Ok(done),
                    Err(reason) => reason,
                }
            }
            (Region::Ram, _) => Reason::Unexpected,
            (Region::Outside, _) => Reason::Outside,
            _ => Reason::ExecuteDevice,
        };
        self.inject(vcpu, Exception::InstructionAbort(va), reason, pc, il)
    }

    fn call(
        &mut self,
        conduit: Conduit,
        imm: u16,
        call: &Call,
        pc: u64,
        vcpu: &mut impl GuestVcpu,
        mm: &mut impl MmClient,
    ) -> Result<Decision, VmmError> {
        // SMCCC calls use immediate 0; anything else is no call of ours
        // (SMCCC, "SMC and HVC immediate value").
        let answer = if imm == 0 {
            smccc::answer(call)
        } else {
            Answer::Return([Ret::NotSupported.raw(), 0, 0, 0])
        };
        let (x, decision) = match answer {
            Answer::Return(x) => (x, Decision::Answered { conduit, function: call.function, x }),
            Answer::Memory(op, range) => {
                let outcome = memory::forward(mm, &self.layout, op, range);
                let x = [outcome.ret.raw(), outcome.done, 0, 0];
                (x, Decision::Memory { function: call.function, outcome })
            }
            Answer::Halt(halt) => return Ok(Decision::Halt(halt)),
        };
        for (n, value) in x.into_iter().enumerate() {
            vcpu.write(Reg::X(n as u8), value)?;
        }
        if conduit == Conduit::Smc {
            step(vcpu, pc)?;
        }
        Ok(decision)
    }
}

/// What mm's answer to a `Populate` comes to: the guest retries only if
/// mm mapped something. A page that was there already would fault again,
/// and a refusal (the guest's memory limit, an empty pool) will not go
/// away by retrying: both are aborts for the guest.
fn populated(answer: Result<(u64, u64), MmError>) -> Result<Decision, Reason> {
    match answer {
        Ok((ipa, pages)) if pages > 0 => Ok(Decision::Populated { ipa, pages }),
        Ok(_) => Err(Reason::Refault),
        Err(e) => Err(Reason::MemoryRefused(e)),
    }
}

/// Moves the guest's PC past the instruction at `pc`.
fn step(vcpu: &mut impl GuestVcpu, pc: u64) -> Result<(), VmmError> {
    vcpu.write(Reg::PC, pc.wrapping_add(INSTRUCTION))?;
    Ok(())
}

/// Whether an access of `access`'s size at `offset` stays inside the
/// device.
fn fits(device: Device, offset: u64, access: Access) -> bool {
    let size = match device {
        Device::Pl011 => pl011::SIZE,
        Device::GicDistributor => crate::layout::GICD_SIZE,
    };
    offset.checked_add(access.size.bytes()).is_some_and(|end| end <= size)
}

/// The register value a load of `raw` produces: the bytes loaded, sign
/// extended if the instruction says so, into a W register (upper half
/// zero) or an X register (Arm ARM D24.2.40: SAS, SSE, SF).
#[must_use]
pub const fn load_value(raw: u64, access: Access) -> u64 {
    let bits = access.size.bytes() * 8;
    let mut v = raw & access.size.mask();
    if access.sign_extend && bits < 64 {
        let shift = 64 - bits;
        v = ((v << shift) as i64 >> shift) as u64;
    }
    if !access.sixty_four {
        v &= 0xffff_ffff;
    }
    v
}
