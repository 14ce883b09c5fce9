//! guest_reset and guest_pair suites: the monitor, parent of a VMM
//! (child 1). When the VMM's guest has powered off, the VMM leaves its
//! TAP counts in the relay page they share, notifies this PD and reads a
//! guest page through its window that it must no longer reach: in
//! guest_reset (channel 0 from the VMM) the guest's first kernel page,
//! which mm donated to the guest; in guest_pair (channel 1) the page the
//! guest shared with the VMM and then unshared. The kernel stops the VMM
//! at that read and sends this PD the fault; it checks the fault (a
//! VmFault of the VMM at exactly that address, announced beforehand) and
//! closes the stream: its result line, the plan and the sentinel.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::{
        Channel, ChannelSet, Child, Handler, MessageInfo, debug_println, get_mr, protection_domain,
        var,
    };
    use tenure_vmm::selftest::Relay;

    /// The VMM, this PD's child.
    const VMM: Child = Child::new(1);
    /// The VMM's notice that the read of a donated page comes next.
    const FROM_VMM: Channel = Channel::new(0);
    /// The VMM's notice that the read of an unshared page comes next.
    const FROM_VMM_UNSHARED: Channel = Channel::new(1);
    /// Fault label of a stage-2 fault (seL4 MCS numbering).
    const VM_FAULT: u64 = 6;

    /// The page the VMM reads through its window.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Read {
        /// The guest's first kernel page, donated to it.
        Donated,
        /// The page the guest shared with the VMM and unshared last.
        Unshared,
    }

    struct Monitor {
        /// The VMM said which read comes next.
        announced: Option<Read>,
        /// The stream is closed; later faults are ignored.
        closed: bool,
    }

    fn init() -> Monitor {
        Monitor { announced: None, closed: false }
    }

    fn relay() -> Relay {
        let page = *var!(tap_relay: usize = 0) as *const [u64; Relay::WORDS];
        if page.is_null() {
            return Relay::default();
        }
        // SAFETY: system.xml maps the relay page read-write at `tap_relay`
        // in this PD and the VMM; the VMM wrote it before its fault and is
        // stopped now; the words are aligned.
        Relay::decode(&unsafe { core::ptr::read_volatile(page) })
    }

    impl Handler for Monitor {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            // The channel system.xml gives the VMM's end (MONITOR or
            // MONITOR_UNSHARED, pds/vmm/src/main.rs) decides which page
            // it reads, and this PD's end which notice it gets.
            if channels.contains(FROM_VMM) {
                self.announced = Some(Read::Donated);
            }
            if channels.contains(FROM_VMM_UNSHARED) {
                self.announced = Some(Read::Unshared);
            }
            Ok(())
        }

        fn fault(
            &mut self,
            child: Child,
            msg_info: MessageInfo,
        ) -> Result<Option<MessageInfo>, Self::Error> {
            if self.closed {
                return Ok(None);
            }
            self.closed = true;
            let relay = relay();
            let (label, pc, addr) = (msg_info.label(), get_mr(0), get_mr(1));
            debug_println!(
                "# monitor: child {} faulted: label {label}, pc {pc:#x}, address {addr:#x}",
                child.index()
            );
            let ok = child.index() == VMM.index()
                && self.announced.is_some()
                && label == VM_FAULT
                && relay.probe != 0
                && addr == relay.probe;
            let number = relay.printed + 1;
            let what = if self.announced == Some(Read::Unshared) {
                "vmm: reading a page the guest shared and unshared through the VMM's window is a \
                 fault its parent receives"
            } else {
                "vmm: reading a donated guest page through the VMM's window is a fault its \
                 parent receives"
            };
            if ok {
                debug_println!("ok {number} - {what} (VmFault at {addr:#x})");
            } else {
                debug_println!(
                    "not ok {number} - {what}: announced {:?}, label {label}, address \
                     {addr:#x}, expected {:#x}",
                    self.announced,
                    relay.probe
                );
            }
            debug_println!("1..{}", relay.planned + 1);
            let pass = ok && relay.passed();
            debug_println!("{}", if pass { "TEST_PASS" } else { "TEST_FAIL" });
            // The VMM stays stopped.
            Ok(None)
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("guest_monitor is a protection domain: build it for aarch64-unknown-none");
}
