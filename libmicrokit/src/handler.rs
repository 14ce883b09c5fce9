//! The handler a PD implements, deferred actions, and the dispatch loop
//! that drives the handler from received events.

use crate::channel::{Channel, ChannelSet, Child};
use crate::event::Event;
use crate::ipc::MessageInfo;
use core::fmt;

/// What a protection domain does when events arrive. The entry points run
/// to completion, one at a time; the defaults panic, as Microkit's do,
/// because a system that sends a PD an event it does not handle is wrong.
pub trait Handler {
    /// What an entry point may fail with; the runtime reports it and stops
    /// the PD.
    type Error: fmt::Display;

    /// `channels` were signalled (or their interrupts fired).
    fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
        panic!("unexpected notification from {channels:?}")
    }

    /// A protected procedure call arrived on `channel`; the returned
    /// message is the reply.
    fn protected(
        &mut self,
        channel: Channel,
        msg_info: MessageInfo,
    ) -> Result<MessageInfo, Self::Error> {
        panic!("unexpected protected procedure call on channel {} ({msg_info:?})", channel.index())
    }

    /// Child `child` faulted; `Some` replies (restarting it where it
    /// faulted), `None` leaves it stopped.
    fn fault(
        &mut self,
        child: Child,
        msg_info: MessageInfo,
    ) -> Result<Option<MessageInfo>, Self::Error> {
        panic!("unexpected fault of child {} ({msg_info:?})", child.index())
    }

    /// A notify or IRQ ack to perform together with the next wait, in the
    /// same trap.
    fn take_deferred_action(&mut self) -> Option<DeferredAction> {
        None
    }
}

/// A handler for a PD that only initialises.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullHandler;

impl Handler for NullHandler {
    type Error = core::convert::Infallible;
}

/// A signal deferred to the next wait.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeferredAction {
    /// Notify the channel.
    Notify(Channel),
    /// Acknowledge the channel's interrupt.
    IrqAck(Channel),
}

/// Holds at most one deferred action, as Microkit does: deferring a
/// second one performs the first at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeferredActionSlot {
    pending: Option<DeferredAction>,
}

impl DeferredActionSlot {
    /// An empty slot.
    #[must_use]
    pub const fn new() -> Self {
        DeferredActionSlot { pending: None }
    }

    /// Defers `action`; returns the action that was pending, which the
    /// caller must perform now.
    pub fn defer(&mut self, action: DeferredAction) -> Option<DeferredAction> {
        self.pending.replace(action)
    }

    /// Takes the pending action (for [`Handler::take_deferred_action`]).
    pub fn take(&mut self) -> Option<DeferredAction> {
        self.pending.take()
    }
}

/// The kernel operations the dispatch loop needs: the real one traps, tests
/// script one.
pub trait Kernel {
    /// Waits for the next event: its badge and message info.
    fn recv(&mut self) -> (u64, MessageInfo);
    /// Replies to the caller with `reply`, then waits.
    fn reply_recv(&mut self, reply: MessageInfo) -> (u64, MessageInfo);
    /// Performs `action` without blocking, then waits (one trap).
    fn nb_send_recv(&mut self, action: DeferredAction) -> (u64, MessageInfo);
    /// Performs `action` now.
    fn perform(&mut self, action: DeferredAction);
    /// Reports a badge the tool never hands out.
    fn report_unknown_badge(&mut self, badge: u64);
}

/// Drives a handler: receives an event, dispatches it, and carries the
/// reply and the deferred action into the next receive.
#[derive(Debug, Default)]
pub struct Dispatcher {
    reply: Option<MessageInfo>,
}

impl Dispatcher {
    /// A dispatcher with no reply pending.
    #[must_use]
    pub const fn new() -> Self {
        Dispatcher { reply: None }
    }

