//! Kernel benchmark boot PD: the only PD of its system. The first thing
//! its `init` does is read the physical counter; with QEMU's
//! `-icount shift=0` one instruction is one nanosecond, so counter ticks
//! times 1e9 / CNTFRQ is the instructions from reset to the first PD's
//! `init` (the PMU is enabled too late in boot to count them).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::{NullHandler, debug_println, protection_domain};

    fn init() -> NullHandler {
        let (ticks, freq): (u64, u64);
        // SAFETY: PDs may read the physical counter and its frequency; the
        // reads have no side effect.
        unsafe {
            core::arch::asm!(
                "isb",
                "mrs {t}, cntpct_el0",
                "mrs {f}, cntfrq_el0",
                t = out(reg) ticks,
                f = out(reg) freq,
                options(nomem, nostack),
            );
        }
        let ns = u128::from(ticks) * 1_000_000_000 / u128::from(freq.max(1));
        debug_println!("BENCH boot_ticks {ticks}");
        debug_println!("BENCH cntfrq {freq}");
        debug_println!("BENCH boot_to_init {ns}");
        debug_println!("BENCH_DONE");
        debug_println!("TEST_PASS");
        NullHandler
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("bench_boot is a protection domain: build it for aarch64-unknown-none");
}
