//! The guest's console: bytes the guest writes to the emulated PL011,
//! gathered into lines and sent to the serial PD as one of its clients.
//!
//! The serial PD labels each line with the client's name, and every write
//! through [`tenure_serial::client::Writer`] notifies it; gathering a line
//! first costs one notification per line instead of one per byte (the
//! guest traps on every byte).

use tenure_serial::client::Writer;

/// Longest line sent in one piece; a longer line is sent in pieces of
/// this size (the serial PD's transmit ring holds 2 KiB).
pub const LINE_LEN: usize = 256;

/// Where the guest's output goes.
pub trait Console {
    /// Writes `bytes` (one line, or a piece of one).
    fn write(&mut self, bytes: &[u8]);
}

impl<F: FnMut()> Console for Writer<'_, F> {
    fn write(&mut self, bytes: &[u8]) {
        self.write_bytes(bytes);
    }
}

/// The line being written.
#[derive(Debug)]
pub struct LineBuffer {
    bytes: [u8; LINE_LEN],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuffer {
    /// An empty line.
    #[must_use]
    pub const fn new() -> Self {
        LineBuffer { bytes: [0; LINE_LEN], len: 0 }
    }

    /// Adds a byte; a newline, or a full buffer, sends the line.
    pub fn push(&mut self, byte: u8, console: &mut impl Console) {
        self.bytes[self.len] = byte;
        self.len += 1;
        if byte == b'\n' || self.len == LINE_LEN {
            self.flush(console);
        }
    }

    /// Sends what is buffered (when the guest stops mid-line).
    pub fn flush(&mut self, console: &mut impl Console) {
        if self.len > 0 {
            console.write(&self.bytes[..self.len]);
            self.len = 0;
        }
    }

    /// Bytes waiting for the end of their line.
    #[must_use]
    pub fn pending(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;
    use tenure_serial::region::Region;

    #[derive(Default)]
    struct Lines(Vec<Vec<u8>>);

    impl Console for Lines {
        fn write(&mut self, bytes: &[u8]) {
            self.0.push(bytes.to_vec());
        }
    }

    #[test]
    fn lines_are_sent_whole_at_each_newline() {
        let (mut buf, mut out) = (LineBuffer::new(), Lines::default());
        for &b in b"ok 1 - print\nok 2" {
            buf.push(b, &mut out);
        }
        assert_eq!(out.0, [b"ok 1 - print\n".to_vec()]);
        assert_eq!(buf.pending(), b"ok 2");
        buf.flush(&mut out);
        assert_eq!(out.0[1], b"ok 2");
        buf.flush(&mut out);
        assert_eq!(out.0.len(), 2, "nothing left to send");
    }

    #[test]
    fn a_line_longer_than_the_buffer_goes_in_pieces() {
        let (mut buf, mut out) = (LineBuffer::new(), Lines::default());
        for _ in 0..LINE_LEN + 10 {
            buf.push(b'x', &mut out);
        }
        assert_eq!(out.0.len(), 1);
        assert_eq!(out.0[0].len(), LINE_LEN);
        assert_eq!(buf.pending().len(), 10);
    }

    #[test]
    fn the_serial_writer_is_a_console_and_notifies_once_per_line() {
        let region = Region::new();
        let notified = Cell::new(0);
        let mut writer = Writer::new(&region, || notified.set(notified.get() + 1));
        let mut buf = LineBuffer::new();
        for &b in b"hello\n" {
            buf.push(b, &mut writer);
        }
        let mut out = [0; 16];
        let n = region.tx().read(&mut out);
        assert_eq!(&out[..n], b"hello\n");
        assert_eq!(notified.get(), 1);
    }
}