    /// Waits for one event (replying first if a reply is pending) and runs
    /// the handler on it.
    pub fn step<K: Kernel, H: Handler>(
        &mut self,
        kernel: &mut K,
        handler: &mut H,
    ) -> Result<(), H::Error> {
        let action = handler.take_deferred_action();
        let (badge, info) = match (self.reply.take(), action) {
            (Some(reply), action) => {
                if let Some(action) = action {
                    kernel.perform(action);
                }
                kernel.reply_recv(reply)
            }
            (None, Some(action)) => kernel.nb_send_recv(action),
            (None, None) => kernel.recv(),
        };
        match Event::from_badge(badge) {
            Some(Event::Notified(channels)) => handler.notified(channels)?,
            Some(Event::Protected(channel)) => self.reply = Some(handler.protected(channel, info)?),
            Some(Event::Fault(child)) => self.reply = handler.fault(child, info)?,
            None => kernel.report_unknown_badge(badge),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;
    use tenure_abi::{BADGE_FAULT, BADGE_PPC};

    #[derive(Debug, PartialEq)]
    enum Trap {
        Recv,
        ReplyRecv(MessageInfo),
        NbSendRecv(DeferredAction),
        Perform(DeferredAction),
        Unknown(u64),
    }

    /// A kernel that hands out scripted badges and records the traps.
    struct Script {
        badges: Vec<u64>,
        traps: Vec<Trap>,
    }

    impl Script {
        fn next(&mut self) -> (u64, MessageInfo) {
            (self.badges.remove(0), MessageInfo::new(9, 1).unwrap())
        }
    }

    impl Kernel for Script {
        fn recv(&mut self) -> (u64, MessageInfo) {
            self.traps.push(Trap::Recv);
            self.next()
        }
        fn reply_recv(&mut self, reply: MessageInfo) -> (u64, MessageInfo) {
            self.traps.push(Trap::ReplyRecv(reply));
            self.next()
        }
        fn nb_send_recv(&mut self, action: DeferredAction) -> (u64, MessageInfo) {
            self.traps.push(Trap::NbSendRecv(action));
            self.next()
        }
        fn perform(&mut self, action: DeferredAction) {
            self.traps.push(Trap::Perform(action));
        }
        fn report_unknown_badge(&mut self, badge: u64) {
            self.traps.push(Trap::Unknown(badge));
        }
    }

    #[derive(Default)]
    struct Recorder {
        seen: Vec<String>,
        deferred: DeferredActionSlot,
    }

    impl Handler for Recorder {
        type Error = &'static str;
        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            self.seen.push(format!("notified {channels:?}"));
            self.deferred.defer(DeferredAction::Notify(Channel::new(2)));
            Ok(())
        }
        fn protected(
            &mut self,
            channel: Channel,
            info: MessageInfo,
        ) -> Result<MessageInfo, Self::Error> {
            self.seen.push(format!("protected {} label {}", channel.index(), info.label()));
            Ok(MessageInfo::new(info.label() + 1, 0).unwrap())
        }
        fn fault(
            &mut self,
            child: Child,
            _: MessageInfo,
        ) -> Result<Option<MessageInfo>, Self::Error> {
            self.seen.push(format!("fault {}", child.index()));
            if child.index() == 4 { Err("child 4 may not fault") } else { Ok(None) }
        }
        fn take_deferred_action(&mut self) -> Option<DeferredAction> {
            self.deferred.take()
        }
    }

    #[test]
    fn events_reach_the_right_entry_point_and_replies_ride_the_next_wait() {
        let mut k = Script {
            badges: vec![0b101, BADGE_PPC | 3, BADGE_FAULT | 1, BADGE_PPC | 63, 0],
            traps: vec![],
        };
        let mut h = Recorder::default();
        let mut d = Dispatcher::new();
        for _ in 0..5 {
            d.step(&mut k, &mut h).unwrap();
        }
        assert_eq!(h.seen, ["notified {0, 2}", "protected 3 label 9", "fault 1", "notified {}"]);
        let notify2 = DeferredAction::Notify(Channel::new(2));
        assert_eq!(
            k.traps,
            [
                Trap::Recv,
                Trap::NbSendRecv(notify2),
                Trap::ReplyRecv(MessageInfo::new(10, 0).unwrap()),
                Trap::Recv,
                Trap::Unknown(BADGE_PPC | 63),
                Trap::Recv,
            ]
        );
    }

    #[test]
    fn a_deferred_action_is_performed_before_a_reply() {
        let mut k = Script { badges: vec![1, BADGE_PPC, 0], traps: vec![] };
        let mut h = Recorder::default();
        let mut d = Dispatcher::new();
        d.step(&mut k, &mut h).unwrap();
        d.step(&mut k, &mut h).unwrap();
        h.deferred.defer(DeferredAction::IrqAck(Channel::new(1)));
        d.step(&mut k, &mut h).unwrap();
        assert_eq!(k.traps[2], Trap::Perform(DeferredAction::IrqAck(Channel::new(1))));
        assert!(matches!(k.traps[3], Trap::ReplyRecv(_)));
    }

    #[test]
    fn a_handler_error_stops_the_loop() {
        let mut k = Script { badges: vec![BADGE_FAULT | 4], traps: vec![] };
        assert_eq!(
            Dispatcher::new().step(&mut k, &mut Recorder::default()),
            Err("child 4 may not fault")
        );
    }

    #[test]
    fn deferring_twice_hands_back_the_first_action() {
        let mut slot = DeferredActionSlot::new();
        let a = DeferredAction::Notify(Channel::new(0));
        let b = DeferredAction::IrqAck(Channel::new(1));
        assert_eq!(slot.defer(a), None);
        assert_eq!(slot.defer(b), Some(a));
        assert_eq!(slot.take(), Some(b));
        assert_eq!(slot.take(), None);
    }
}
