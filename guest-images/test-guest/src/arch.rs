//! The aarch64 boundary: the Image header and entry, self-relocation, the
//! EL1 exception vectors, SMCCC calls, the one load that may abort and
//! the counters `bench` reads. Everything `unsafe` about the CPU is here.
//!
//! Boot contract (Linux's `Documentation/arch/arm64/booting.rst`): the
//! loader puts the Image at a 2 MiB-aligned RAM address + `TEXT_OFFSET`,
//! reserves `image_size` bytes there and enters offset 0 at EL1 with the
//! MMU and data cache off, interrupts masked, `x0` = the physical address
//! of the device tree and `x1..=x3` = 0. The guest never turns its MMU on:
//! every data access is then Device-nGnRnE (Arm ARM D8.2.11), so the
//! target's `+strict-align` matters and atomics are used for loads and
//! stores only (no exclusives on device memory).

use crate::console::println;
use crate::run;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// Where the loader puts the Image above a 2 MiB boundary: Linux's
/// `TEXT_OFFSET` of old, which QEMU and U-Boot honour.
const TEXT_OFFSET: u64 = 0x8_0000;
/// Image header flags (booting.rst): bit 0 clear, little-endian; bits
/// 2:1 = 1, 4 KiB pages; bit 3 clear, placed near the start of RAM.
const IMAGE_FLAGS: u64 = 0b0010;
/// CPACR_EL1 with FPEN (bits 21:20) = 0b11: SIMD and floating point do
/// not trap at EL1 (Arm ARM D24.2.33); Rust code may use them.
const CPACR_EL1_FPEN: u64 = 0b11 << 20;
/// `R_AARCH64_RELATIVE`, the only relocation a static PIE holds (ELF for
/// the Arm 64-bit Architecture, table 5-14).
const R_AARCH64_RELATIVE: u64 = 1027;

global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    // The arm64 Image header (booting.rst): code0, code1, text_offset,
    // image_size, flags, res2..res4, magic "ARM\x64" at 0x38, res5.
    b       .Lentry
    .long   0
    .quad   {text_offset}
    .quad   __image_size
    .quad   {flags}
    .quad   0
    .quad   0
    .quad   0
    .ascii  "ARM\x64"
    .long   0

.Lentry:
    mrs     x21, cntvct_el0         // when the guest started, for `bench`
    msr     daifset, #0xf
    mov     x19, x0                 // the device tree

    // Apply R_AARCH64_RELATIVE relocations: *(base + offset) = base +
    // addend, base being where the loader put _start (linked at 0).
    adr     x20, _start
    adrp    x1, __rela_start
    add     x1, x1, :lo12:__rela_start
    adrp    x2, __rela_end
    add     x2, x2, :lo12:__rela_end
.Lrelocate:
    cmp     x1, x2
    b.hs    .Lrelocated
    ldp     x3, x4, [x1], #16       // r_offset, r_info
    ldr     x5, [x1], #8            // r_addend
    cmp     w4, #{relative}
    b.ne    .Lhalt                  // no console yet: nothing to say
    add     x5, x5, x20
    str     x5, [x20, x3]
    b       .Lrelocate
.Lrelocated:

    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
.Lzero_bss:
    cmp     x1, x2
    b.hs    .Lbss_done
    str     xzr, [x1], #8
    b       .Lzero_bss
.Lbss_done:

    adrp    x1, __stack_top
    add     x1, x1, :lo12:__stack_top
    mov     sp, x1
    adrp    x1, el1_vectors
    add     x1, x1, :lo12:el1_vectors
    msr     vbar_el1, x1
    mov     x1, #{cpacr}
    msr     cpacr_el1, x1
    isb

    mov     x0, x19
    mov     x1, x20
    mrs     x2, CurrentEL
    ubfx    x2, x2, #2, #2
    mov     x3, x21
    bl      guest_main
.Lhalt:
    wfi
    b       .Lhalt

    // 16 entries of 0x80 bytes, table aligned to 2 KiB (Arm ARM D1.3.1).
    // Each saves x0, x1 in a frame on the current stack, puts its index
    // in x0 and joins .Lsave, which saves the rest and calls
    // `el1_exception(frame, index)`; on return the frame (with the ELR
    // it may have moved on) is restored.
    .section .text.vectors, "ax"
    .balign 0x800
