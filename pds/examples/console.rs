// The examples' console: text goes to the serial PD through the region
// system.xml maps at `serial_region`, with a notification on channel 2.
// Included by each example PD (`include!`), as a module of its own.

use core::fmt::Write;
use microkit::{Channel, var};
use tenure_serial::client::{Writer, region_at};
use tenure_serial::region::Region;

/// The channel to the serial PD.
const SERIAL: Channel = Channel::new(2);

fn region() -> &'static Region {
    let addr = *var!(serial_region: usize = 0);
    // SAFETY: system.xml maps this PD's serial region at `serial_region`.
    unsafe { region_at(addr) }
}

/// Records this PD's name for the serial PD's labels.
pub fn init() {
    region().set_name(microkit::symbols::pd_name());
}

/// Writes one line to the console.
pub fn line(args: core::fmt::Arguments<'_>) {
    let mut w = Writer::new(region(), || SERIAL.notify());
    let _ = w.write_fmt(args);
    let _ = w.write_str("\n");
}

/// Prints a line through the serial PD.
macro_rules! say {
    ($($arg:tt)*) => { $crate::pd::console::line(format_args!($($arg)*)) };
}
pub(crate) use say;
