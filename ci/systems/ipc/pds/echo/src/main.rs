//! IPC suite echo: a PPC server. Echoes label + 1 and inverted words,
//! tells the caller which channel id it saw, nests a call into deep, and
//! defers a notify to its caller until its reply.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::{
        Channel, DeferredAction, Handler, MessageInfo, get_mr, protection_domain, set_mr,
    };

    /// The driver's calls, and notifications to it.
    const DRIVER: Channel = Channel::new(5);
    /// Calls to deep.
    const DEEP: Channel = Channel::new(6);

    const OP_NESTED: u64 = 2;
    const OP_WHO: u64 = 3;
    const OP_DEFER: u64 = 4;
    const OP_ECHO: u64 = 0x100;

    struct Echo {
        deferred: Option<DeferredAction>,
    }

    fn init() -> Echo {
        Echo { deferred: None }
    }

    fn msg(label: u64, count: usize) -> MessageInfo {
        MessageInfo::new(label, count).unwrap_or_default()
    }

    impl Handler for Echo {
        type Error = core::convert::Infallible;

        fn protected(
            &mut self,
            channel: Channel,
            msg_info: MessageInfo,
        ) -> Result<MessageInfo, Self::Error> {
            Ok(match msg_info.label() {
                OP_WHO => msg(channel.index() as u64, 0),
                OP_NESTED => {
                    let reply = DEEP.pp_call(msg(7, 1));
                    msg(reply.label(), 1)
                }
                OP_DEFER => {
                    self.deferred = Some(DeferredAction::Notify(DRIVER));
                    msg(0, 0)
                }
                label if label >= OP_ECHO => {
                    let count = msg_info.count();
                    for i in 0..count {
                        set_mr(i, !get_mr(i));
                    }
                    msg(label + 1, count)
                }
                _ => msg(u64::MAX >> 12, 0),
            })
        }

        fn take_deferred_action(&mut self) -> Option<DeferredAction> {
            self.deferred.take()
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("ipc_echo is a protection domain: build it for aarch64-unknown-none");
}
