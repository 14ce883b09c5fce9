//! Channels, sets of channels, and child PDs, by the ids system.xml gives.

use core::fmt;
use tenure_abi::{CHANNELS, MAX_CHANNEL_ID};

/// One end of a channel in this PD, by its id (0..=61).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Channel(usize);

impl Channel {
    /// Channel `index`; panics (at compile time in a `const`) beyond 61.
    #[must_use]
    pub const fn new(index: usize) -> Self {
        assert!(index <= MAX_CHANNEL_ID as usize, "channel ids are 0..=61");
        Channel(index)
    }

    /// The channel id.
    #[must_use]
    pub const fn index(self) -> usize {
        self.0
    }
}

/// A child PD, by the `id` its parent gave it in system.xml.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Child(usize);

impl Child {
    /// Child `index`.
    #[must_use]
    pub const fn new(index: usize) -> Self {
        assert!(index <= MAX_CHANNEL_ID as usize, "child ids are 0..=61");
        Child(index)
    }

    /// The child id.
    #[must_use]
    pub const fn index(self) -> usize {
        self.0
    }
}

/// The channels signalled since the last wait: a notification badge.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelSet(u64);

impl ChannelSet {
    /// Channel bits of a badge (bits 62 and 63 are not channels).
    const MASK: u64 = (1 << CHANNELS) - 1;

    /// The set a notification badge names.
    #[must_use]
    pub const fn from_badge(badge: u64) -> Self {
        ChannelSet(badge & Self::MASK)
    }

    /// The badge bits.
    #[must_use]
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether `channel` is in the set.
    #[must_use]
    pub const fn contains(self, channel: Channel) -> bool {
        self.0 & (1 << channel.0) != 0
    }

    /// Whether the set is empty.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The channels in ascending order.
    pub fn iter(self) -> impl Iterator<Item = Channel> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(Channel(i))
        })
    }
}

impl fmt::Debug for ChannelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(Channel::index)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_set_lists_channels_in_ascending_order_without_reserved_bits() {
        let set = ChannelSet::from_badge((1 << 63) | (1 << 62) | (1 << 61) | (1 << 5) | 1);
        let ids: Vec<usize> = set.iter().map(Channel::index).collect();
        assert_eq!(ids, [0, 5, 61]);
        assert!(set.contains(Channel::new(5)));
        assert!(!set.contains(Channel::new(4)));
        assert_eq!(format!("{set:?}"), "{0, 5, 61}");
    }

    #[test]
    #[should_panic(expected = "channel ids are 0..=61")]
    fn channel_62_does_not_exist() {
        let _ = Channel::new(62);
    }
}
