//! IPC suite deep: the inner server of the nested PPC; replies label + 1
//! and `mr0 * 3`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::{Channel, Handler, MessageInfo, get_mr, protection_domain, set_mr};

    struct Deep;

    fn init() -> Deep {
        Deep
    }

    impl Handler for Deep {
        type Error = core::convert::Infallible;

        fn protected(
            &mut self,
            _channel: Channel,
            msg_info: MessageInfo,
        ) -> Result<MessageInfo, Self::Error> {
            set_mr(0, get_mr(0).wrapping_mul(3));
            Ok(MessageInfo::new(msg_info.label() + 1, 1).unwrap_or_default())
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("ipc_deep is a protection domain: build it for aarch64-unknown-none");
}
