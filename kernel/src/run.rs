//! Running the system: PDs at EL0 in their stage-2 address spaces, their
//! traps turned into calls on [`crate::system::System`], and the machine
//! side of its effects (registers, IPC buffers, fault reports).
//!
//! Every `unsafe` operation here is a system register write or an access
//! to physical memory the boot image describes; the rules live in
//! `system`, which is host-tested.
//!
//! Registers on entry to a PD (Arm ARM D1.3, exception return):
//! ELR_EL2 = PC, SPSR_EL2 = EL0t with interrupts unmasked, SP_EL0 = the
//! stack the tool placed, VTTBR_EL2 = (VMID << 48) | stage-2 root.

use crate::gic::{self, CpuInterface, Distributor};
use crate::guest::{self, FpContext, Gich};
use crate::system::{Cap, FaultKind, Machine, Pd, PdId, Sc, System};
use crate::vcpu::{self, VcpuState};
use core::arch::asm;
use core::cell::UnsafeCell;
use tenure_abi::vcpu::{VcpuReg, WINDOW_IPA, stage2_method, vcpu_method};
use tenure_abi::{CapKind, Error, MSG_REGS, MessageInfo, Slot};
use tenure_boot_image::{
    BoardInfo, IrqEntry, MAX_SCHEDULED, NO_PARENT, PdEntry, System as ImageSystem, VcpuEntry,
    VmEntry,
};

/// PDs and vCPUs the kernel schedules, at most.
const MAX_PDS: usize = MAX_SCHEDULED;

/// Most capabilities all PDs hold together; checked at boot.
pub const MAX_CAPS: usize = 4096;

/// HCR_EL2 for PDs (Arm ARM D24.2.48): RW (EL1 is AArch64), TGE (EL0
/// exceptions come to EL2), DC (stage 1 off, memory Normal write-back),
/// VM (stage 2 on), TSC (SMC traps).
const HCR_PD: u64 = (1 << 31) | (1 << 27) | (1 << 19) | (1 << 12) | 1;
/// CPACR_EL1.FPEN = 0b11: no FP/SIMD traps at EL0.
const CPACR_FPEN: u64 = 0b11 << 20;
/// CNTHCTL_EL2 (E2H = 0): EL1PCTEN, so that EL0 and EL1 may read the
/// physical counter; EL1PCEN clear, so that the EL1 physical timer
/// (CNTP_CTL_EL0, CNTP_CVAL_EL0, CNTP_TVAL_EL0) traps to EL2: nobody is
/// given it, and one guest's compare value is never another's to read
/// (Arm ARM D24.12.x, CNTHCTL_EL2; docs/el1-state.md).
const CNTHCTL_EL1_ACCESS: u64 = 0b01;
/// MDCR_EL2 (Arm ARM D24.3.x), the debug and PMU rows of
/// docs/el1-state.md: TDRA (bit 11), TDOSA (10) and TDA (9) trap every
/// debug register (the debug ROM address, the OS lock and save registers,
/// breakpoints, watchpoints, MDSCR_EL1) from EL1 and EL0 to EL2, so no
/// guest can arm a watchpoint that fires in a PD or read another's.
/// TDE stays clear: a guest's own BRK is its own exception (PDs run with
/// HCR_EL2.TGE, which routes their debug exceptions to EL2 anyway).
const MDCR_TRAP_DEBUG: u64 = (1 << 11) | (1 << 10) | (1 << 9);
/// MDCR_EL2.TPM (bit 6) and TPMCR (bit 5): every PMU register traps from
/// EL1 and EL0, and HPME (bit 7) clear keeps the counters reserved for
/// EL2 off; set outside benchmark builds, where nobody gets the PMU.
const MDCR_TRAP_PMU: u64 = (1 << 6) | (1 << 5);
/// CNTKCTL_EL1: EL0PCTEN and EL0VCTEN, so PDs may read the counters
/// (time stamps; no timer access).
const CNTKCTL_EL0_ACCESS: u64 = 0b11;
/// PMEVTYPER<n>_EL0 for INST_RETIRED (event 0x08) counted at EL0, EL1 and,
/// with NSH, at EL2: every instruction on the CPU.
const PMU_INST_RETIRED_ALL_ELS: u64 = 0x08 | (1 << 27);

/// Takes the debug and PMU registers for the kernel: everything traps
/// from EL1 and EL0 ([`MDCR_TRAP_DEBUG`], [`MDCR_TRAP_PMU`]), the PMU is
/// off, and MDSCR_EL1 is clear, so that no breakpoint, watchpoint or
/// software step that firmware left armed can fire (their registers may
/// be UNKNOWN after a cold reset).
fn trap_debug_and_pmu() {
    // SAFETY: debug and PMU configuration of EL2, and MDSCR_EL1 while
    // nothing runs at EL1 or EL0; they only affect traps, counting and
    // debug exceptions of lower levels.
    unsafe {
        asm!(
            "mrs {n}, pmcr_el0",
            "ubfx {n}, {n}, #11, #5",
            "orr {n}, {n}, {traps}",
            "msr mdcr_el2, {n}",
            "msr pmcr_el0, xzr",
            "msr mdscr_el1, xzr",
            "isb",
            n = out(reg) _,
            traps = in(reg) MDCR_TRAP_DEBUG | MDCR_TRAP_PMU,
            options(nostack),
        );
    }
}

