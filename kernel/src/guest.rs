//! The CPU side of vCPUs and of stage-2 control: EL1 state saved and
//! restored, the GICv2 virtual interface control (GICH), TLB and cache
//! maintenance for the memory manager, and the lazy FP/SIMD switch.
//!
//! Every function here is a thin `unsafe` boundary over system registers
//! or memory-mapped registers; the rules (which vCPU, which range, what
//! was checked) live in `run` and `vcpu`.

use crate::vcpu::{MAX_LRS, VcpuState, gich};
use core::arch::asm;

/// Applies `$m` to the EL1 system registers a [`VcpuState`] holds, in its
/// order (tenure_abi::vcpu::VcpuReg from SP_EL1 on).
macro_rules! el1_sysregs {
    ($m:ident) => {
        $m!(
            sp_el1,
            elr_el1,
            spsr_el1,
            sctlr_el1,
            cpacr_el1,
            ttbr0_el1,
            ttbr1_el1,
            tcr_el1,
            mair_el1,
            amair_el1,
            contextidr_el1,
            afsr0_el1,
            afsr1_el1,
            esr_el1,
            far_el1,
            par_el1,
            vbar_el1,
            tpidr_el1,
            tpidr_el0,
            tpidrro_el0,
            csselr_el1,
            cntkctl_el1,
            cntv_ctl_el0,
            cntv_cval_el0,
            cntvoff_el2,
            vmpidr_el2
        )
    };
}

/// Saves the running guest's EL1 registers into `state` and turns its
/// virtual timer off, so it cannot fire while anything else runs.
pub fn save_el1(state: &mut VcpuState) {
    let mut i = 0;
    macro_rules! save {
        ($($reg:ident),*) => {$(
            let value: u64;
            // SAFETY: reading an EL1 (or EL2 guest-context) system
            // register has no side effect.
            unsafe {
                asm!(concat!("mrs {}, ", stringify!($reg)), out(reg) value,
                    options(nomem, nostack, preserves_flags))
            };
            state.regs[i] = value;
            i += 1;
        )*};
    }
    el1_sysregs!(save);
    let _ = i;
    // SAFETY: disabling the EL1 virtual timer only stops its interrupt;
    // its control value was saved above.
    unsafe { asm!("msr cntv_ctl_el0, xzr", options(nomem, nostack, preserves_flags)) };
}

/// Loads `state`'s EL1 registers for the guest about to run; its timer
/// last, once its compare value is in place.
pub fn restore_el1(state: &VcpuState) {
    let mut i = 0;
    macro_rules! restore {
        ($($reg:ident),*) => {$(
            let value = state.regs[i];
            // SAFETY: these registers only affect EL1 and EL0, where the
            // guest about to run is the only software; VMPIDR_EL2 and
            // CNTVOFF_EL2 only what that guest reads.
            unsafe {
                asm!(concat!("msr ", stringify!($reg), ", {}"), in(reg) value,
                    options(nomem, nostack, preserves_flags))
            };
            i += 1;
        )*};
    }
    el1_sysregs!(restore);
    let _ = i;
    let ctl =
        state.regs[crate::vcpu::sysreg_index(tenure_abi::vcpu::VcpuReg::CntvCtl).unwrap_or(0)];
    // SAFETY: as above: the guest's own timer, enabled after its compare
    // value was written.
    unsafe { asm!("msr cntv_ctl_el0, {}", in(reg) ctl, options(nomem, nostack, preserves_flags)) };
}

/// Gives EL0 what PDs expect after a guest ran: the counters readable
/// (CNTKCTL_EL1) and no guest thread pointer left in TPIDR_EL0 or
/// TPIDRRO_EL0 for a PD to read.
pub fn restore_pd_el0(cntkctl: u64) {
    // SAFETY: EL1/EL0 registers while no guest runs; PDs read the
    // counters only, and the thread pointers are theirs to set.
    unsafe {
        asm!(
            "msr cntkctl_el1, {}",
            "msr tpidr_el0, xzr",
            "msr tpidrro_el0, xzr",
            in(reg) cntkctl,
            options(nomem, nostack, preserves_flags),
        )
    };
}

