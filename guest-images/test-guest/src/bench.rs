//! The `bench` probe's figures: how much it times, where the pages it
//! touches first lie, and its `BENCH <name> <value>` lines.
//!
//! The guest counts instructions with PMU event counter 0. Tenure's
//! `benchmark` kernel counts INST_RETIRED there at EL0, EL1 and EL2 and
//! leaves the counter readable at EL1 (MDCR_EL2.TPM clear), so a figure
//! covers everything the CPU ran between two reads: the guest, the
//! kernel, the VMM and mm. Without that kernel (or natively, without
//! QEMU's `-icount`) the counter stands still and the figures read 0.
//!
//! The boot figures come from the virtual counter instead (the PMU starts
//! counting too late in the kernel's boot): CNTVCT_EL0 is the physical
//! count since reset while the hypervisor leaves CNTVOFF_EL2 at 0, which
//! Tenure's VMM does, and under QEMU's `-icount shift=0` one instruction
//! takes one nanosecond, so `ticks * 1e9 / CNTFRQ` counts instructions
//! (16 to a tick at 62.5 MHz).
//!
//! | line | value |
//! |---|---|
//! | `BENCH guest_reset_to_entry N` | reset to the guest's first instruction |
//! | `BENCH guest_reset_to_output N` | reset to the guest's first console byte |
//! | `BENCH guest_populate_page N` | one first touch of a page nobody populated: the stage-2 fault, the hypervisor backing the page, the guest resuming; mean of [`POPULATE_PAGES`] |
//! | `BENCH guest_share_page N` | one MEM_SHARE round trip of a page; mean of [`ROUNDS`] after [`WARMUP`] |
//! | `BENCH guest_unshare_page N` | one MEM_UNSHARE round trip of it; likewise |
//! | `BENCH_DONE` | the end of the figures |

use crate::probe::{Layout, Scratch};
use core::fmt::{self, Display};
use tenure_abi::hvc::GRANULE;

/// Pages of RAM the populate figure touches, one fault each (4 MiB: the
/// test guest's 64 MiB of RAM holds them with room to spare).
pub const POPULATE_PAGES: u64 = 1000;
/// Share and unshare rounds before the timed ones, to settle mm's
/// tables and the caches of the emulator.
pub const WARMUP: u64 = 100;
/// Share and unshare rounds timed.
pub const ROUNDS: u64 = 10_000;

/// The name of each figure, as `ci/bench/table.py` knows it.
pub mod name {
    /// Reset to the guest's first instruction.
    pub const RESET_TO_ENTRY: &str = "guest_reset_to_entry";
    /// Reset to the guest's first console byte.
    pub const RESET_TO_OUTPUT: &str = "guest_reset_to_output";
    /// A first touch of unpopulated RAM, back in the guest.
    pub const POPULATE: &str = "guest_populate_page";
    /// A MEM_SHARE round trip.
    pub const SHARE: &str = "guest_share_page";
    /// A MEM_UNSHARE round trip.
    pub const UNSHARE: &str = "guest_unshare_page";
}

/// The line that ends the figures.
pub const DONE: &str = "BENCH_DONE";

/// A figure's value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Figure {
    /// A count of one event.
    Total(u64),
    /// The mean of `count` events that took `total` together, printed to
    /// a tenth (as the other benchmarks print theirs).
    Mean {
        /// Instructions of all the events.
        total: u64,
        /// How many events.
        count: u64,
    },
}

impl Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Figure::Total(n) => write!(f, "{n}"),
            Figure::Mean { total, count } => {
                let tenths = u128::from(total) * 10 / u128::from(count.max(1));
                write!(f, "{}.{}", tenths / 10, tenths % 10)
            }
        }
    }
}

/// Prints `BENCH name value`.
pub fn line(out: &mut impl fmt::Write, name: &str, value: Figure) -> fmt::Result {
    writeln!(out, "BENCH {name} {value}")
}

/// Nanoseconds in `ticks` of a counter running at `frequency` Hz (0 if
/// the frequency is unknown): instructions under `-icount shift=0`.
#[must_use]
pub const fn nanoseconds(ticks: u64, frequency: u64) -> u64 {
    if frequency == 0 {
        return 0;
    }
    let ns = ticks as u128 * 1_000_000_000 / frequency as u128;
    if ns > u64::MAX as u128 { u64::MAX } else { ns as u64 }
}