/// Benchmark builds: event counter 0 counts every instruction retired,
/// readable from EL0 and EL1 (MDCR_EL2.TPM clear, PMUSERENR_EL0.EN and
/// ER), so a PD or the test guest can measure what an operation costs
/// across EL0, EL1 and EL2. Never in other builds: it would give PDs and
/// guests a precise timing source and a view of the kernel's work. Debug
/// registers still trap.
fn enable_instruction_counter() {
    // SAFETY: PMU and debug configuration registers of EL2 and EL0; they
    // only affect counting and EL0's access to the counters.
    unsafe {
        asm!(
            "mrs {n}, pmcr_el0",
            "ubfx {n}, {n}, #11, #5",
            "orr {n}, {n}, {traps}",
            "msr mdcr_el2, {n}",
            "msr pmevtyper0_el0, {ev}",
            "mov {n}, #1",
            "msr pmcntenset_el0, {n}",
            "mov {n}, #0b1101",
            "msr pmuserenr_el0, {n}",
            "mov {n}, #0b11",
            "msr pmcr_el0, {n}",
            "isb",
            n = out(reg) _,
            traps = in(reg) MDCR_TRAP_DEBUG,
            ev = in(reg) PMU_INST_RETIRED_ALL_ELS,
            options(nostack),
        );
    }
}

/// SPSR_EL2 for a PD: EL0t, DAIF clear.
const SPSR_EL0: u64 = 0;

/// The registers of a PD while the kernel runs; the layout is fixed by
/// the save and restore code in `arch` (x0..x30, SP_EL0, ELR, SPSR).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Context {
    /// General-purpose registers.
    pub x: [u64; 31],
    /// The EL0 stack pointer.
    pub sp_el0: u64,
    /// Where the PD resumes.
    pub elr: u64,
    /// Its saved PSTATE.
    pub spsr: u64,
}

/// Kernel state behind a cell that only the one kernel thread touches.
struct KernelCell<T>(UnsafeCell<T>);

// SAFETY: the kernel runs on one core with interrupts masked whenever it
// runs, so no two accesses to a cell overlap.
unsafe impl<T> Sync for KernelCell<T> {}

/// Everything the running system needs. The large parts live in statics
/// of their own: built on the kernel stack they would overflow it in
/// unoptimised builds.
struct Running {
    system: &'static mut System<'static, MAX_PDS>,
    hw: Hw,
}

/// The machine side: contexts, the image's PD descriptions and the
/// interrupt controller.
struct Hw {
    contexts: &'static mut [Context; MAX_PDS],
    /// Each PD's or vCPU's last fault message (MR0..MR3), recorded when
    /// it faulted.
    faults: [[u64; 4]; MAX_PDS],
    /// Each PD's VTTBR_EL2 (VMID and stage-2 root), computed once.
    vttbrs: [u64; MAX_PDS],
    /// The PD whose context and address space are installed.
    installed: Option<PdId>,
    pds: &'static [PdEntry],
    irqs: &'static [IrqEntry],
    gic: Gic,
    timer_intid: u32,
    /// The guests: vCPU `i` is scheduled as PD id `pds.len() + i`.
    vms: &'static [VmEntry],
    vcpus: &'static [VcpuEntry],
    /// Each vCPU's EL1, timer and list-register state, by vCPU index.
    vstate: &'static mut [VcpuState; MAX_PDS],
    /// The vCPU whose EL1 state is in the CPU, if any.
    guest_loaded: Option<PdId>,
    /// The GICv2 virtual interface, when the system has guests.
    gich: Option<Gich>,
    /// INTIDs of the virtual timer and the vGIC maintenance interrupt.
    vtimer_intid: u32,
    maintenance_intid: u32,
    /// The guest pool the memory manager passes addresses in.
    pool: Option<(u64, u64)>,
    /// Each PD's and vCPU's FP/SIMD registers while it does not own them.
    fp: &'static mut [FpContext; MAX_PDS],
    /// Whose values the FP/SIMD registers hold.
    fp_owner: Option<PdId>,
    /// Whether FP/SIMD use traps (CPTR_EL2.TFP).
    fp_trapped: bool,
    /// The message of a VPPI or maintenance exit being delivered.
    exit_words: [u64; 4],
}

/// Priority the kernel gives every interrupt (lower is more urgent; all
/// equal, so none preempts another: the kernel never nests).
const IRQ_PRIORITY: u32 = 0xa0;

/// The GICv2 at the addresses the boot image gives.
struct Gic {
    gicd: *mut Distributor,
    gicc: *mut CpuInterface,
}

/// Offsets of distributor register arrays.
mod gicd {
    use crate::gic::Distributor;
    use core::mem::offset_of;
    pub const CTLR: usize = offset_of!(Distributor, ctlr);
    pub const ISENABLER: usize = offset_of!(Distributor, isenabler);
    pub const ICENABLER: usize = offset_of!(Distributor, icenabler);
    pub const IPRIORITYR: usize = offset_of!(Distributor, ipriorityr);
    pub const ITARGETSR: usize = offset_of!(Distributor, itargetsr);
    pub const ICFGR: usize = offset_of!(Distributor, icfgr);
}

/// Offsets of CPU interface registers.
mod gicc {
    use crate::gic::CpuInterface;
    use core::mem::offset_of;
    pub const CTLR: usize = offset_of!(CpuInterface, ctlr);
    pub const PMR: usize = offset_of!(CpuInterface, pmr);
    pub const IAR: usize = offset_of!(CpuInterface, iar);
    pub const EOIR: usize = offset_of!(CpuInterface, eoir);
}

impl Gic {
    fn d(&self, offset: usize, index: usize) -> *mut u32 {
        self.gicd.cast::<u8>().wrapping_add(offset + 4 * index).cast()
    }

    fn c(&self, offset: usize) -> *mut u32 {
        self.gicc.cast::<u8>().wrapping_add(offset).cast()
    }

    fn write(reg: *mut u32, value: u32) {
        // SAFETY: every `reg` is a register of the board's GICv2, whose
        // bases the boot image gives; the kernel's EL2 map has them as
        // Device-nGnRE at the same addresses (`boot::check_map` checked
        // it); only the kernel drives the GIC, on one core.
        unsafe { reg.write_volatile(value) }
    }

