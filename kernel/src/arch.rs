//! The aarch64 boundary: entry, EL2 exception vectors, system registers.
//! Everything `unsafe` about the CPU is here; the rest of the kernel is
//! plain Rust tested on the host.
//!
//! Boot contract (docs/decisions/0003-boot-image-layout.md): the kernel is
//! entered at `_start`, at EL2, MMU and caches off, on any core; the tool
//! has relocated it to the board's load address and put the boot image at
//! `__boot_image`. Once the image is parsed, `kernel_entry` installs the
//! image's EL2 stage-1 identity map and turns the MMU and caches on, with
//! SCTLR_EL2.WXN set (docs/decisions/0006-kernel-el2-stage1-identity-map.md,
//! docs/decisions/0008-kernel-map-is-w-xor-x.md).

use crate::boot::{self, BootState, KernelRegions};
use crate::console::{self, print};
use crate::exception::Report;
use core::arch::{asm, global_asm};
use core::fmt::{self, Write};
use tenure_boot_image::{HEADER_SIZE, Image};

/// Largest boot image the kernel maps as a slice before checking it: a
/// bound on a header value it has not validated yet (no board has less RAM
/// than this after the kernel).
const MAX_BOOT_IMAGE: u64 = 64 << 20;

/// CPTR_EL2 with no traps: RES1 bits [13:12] and [9:0] set, TFP (bit 10,
/// SIMD and floating point) and TTA / TCPAC clear (Arm ARM D24.2.29,
/// CPTR_EL2 when HCR_EL2.E2H is 0). Rust code may use SIMD registers.
const CPTR_EL2_NO_TRAPS: u64 = 0x33FF;

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    // Only the boot core runs the kernel; others (MPIDR Aff0..Aff2 != 0)
    // park. Firmware on both boards holds them already, this is a guard.
    mrs     x1, mpidr_el1
    and     x1, x1, #0xffffff
    cbnz    x1, .Lpark

    adrp    x1, __stack_top
    add     x1, x1, :lo12:__stack_top
    mov     sp, x1

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

    mrs     x19, CurrentEL
    ubfx    x19, x19, #2, #2
    cmp     x19, #2
    b.ne    .Lenter_rust
    adrp    x1, exception_vectors
    add     x1, x1, :lo12:exception_vectors
    msr     vbar_el2, x1
    mov     x1, #{cptr}
    msr     cptr_el2, x1
    isb
.Lenter_rust:
    mov     x0, x19
    bl      kernel_entry
.Lpark:
    wfe
    b       .Lpark

    // 16 entries of 0x80 bytes, table aligned to 2 KiB (Arm ARM D1.3.1).
    // Entries 8 and 9 (synchronous and IRQ from AArch64 EL0: a PD) save
    // the PD's registers and go to `pd_exception`; every other one is
    // unexpected and reported.
    .section .text.vectors, "ax"
    .balign 0x800
    .global exception_vectors
exception_vectors:
    .set .Lvector, 0
    .rept 8
    .balign 0x80
    mov     x0, #.Lvector
    b       .Lunexpected
    .set .Lvector, .Lvector + 1
    .endr
    .rept 2
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #.Lvector
    b       .Lfrom_pd
    .set .Lvector, .Lvector + 1
    .endr
    .rept 6
    .balign 0x80
    mov     x0, #.Lvector
    b       .Lunexpected
    .set .Lvector, .Lvector + 1
    .endr
.Lunexpected:
    bl      unexpected_exception
    b       .Lpark

    // Saves the PD's registers into the context TPIDR_EL2 points at (see
    // `run::Context`: x0..x30 at 0, SP_EL0 at 248, ELR at 256, SPSR at
    // 264), with x0 = the vector index and the PD's x0, x1 on the stack.
