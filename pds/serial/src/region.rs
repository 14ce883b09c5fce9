//! The memory region a client shares with the serial PD: its name (for
//! the labels) and one ring each way.
//!
//! ```text
//! 0x000  name, NUL padded (32 bytes), written by the client at init
//! 0x020  tx head, tx tail   (client -> serial)
//! 0x028  rx head, rx tail   (serial -> client)
//! 0x400  rx data (1 KiB)
//! 0x800  tx data (2 KiB)
//! 0x1000 end
//! ```

use crate::ring::Ring;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// Bytes of one client region (one page).
pub const REGION_SIZE: usize = 0x1000;
/// Longest client name shown in labels.
pub const NAME_LEN: usize = 32;

/// The region as the serial PD and the client see it.
#[repr(C)]
pub struct Region {
    name: [AtomicU8; NAME_LEN],
    tx_head: AtomicU32,
    tx_tail: AtomicU32,
    rx_head: AtomicU32,
    rx_tail: AtomicU32,
    _reserved: [AtomicU8; 0x400 - 0x30],
    rx: [AtomicU8; 0x400],
    tx: [AtomicU8; 0x800],
}

const _: () = assert!(core::mem::size_of::<Region>() == REGION_SIZE);

impl Region {
    /// A zeroed region (for tests and statics).
    #[must_use]
    pub const fn new() -> Self {
        Region {
            name: [const { AtomicU8::new(0) }; NAME_LEN],
            tx_head: AtomicU32::new(0),
            tx_tail: AtomicU32::new(0),
            rx_head: AtomicU32::new(0),
            rx_tail: AtomicU32::new(0),
            _reserved: [const { AtomicU8::new(0) }; 0x400 - 0x30],
            rx: [const { AtomicU8::new(0) }; 0x400],
            tx: [const { AtomicU8::new(0) }; 0x800],
        }
    }

    /// The client-to-serial ring.
    #[must_use]
    pub fn tx(&self) -> Ring<'_> {
        Ring::new(&self.tx_head, &self.tx_tail, &self.tx).expect("2 KiB is a power of two")
    }

    /// The serial-to-client ring.
    #[must_use]
    pub fn rx(&self) -> Ring<'_> {
        Ring::new(&self.rx_head, &self.rx_tail, &self.rx).expect("1 KiB is a power of two")
    }

    /// Records the client's name (truncated to [`NAME_LEN`] bytes).
    pub fn set_name(&self, name: &str) {
        for (i, slot) in self.name.iter().enumerate() {
            slot.store(name.as_bytes().get(i).copied().unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// Copies the client's name into `out`; returns it (what the client
    /// wrote, up to the first NUL; `?` if it is not UTF-8).
    pub fn name<'b>(&self, out: &'b mut [u8; NAME_LEN]) -> &'b str {
        for (o, slot) in out.iter_mut().zip(&self.name) {
            *o = slot.load(Ordering::Relaxed);
        }
        let len = out.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        core::str::from_utf8(&out[..len]).unwrap_or("?")
    }
}

impl Default for Region {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_rings_share_one_page_without_overlap() {
        let r = Region::new();
        r.set_name("ping");
        assert_eq!(r.tx().write(b"hello"), 5);
        assert_eq!(r.rx().write(b"in"), 2);
        let mut name = [0; NAME_LEN];
        assert_eq!(r.name(&mut name), "ping");
        let mut out = [0; 8];
        assert_eq!(r.tx().read(&mut out), 5);
        assert_eq!(&out[..5], b"hello");
        assert_eq!(r.rx().read(&mut out), 2);
        assert_eq!(r.tx().capacity(), 0x800);
        assert_eq!(r.rx().capacity(), 0x400);
    }

    #[test]
    fn a_long_name_is_truncated() {
        let r = Region::new();
        r.set_name("a-name-that-is-much-longer-than-thirty-two-bytes");
        let mut name = [0; NAME_LEN];
        assert_eq!(r.name(&mut name).len(), NAME_LEN);
    }
}