    fn read(reg: *mut u32) -> u32 {
        // SAFETY: as in `write`; the registers read here have no read side
        // effect except GICC_IAR, whose acknowledgement the caller ends.
        unsafe { reg.read_volatile() }
    }

    /// Enables the distributor and this CPU's interface, all priorities.
    fn init(&self) {
        Self::write(self.d(gicd::CTLR, 0), 1);
        Self::write(self.c(gicc::PMR), 0xff);
        Self::write(self.c(gicc::CTLR), 1);
    }

    /// Routes `intid` to this CPU as edge- or level-triggered and enables
    /// it.
    fn route(&self, intid: u32, edge: bool) {
        if intid >= 32 {
            let (reg, shift) = gic::config_field(intid);
            let cfg = self.d(gicd::ICFGR, reg);
            Self::write(cfg, (Self::read(cfg) & !(1 << shift)) | (u32::from(edge) << shift));
            let (reg, shift) = gic::byte_field(intid);
            let targets = self.d(gicd::ITARGETSR, reg);
            Self::write(targets, (Self::read(targets) & !(0xff << shift)) | (1 << shift));
        }
        let (reg, shift) = gic::byte_field(intid);
        let prio = self.d(gicd::IPRIORITYR, reg);
        Self::write(prio, (Self::read(prio) & !(0xff << shift)) | (IRQ_PRIORITY << shift));
        self.unmask(intid);
    }

    fn unmask(&self, intid: u32) {
        let (reg, bit) = gic::enable_bit(intid);
        Self::write(self.d(gicd::ISENABLER, reg), bit);
    }

    fn mask(&self, intid: u32) {
        let (reg, bit) = gic::enable_bit(intid);
        Self::write(self.d(gicd::ICENABLER, reg), bit);
    }

    /// Acknowledges the highest pending interrupt: GICC_IAR, or `None`.
    fn acknowledge(&self) -> Option<u32> {
        let iar = Self::read(self.c(gicc::IAR));
        ((iar & 0x3ff) < gic::SPURIOUS).then_some(iar)
    }

    fn end(&self, iar: u32) {
        Self::write(self.c(gicc::EOIR), iar);
    }
}

static STATE: KernelCell<Option<Running>> = KernelCell(UnsafeCell::new(None));
static SYSTEM: KernelCell<Option<System<'static, MAX_PDS>>> = KernelCell(UnsafeCell::new(None));
static CONTEXTS: KernelCell<[Context; MAX_PDS]> =
    KernelCell(UnsafeCell::new([Context { x: [0; 31], sp_el0: 0, elr: 0, spsr: 0 }; MAX_PDS]));
static VSTATE: KernelCell<[VcpuState; MAX_PDS]> =
    KernelCell(UnsafeCell::new([VcpuState::ZERO; MAX_PDS]));
static FP: KernelCell<[FpContext; MAX_PDS]> =
    KernelCell(UnsafeCell::new([FpContext::ZERO; MAX_PDS]));
static CAPS: KernelCell<[(Slot, Cap); MAX_CAPS]> = KernelCell(UnsafeCell::new(
    [(Slot(0), Cap { kind: CapKind::Null, target: 0, badge: 0 }); MAX_CAPS],
));

/// Why the system in the image cannot run.
#[derive(Clone, Copy, Debug)]
pub enum StartError {
    /// More capabilities than [`MAX_CAPS`].
    TooManyCaps,
    /// More PDs and vCPUs than the kernel schedules.
    TooManyPds,
}

