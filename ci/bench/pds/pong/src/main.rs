//! Kernel benchmark pong: answers each ping on the channel it came in on,
//! with `notify` on channel 2 and with a deferred notify on channel 3.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::{Channel, ChannelSet, DeferredAction, Handler, protection_domain};

    /// Pings answered with `notify`.
    const PLAIN: Channel = Channel::new(2);
    /// Pings answered with a deferred notify.
    const DEFERRED: Channel = Channel::new(3);

    struct Pong {
        deferred: Option<DeferredAction>,
    }

    fn init() -> Pong {
        Pong { deferred: None }
    }

    impl Handler for Pong {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            if channels.contains(PLAIN) {
                PLAIN.notify();
            }
            if channels.contains(DEFERRED) {
                self.deferred = Some(DeferredAction::Notify(DEFERRED));
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
    eprintln!("bench_pong is a protection domain: build it for aarch64-unknown-none");
}
