//! The client side: writing to the serial PD through the shared region.

use crate::region::Region;
use core::fmt;

/// The region mapped at `addr` in this PD.
///
/// # Safety
///
/// `addr` must be the address at which system.xml maps a client region of
/// [`crate::region::REGION_SIZE`] bytes into this PD (shared with the
/// serial PD only), for the PD's whole life.
#[allow(unsafe_code, reason = "the one place a mapped address becomes a reference")]
#[must_use]
pub unsafe fn region_at(addr: usize) -> &'static Region {
    // SAFETY: the caller guarantees a mapped, page-aligned region of the
    // right size that lives forever; `Region` is all atomics, so shared
    // access with the serial PD is sound.
    unsafe { &*(addr as *const Region) }
}

/// Writes text to the serial PD: bytes go into the transmit ring, and the
/// serial PD is notified when the ring fills and at the end of each write.
/// The serial PD has a higher priority, so a notification drains the ring
/// at once.
pub struct Writer<'r, F: FnMut()> {
    region: &'r Region,
    notify: F,
}

impl<'r, F: FnMut()> Writer<'r, F> {
    /// A writer on `region` that calls `notify` to wake the serial PD.
    pub fn new(region: &'r Region, notify: F) -> Self {
        Writer { region, notify }
    }

    /// Writes all of `bytes`, notifying whenever the ring is full. Gives
    /// up (dropping the rest) if a notification frees no room, so a dead
    /// serial PD cannot hang the client.
    pub fn write_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = self.region.tx().write(bytes);
            bytes = &bytes[n..];
            (self.notify)();
            if n == 0 && self.region.tx().write(bytes) == 0 {
                return;
            }
        }
    }
}

impl<F: FnMut()> fmt::Write for Writer<'_, F> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;
    use core::fmt::Write;

    #[test]
    fn text_reaches_the_ring_and_the_serial_pd_is_notified() {
        let region = Region::new();
        let notified = Cell::new(0);
        let mut w = Writer::new(&region, || notified.set(notified.get() + 1));
        write!(w, "n = {}", 42).unwrap();
        let mut out = [0; 16];
        let n = region.tx().read(&mut out);
        assert_eq!(&out[..n], b"n = 42");
        assert!(notified.get() >= 1);
    }

    #[test]
    fn a_full_ring_is_drained_by_the_notified_reader() {
        let region = Region::new();
        let drained = Cell::new(0usize);
        let mut w = Writer::new(&region, || {
            let mut sink = [0; 4096];
            drained.set(drained.get() + region.tx().read(&mut sink));
        });
        w.write_bytes(&[b'x'; 5000]);
        assert_eq!(drained.get(), 5000);
    }

    #[test]
    fn a_serial_pd_that_never_drains_cannot_hang_the_client() {
        let region = Region::new();
        let mut w = Writer::new(&region, || {});
        w.write_bytes(&[b'x'; 5000]);
        assert_eq!(region.tx().len(), 0x800);
    }
}