/// Fills memory from the image, sets up stage 2 and starts the system;
/// does not return. Called once, at boot, at EL2.
pub fn start(image: ImageSystem<'static>, board: &BoardInfo) -> Result<(), StartError> {
    load(&image);
    // SAFETY: only `start` writes CAPS, once, before any PD runs; the
    // references handed to `System` are never written again.
    let table = unsafe { &mut *CAPS.0.get() };
    if image.caps.len() > MAX_CAPS {
        return Err(StartError::TooManyCaps);
    }
    let num_pds = image.pds.len() as u32;
    for (out, cap) in table.iter_mut().zip(image.caps) {
        let kind = CapKind::from_raw(cap.kind).unwrap_or(CapKind::Null);
        // A vCPU capability names a vCPU; the system schedules vCPU `i`
        // as PD `num_pds + i`.
        let target = cap.target.get() + if kind == CapKind::Vcpu { num_pds } else { 0 };
        *out = (Slot(cap.slot.get()), Cap { kind, target, badge: cap.badge.get() });
    }
    let table: &'static [(Slot, Cap)] = table;
    // SAFETY: only `start` takes these, once, before any PD runs.
    let contexts = unsafe { &mut *CONTEXTS.0.get() };
    let freq = read_cntfrq();
    if image.pds.len() + image.vcpus.len() > MAX_PDS {
        return Err(StartError::TooManyPds);
    }
    let (pd_contexts, vcpu_contexts) = contexts.split_at_mut(image.pds.len());
    let pds = image.pds.iter().zip(pd_contexts).map(|(pd, ctx)| {
        ctx.elr = pd.entry.get();
        ctx.sp_el0 = pd.sp.get();
        ctx.spsr = SPSR_EL0;
        let first = pd.cap_first.get() as usize;
        let caps = &table[first..first + pd.cap_count.get() as usize];
        let parent = (pd.parent != NO_PARENT).then_some((PdId(pd.parent), pd.child_id));
        let sc =
            Sc::new(us_to_ticks(pd.budget_us.get(), freq), us_to_ticks(pd.period_us.get(), freq));
        let kernel_pd = Pd::new(pd.priority, parent, caps).with_sc(sc);
        if pd.passive != 0 { kernel_pd.passive() } else { kernel_pd }
    });
    // vCPUs: children of their VMM, stopped until it restarts them.
    let vcpus = image.vcpus.iter().zip(vcpu_contexts).map(|(vcpu, ctx)| {
        ctx.spsr = vcpu::SPSR_EL1H_MASKED;
        let vmm = image.vms.get(vcpu.vm.get() as usize).map_or(0, |vm| vm.vmm);
        let sc = Sc::new(
            us_to_ticks(vcpu.budget_us.get(), freq),
            us_to_ticks(vcpu.period_us.get(), freq),
        );
        Pd::new(vcpu.priority, Some((PdId(vmm), vcpu.id)), &[]).with_sc(sc).stopped()
    });
    let pds = pds.chain(vcpus);
    // SAFETY: as for CONTEXTS.
    let system = unsafe { &mut *SYSTEM.0.get() }.insert(System::new(pds));
    let vtcr = image.stage2.map_or(0, |c| c.vtcr.get());
    // SAFETY: EL2 configuration for running PDs: HCR, VTCR, CPACR and the
    // timer controls only affect lower exception levels, which run nothing
    // yet; the EL2 timer is enabled with no deadline.
    unsafe {
        asm!(
            "msr hcr_el2, {hcr}",
            "msr vtcr_el2, {vtcr}",
            "msr cpacr_el1, {cpacr}",
            "msr cnthctl_el2, {cnthctl}",
            "msr cntkctl_el1, {cntkctl}",
            "msr cnthp_cval_el2, {never}",
            "msr cnthp_ctl_el2, {enable}",
            "tlbi alle1",
            "dsb sy",
            "isb",
            cnthctl = in(reg) CNTHCTL_EL1_ACCESS,
            never = in(reg) u64::MAX,
            enable = in(reg) 1u64,
            cntkctl = in(reg) CNTKCTL_EL0_ACCESS,
            hcr = in(reg) HCR_PD,
            vtcr = in(reg) vtcr,
            cpacr = in(reg) CPACR_FPEN,
            options(nostack),
        );
    }
    if cfg!(feature = "benchmark") {
        enable_instruction_counter();
    } else {
        trap_debug_and_pmu();
    }
    let gic = Gic {
        gicd: board.gicd_base.get() as *mut Distributor,
        gicc: board.gicc_base.get() as *mut CpuInterface,
    };
    gic.init();
    for irq in image.irqs {
        gic.route(irq.intid.get(), irq.edge != 0);
    }
    let timer_intid = board.timer_el2_phys_intid.get();
    gic.route(timer_intid, false);
    let mut vttbrs = [0; MAX_PDS];
    for (v, pd) in vttbrs.iter_mut().zip(image.pds) {
        *v = (u64::from(pd.vmid.get()) << 48) | pd.stage2_root.get();
    }
    // SAFETY: only `start` takes these, once, before any PD runs.
    let vstate = unsafe { &mut *VSTATE.0.get() };
    // SAFETY: as above.
    let fp = unsafe { &mut *FP.0.get() };
    for (state, vcpu) in vstate.iter_mut().zip(image.vcpus) {
        *state = VcpuState::new(vcpu.mpidr.get());
    }
    let (vtimer_intid, maintenance_intid) =
        (board.timer_virt_intid.get(), board.vgic_maintenance_intid.get());
    let gich = if image.vcpus.is_empty() {
        None
    } else {
        // The virtual timer interrupts only while a guest's timer is
        // loaded; each guest's mask state is applied when it runs.
        gic.route(vtimer_intid, false);
        gic.mask(vtimer_intid);
        gic.route(maintenance_intid, false);
        Some(Gich::new(board.gich_base.get()))
    };
    let hw = Hw {
        contexts,
        faults: [[0; 4]; MAX_PDS],
        vttbrs,
        installed: None,
        pds: image.pds,
        irqs: image.irqs,
        gic,
        timer_intid,
        vms: image.vms,
        vcpus: image.vcpus,
        vstate,
        guest_loaded: None,
        gich,
        vtimer_intid,
        maintenance_intid,
        pool: image.guest_pool.map(|p| (p.base.get(), p.size.get())),
        fp,
        fp_owner: None,
        fp_trapped: false,
        exit_words: [0; 4],
    };
    // SAFETY: the single kernel thread, before any exception can enter.
    let running = unsafe { &mut *STATE.0.get() }.insert(Running { system, hw });
    running.system.start(&mut running.hw);
    switch_to_current()
}

