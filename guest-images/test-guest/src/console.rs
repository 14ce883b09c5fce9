//! The console: the device tree's PL011, transmit only, polled.
//!
//! The boot loader (QEMU, or Tenure's VMM with its emulated PL011) leaves
//! the UART enabled, so the guest programs no baud rate. Its MMIO goes
//! through `safe-mmio`, whose accessors are single `ldr`/`str`
//! instructions with a syndrome a hypervisor can decode and emulate.

use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use core::fmt::{self, Write};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

/// The PL011's base address; 0 until `init`.
static BASE: AtomicUsize = AtomicUsize::new(0);

/// Sends console output to the PL011 at `base`.
///
/// # Safety
///
/// `base` is the physical address of a PL011 register block that nothing
/// else in the guest drives. The MMU is off, so it is reachable (as
/// device memory) at that address.
pub unsafe fn init(base: usize) {
    BASE.store(base, Ordering::SeqCst);
}

/// The console as a `fmt::Write`; writes nothing before `init`.
pub struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let Some(regs) = NonNull::new(BASE.load(Ordering::SeqCst) as *mut PL011Registers) else {
            return Ok(());
        };
        // SAFETY: `init`'s caller promised a PL011 at this address that
        // only the console drives. The guest has one core and the only
        // other writer, the exception vector, prints only once it has
        // given up on the program it interrupted, so one `Uart` exists at
        // a time.
        let mut uart = Uart::new(unsafe { UniqueMmioPointer::new(regs) });
        for byte in s.bytes() {
            if byte == b'\n' {
                put(&mut uart, b'\r');
            }
            put(&mut uart, byte);
        }
        Ok(())
    }
}

/// Waits for room in the transmit FIFO, then sends `byte`.
fn put(uart: &mut Uart<'_>, byte: u8) {
    while uart.is_tx_fifo_full() {}
    uart.write_word(byte);
}

/// Prints a line on the console.
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        // The console cannot fail; a formatting error has nowhere to go.
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
pub(crate) use println;
