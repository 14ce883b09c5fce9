//! IPC suite sink: a low-priority receiver. Reports every wakeup to the
//! driver by a PPC: label = the channel bits it saw, mr0 = the wakeup
//! count.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::{Channel, ChannelSet, Handler, MessageInfo, protection_domain, set_mr};

    /// Reports to the driver.
    const REPORT: Channel = Channel::new(9);

    struct Sink {
        wakeups: u64,
    }

    fn init() -> Sink {
        Sink { wakeups: 0 }
    }

    impl Handler for Sink {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            self.wakeups += 1;
            set_mr(0, self.wakeups);
            REPORT.pp_call(MessageInfo::new(channels.bits(), 1).unwrap_or_default());
            Ok(())
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("ipc_sink is a protection domain: build it for aarch64-unknown-none");
}
