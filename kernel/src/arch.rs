//! The aarch64 boundary: entry, EL2 exception vectors, system registers.
//! Everything `unsafe` about the CPU is here; the rest of the kernel is
//! plain Rust tested on the host.
//!
//! Boot contract (docs/decisions/0003-boot-image-layout.md): the kernel is
//! entered at `_start`, at EL2, MMU and caches off, on any core; the tool
//! has relocated it to the board's load address and put the boot image at
//! `__boot_image`.

use crate::boot::{self, BootState};
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
    .section .text.vectors, "ax"
    .balign 0x800
    .global exception_vectors
exception_vectors:
    .set .Lvector, 0
    .rept 16
    .balign 0x80
    mov     x0, #.Lvector
    b       .Lunexpected
    .set .Lvector, .Lvector + 1
    .endr
.Lunexpected:
    bl      unexpected_exception
    b       .Lpark
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
    // memory; nothing else in the kernel drives it.
    unsafe { console::init(uart) };

    let start = (&raw const _start) as u64;
    let state = BootState {
        current_el: current_el as u8,
        kernel_start: start,
        kernel_end: (&raw const __boot_image) as u64 + image.bytes().len() as u64,
        vectors: (&raw const exception_vectors) as u64,
        vbar_el2: if current_el == 2 { read_vbar_el2() } else { 0 },
        board,
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
    } else {
        crate::kprintln!("No protection domains in this image yet; the kernel stops here.");
    }
    halt()
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

/// `fmt::Write` onto the console.
struct ConsoleWriter;

impl Write for ConsoleWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        print(format_args!("{s}"));
        Ok(())
    }
}
