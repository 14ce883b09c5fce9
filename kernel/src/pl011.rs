//! The Arm PrimeCell PL011 UART, as the kernel's early console.
//!
//! Register offsets and bits follow the PL011 Technical Reference Manual
//! (Arm DDI 0183G), section 3.2. The kernel only transmits; it does not
//! program the baud rate, which depends on the board's UART clock: QEMU
//! ignores it and the Raspberry Pi firmware sets it (`enable_uart=1`).

use core::mem::offset_of;

/// The PL011 register block, from offset 0 to DMACR.
#[repr(C)]
pub struct Registers {
    /// 0x00 UARTDR: data.
    pub dr: u32,
    /// 0x04 UARTRSR/UARTECR: receive status / error clear.
    pub rsr: u32,
    _reserved0: [u32; 4],
    /// 0x18 UARTFR: flags.
    pub fr: u32,
    _reserved1: u32,
    /// 0x20 UARTILPR: IrDA low-power counter.
    pub ilpr: u32,
    /// 0x24 UARTIBRD: integer baud divisor.
    pub ibrd: u32,
    /// 0x28 UARTFBRD: fractional baud divisor.
    pub fbrd: u32,
    /// 0x2C UARTLCR_H: line control.
    pub lcr_h: u32,
    /// 0x30 UARTCR: control.
    pub cr: u32,
    /// 0x34 UARTIFLS: FIFO level select.
    pub ifls: u32,
    /// 0x38 UARTIMSC: interrupt mask set/clear.
    pub imsc: u32,
    /// 0x3C UARTRIS: raw interrupt status.
    pub ris: u32,
    /// 0x40 UARTMIS: masked interrupt status.
    pub mis: u32,
    /// 0x44 UARTICR: interrupt clear.
    pub icr: u32,
    /// 0x48 UARTDMACR: DMA control.
    pub dmacr: u32,
}

/// UARTFR.TXFF: the transmit FIFO is full.
const FR_TXFF: u32 = 1 << 5;
/// UARTFR.BUSY: the UART is still sending.
const FR_BUSY: u32 = 1 << 3;
/// UARTLCR_H.WLEN = 0b11: 8 data bits.
const LCR_H_WLEN_8: u32 = 0b11 << 5;
/// UARTLCR_H.FEN: FIFOs enabled.
const LCR_H_FEN: u32 = 1 << 4;
/// UARTCR.UARTEN: the UART is enabled.
const CR_UARTEN: u32 = 1 << 0;
/// UARTCR.TXE: transmit enabled.
const CR_TXE: u32 = 1 << 8;
/// UARTCR.RXE: receive enabled.
const CR_RXE: u32 = 1 << 9;

/// A PL011 the kernel may write to.
pub struct Pl011 {
    regs: *mut Registers,
}

impl Pl011 {
    /// A driver for the PL011 whose registers are at `base`.
    ///
    /// # Safety
    ///
    /// `base` must be the address of a PL011 register block, mapped as
    /// device memory (or with the MMU off), that nothing else drives
    /// concurrently with this value.
    pub const unsafe fn new(base: usize) -> Self {
        Self { regs: base as *mut Registers }
    }

    /// Enables the UART for 8N1 with FIFOs, unless firmware already has;
    /// leaves the baud rate as it is.
    pub fn init(&mut self) {
        if self.read(offset_of!(Registers, cr)) & CR_UARTEN != 0 {
            return;
        }
        self.write(offset_of!(Registers, lcr_h), LCR_H_WLEN_8 | LCR_H_FEN);
        self.write(offset_of!(Registers, cr), CR_UARTEN | CR_TXE | CR_RXE);
    }

    /// Sends `byte`, waiting for room in the FIFO.
    pub fn put(&mut self, byte: u8) {
        while self.read(offset_of!(Registers, fr)) & FR_TXFF != 0 {
            core::hint::spin_loop();
        }
        self.write(offset_of!(Registers, dr), u32::from(byte));
    }

    /// Waits until every queued byte has left the UART.
    pub fn flush(&mut self) {
        while self.read(offset_of!(Registers, fr)) & FR_BUSY != 0 {
            core::hint::spin_loop();
        }
    }

    /// Reads the register at `offset` (an `offset_of!(Registers, ..)`).
    fn read(&self, offset: usize) -> u32 {
        let reg = self.regs.wrapping_byte_add(offset).cast::<u32>();
        // SAFETY: `reg` is a register of the block that `new`'s contract
        // says is a mapped PL011; volatile because it is MMIO.
        unsafe { reg.read_volatile() }
    }

    /// Writes `value` to the register at `offset`.
    fn write(&mut self, offset: usize, value: u32) {
        let reg = self.regs.wrapping_byte_add(offset).cast::<u32>();
        // SAFETY: as in `read`; `&mut self` makes this the only writer.
        unsafe { reg.write_volatile(value) }
    }
}

impl core::fmt::Write for Pl011 {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.put(b'\r');
            }
            self.put(byte);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_offsets_match_the_trm() {
        assert_eq!(offset_of!(Registers, dr), 0x00);
        assert_eq!(offset_of!(Registers, fr), 0x18);
        assert_eq!(offset_of!(Registers, ibrd), 0x24);
        assert_eq!(offset_of!(Registers, lcr_h), 0x2C);
        assert_eq!(offset_of!(Registers, cr), 0x30);
        assert_eq!(offset_of!(Registers, icr), 0x44);
        assert_eq!(size_of::<Registers>(), 0x4C);
    }
}
