//! hostile suite: the collector, which closes the TAP stream of three VMMs
//! whose guests run side by side. Each VMM (pds/vmm with its COLLECTOR
//! channel) keeps its guest's TAP and its own checks on its labelled
//! console, and when its guest stops leaves its counts in a relay page it
//! shares with this PD and notifies it. This PD is the only one that
//! prints on the kernel's console: the plan first (so that a line a guest
//! passed off as a runner's, were it ever taken for one, would break it),
//! then one result per VMM once all three are done, and the sentinel.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::{Channel, ChannelSet, Handler, debug_println, protection_domain, var};
    use tenure_vmm::selftest::Relay;

    /// The VMMs, by the channel each notifies on.
    const ATTACKER: Channel = Channel::new(0);
    const VICTIM: Channel = Channel::new(1);
    const FORGER: Channel = Channel::new(2);
    /// Results this PD prints: one per VMM.
    const RESULTS: u32 = 3;

    /// The relay page system.xml maps at `addr` (0: none).
    fn relay(addr: usize) -> Relay {
        let page = addr as *const [u64; Relay::WORDS];
        if page.is_null() {
            return Relay::default();
        }
        // SAFETY: system.xml maps the relay page read-write at this
        // address in this PD and in one VMM, which wrote it before it
        // notified this PD and writes it no more; the words are aligned.
        Relay::decode(&unsafe { core::ptr::read_volatile(page) })
    }

    struct Collector {
        /// The VMMs that have notified, by channel.
        done: [bool; 3],
        closed: bool,
    }

    fn init() -> Collector {
        debug_println!("1..{RESULTS}");
        Collector { done: [false; 3], closed: false }
    }

    impl Collector {
        fn close(&mut self) {
            self.closed = true;
            let mut pass = true;
            let streams = [
                ("vmm_attacker", relay(*var!(relay_attacker: usize = 0))),
                ("vmm_victim", relay(*var!(relay_victim: usize = 0))),
            ];
            for (n, (name, relay)) in streams.into_iter().enumerate() {
                let ok = relay.passed() && relay.planned > 0;
                pass &= ok;
                debug_println!(
                    "{}ok {} - {name}: its guest's results and the VMM's checks ({} of {} \
                     planned, {} failed, guest sentinel {})",
                    if ok { "" } else { "not " },
                    n + 1,
                    relay.printed,
                    relay.planned,
                    relay.failed,
                    if relay.pass { "TEST_PASS" } else { "TEST_FAIL or none" },
                );
            }
            // The forger's lines, dressed as a runner's, stayed under its
            // label: had the runner taken one, the plan above would not be
            // met (or a forged crash or sentinel would have ended it).
            debug_println!(
                "ok 3 - vmm_forger: its guest printed sentinels, results and a kernel \
                 panic, and powered off"
            );
            debug_println!("{}", if pass { "TEST_PASS" } else { "TEST_FAIL" });
        }
    }

    impl Handler for Collector {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            for (done, channel) in self.done.iter_mut().zip([ATTACKER, VICTIM, FORGER]) {
                *done |= channels.contains(channel);
            }
            if self.done.iter().all(|&d| d) && !self.closed {
                self.close();
            }
            Ok(())
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hostile_collector is a protection domain: build it for aarch64-unknown-none");
}