/// Copies the image's loads into physical memory and zeroes the rest of
/// each range, then cleans it to the point of coherency and invalidates
/// the instruction caches. The kernel writes through its own map (Normal
/// write-back) and PDs see the memory cacheable too, so the data side is
/// coherent already; the clean to the PoC and `ic iallu` are for the
/// instruction side: PD code fetched from memory the kernel just wrote.
fn load(image: &ImageSystem<'static>) {
    for load in image.loads {
        let base = load.paddr.get() as usize;
        let data = image.data_of(load);
        let size = load.size.get() as usize;
        // Word by word where the destination allows (loads are page
        // aligned and sized), bytes for any tail. Whole words of data are
        // taken eight bytes at a time (the blob has no alignment, so
        // through a byte array); past the data the rest is zero, written
        // without looking at the data at all (most of a memory manager's
        // pool, for one).
        let words = if base.is_multiple_of(8) { size / 8 } else { 0 };
        let data_words = (data.len() / 8).min(words);
        let write_word = |w: usize, value: u64| {
            // SAFETY: the tool placed every load in RAM that the kernel
            // and its image do not occupy, for exactly this copy; the
            // address is 8-byte aligned and inside the load.
            unsafe { core::ptr::write_volatile((base + w * 8) as *mut u64, value) };
        };
        for (w, chunk) in data.chunks_exact(8).take(data_words).enumerate() {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            write_word(w, u64::from_le_bytes(bytes));
        }
        // A last word the data only partly fills, then zeros.
        let partial = data_words < words && data.len() > data_words * 8;
        if partial {
            let mut bytes = [0u8; 8];
            let tail = &data[data_words * 8..];
            bytes[..tail.len()].copy_from_slice(tail);
            write_word(data_words, u64::from_le_bytes(bytes));
        }
        for w in data_words + usize::from(partial)..words {
            write_word(w, 0);
        }
        for i in words * 8..size {
            let byte = data.get(i).copied().unwrap_or(0);
            // SAFETY: as above, byte by byte.
            unsafe { core::ptr::write_volatile((base + i) as *mut u8, byte) };
        }
        let mut line = base & !63;
        while line < base + load.size.get() as usize {
            // SAFETY: cache maintenance by address on memory just written.
            unsafe { asm!("dc civac, {}", in(reg) line, options(nostack, preserves_flags)) };
            line += 64;
        }
    }
    // SAFETY: barriers and instruction-cache invalidation have no memory
    // effects beyond making the copies visible.
    unsafe { asm!("dsb sy", "ic iallu", "dsb sy", "isb", options(nostack, preserves_flags)) };
}

/// Makes the current PD's context the one `return_to_pd` restores, with
/// its address space, and returns to it; idles if nothing runs.
fn switch_to_current() -> ! {
    unsafe extern "C" {
        /// Restores the context `TPIDR_EL2` points at and returns to EL0.
        fn return_to_pd() -> !;
    }
    prepare_current();
    // SAFETY: `prepare_current` pointed TPIDR_EL2 at a complete context
    // and installed its stage 2; `return_to_pd` only erets into it.
    unsafe { return_to_pd() }
}

/// Points TPIDR_EL2 at the current PD's context and installs its address
/// space; waits for an interrupt while no PD can run.
#[inline(always)]
fn prepare_current() {
    loop {
        // SAFETY: the single kernel thread, interrupts masked.
        let state = unsafe { &mut *STATE.0.get() };
        let Some(running) = state.as_mut() else { crate::arch::halt() };
        if let Some(pd) = running.system.current() {
            let hw = &mut running.hw;
            if hw.installed == Some(pd) {
                return; // resuming the PD that trapped: nothing to switch
            }
            hw.installed = Some(pd);
            hw.switch_guest_state(pd);
            // FP/SIMD traps for anyone but their owner (decision 0010).
            let owner = hw.fp_owner == Some(pd);
            if owner == hw.fp_trapped {
                guest::trap_fp(!owner);
                hw.fp_trapped = !owner;
            }
            let ctx = &raw mut hw.contexts[usize::from(pd.0)];
            let vttbr = hw.vttbrs[usize::from(pd.0)];
            // SAFETY: TPIDR_EL2 is the kernel's own register; VTTBR_EL2
            // names a stage-2 table the tool built for this PD.
            unsafe {
                asm!(
                    "msr tpidr_el2, {ctx}",
                    "msr vttbr_el2, {vttbr}",
                    "isb",
                    ctx = in(reg) ctx,
                    vttbr = in(reg) vttbr,
                    options(nostack, preserves_flags),
                )
            };
            return;
        }
        // Nothing runs: put away a guest's state (its timer must not fire
        // for a vCPU that is not running), then wait for an interrupt (a
        // pending one ends `wfi` even while masked) and handle it here.
        if running.hw.guest_loaded.is_some() {
            running.hw.unload_guest();
            running.hw.installed = None;
        }
        // SAFETY: `wfi` only waits.
        unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
        interrupts(running.system, &mut running.hw);
    }
}

/// Handles every pending interrupt: the scheduler tick, or a PD's
/// interrupt, which is masked until the PD acknowledges it.
fn interrupts(system: &mut System<'static, MAX_PDS>, hw: &mut Hw) {
    while let Some(iar) = hw.gic.acknowledge() {
        let intid = iar & 0x3ff;
        if intid == hw.timer_intid {
            hw.gic.end(iar);
            system.timer(hw);
            continue;
        }
        hw.gic.mask(intid);
        hw.gic.end(iar);
        if let Some(vcpu) = hw.guest_loaded
            && system.current() == Some(vcpu)
        {
            if intid == hw.vtimer_intid {
                // Masked until the VMM acks it (VPPI event).
                if let Some(state) = hw.vcpu_state(vcpu) {
                    state.vppi_masked = true;
                }
                hw.exit_words = [u64::from(intid), 0, 0, 0];
                system.fault(hw, vcpu, FaultKind::VppiEvent);
                continue;
            }
            if intid == hw.maintenance_intid {
                let lr = hw.gich.as_ref().and_then(Gich::take_ended);
                hw.gic.unmask(intid);
                hw.exit_words = [lr.map_or(u64::MAX, |lr| lr as u64), 0, 0, 0];
                system.fault(hw, vcpu, FaultKind::VgicMaintenance);
                continue;
            }
        }
        if intid == hw.maintenance_intid {
            hw.gic.unmask(intid);
            continue;
        }
        if let Some(irq) = hw.irqs.iter().find(|i| i.intid.get() == intid) {
            system.irq(hw, PdId(irq.pd), irq.badge.get());
        }
    }
}

fn read_cntfrq() -> u64 {
    let f: u64;
    // SAFETY: reading the counter frequency has no side effect.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack, preserves_flags)) };
    f
}