/// Writes HCR_EL2.
pub fn set_hcr(hcr: u64) {
    // SAFETY: the kernel switches HCR_EL2 between the PD and guest
    // configurations right before returning to a PD or a guest; it only
    // affects lower exception levels.
    unsafe {
        asm!("msr hcr_el2, {}", "isb", in(reg) hcr, options(nomem, nostack, preserves_flags))
    };
}

/// The GICv2 virtual interface control at the board's GICH base.
pub struct Gich {
    base: *mut u32,
    /// Number of list registers.
    pub lrs: usize,
}

impl Gich {
    /// The GICH at `base` (mapped Device-nGnRE in the kernel's EL2 map).
    pub fn new(base: u64) -> Gich {
        let mut gich = Gich { base: base as *mut u32, lrs: 0 };
        gich.lrs = ((gich.read(gich::VTR) & 0x3f) as usize + 1).min(MAX_LRS);
        gich
    }

    fn reg(&self, offset: usize) -> *mut u32 {
        self.base.cast::<u8>().wrapping_add(offset).cast()
    }

    fn read(&self, offset: usize) -> u32 {
        // SAFETY: GICH registers of the board's GIC (the boot image gives
        // the base; the tool maps it as device memory); reads have no side
        // effect.
        unsafe { self.reg(offset).read_volatile() }
    }

    fn write(&self, offset: usize, value: u32) {
        // SAFETY: as in `read`; only the kernel drives GICH, on one core.
        unsafe { self.reg(offset).write_volatile(value) }
    }

    /// Saves the virtual interface of the guest that ran and disables it.
    pub fn save(&self, state: &mut VcpuState) {
        state.gich = [self.read(gich::HCR), self.read(gich::VMCR), self.read(gich::APR)];
        for (i, lr) in state.lrs.iter_mut().enumerate().take(self.lrs) {
            *lr = self.read(gich::LR0 + 4 * i);
        }
        self.write(gich::HCR, 0);
    }

    /// Loads the virtual interface of the guest about to run.
    pub fn restore(&self, state: &VcpuState) {
        for (i, lr) in state.lrs.iter().enumerate().take(self.lrs) {
            self.write(gich::LR0 + 4 * i, *lr);
        }
        self.write(gich::APR, state.gich[2]);
        self.write(gich::VMCR, state.gich[1]);
        self.write(gich::HCR, state.gich[0]);
    }

    /// The list register whose end raised the maintenance interrupt,
    /// cleared so that it stops asserting; `None` if none did.
    pub fn take_ended(&self) -> Option<usize> {
        let eisr = u64::from(self.read(gich::EISR0)) | (u64::from(self.read(gich::EISR1)) << 32);
        if eisr == 0 {
            return None;
        }
        let lr = eisr.trailing_zeros() as usize;
        self.write(gich::LR0 + 4 * lr, 0);
        Some(lr)
    }
}

/// Runs `f` with VTTBR_EL2 naming `vmid`, for TLB maintenance by VMID
/// (TLBI IPAS2E1IS and VMALL* act on the current VMID).
fn with_vmid(vmid: u64, f: impl FnOnce()) {
    let saved: u64;
    // SAFETY: the kernel runs at EL2 with nothing at EL1/EL0 running; the
    // VTTBR_EL2 it installs only names the VMID (no table walk happens
    // before it is restored).
    unsafe {
        asm!("mrs {s}, vttbr_el2", "msr vttbr_el2, {v}", "isb",
            s = out(reg) saved, v = in(reg) vmid << 48, options(nomem, nostack, preserves_flags))
    };
    f();
    // SAFETY: puts back the VTTBR_EL2 read above.
    unsafe {
        asm!("msr vttbr_el2, {}", "isb", in(reg) saved, options(nomem, nostack, preserves_flags))
    };
}

