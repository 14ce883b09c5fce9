//! Kernel benchmark client: times PPC round trips to a passive and an
//! active server (in `init`), then notification ping-pong with the pong PD,
//! first with `notify` each way, then with deferred notifies (one
//! `NbSendRecv` per side). Every figure is instructions retired on the
//! whole CPU (PMU event counter 0 of a `benchmark` kernel), averaged over
//! [`ITERATIONS`] round trips after [`WARMUP`] ones; printed as
//! `BENCH <name> <instructions>`, then `BENCH_DONE` and `TEST_PASS`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::{
        Channel, ChannelSet, DeferredAction, Handler, MessageInfo, debug_println, protection_domain,
    };

    /// PPCs to the passive server.
    const PASSIVE: Channel = Channel::new(0);
    /// PPCs to the active server (its own scheduling context).
    const ACTIVE: Channel = Channel::new(1);
    /// Ping-pong with `notify` each way.
    const PLAIN: Channel = Channel::new(2);
    /// Ping-pong with deferred notifies.
    const DEFERRED: Channel = Channel::new(3);

    /// Round trips before measuring.
    const WARMUP: u32 = 100;
    /// Round trips measured.
    const ITERATIONS: u32 = 10_000;

    /// Instructions retired so far (32-bit PMU event counter 0).
    fn instructions() -> u32 {
        let n: u64;
        // SAFETY: a `benchmark` kernel lets EL0 read event counter 0; the
        // read has no side effect.
        unsafe {
            core::arch::asm!("mrs {}, pmevcntr0_el0", out(reg) n, options(nomem, nostack));
        }
        n as u32
    }

    /// Prints `total` instructions over [`ITERATIONS`] round trips, with
    /// one decimal.
    fn report(name: &str, total: u32) {
        let tenths = u64::from(total) * 10 / u64::from(ITERATIONS);
        debug_println!("BENCH {name} {}.{}", tenths / 10, tenths % 10);
    }

    fn ppc(channel: Channel) -> u32 {
        let msg = MessageInfo::new(0, 0).unwrap_or_default();
        for _ in 0..WARMUP {
            channel.pp_call(msg);
        }
        let start = instructions();
        for _ in 0..ITERATIONS {
            channel.pp_call(msg);
        }
        instructions().wrapping_sub(start)
    }

    struct Client {
        /// Round trips completed in the current ping-pong.
        rounds: u32,
        /// The counter after the warm-up.
        start: u32,
        deferred: Option<DeferredAction>,
    }

    fn init() -> Client {
        report("ppc_passive", ppc(PASSIVE));
        report("ppc_active", ppc(ACTIVE));
        PLAIN.notify();
        Client { rounds: 0, start: 0, deferred: None }
    }

    impl Client {
        /// One pong arrived on `channel`: counts it and sends the next
        /// ping, or reports and moves on.
        fn round(&mut self, channel: Channel, name: &str) {
            let now = instructions();
            self.rounds += 1;
            if self.rounds == WARMUP {
                self.start = now;
            }
            if self.rounds < WARMUP + ITERATIONS {
                self.send(channel);
                return;
            }
            report(name, now.wrapping_sub(self.start));
            self.rounds = 0;
            if channel == PLAIN {
                self.send(DEFERRED);
            } else {
                debug_println!("BENCH_DONE");
                debug_println!("TEST_PASS");
            }
        }

        fn send(&mut self, channel: Channel) {
            if channel == PLAIN {
                channel.notify();
            } else {
                self.deferred = Some(DeferredAction::Notify(channel));
            }
        }
    }

    impl Handler for Client {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            if channels.contains(PLAIN) {
                self.round(PLAIN, "notify_pingpong");
            }
            if channels.contains(DEFERRED) {
                self.round(DEFERRED, "deferred_pingpong");
            }
            Ok(())
        }

        fn take_deferred_action(&mut self) -> Option<DeferredAction> {
            self.deferred.take()
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("bench_client is a protection domain: build it for aarch64-unknown-none");
}