/// `us` microseconds in ticks of a counter running at `freq` Hz, at
/// least 1 (the boot image bounds `us`; the product cannot overflow u128).
fn us_to_ticks(us: u64, freq: u64) -> u64 {
    let ticks = u128::from(us) * u128::from(freq) / 1_000_000;
    u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
}

/// Handles an exception from a PD (vector table index `vector`), with its
/// registers saved in its context; returns with TPIDR_EL2 naming the PD
/// to resume.
#[unsafe(no_mangle)]
extern "C" fn pd_exception(vector: u64) {
    // SAFETY: the single kernel thread, interrupts masked.
    let state = unsafe { &mut *STATE.0.get() };
    let Some(Running { system, hw }) = state.as_mut() else { crate::arch::halt() };
    let Some(cur) = system.current() else { crate::arch::halt() };
    let esr = crate::arch::read_esr();
    let ec = (esr >> 26) & 0x3f;
    let guest = hw.is_vcpu(cur);
    match (vector, ec, guest) {
        // FP/SIMD use while another owns the registers: hand them over
        // and retry the instruction.
        (8, 0x07, _) => hw.take_fp(cur),
        // SVC from AArch64 EL0.
        (8, 0x15, false) => {
            let x = hw.contexts[usize::from(cur.0)].x;
            system.syscall(hw, x[7], x[0], x[1], x[6]);
        }
        // Instruction or data abort from a lower level: a stage-2 fault.
        (8, 0x20 | 0x24, _) => system.fault(hw, cur, FaultKind::VmFault),
        // Anything else a guest does that traps (HVC, SMC, WFx, system
        // registers) is its VMM's to handle.
        (8, _, true) => system.fault(hw, cur, FaultKind::VcpuFault),
        (8, _, false) => system.fault(hw, cur, FaultKind::UserException),
        (9, _, _) => interrupts(system, hw),
        _ => {}
    }
    prepare_current();
}

impl Hw {
    fn ctx(&mut self, pd: PdId) -> &mut Context {
        &mut self.contexts[usize::from(pd.0)]
    }

    /// Whether `pd` is a vCPU (they follow the PDs).
    fn is_vcpu(&self, pd: PdId) -> bool {
        usize::from(pd.0) >= self.pds.len()
    }

    /// The index of vCPU `pd` in the image's vCPUs.
    fn vcpu_index(&self, pd: PdId) -> Option<usize> {
        usize::from(pd.0).checked_sub(self.pds.len()).filter(|&i| i < self.vcpus.len())
    }

    fn vcpu_state(&mut self, pd: PdId) -> Option<&mut VcpuState> {
        let i = self.vcpu_index(pd)?;
        self.vstate.get_mut(i)
    }

    /// Saves the loaded guest's EL1, timer and GIC state and gives EL0 and
    /// HCR_EL2 back to PDs.
    fn unload_guest(&mut self) {
        if self.save_guest() {
            guest::set_hcr(HCR_PD);
            guest::restore_pd_el0(CNTKCTL_EL0_ACCESS);
        }
    }

    /// Saves the loaded guest's EL1, timer and GIC state, leaving HCR_EL2
    /// as it is (the caller decides what runs next); whether a guest was
    /// loaded.
    fn save_guest(&mut self) -> bool {
        let Some(vcpu) = self.guest_loaded.take() else { return false };
        let Some(i) = self.vcpu_index(vcpu) else { return false };
        let state = &mut self.vstate[i];
        guest::save_el1(state);
        if let Some(gich) = &self.gich {
            gich.save(state);
        }
        self.gic.mask(self.vtimer_intid);
        true
    }

    /// Makes the CPU's EL1 and GIC state `next`'s: a guest's own for a
    /// vCPU, the PD configuration otherwise. A switch between PDs costs
    /// one comparison.
    #[inline]
    fn switch_guest_state(&mut self, next: PdId) {
        // PD to PD, the common case: nothing to do.
        if self.guest_loaded.is_none() && !self.is_vcpu(next) {
            return;
        }
        self.switch_guest_state_slow(next);
    }

    #[inline(never)]
    fn switch_guest_state_slow(&mut self, next: PdId) {
        if self.guest_loaded == Some(next) {
            return;
        }
        let Some(i) = self.vcpu_index(next) else {
            self.unload_guest();
            return;
        };
        // Guest to guest: HCR_EL2 stays the guest configuration (returning
        // to EL1 with TGE set is an illegal exception return, Arm ARM
        // D1.3.5); only the EL1 and GIC state changes hands.
        if !self.save_guest() {
            guest::set_hcr(vcpu::HCR_GUEST);
        }
        let state = &self.vstate[i];
        guest::restore_el1(state);
        if let Some(gich) = &self.gich {
            gich.restore(state);
        }
        if !state.vppi_masked {
            self.gic.unmask(self.vtimer_intid);
        }
        self.guest_loaded = Some(next);
    }

    /// Gives the FP/SIMD registers to `pd`, saving their owner's.
    fn take_fp(&mut self, pd: PdId) {
        let to = self.fp[usize::from(pd.0)];
        let from = self.fp_owner.map(|owner| &mut self.fp[usize::from(owner.0)]);
        guest::switch_fp(from, &to);
        self.fp_owner = Some(pd);
        self.fp_trapped = false;
    }

    /// Message register `i` of `pd` as its last trap left it: `x2..x5`.
    fn mr(&self, pd: PdId, i: usize) -> u64 {
        self.contexts[usize::from(pd.0)].x[2 + i]
    }

    /// Whether `[pa, pa + bytes)` lies in the guest pool.
    fn in_pool(&self, pa: u64, bytes: u64) -> bool {
        let Some((base, size)) = self.pool else { return false };
        pa >= base && pa.checked_add(bytes).is_some_and(|end| end <= base + size)
    }

