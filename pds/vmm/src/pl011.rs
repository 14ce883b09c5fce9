//! The emulated PL011: a transmit-only UART whose data register writes
//! are the guest's console output (Arm PrimeCell UART (PL011) Technical
//! Reference Manual, DDI 0183, section 3: "Programmers Model").
//!
//! The model is the smallest that a polling driver and Linux's `amba-pl011`
//! accept: the transmit FIFO is always empty (a byte written is gone at
//! once), the receive FIFO always empty, every other register reads as its
//! reset value and writes to it are ignored. Guest input, interrupts and
//! DMA are not modelled.

/// Bytes of the PL011's register block (one 4 KiB page).
pub const SIZE: u64 = 0x1000;

/// UARTDR, the data register.
pub const UARTDR: u64 = 0x000;
/// UARTFR, the flag register.
pub const UARTFR: u64 = 0x018;
/// UARTFR.RXFE, bit 4: the receive FIFO is empty.
pub const FR_RXFE: u32 = 1 << 4;
/// UARTFR.TXFE, bit 7: the transmit FIFO is empty.
pub const FR_TXFE: u32 = 1 << 7;

/// Reset values of the readable registers (DDI 0183 table 3-1, "UART
/// register summary"); UARTFR as this model always has it. Offsets not
/// listed read as zero.
const REGISTERS: [(u64, u32); 15] = [
    (UARTFR, FR_TXFE | FR_RXFE),
    // UARTIFLS: both FIFO levels at half full.
    (0x034, 0x12),
    // UARTCR: transmit and receive enabled, UART disabled.
    (0x030, 0x300),
    // UARTPeriphID0..3: part 0x011, designer 0x41 (Arm), revision r1p5.
    (0xfe0, 0x11),
    (0xfe4, 0x10),
    (0xfe8, 0x34),
    (0xfec, 0x00),
    // UARTPCellID0..3: the PrimeCell identification.
    (0xff0, 0x0d),
    (0xff4, 0xf0),
    (0xff8, 0x05),
    (0xffc, 0xb1),
    // UARTDR, UARTRSR, UARTILPR, UARTIBRD: zero at reset.
    (UARTDR, 0),
    (0x004, 0),
    (0x020, 0),
    (0x024, 0),
];

/// What a write to the PL011 did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Write {
    /// A byte for the console.
    Output(u8),
    /// Nothing: a register whose writes the model ignores.
    Ignored,
}

/// The value a read of `bytes` bytes at `offset` returns: the bytes of the
/// 32-bit registers it covers, little-endian, so byte and halfword reads
/// see the part of the register they name.
#[must_use]
pub fn read(offset: u64, bytes: u64) -> u64 {
    let mut value = 0;
    for i in 0..bytes.min(8) {
        let at = offset.wrapping_add(i);
        let word = register(at & !3);
        let byte = (word >> ((at & 3) * 8)) & 0xff;
        value |= u64::from(byte) << (i * 8);
    }
    value
}

/// What a write of `value` at `offset` does: a write that covers UARTDR's
/// low byte sends that byte (the PL011 transmits bits 7:0 and ignores the
/// rest); every other write is ignored.
#[must_use]
pub fn write(offset: u64, value: u64) -> Write {
    if offset == UARTDR { Write::Output(value as u8) } else { Write::Ignored }
}

fn register(offset: u64) -> u32 {
    REGISTERS.iter().find(|&&(o, _)| o == offset).map_or(0, |&(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_register_says_transmit_empty_and_receive_empty() {
        assert_eq!(read(UARTFR, 4), 0x90);
        assert_eq!(read(UARTFR, 4) as u32 & (1 << 5), 0, "TXFF never set: writes never wait");
        assert_eq!(read(UARTFR, 4) as u32 & (1 << 3), 0, "never BUSY");
    }

    #[test]
    fn other_registers_read_their_reset_values() {
        assert_eq!(read(0x030, 4), 0x300);
        assert_eq!(read(0x034, 4), 0x12);
        assert_eq!(read(UARTDR, 4), 0);
        assert_eq!(read(0x02c, 4), 0);
        let id: Vec<u64> = (0..8).map(|i| read(0xfe0 + i * 4, 4)).collect();
        assert_eq!(id, [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        assert_eq!(read(0x800, 4), 0, "unassigned offsets read as zero");
    }

    #[test]
    fn narrow_and_wide_reads_see_the_bytes_they_name() {
        assert_eq!(read(UARTCR_HIGH, 1), 0x03);
        assert_eq!(read(0x030, 2), 0x300);
        // A doubleword read covers UARTCR and UARTIFLS.
        assert_eq!(read(0x030, 8), (0x12 << 32) | 0x300);
        // The last bytes of the page do not wrap into anything.
        assert_eq!(read(0xffc, 8), 0xb1);
    }

    const UARTCR_HIGH: u64 = 0x031;

    #[test]
    fn data_register_writes_are_output_and_the_rest_are_ignored() {
        assert_eq!(write(UARTDR, u64::from(b'A')), Write::Output(b'A'));
        assert_eq!(write(UARTDR, 0xffff_ff41), Write::Output(b'A'));
        assert_eq!(write(0x030, 0x301), Write::Ignored);
        assert_eq!(write(0x001, 0x41), Write::Ignored);
        assert_eq!(read(0x030, 4), 0x300, "ignored writes change nothing");
    }
}