.Lfrom_pd:
    mrs     x1, tpidr_el2
    stp     x2, x3, [x1, #16]
    stp     x4, x5, [x1, #32]
    stp     x6, x7, [x1, #48]
    stp     x8, x9, [x1, #64]
    stp     x10, x11, [x1, #80]
    stp     x12, x13, [x1, #96]
    stp     x14, x15, [x1, #112]
    stp     x16, x17, [x1, #128]
    stp     x18, x19, [x1, #144]
    stp     x20, x21, [x1, #160]
    stp     x22, x23, [x1, #176]
    stp     x24, x25, [x1, #192]
    stp     x26, x27, [x1, #208]
    stp     x28, x29, [x1, #224]
    str     x30, [x1, #240]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1, #0]
    mrs     x2, sp_el0
    mrs     x3, elr_el2
    mrs     x4, spsr_el2
    str     x2, [x1, #248]
    stp     x3, x4, [x1, #256]
    bl      pd_exception

    // Restores the context TPIDR_EL2 points at and returns to its PD, on a
    // fresh kernel stack for the next exception.
    .global return_to_pd
return_to_pd:
    adrp    x0, __stack_top
    add     x0, x0, :lo12:__stack_top
    mov     sp, x0
    mrs     x1, tpidr_el2
    ldr     x2, [x1, #248]
    ldp     x3, x4, [x1, #256]
    msr     sp_el0, x2
    msr     elr_el2, x3
    msr     spsr_el2, x4
    ldp     x2, x3, [x1, #16]
    ldp     x4, x5, [x1, #32]
    ldp     x6, x7, [x1, #48]
    ldp     x8, x9, [x1, #64]
    ldp     x10, x11, [x1, #80]
    ldp     x12, x13, [x1, #96]
    ldp     x14, x15, [x1, #112]
    ldp     x16, x17, [x1, #128]
    ldp     x18, x19, [x1, #144]
    ldp     x20, x21, [x1, #160]
    ldp     x22, x23, [x1, #176]
    ldp     x24, x25, [x1, #192]
    ldp     x26, x27, [x1, #208]
    ldp     x28, x29, [x1, #224]
    ldr     x30, [x1, #240]
    ldp     x0, x1, [x1, #0]
    eret
"#,
    cptr = const CPTR_EL2_NO_TRAPS,
);

unsafe extern "C" {
    /// The first byte of the kernel (linker script).
    static _start: u8;
    /// The vector table above.
    static exception_vectors: u8;
    /// Where the tool put the boot image (linker script).
    static __boot_image: u8;
    /// The end of the kernel's text and the start of its read-only data
    /// (linker script, page aligned, as are the symbols below).
    static __text_end: u8;
    /// The end of the read-only data and the start of data and bss.
    static __rodata_end: u8;
    /// The stack's guard page, unmapped: the page after bss.
    static __stack_guard: u8;
    /// The lowest byte of the boot stack, right above the guard page.
    static __stack_bottom: u8;
    /// The top of the boot stack (it grows down from here).
    static __stack_top: u8;
}

/// Rust entry, from `_start` on the boot core with a stack and zeroed BSS.
#[unsafe(no_mangle)]
extern "C" fn kernel_entry(current_el: u64) -> ! {
    let Some(image) = boot_image() else {
        // No valid image, so no console to say so: stop.
        halt()
    };
    let board = image.board();
    // The board's UART is the one address the kernel needs before it has
    // any tables; it comes from the image, never from the kernel.
    let Ok(uart) = usize::try_from(board.uart_base.get()) else { halt() };
    // SAFETY: the tool packed the board's PL011 base into the image the
    // kernel booted from; the MMU is off, so it is reachable as device
    // memory (and stays so on the map installed next: Device-nGnRE at the
    // same address); nothing else in the kernel drives it.
    unsafe { console::init(uart) };

    let start = (&raw const _start) as u64;
    let image_paddr = (&raw const __boot_image) as u64;
    let end = image_paddr + image.bytes().len() as u64;
    let guard = (&raw const __stack_guard) as u64;
    let stack_bottom = (&raw const __stack_bottom) as u64;
    let regions = KernelRegions {
        text: start..(&raw const __text_end) as u64,
        rodata: (&raw const __text_end) as u64..(&raw const __rodata_end) as u64,
        data: (&raw const __rodata_end) as u64..guard,
        guard: guard..stack_bottom,
        stack: stack_bottom..(&raw const __stack_top) as u64,
        image: image_paddr..end,
    };
    if current_el == 2 {
        // The kernel's own stage 1, prebuilt by the tool (docs/decisions/
        // 0006, 0008): installed before anything else, once it is known
        // to map the kernel, its image and its devices to themselves, W^X,
        // with the page under the stack unmapped.
        match boot::check_map(image.stage1(), image_paddr, &regions, board) {
            // SAFETY: checked just now: the map keeps every address the
            // kernel uses at its physical address, its text Normal
            // write-back and executable, the memory it writes (data, bss,
            // stack) writable, its devices Device memory.
            Ok(()) => unsafe { enable_mmu(image.stage1(), start, image_paddr) },
            Err(e) => {
                crate::kprintln!("Cannot install the boot image's EL2 map: {e:?}; stopping.");
                halt()
            }
        }
    }
    let state = BootState {
        current_el: current_el as u8,
        kernel_start: start,
        kernel_end: end,
        vectors: (&raw const exception_vectors) as u64,
        vbar_el2: if current_el == 2 { read_vbar_el2() } else { 0 },
        sctlr_el2: if current_el == 2 { read_sysreg!("sctlr_el2") } else { 0 },
        board,
        regions,
        map: image.stage1(),
        translate: translate_el2,
    };
    let mut out = ConsoleWriter;
    let _ = boot::banner(&mut out, &state);
    if cfg!(feature = "exception-test") {
        // SAFETY: `brk` raises a synchronous exception and touches no
        // memory; the vectors report it and stop.
        unsafe { asm!("brk #0x7e", options(nomem, nostack)) };
    }
    if cfg!(feature = "boot-test") {
        let _ = boot::boot_tests(&mut out, &state);
    } else if current_el != 2 {
        crate::kprintln!("Tenure needs to be entered at EL2; stopping.");
    } else if image.system().pds.is_empty() {
        crate::kprintln!("No protection domains in this image; the kernel stops here.");
    } else if let Err(e) = crate::run::start(image.system(), board) {
        crate::kprintln!("Cannot start the system: {e:?}");
    }
    halt()
}

/// Installs the boot image's EL2 stage-1 map and turns on the MMU, the
/// caches and write-implies-execute-never (SCTLR_EL2.M, C, I and WXN;
/// other bits as they were).
///
/// Until now every data access was Device-nGnRnE (MMU off), so nothing
/// the kernel wrote is in a cache; the loader cleaned the image to the
/// point of coherency. Lines a loader left behind for the kernel's memory
/// (`start..end`: text, data, bss and stack) are invalidated first so that
/// they cannot hide what was written with the caches off.
///
/// # Safety
///
/// `map` must identity-map everything the kernel touches from here on,
/// its text executable and not writable, what it writes writable
/// ([`boot::check_map`]); called once, at EL2, MMU off.
unsafe fn enable_mmu(map: Option<tenure_boot_image::Stage1<'_>>, start: u64, end: u64) {
    let Some(map) = map else { return };
    // CTR_EL0.DminLine, bits [19:16]: log2 of the smallest data cache line
    // in words.
    let ctr = read_sysreg!("ctr_el0");
    let line = 4u64 << ((ctr >> 16) & 0xF);
    let mut at = start & !(line - 1);
    while at < end {
        // SAFETY: invalidating cache lines of the kernel's own memory:
        // with the MMU off none of them holds data the kernel wrote.
        unsafe { asm!("dc ivac, {}", in(reg) at, options(nostack, preserves_flags)) };
        at += line;
    }
    // SAFETY: the register values come from the checked image; the map
    // keeps the code running here, its stack and its data where they are
    // (the caller's contract), so execution continues after the `isb`.
    unsafe {
        asm!(
            "dsb sy",
            "msr mair_el2, {mair}",
            "msr tcr_el2, {tcr}",
            "msr ttbr0_el2, {ttbr0}",
            "isb",
            "tlbi alle2",
            "ic iallu",
            "dsb sy",
            "isb",
            "mrs {t}, sctlr_el2",
            "orr {t}, {t}, {on}",
            "msr sctlr_el2, {t}",
            "isb",
            mair = in(reg) map.config.mair.get(),
            tcr = in(reg) map.config.tcr.get(),
            ttbr0 = in(reg) map.config.ttbr0.get(),
            on = in(reg) boot::SCTLR_EL2_MMU_ON,
            t = out(reg) _,
            options(nostack),
        );
    }
}

/// PAR_EL1.F, bit 0: the address translation faulted (Arm ARM D24.2.142,
/// PAR_EL1, 64-bit format).
const PAR_F: u64 = 1;
/// PAR_EL1.PA, bits [47:12]: the output address when F is 0.
const PAR_PA: u64 = 0x0000_FFFF_FFFF_F000;

/// Translates `va` with the EL2 stage 1 as a read (`AT S1E2R`) or a write
/// (`AT S1E2W`) would, without accessing it (Arm ARM C5.5, "A64 System
/// instructions for address translation"): the output address, or `None`
/// if the access would fault. At EL2 only.
fn translate_el2(va: u64, write: bool) -> Option<u64> {
    let par: u64;
    if write {
        // SAFETY: AT touches no memory and writes only PAR_EL1, which no
        // EL2 code reads but this; the `isb` makes its result visible to
        // the `mrs` (D24.2.142). The kernel runs at EL2, where both are
        // allowed.
        unsafe {
            asm!(
                "at s1e2w, {va}",
                "isb",
                "mrs {par}, par_el1",
                va = in(reg) va,
                par = out(reg) par,
                options(nostack, preserves_flags),
            );
        }
    } else {
        // SAFETY: as above, for a read.
        unsafe {
            asm!(
                "at s1e2r, {va}",
                "isb",
                "mrs {par}, par_el1",
                va = in(reg) va,
                par = out(reg) par,
                options(nostack, preserves_flags),
            );
        }
    }
    (par & PAR_F == 0).then_some((par & PAR_PA) | (va & 0xFFF))
}

/// The boot image after the kernel, checked; `None` if it is not valid.
fn boot_image() -> Option<Image<'static>> {
    let start = &raw const __boot_image;
    // SAFETY: the linker script reserves nothing at `__boot_image` and the
    // tool writes at least a header there: `HEADER_SIZE` bytes of RAM the
    // kernel never writes.
    let header = unsafe { core::slice::from_raw_parts(start, HEADER_SIZE) };
    let total = Image::peek_total_size(header).ok()?;
    if total > MAX_BOOT_IMAGE {
        return None;
    }
    // SAFETY: the header says the image has `total` bytes, bounded by
    // `MAX_BOOT_IMAGE`, all of them RAM after the kernel that no Rust
    // code writes; `parse` checks everything else.
    let bytes = unsafe { core::slice::from_raw_parts(start, total as usize) };
    Image::parse(bytes).ok()
}

/// Reports an unexpected exception from the vector table, then stops.
#[unsafe(no_mangle)]
extern "C" fn unexpected_exception(vector: u64) -> ! {
    let report = Report {
        vector,
        esr: read_sysreg!("esr_el2"),
        elr: read_sysreg!("elr_el2"),
        far: read_sysreg!("far_el2"),
        spsr: read_sysreg!("spsr_el2"),
    };
    let _ = report.print(&mut ConsoleWriter);
    halt()
}

/// Reports a panic, then stops.
pub fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::kprintln!("KERNEL PANIC: {info}");
    crate::kprintln!("TEST_FAIL");
    halt()
}

/// Stops this core for good.
pub fn halt() -> ! {
    loop {
        // SAFETY: `wfe` only waits; it touches no memory.
        unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
}

/// Reads the system register named by a string literal.
macro_rules! read_sysreg {
    ($name:literal) => {{
        let value: u64;
        // SAFETY: reading this EL2 system register has no side effect;
        // the kernel runs at EL2, where it is accessible.
        unsafe {
            asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack, preserves_flags))
        };
        value
    }};
}
use read_sysreg;

fn read_vbar_el2() -> u64 {
    read_sysreg!("vbar_el2")
}

/// ESR_EL2: why the last exception to EL2 was taken.
pub fn read_esr() -> u64 {
    read_sysreg!("esr_el2")
}

/// FAR_EL2: the faulting address of the last abort to EL2.
pub fn read_far() -> u64 {
    read_sysreg!("far_el2")
}

/// `fmt::Write` onto the console.
struct ConsoleWriter;

impl Write for ConsoleWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        print(format_args!("{s}"));
        Ok(())
    }
}
