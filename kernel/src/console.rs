//! The kernel console: the boot image's PL011, reachable from anywhere
//! (the boot path, panics, exception reports) without `static mut`.

use crate::pl011::Pl011;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Base of the console PL011; 0 until [`init`] (no console yet).
static UART_BASE: AtomicUsize = AtomicUsize::new(0);

/// Makes the PL011 at `base` the console and enables it.
///
/// # Safety
///
/// `base` must be the address of a PL011 register block, mapped as device
/// memory (or with the MMU off) for the kernel's lifetime, that no other
/// code drives. The kernel runs on one core, so the drivers [`print`]
/// makes never run concurrently.
pub unsafe fn init(base: usize) {
    // SAFETY: the caller's contract is `Pl011::new`'s.
    let mut uart = unsafe { Pl011::new(base) };
    uart.init();
    UART_BASE.store(base, Ordering::Release);
}

/// Writes `args` to the console; does nothing before [`init`].
pub fn print(args: fmt::Arguments<'_>) {
    let base = UART_BASE.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    // SAFETY: only `init` stores a non-zero base, under a contract that
    // makes it a PL011 the kernel alone drives, on one core.
    let mut uart = unsafe { Pl011::new(base) };
    // The PL011 writer cannot fail.
    let _ = uart.write_fmt(args);
    uart.flush();
}

/// Writes one raw byte to the console (a PD's debug output).
pub fn put(byte: u8) {
    let base = UART_BASE.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    // SAFETY: as in `print`.
    let mut uart = unsafe { Pl011::new(base) };
    uart.put(byte);
}

/// Prints to the console, like `print!`.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// Prints a line to the console, like `println!`.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
