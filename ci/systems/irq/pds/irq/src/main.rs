//! IRQ suite: both PDs run this program; the role comes from the PD's
//! name (see ../../README.md). `driver` makes QEMU virt's PL031 RTC raise
//! its interrupt, checks how the kernel delivers and masks it, prints TAP
//! and ends with `TEST_PASS` or `TEST_FAIL`; `probe` answers its
//! notifications.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::symbols::pd_name;
    use microkit::{
        Channel, ChannelSet, Handler, debug_println, memory_region_symbol, protection_domain,
    };

    /// driver: the RTC's interrupt.
    const IRQ: Channel = Channel::new(5);
    /// driver and probe: notifications both ways.
    const PROBE: Channel = Channel::new(1);

    /// PL031 registers (Arm PrimeCell RTC PL031 TRM, 3.2), word offsets.
    mod rtc {
        /// Data: the current count (seconds).
        pub const DR: usize = 0;
        /// Match: interrupt when the count equals it.
        pub const MR: usize = 1;
        /// Interrupt mask set/clear: 1 enables the interrupt.
        pub const IMSC: usize = 4;
        /// Masked interrupt status.
        pub const MIS: usize = 6;
        /// Interrupt clear.
        pub const ICR: usize = 7;
    }

    fn reg(i: usize) -> *mut u32 {
        let base = memory_region_symbol!(rtc: *mut u32);
        base.as_ptr().wrapping_add(i)
    }

    fn read(i: usize) -> u32 {
        // SAFETY: system.xml maps the PL031's page uncached at `rtc`;
        // `i` names one of its registers.
        unsafe { reg(i).read_volatile() }
    }

    fn write(i: usize, value: u32) {
        // SAFETY: as in `read`; only this PD drives the RTC.
        unsafe { reg(i).write_volatile(value) }
    }

    /// Makes the RTC assert its interrupt now: a match on the current
    /// count (QEMU raises it at once). Retries if the count moved on
    /// while the match was written (that match would be a wrap away).
    fn raise() {
        loop {
            let now = read(rtc::DR);
            write(rtc::MR, now);
            if read(rtc::DR) == now {
                return;
            }
        }
    }

    /// The line's level as the device drives it.
    fn asserted() -> bool {
        read(rtc::MIS) & 1 != 0
    }

    const PLAN: u32 = 4;

    struct Driver {
        step: u32,
        failed: u32,
    }

    impl Driver {
        fn check(&mut self, ok: bool, what: &str) {
            self.step += 1;
            let n = self.step;
            if ok {
                debug_println!("ok {n} - {what}");
            } else {
                self.failed += 1;
                debug_println!("not ok {n} - {what}");
            }
            if n == PLAN {
                debug_println!("{}", if self.failed == 0 { "TEST_PASS" } else { "TEST_FAIL" });
            }
        }
    }

    enum Pd {
        Driver(Driver),
        Probe,
    }

    fn init() -> Pd {
        if pd_name() != "driver" {
            return Pd::Probe;
        }
        debug_println!("1..{PLAN}");
        write(rtc::ICR, 1);
        write(rtc::IMSC, 1);
        raise();
        Pd::Driver(Driver { step: 0, failed: 0 })
    }

    impl Handler for Pd {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            let Pd::Driver(d) = self else {
                PROBE.notify();
                return Ok(());
            };
            let irq = channels.contains(IRQ);
            match d.step {
                0 => {
                    d.check(
                        channels.bits() == 1 << IRQ.index() && asserted(),
                        "the RTC's interrupt arrives as a notification on the irq's channel id",
                    );
                    // Clear and raise it again without acking: the line is
                    // asserted, the kernel keeps it masked.
                    write(rtc::ICR, 1);
                    raise();
                    PROBE.notify();
                }
                1 => {
                    if irq || !asserted() {
                        debug_println!("# seen {channels:?}, line asserted: {}", asserted());
                    }
                    d.check(
                        !irq && channels.contains(PROBE) && asserted(),
                        "an asserted interrupt is not delivered again until acked",
                    );
                    // Unmask: the asserted line is delivered at once.
                    IRQ.irq_ack();
                }
                2 => {
                    d.check(
                        channels.bits() == 1 << IRQ.index(),
                        "acking unmasks: the pending interrupt is delivered",
                    );
                    write(rtc::ICR, 1);
                    write(rtc::IMSC, 0);
                    IRQ.irq_ack();
                    PROBE.notify();
                }
                3 => {
                    d.check(
                        !irq && channels.contains(PROBE),
                        "a cleared, acked interrupt is not delivered again",
                    );
                }
                _ => debug_println!("# unexpected notification {channels:?}"),
            }
            Ok(())
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("irq_pd is a protection domain: build it for aarch64-unknown-none");
}