    /// Whether `vmid` names a PD's or a VM's address space.
    fn vmid_known(&self, vmid: u64) -> bool {
        (1..=self.pds.len() as u64).contains(&vmid)
            || self.vms.iter().any(|vm| u64::from(vm.vmid.get()) == vmid)
    }

    /// One vCPU method (see [`tenure_abi::vcpu::vcpu_method`]).
    fn vcpu_method(&mut self, caller: PdId, pd: PdId, method: u64, arg: u64) -> Result<u64, Error> {
        let i = self.vcpu_index(pd).ok_or(Error::InvalidCapability)?;
        let (m0, m1) = (self.mr(caller, 0), self.mr(caller, 1));
        let nr_lrs = self.gich.as_ref().map_or(0, |g| g.lrs);
        match method {
            vcpu_method::RESTART => {
                if self.vttbrs[usize::from(pd.0)] == 0 {
                    return Err(Error::IllegalOperation);
                }
                Ok(0)
            }
            vcpu_method::STOP => Ok(0),
            vcpu_method::READ_REG => self.vcpu_reg(pd, i, arg, None),
            vcpu_method::WRITE_REG => self.vcpu_reg(pd, i, arg, Some(m0)),
            vcpu_method::INJECT_IRQ => {
                let lr = usize::try_from(m1).map_err(|_| Error::InvalidArgument)?;
                if arg >= 1020 || m0 > 31 || lr >= nr_lrs {
                    return Err(Error::InvalidArgument);
                }
                let state = &mut self.vstate[i];
                if vcpu::lr_in_use(state.lrs[lr]) {
                    return Err(Error::IllegalOperation);
                }
                state.lrs[lr] = vcpu::lr_pending(arg as u32, m0 as u32);
                Ok(0)
            }
            vcpu_method::ACK_VPPI => {
                self.vstate[i].vppi_masked = false;
                Ok(0)
            }
            _ => Err(Error::IllegalOperation),
        }
    }

    /// Reads (or, with `value`, writes) register `reg` of vCPU `pd`
    /// (index `i`), which is not running: its state is in memory.
    fn vcpu_reg(&mut self, pd: PdId, i: usize, reg: u64, value: Option<u64>) -> Result<u64, Error> {
        let ctx = &mut self.contexts[usize::from(pd.0)];
        let slot: &mut u64 = match reg {
            0..=30 => &mut ctx.x[reg as usize],
            _ => match VcpuReg::from_raw(reg).ok_or(Error::InvalidArgument)? {
                VcpuReg::Pc => &mut ctx.elr,
                VcpuReg::Pstate => {
                    if value.is_some_and(|v| !vcpu::guest_pstate_ok(v)) {
                        return Err(Error::InvalidArgument);
                    }
                    &mut ctx.spsr
                }
                VcpuReg::SpEl0 => &mut ctx.sp_el0,
                other => {
                    let index = vcpu::sysreg_index(other).ok_or(Error::InvalidArgument)?;
                    &mut self.vstate[i].regs[index]
                }
            },
        };
        if let Some(mut v) = value {
            if reg == VcpuReg::Vmpidr as u64 {
                v |= 1 << 31; // RES1
            }
            *slot = v;
        }
        Ok(*slot)
    }

    /// One stage-2 control method (see [`tenure_abi::vcpu::stage2_method`]).
    fn stage2_method(&mut self, caller: PdId, method: u64, arg: u64) -> Result<u64, Error> {
        let (m0, m1) = (self.mr(caller, 0), self.mr(caller, 1));
        let bad = Error::InvalidArgument;
        match method {
            stage2_method::INSTALL => {
                let vm = self.vms.get(usize::try_from(arg).map_err(|_| bad)?).ok_or(bad)?;
                let vmid = u64::from(vm.vmid.get());
                if m1 != vmid || !m0.is_multiple_of(8192) || !self.in_pool(m0, 8192) {
                    return Err(bad);
                }
                let (first, count) = (vm.vcpu_first.get() as usize, vm.vcpu_count.get() as usize);
                for v in first..first + count {
                    self.vttbrs[self.pds.len() + v] = (vmid << 48) | m0;
                }
                guest::invalidate_vmid(vmid);
                Ok(0)
            }
            stage2_method::UNINSTALL => {
                let vm = self.vms.get(usize::try_from(arg).map_err(|_| bad)?).ok_or(bad)?;
                let (first, count) = (vm.vcpu_first.get() as usize, vm.vcpu_count.get() as usize);
                let mut stop = 0u64;
                for v in first..first + count {
                    let pd = self.pds.len() + v;
                    self.vttbrs[pd] = 0;
                    stop |= 1 << pd;
                    if self.guest_loaded == Some(PdId(pd as u8)) {
                        self.unload_guest();
                        self.installed = None;
                    }
                }
                guest::invalidate_vmid(u64::from(vm.vmid.get()));
                Ok(stop)
            }
            stage2_method::INVALIDATE_RANGE => {
                let aligned = m0.is_multiple_of(4096) && m1.is_multiple_of(4096);
                if !self.vmid_known(arg) || !aligned || m0 >= m1 || m1 > 1 << 40 {
                    return Err(bad);
                }
                // Past a few hundred pages one whole-VMID invalidation is
                // cheaper than a TLBI per page.
                if (m1 - m0) / 4096 > 512 {
                    guest::invalidate_vmid(arg);
                } else {
                    guest::invalidate_ipa_range(arg, m0, m1);
                }
                Ok(0)
            }
            stage2_method::INVALIDATE_VMID => {
                if !self.vmid_known(arg) {
                    return Err(bad);
                }
                guest::invalidate_vmid(arg);
                Ok(0)
            }
            stage2_method::CLEAN_TO_POC => {
                if m1 == 0 || !self.in_pool(m0, m1) {
                    return Err(bad);
                }
                guest::clean_to_poc(m0, m1);
                Ok(0)
            }
            stage2_method::LINK_WINDOW => {
                let pd = self.pds.get(usize::try_from(arg).map_err(|_| bad)?).ok_or(bad)?;
                if !m0.is_multiple_of(4096) || !self.in_pool(m0, 4096) {
                    return Err(bad);
                }
                // The PD's root is two concatenated level-1 pages; entry
                // WINDOW_IPA >> 30 covers the window. The tool leaves it
                // invalid; only a window may be put (or put again) there.
                let entry = pd.stage2_root.get() + (WINDOW_IPA >> 30) * 8;
                // SAFETY: `entry` is inside the PD's 8 KiB root, which the
                // tool built in boot-image memory the EL2 map has writable.
                let old = unsafe { (entry as *const u64).read_volatile() };
                if old != 0 && !self.in_pool(old & 0x0000_ffff_ffff_f000, 4096) {
                    return Err(Error::IllegalOperation);
                }
                // SAFETY: as above; the descriptor names a pool page the
                // memory manager keeps as the window's level-2 table.
                unsafe { guest::write_table_entry(entry, m0 | 0b11) };
                guest::invalidate_vmid(u64::from(pd.vmid.get()));
                Ok(0)
            }
            _ => Err(Error::IllegalOperation),
        }
    }