/// Instructions between two reads of the 32-bit event counter (it wraps
/// after 2^32; no timed stretch comes near).
#[must_use]
pub const fn counted(start: u32, end: u32) -> u64 {
    end.wrapping_sub(start) as u64
}

/// The pages the populate figure touches, `[start, end)`: the
/// [`POPULATE_PAGES`] pages below RAM's last one (which the hostile
/// probes name), clear of the image, its scratch pages, the device tree
/// and the secret page, so that nothing before has touched them. An
/// error says why RAM cannot hold them.
pub fn touch_pages(layout: &Layout) -> Result<[u64; 2], &'static str> {
    let span = (POPULATE_PAGES + 1) * GRANULE;
    let end = layout.ram_end.wrapping_sub(GRANULE);
    let start = match layout.ram_end.checked_sub(span) {
        Some(start) if start >= layout.ram_start && layout.ram_end.is_multiple_of(GRANULE) => start,
        _ => return Err("RAM is too small for the pages bench touches"),
    };
    let scratch = [layout.scratch, layout.scratch + Scratch::COUNT * GRANULE];
    let secret = [layout.secret, layout.secret + GRANULE];
    let taken = [layout.image, scratch, layout.dtb, secret];
    if taken.iter().any(|&[s, e]| s < end && start < e) {
        return Err(
            "the pages bench touches overlap the image, the device tree or the secret page",
        );
    }
    Ok([start, end])
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    /// The test guest under Tenure: 64 MiB of RAM, the image at
    /// 0x4008_0000 and the device tree at the next 2 MiB.
    const LAYOUT: Layout = Layout {
        ram_start: 0x4000_0000,
        ram_end: 0x4400_0000,
        uart: 0x0900_0000,
        scratch: 0x4009_b000,
        secret: 0x4009_b000 + Scratch::Secret as u64 * GRANULE,
        image: [0x4008_0000, 0x4009_b000],
        dtb: [0x4020_0000, 0x4020_1000],
        gicc: Some(0x0801_0000),
    };

    #[test]
    fn figures_print_as_the_other_benchmarks_do() {
        let mut out = String::new();
        line(&mut out, name::POPULATE, Figure::Mean { total: 12_345_678, count: POPULATE_PAGES })
            .unwrap();
        line(&mut out, name::RESET_TO_OUTPUT, Figure::Total(556_192)).unwrap();
        line(&mut out, name::SHARE, Figure::Mean { total: 5, count: 0 }).unwrap();
        assert_eq!(
            out,
            "BENCH guest_populate_page 12345.6\nBENCH guest_reset_to_output 556192\n\
             BENCH guest_share_page 5.0\n"
        );
    }

    #[test]
    fn ticks_at_62_5_mhz_are_16_instructions() {
        assert_eq!(nanoseconds(34_762, 62_500_000), 556_192);
        assert_eq!(nanoseconds(1, 62_500_000), 16);
        assert_eq!(nanoseconds(1, 0), 0);
        assert_eq!(nanoseconds(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn the_counter_is_read_across_its_wrap() {
        assert_eq!(counted(10, 25), 15);
        assert_eq!(counted(u32::MAX - 4, 5), 10);
    }

    #[test]
    fn touched_pages_lie_below_the_last_page_of_ram() {
        let [start, end] = touch_pages(&LAYOUT).unwrap();
        assert_eq!(end, 0x43ff_f000);
        assert_eq!((end - start) / GRANULE, POPULATE_PAGES);
        // QEMU virt with 256 MiB puts the device tree at 0x4800_0000,
        // below them.
        let native = Layout { ram_end: 0x5000_0000, dtb: [0x4800_0000, 0x4810_0000], ..LAYOUT };
        assert_eq!(touch_pages(&native).unwrap()[1], 0x4fff_f000);
    }

    #[test]
    fn pages_that_do_not_fit_or_overlap_are_refused() {
        assert!(touch_pages(&Layout { ram_end: 0x4030_0000, ..LAYOUT }).is_err());
        assert!(touch_pages(&Layout { ram_start: 0x43d0_0000, ..LAYOUT }).is_err());
        assert!(touch_pages(&Layout { dtb: [0x43fe_0000, 0x43fe_1000], ..LAYOUT }).is_err());
        assert!(touch_pages(&Layout { secret: 0x43c1_7000, ..LAYOUT }).is_err());
        assert!(touch_pages(&Layout { secret: 0x43c1_6000, ..LAYOUT }).is_ok(), "just below");
    }
}
