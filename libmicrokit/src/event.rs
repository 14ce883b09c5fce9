//! What a received badge means, as the tool assigns badges (Microkit's
//! scheme): bit 63 marks a protected procedure call and carries the
//! receiver's channel id in bits 5..0; bit 62 marks a child's fault and
//! carries the child id in bits 7..0; otherwise each set bit 0..=61 is a
//! signalled channel.

use crate::channel::{Channel, ChannelSet, Child};
use tenure_abi::{BADGE_FAULT, BADGE_PPC};

/// One received event.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    /// Channels were signalled (notifications or interrupts).
    Notified(ChannelSet),
    /// A protected procedure call arrived on a channel.
    Protected(Channel),
    /// A child faulted.
    Fault(Child),
}

impl Event {
    /// Decodes a badge; `None` for one the tool never hands out (a PPC or
    /// fault id out of range), which the runtime reports and ignores.
    #[must_use]
    pub fn from_badge(badge: u64) -> Option<Self> {
        if badge & BADGE_FAULT != 0 {
            let id = (badge & 0xff) as usize;
            return (id <= tenure_abi::MAX_CHANNEL_ID as usize)
                .then(|| Event::Fault(Child::new(id)));
        }
        if badge & BADGE_PPC != 0 {
            let id = (badge & 0x3f) as usize;
            return (id <= tenure_abi::MAX_CHANNEL_ID as usize)
                .then(|| Event::Protected(Channel::new(id)));
        }
        Some(Event::Notified(ChannelSet::from_badge(badge)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badges_decode_as_microkit_assigns_them() {
        assert_eq!(Event::from_badge(BADGE_PPC | 7), Some(Event::Protected(Channel::new(7))));
        assert_eq!(Event::from_badge(BADGE_FAULT | 3), Some(Event::Fault(Child::new(3))));
        assert_eq!(
            Event::from_badge(0b1010),
            Some(Event::Notified(ChannelSet::from_badge(0b1010)))
        );
        assert_eq!(Event::from_badge(BADGE_PPC | 63), None);
        assert_eq!(Event::from_badge(BADGE_FAULT | 200), None);
    }
}