    /// Physical address of message register `i` of `pd`'s IPC buffer.
    fn mr_addr(&self, pd: PdId, i: usize) -> usize {
        self.pds[usize::from(pd.0)].ipc_buffer.get() as usize + i * 8
    }
}

impl Machine for Hw {
    fn transfer(&mut self, from: PdId, to: PdId, info: MessageInfo) {
        let count = info.count().min(MSG_REGS);
        for i in 0..count.min(tenure_abi::FAST_MSG_REGS) {
            let v = self.ctx(from).x[2 + i];
            self.ctx(to).x[2 + i] = v;
        }
        for i in tenure_abi::FAST_MSG_REGS..count {
            // SAFETY: the IPC buffers are RAM pages the tool gave these
            // PDs, 8-byte aligned; `i` is below MSG_REGS, inside the page.
            let v = unsafe { core::ptr::read_volatile(self.mr_addr(from, i) as *const u64) };
            // SAFETY: as above, for the receiver's buffer.
            unsafe { core::ptr::write_volatile(self.mr_addr(to, i) as *mut u64, v) };
        }
    }

    fn set_return(&mut self, pd: PdId, x0: u64, x1: u64) {
        let ctx = self.ctx(pd);
        ctx.x[0] = x0;
        ctx.x[1] = x1;
    }

    fn record_fault(&mut self, pd: PdId, kind: FaultKind) {
        let pc = self.ctx(pd).elr;
        let (far, esr) = (crate::arch::read_far(), crate::arch::read_esr());
        // abi::vcpu's table for guests; MR0 = PC, MR1 = FAR, MR2 = ESR
        // for PDs (seL4's VMFault order starts with IP and address).
        self.faults[usize::from(pd.0)] = match kind {
            FaultKind::VppiEvent | FaultKind::VgicMaintenance => self.exit_words,
            FaultKind::VmFault if self.is_vcpu(pd) => {
                let ipa = if vcpu::hpfar_unreliable(esr) {
                    guest::guest_va_to_ipa(far).unwrap_or(u64::MAX)
                } else {
                    vcpu::fault_ipa(guest::read_hpfar(), far)
                };
                [pc, ipa, esr, far]
            }
            FaultKind::VcpuFault => [pc, 0, esr, 0],
            _ => [pc, far, esr, 0],
        };
    }

    fn fault_message(&mut self, child: PdId, parent: PdId, _kind: FaultKind) {
        let message = self.faults[usize::from(child.0)];
        self.ctx(parent).x[2..6].copy_from_slice(&message);
    }

    fn unmask_irq(&mut self, irq: u32) {
        if irq <= gic::MAX_INTID && irq != self.timer_intid {
            self.gic.unmask(irq);
        }
    }

    fn set_pc(&mut self, pd: PdId, pc: u64) {
        self.ctx(pd).elr = pc;
    }

    fn report_fault(&mut self, pd: PdId, kind: FaultKind) {
        let name = self.pds[usize::from(pd.0)].name();
        let pc = self.ctx(pd).elr;
        crate::kprintln!(
            "FAULT: PD '{name}' stopped: {kind:?} at address {:#x}, pc {pc:#x} (ESR {:#x})",
            crate::arch::read_far(),
            crate::arch::read_esr()
        );
    }

    fn debug_putc(&mut self, byte: u8) {
        crate::console::put(byte);
    }

    fn now(&mut self) -> u64 {
        let t: u64;
        // SAFETY: reading the physical counter has no side effect.
        unsafe { asm!("mrs {}, cntpct_el0", out(reg) t, options(nomem, nostack, preserves_flags)) };
        t
    }

    fn vcpu(&mut self, caller: PdId, vcpu: PdId, method: u64, arg: u64) -> Result<u64, Error> {
        self.vcpu_method(caller, vcpu, method, arg)
    }

    fn stage2(&mut self, caller: PdId, method: u64, arg: u64) -> Result<u64, Error> {
        self.stage2_method(caller, method, arg)
    }

    fn set_deadline(&mut self, at: u64) {
        // SAFETY: the EL2 physical timer is the kernel's own; it fires
        // (level) while the counter is at or past the compare value, which
        // this write moves on.
        unsafe {
            asm!(
                "msr cnthp_cval_el2, {at}",
                at = in(reg) at,
                options(nomem, nostack, preserves_flags),
            )
        };
    }
}
