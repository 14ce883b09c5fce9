//! Kernel benchmark server: answers every PPC at once with an empty
//! message. The bench system runs it twice, passive and active.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::{Channel, Handler, MessageInfo, protection_domain};

    struct Server;

    fn init() -> Server {
        Server
    }

    impl Handler for Server {
        type Error = core::convert::Infallible;

        fn protected(&mut self, _: Channel, _: MessageInfo) -> Result<MessageInfo, Self::Error> {
            Ok(MessageInfo::default())
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("bench_server is a protection domain: build it for aarch64-unknown-none");
}
