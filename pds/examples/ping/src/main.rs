//! The ping example PD: calls pong once, then bounces notifications with it
//! a few times, saying what it does.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    mod console {
        include!("../../console.rs");
    }
    use console::say;
    use microkit::{Channel, ChannelSet, Handler, MessageInfo, protection_domain};

    /// Notifications both ways.
    const PONG: Channel = Channel::new(0);
    /// Protected procedure calls to pong.
    const PONG_PP: Channel = Channel::new(1);
    /// Round trips before ping stops.
    const ROUNDS: u64 = 3;

    struct Ping {
        rounds: u64,
    }

    fn init() -> Ping {
        console::init();
        say!("calling pong with label 41");
        let reply = PONG_PP.pp_call(MessageInfo::new(41, 0).unwrap_or_default());
        say!("pong answered label {}", reply.label());
        PONG.notify();
        Ping { rounds: 0 }
    }

    impl Handler for Ping {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            if channels.contains(PONG) {
                self.rounds += 1;
                say!("pong notified me ({} of {ROUNDS})", self.rounds);
                if self.rounds < ROUNDS {
                    PONG.notify();
                } else {
                    say!("done");
                }
            }
            Ok(())
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("ping is a protection domain: build it for aarch64-unknown-none");
}