/// Invalidates the stage-2 and combined TLB entries of `vmid` for IPAs
/// `[start, end)` (page aligned): TLBI IPAS2E1IS per page, then
/// VMALLE1IS for stage-1 entries built on them (Arm ARM D8.13.5).
pub fn invalidate_ipa_range(vmid: u64, start: u64, end: u64) {
    with_vmid(vmid, || {
        // SAFETY: TLB maintenance only drops cached translations.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
        let mut ipa = start;
        while ipa < end {
            // SAFETY: as above.
            unsafe {
                asm!("tlbi ipas2e1is, {}", in(reg) ipa >> 12, options(nostack, preserves_flags))
            };
            ipa += 4096;
        }
        // SAFETY: as above.
        unsafe {
            asm!("dsb ish", "tlbi vmalle1is", "dsb ish", "isb", options(nostack, preserves_flags))
        };
    });
}

/// Invalidates every TLB entry of `vmid`, both stages.
pub fn invalidate_vmid(vmid: u64) {
    with_vmid(vmid, || {
        // SAFETY: TLB maintenance only drops cached translations.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi vmalls12e1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    });
}

/// Cleans and invalidates `[pa, pa + bytes)` to the point of coherency
/// (DC CIVAC per line, the line size from CTR_EL0.DminLine); the kernel's
/// map is an identity map of RAM, so the VA is the PA.
pub fn clean_to_poc(pa: u64, bytes: u64) {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effect.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    let line = 4u64 << ((ctr >> 16) & 0xf);
    let mut at = pa & !(line - 1);
    while at < pa + bytes {
        // SAFETY: `at` is in RAM the caller checked (the guest pool),
        // mapped in the kernel's identity map; cleaning and invalidating
        // a line keeps its contents (they go to memory first).
        unsafe { asm!("dc civac, {}", in(reg) at, options(nostack, preserves_flags)) };
        at += line;
    }
    // SAFETY: a barrier.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// Writes a stage-2 table descriptor `desc` at physical address `at` and
/// makes it visible to the table walker.
///
/// # Safety
///
/// `at` must be an entry of a stage-2 table the kernel owns (a PD's, from
/// the boot image), 8-byte aligned, in RAM the EL2 map has writable.
pub unsafe fn write_table_entry(at: u64, desc: u64) {
    // SAFETY: the caller's contract.
    unsafe { (at as *mut u64).write_volatile(desc) };
    // SAFETY: a barrier.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// FP/SIMD registers of a PD or vCPU while another owns the unit.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
pub struct FpContext {
    /// Q0..Q31.
    pub q: [u128; 32],
    /// FPCR and FPSR.
    pub control: [u64; 2],
}

impl FpContext {
    /// Zeroed registers, round-to-nearest.
    pub const ZERO: FpContext = FpContext { q: [0; 32], control: [0; 2] };
}

/// CPTR_EL2 (HCR_EL2.E2H = 0): RES1 bits [13:12] and [9:0]; TFP (bit 10)
/// traps FP/SIMD at EL0, EL1 and EL2 (Arm ARM D24.2.29).
const CPTR_EL2_RES1: u64 = 0x33ff;
const CPTR_EL2_TFP: u64 = 1 << 10;

/// Traps (or stops trapping) FP/SIMD use; the ERET into the PD or guest
/// synchronises the change.
pub fn trap_fp(trap: bool) {
    let cptr = CPTR_EL2_RES1 | if trap { CPTR_EL2_TFP } else { 0 };
    // SAFETY: CPTR_EL2 only controls traps to EL2.
    unsafe { asm!("msr cptr_el2, {}", in(reg) cptr, options(nomem, nostack, preserves_flags)) };
}

/// Moves the FP/SIMD unit from its owner's registers to `to`'s: saves
/// them into `from` (if any) and loads `to`'s, with the trap off.
pub fn switch_fp(from: Option<&mut FpContext>, to: &FpContext) {
    trap_fp(false);
    // SAFETY: synchronises the CPTR_EL2 write before FP registers are
    // touched at EL2.
    unsafe { asm!("isb", options(nomem, nostack, preserves_flags)) };
    if let Some(from) = from {
        // SAFETY: `from` is a 16-byte aligned FpContext (512 bytes of Q
        // registers, then FPCR and FPSR); the kernel is soft-float, so
        // these registers hold the owner's values.
        unsafe {
            asm!(
                ".arch_extension fp",
                ".arch_extension simd",
                "stp q0, q1, [{p}, #0]",
                "stp q2, q3, [{p}, #32]",
                "stp q4, q5, [{p}, #64]",
                "stp q6, q7, [{p}, #96]",
                "stp q8, q9, [{p}, #128]",
                "stp q10, q11, [{p}, #160]",
                "stp q12, q13, [{p}, #192]",
                "stp q14, q15, [{p}, #224]",
                "stp q16, q17, [{p}, #256]",
                "stp q18, q19, [{p}, #288]",
                "stp q20, q21, [{p}, #320]",
                "stp q22, q23, [{p}, #352]",
                "stp q24, q25, [{p}, #384]",
                "stp q26, q27, [{p}, #416]",
                "stp q28, q29, [{p}, #448]",
                "stp q30, q31, [{p}, #480]",
                "mrs {t}, fpcr",
                "str {t}, [{p}, #512]",
                "mrs {t}, fpsr",
                "str {t}, [{p}, #520]",
                p = in(reg) core::ptr::from_mut(from),
                t = out(reg) _,
                options(nostack, preserves_flags),
            )
        };
    }
    // SAFETY: as above, loading `to`'s registers.
    unsafe {
        asm!(
            ".arch_extension fp",
            ".arch_extension simd",
            "ldp q0, q1, [{p}, #0]",
            "ldp q2, q3, [{p}, #32]",
            "ldp q4, q5, [{p}, #64]",
            "ldp q6, q7, [{p}, #96]",
            "ldp q8, q9, [{p}, #128]",
            "ldp q10, q11, [{p}, #160]",
            "ldp q12, q13, [{p}, #192]",
            "ldp q14, q15, [{p}, #224]",
            "ldp q16, q17, [{p}, #256]",
            "ldp q18, q19, [{p}, #288]",
            "ldp q20, q21, [{p}, #320]",
            "ldp q22, q23, [{p}, #352]",
            "ldp q24, q25, [{p}, #384]",
            "ldp q26, q27, [{p}, #416]",
            "ldp q28, q29, [{p}, #448]",
            "ldp q30, q31, [{p}, #480]",
            "ldr {t}, [{p}, #512]",
            "msr fpcr, {t}",
            "ldr {t}, [{p}, #520]",
            "msr fpsr, {t}",
            p = in(reg) core::ptr::from_ref(to),
            t = out(reg) _,
            options(nostack, preserves_flags, readonly),
        )
    };
}

/// Translates guest VA `va` through the running guest's stage 1 (AT
/// S1E1R), keeping the guest's PAR_EL1; the IPA, or `None` if the walk
/// fails.
pub fn guest_va_to_ipa(va: u64) -> Option<u64> {
    let (saved, par): (u64, u64);
    // SAFETY: AT only writes PAR_EL1, which is restored; the guest's EL1
    // translation registers are loaded (it just exited).
    unsafe {
        asm!(
            "mrs {s}, par_el1",
            "at s1e1r, {va}",
            "isb",
            "mrs {p}, par_el1",
            "msr par_el1, {s}",
            s = out(reg) saved,
            p = out(reg) par,
            va = in(reg) va,
            options(nostack, preserves_flags),
        )
    };
    let _ = saved;
    crate::vcpu::par_address(par, va)
}

/// HPFAR_EL2: the IPA of the last stage-2 fault, in bits 39:4.
pub fn read_hpfar() -> u64 {
    let v: u64;
    // SAFETY: reading HPFAR_EL2 has no side effect.
    unsafe { asm!("mrs {}, hpfar_el2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}