el1_vectors:
    .set .Lvector, 0
    .rept 16
    .balign 0x80
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp, #0]
    mov     x0, #.Lvector
    b       .Lsave
    .set .Lvector, .Lvector + 1
    .endr
.Lsave:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x2, x3, [sp, #248]
    mov     x1, x0
    mov     x0, sp
    bl      el1_exception
    ldp     x2, x3, [sp, #248]
    msr     elr_el1, x2
    msr     spsr_el1, x3
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #{frame}
    eret
"#,
    text_offset = const TEXT_OFFSET,
    flags = const IMAGE_FLAGS,
    relative = const R_AARCH64_RELATIVE,
    cpacr = const CPACR_EL1_FPEN,
    frame = const size_of::<Frame>(),
);

/// The registers the vectors save, in the order `.Lsave` stores them.
#[repr(C)]
struct Frame {
    x: [u64; 31],
    elr: u64,
    spsr: u64,
    /// Keeps the frame a multiple of 16 bytes, as SP must stay.
    _pad: u64,
}

const _: () = assert!(size_of::<Frame>() == 272 && size_of::<Frame>().is_multiple_of(16));

/// Vector index of a synchronous exception from the current EL on SP_EL1
/// (offset 0x200 of the table).
const SYNC_CURRENT_SPX: u64 = 4;

/// Set while a probe's load may abort; the vector then records the abort
/// and steps over the load instead of stopping the guest.
static ABORT_EXPECTED: AtomicBool = AtomicBool::new(false);
/// Set by the vector when it took an expected abort.
static ABORT_TAKEN: AtomicBool = AtomicBool::new(false);
/// ESR_EL1 of the last expected abort.
static ABORT_ESR: AtomicU64 = AtomicU64::new(0);
/// FAR_EL1 of the last expected abort.
static ABORT_FAR: AtomicU64 = AtomicU64::new(0);

/// A synchronous exception a probe's load took.
#[derive(Clone, Copy, Debug)]
pub struct Abort {
    /// ESR_EL1.
    pub esr: u64,
    /// FAR_EL1.
    pub far: u64,
}

/// Loads the doubleword at `addr`, which may abort: the abort is caught
/// and returned instead of stopping the guest.
pub fn guarded_read(addr: u64) -> Result<u64, Abort> {
    ABORT_TAKEN.store(false, Ordering::SeqCst);
    ABORT_EXPECTED.store(true, Ordering::SeqCst);
    let value: u64;
    // SAFETY: a load changes no memory; if `addr` is not readable the CPU
    // takes a synchronous exception, which `el1_exception` records (it is
    // expected) and returns from past this one 4-byte `ldr`. The value is
    // then the zero written before it and is not used.
    unsafe {
        asm!("mov {v}, xzr", "ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack));
    }
    ABORT_EXPECTED.store(false, Ordering::SeqCst);
    if ABORT_TAKEN.load(Ordering::SeqCst) {
        Err(Abort { esr: ABORT_ESR.load(Ordering::SeqCst), far: ABORT_FAR.load(Ordering::SeqCst) })
    } else {
        Ok(value)
    }
}

/// Loads the word (32 bits) at `addr`, which may abort, as
/// [`guarded_read`] does: device registers that take only word accesses,
/// such as the GIC's.
pub fn guarded_read32(addr: u64) -> Result<u32, Abort> {
    ABORT_TAKEN.store(false, Ordering::SeqCst);
    ABORT_EXPECTED.store(true, Ordering::SeqCst);
    let value: u32;
    // SAFETY: as in `guarded_read`: one 4-byte `ldr`, which changes no
    // memory; an abort resumes past it with the zero written before.
    unsafe {
        asm!("mov {v:w}, wzr", "ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack));
    }
    ABORT_EXPECTED.store(false, Ordering::SeqCst);
    if ABORT_TAKEN.load(Ordering::SeqCst) {
        Err(Abort { esr: ABORT_ESR.load(Ordering::SeqCst), far: ABORT_FAR.load(Ordering::SeqCst) })
    } else {
        Ok(value)
    }
}

/// Runs `access`, one instruction (in an `asm!` block of its own) that
/// may take a synchronous exception: the exception is caught and
/// returned, and the guest goes on after the instruction.
pub fn guarded(access: impl FnOnce()) -> Result<(), Abort> {
    ABORT_TAKEN.store(false, Ordering::SeqCst);
    ABORT_EXPECTED.store(true, Ordering::SeqCst);
    access();
    ABORT_EXPECTED.store(false, Ordering::SeqCst);
    if ABORT_TAKEN.load(Ordering::SeqCst) {
        Err(Abort { esr: ABORT_ESR.load(Ordering::SeqCst), far: ABORT_FAR.load(Ordering::SeqCst) })
    } else {
        Ok(())
    }
}

/// Where an exception came from, by vector index.
fn vector_name(vector: u64) -> (&'static str, &'static str) {
    let kind = ["synchronous", "IRQ", "FIQ", "SError"][(vector % 4) as usize];
    let from =
        ["EL1 on SP_EL0", "EL1 on SP_EL1", "AArch64 EL0", "AArch32 EL0"][(vector / 4 % 4) as usize];
    (kind, from)
}

/// Rust side of the vectors, with the saved registers and the index.
#[unsafe(no_mangle)]
extern "C" fn el1_exception(frame: *mut Frame, vector: u64) {
    let (esr, far) = (esr_el1(), far_el1());
    if vector == SYNC_CURRENT_SPX && ABORT_EXPECTED.load(Ordering::SeqCst) {
        ABORT_EXPECTED.store(false, Ordering::SeqCst);
        ABORT_ESR.store(esr, Ordering::SeqCst);
        ABORT_FAR.store(far, Ordering::SeqCst);
        ABORT_TAKEN.store(true, Ordering::SeqCst);
        // SAFETY: `frame` is the frame `.Lsave` built on this stack for
        // this exception, which nothing else refers to; moving ELR on by
        // one instruction resumes after `guarded_read`'s load.
        unsafe { (*frame).elr += 4 };
        return;
    }
    // SAFETY: as above; only read.
    let elr = unsafe { (*frame).elr };
    let (kind, from) = vector_name(vector);
    println!(
        "# unexpected {kind} exception from {from}: ESR_EL1 {esr:#x} FAR_EL1 {far:#x} ELR_EL1 {elr:#x}"
    );
    println!("TEST_FAIL");
    run::power_off()
}

/// ESR_EL1, the syndrome of the last exception taken to EL1.
fn esr_el1() -> u64 {
    let esr: u64;
    // SAFETY: reading a system register of the current EL has no effects.
    unsafe { asm!("mrs {}, esr_el1", out(reg) esr, options(nomem, nostack, preserves_flags)) };
    esr
}

/// FAR_EL1, the faulting address of the last abort taken to EL1.
fn far_el1() -> u64 {
    let far: u64;
    // SAFETY: as for `esr_el1`.
    unsafe { asm!("mrs {}, far_el1", out(reg) far, options(nomem, nostack, preserves_flags)) };
    far
}

/// CNTVCT_EL0, the virtual count: EL1 reads it whatever CNTKCTL_EL1 says
/// (Arm ARM, CNTVCT_EL0).
pub fn virtual_count() -> u64 {
    let count: u64;
    // SAFETY: reading the virtual counter has no effects.
    // Not `nomem`: the compiler keeps it where it is among the memory
    // accesses it times.
    unsafe { asm!("mrs {}, cntvct_el0", out(reg) count, options(nostack, preserves_flags)) };
    count
}

/// CNTFRQ_EL0, the counter's frequency in Hz as the firmware set it.
pub fn counter_frequency() -> u64 {
    let hz: u64;
    // SAFETY: as for `virtual_count`.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack, preserves_flags)) };
    hz
}

/// ID_AA64DFR0_EL1.PMUVer, bits 11:8: 0 means no PMU, 0xf one that is not
/// PMUv3 (Arm ARM, ID_AA64DFR0_EL1).
const PMUVER_SHIFT: u64 = 8;
const PMUVER_MASK: u64 = 0xf;

/// Whether the CPU has a PMUv3, so that [`instructions`] may read it.
pub fn has_pmu() -> bool {
    let dfr0: u64;
    // SAFETY: reading an ID register has no effects.
    unsafe {
        asm!("mrs {}, id_aa64dfr0_el1", out(reg) dfr0, options(nomem, nostack, preserves_flags))
    };
    let version = (dfr0 >> PMUVER_SHIFT) & PMUVER_MASK;
    version != 0 && version != PMUVER_MASK
}

/// PMU event counter 0 (PMEVCNTR0_EL0), where Tenure's `benchmark` kernel
/// counts INST_RETIRED at every EL. Only on a CPU with a PMUv3
/// ([`has_pmu`]): elsewhere the read is undefined and the guest stops
/// with an unexpected exception.
pub fn instructions() -> u32 {
    let n: u64;
    // SAFETY: reading a counter has no effects. A PMUv3 has event counter
    // 0 on every core the guest runs on (Cortex-A53 and A72 have six);
    // EL1 reads it unless MDCR_EL2.TPM traps it, which Tenure's kernel
    // leaves clear. Not `nomem`, as in `virtual_count`.
    unsafe { asm!("mrs {}, pmevcntr0_el0", out(reg) n, options(nostack, preserves_flags)) };
    // The counter is 32 bits wide (PMCR_EL0.LP clear).
    n as u32
}

/// The SMCCC conduit the device tree's `/psci` node names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Conduit {
    /// No `/psci` node, or a method the guest does not know: calls
    /// return NOT_SUPPORTED without trapping (as Linux does).
    None = 0,
    /// `method = "hvc"`.
    Hvc = 1,
    /// `method = "smc"`.
    Smc = 2,
}

/// The conduit `set_conduit` chose.
static CONDUIT: AtomicU8 = AtomicU8::new(Conduit::None as u8);

/// Chooses the conduit of every later call.
pub fn set_conduit(conduit: Conduit) {
    CONDUIT.store(conduit as u8, Ordering::SeqCst);
}

/// Makes SMCCC call `function` with `x1..=x3` = `args` (the rest zero)
/// through the device tree's conduit; returns `x0..=x3`.
pub fn smccc(function: u32, args: [u64; 3]) -> [u64; 4] {
    let mut regs = [0; 17];
    regs[..3].copy_from_slice(&args);
    let conduit = CONDUIT.load(Ordering::SeqCst);
    let ret = if conduit == Conduit::Hvc as u8 {
        smccc::hvc64(function, regs)
    } else if conduit == Conduit::Smc as u8 {
        smccc::smc64(function, regs)
    } else {
        return [tenure_abi::hvc::Ret::NotSupported.raw(), 0, 0, 0];
    };
    [ret[0], ret[1], ret[2], ret[3]]
}

/// Stops this core for good.
pub fn halt() -> ! {
    loop {
        // SAFETY: waiting for an interrupt (all masked) has no effects.
        unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}

unsafe extern "C" {
    /// The first byte of the image (the header), where the loader put it.
    static _start: u8;
    /// The first scratch page (`link.ld`).
    static __scratch_start: u8;
    /// The end of the scratch pages.
    static __scratch_end: u8;
    /// The end of the memory the image reserves (`image_size`).
    static __image_end: u8;
}

/// The image's addresses where it runs (the MMU is off: IPAs).
#[derive(Clone, Copy, Debug)]
pub struct ImageLayout {
    /// The header, where the loader put the image.
    pub start: u64,
    /// The first scratch page.
    pub scratch: u64,
    /// Scratch pages `link.ld` reserved.
    pub scratch_pages: u64,
    /// The end of the reserved memory.
    pub end: u64,
}

/// Where the image runs.
pub fn image_layout() -> ImageLayout {
    let start = (&raw const _start) as u64;
    let scratch = (&raw const __scratch_start) as u64;
    let scratch_end = (&raw const __scratch_end) as u64;
    let end = (&raw const __image_end) as u64;
    ImageLayout {
        start,
        scratch,
        scratch_pages: (scratch_end - scratch) / tenure_abi::hvc::GRANULE,
        end,
    }
}
