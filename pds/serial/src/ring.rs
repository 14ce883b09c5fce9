//! A single-producer, single-consumer byte ring in shared memory.
//!
//! Layout of a ring region (the producer owns `tail`, the consumer owns
//! `head`; both count bytes modulo 2^32, so `tail - head` is the fill):
//!
//! ```text
//! 0      4      8                                     size
//! +------+------+--------------------------------------+
//! | head | tail | data (size - 8 bytes, a power of two) |
//! +------+------+--------------------------------------+
//! ```
//!
//! The producer writes data, then publishes `tail` with release order; the
//! consumer reads `tail` with acquire order, then the data, then publishes
//! `head` with release order. Neither side trusts the other's counter: a
//! fill larger than the capacity is treated as corruption and the ring is
//! reset from the reader's side, so a faulty client can garble only its own
//! output.

use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// Bytes before the data: the two counters.
pub const HEADER: usize = 8;

/// A view of one ring in shared memory.
#[derive(Clone, Copy)]
pub struct Ring<'a> {
    head: &'a AtomicU32,
    tail: &'a AtomicU32,
    data: &'a [AtomicU8],
}

impl<'a> Ring<'a> {
    /// The ring laid out over `region`; `None` unless the data area is a
    /// non-zero power of two.
    #[must_use]
    pub fn new(head: &'a AtomicU32, tail: &'a AtomicU32, data: &'a [AtomicU8]) -> Option<Self> {
        data.len().is_power_of_two().then_some(Ring { head, tail, data })
    }

    /// Bytes the data area holds.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    fn mask(&self, counter: u32) -> usize {
        counter as usize & (self.data.len() - 1)
    }

    /// Producer: appends as much of `bytes` as fits; returns how many.
    pub fn write(&self, bytes: &[u8]) -> usize {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Relaxed);
        let used = tail.wrapping_sub(head) as usize;
        let free = self.capacity().saturating_sub(used);
        let n = bytes.len().min(free);
        for (i, &b) in bytes[..n].iter().enumerate() {
            self.data[self.mask(tail.wrapping_add(i as u32))].store(b, Ordering::Relaxed);
        }
        self.tail.store(tail.wrapping_add(n as u32), Ordering::Release);
        n
    }

    /// Consumer: moves up to `out.len()` bytes out; returns how many. A
    /// corrupt fill (more than the capacity) empties the ring.
    pub fn read(&self, out: &mut [u8]) -> usize {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let used = tail.wrapping_sub(head) as usize;
        if used > self.capacity() {
            self.head.store(tail, Ordering::Release);
            return 0;
        }
        let n = used.min(out.len());
        for (i, slot) in out[..n].iter_mut().enumerate() {
            *slot = self.data[self.mask(head.wrapping_add(i as u32))].load(Ordering::Relaxed);
        }
        self.head.store(head.wrapping_add(n as u32), Ordering::Release);
        n
    }

    /// Bytes waiting to be read (0 if the counters are corrupt).
    #[must_use]
    pub fn len(&self) -> usize {
        let used =
            self.tail.load(Ordering::Acquire).wrapping_sub(self.head.load(Ordering::Acquire));
        if used as usize > self.capacity() { 0 } else { used as usize }
    }

    /// Whether nothing waits to be read.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem {
        head: AtomicU32,
        tail: AtomicU32,
        data: Vec<AtomicU8>,
    }

    fn mem(size: usize) -> Mem {
        Mem {
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            data: (0..size).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    fn ring(m: &Mem) -> Ring<'_> {
        Ring::new(&m.head, &m.tail, &m.data).unwrap()
    }

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let m = mem(8);
        let r = ring(&m);
        let mut out = [0; 8];
        for round in 0..5u8 {
            assert_eq!(r.write(&[round, round + 1, round + 2, round + 3, round + 4]), 5);
            assert_eq!(r.read(&mut out), 5);
            assert_eq!(out[..5], [round, round + 1, round + 2, round + 3, round + 4]);
        }
    }

    #[test]
    fn a_full_ring_takes_only_what_fits() {
        let m = mem(4);
        let r = ring(&m);
        assert_eq!(r.write(b"abcdef"), 4);
        assert_eq!(r.write(b"x"), 0);
        let mut out = [0; 2];
        assert_eq!(r.read(&mut out), 2);
        assert_eq!(r.write(b"xyz"), 2);
        let mut all = [0; 8];
        assert_eq!(r.read(&mut all), 4);
        assert_eq!(&all[..4], b"cdxy");
    }

    #[test]
    fn counters_survive_wrapping_u32() {
        let m = mem(4);
        m.head.store(u32::MAX - 1, Ordering::Relaxed);
        m.tail.store(u32::MAX - 1, Ordering::Relaxed);
        let r = ring(&m);
        assert_eq!(r.write(b"abc"), 3);
        let mut out = [0; 4];
        assert_eq!(r.read(&mut out), 3);
        assert_eq!(&out[..3], b"abc");
    }

    #[test]
    fn a_corrupt_tail_empties_the_ring_instead_of_reading_garbage() {
        let m = mem(4);
        m.tail.store(1000, Ordering::Relaxed);
        let r = ring(&m);
        assert_eq!(r.len(), 0);
        let mut out = [0; 4];
        assert_eq!(r.read(&mut out), 0);
        assert_eq!(m.head.load(Ordering::Relaxed), 1000);
        assert_eq!(r.write(b"ok"), 2);
        assert_eq!(r.read(&mut out), 2);
    }

    #[test]
    fn a_data_area_that_is_not_a_power_of_two_is_refused() {
        let m = mem(6);
        assert!(Ring::new(&m.head, &m.tail, &m.data).is_none());
    }
}
