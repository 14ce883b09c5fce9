//! The pong example PD: answers ping's call with the label plus one, and
//! notifies ping back every time ping notifies it.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    mod console {
        include!("../../console.rs");
    }
    use console::say;
    use microkit::{Channel, ChannelSet, Handler, MessageInfo, protection_domain};

    /// Notifications both ways, and ping's calls.
    const PING: Channel = Channel::new(0);

    struct Pong;

    fn init() -> Pong {
        console::init();
        say!("ready");
        Pong
    }

    impl Handler for Pong {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            if channels.contains(PING) {
                say!("ping notified me, notifying back");
                PING.notify();
            }
            Ok(())
        }

        fn protected(
            &mut self,
            channel: Channel,
            msg: MessageInfo,
        ) -> Result<MessageInfo, Self::Error> {
            say!("call on channel {} with label {}", channel.index(), msg.label());
            Ok(MessageInfo::new(msg.label() + 1, 0).unwrap_or_default())
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("pong is a protection domain: build it for aarch64-unknown-none");
}
