//! The serial PD: owns the PL011, prints each client's output with its
//! name, and sends keyboard input to one client at a time (Ctrl-] and a
//! client number switch).
//!
//! Its system.xml contract: the UART mapped uncached with `setvar_vaddr`
//! `uart_base` and its interrupt on channel 0; client `i` (1..=8) on
//! channel `i`, its region mapped at `client_regions + (i - 1) * 0x1000`
//! (`setvar_vaddr` of the first one).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::{Channel, ChannelSet, Handler, protection_domain, var};
    use tenure_serial::mux::{Input, Mux};
    use tenure_serial::region::{NAME_LEN, REGION_SIZE, Region};

    /// The UART's interrupt.
    const UART_IRQ: Channel = Channel::new(0);
    /// Most clients.
    const MAX_CLIENTS: usize = 8;

    /// PL011 registers used (offsets, Arm DDI 0183G 3.2).
    const DR: usize = 0x00;
    const FR: usize = 0x18;
    const IMSC: usize = 0x38;
    const ICR: usize = 0x44;
    /// FR: transmit FIFO full, receive FIFO empty.
    const FR_TXFF: u32 = 1 << 5;
    const FR_RXFE: u32 = 1 << 4;
    /// IMSC/ICR: receive and receive-timeout interrupts.
    const RX_INTERRUPTS: u32 = (1 << 4) | (1 << 6);

    struct Uart(usize);

    impl Uart {
        fn read(&self, reg: usize) -> u32 {
            // SAFETY: system.xml maps the PL011 uncached at `uart_base`;
            // this PD alone drives it; the offsets are PL011 registers.
            unsafe { core::ptr::read_volatile((self.0 + reg) as *const u32) }
        }

        fn write(&self, reg: usize, value: u32) {
            // SAFETY: as in `read`.
            unsafe { core::ptr::write_volatile((self.0 + reg) as *mut u32, value) }
        }

        fn put(&self, byte: u8) {
            while self.read(FR) & FR_TXFF != 0 {}
            self.write(DR, byte.into());
        }

        fn get(&self) -> Option<u8> {
            (self.read(FR) & FR_RXFE == 0).then(|| self.read(DR) as u8)
        }
    }

    struct Serial {
        uart: Uart,
        clients: [Option<&'static Region>; MAX_CLIENTS],
        mux: Mux<MAX_CLIENTS>,
    }

    fn init() -> Serial {
        let uart = Uart(*var!(uart_base: usize = 0));
        let regions = *var!(client_regions: usize = 0);
        let notify_mask = *microkit::symbols::__tenure_notifications.get();
        let mut clients = [None; MAX_CLIENTS];
        let mut count = 0;
        for (i, slot) in clients.iter_mut().enumerate() {
            if notify_mask & (1 << (i + 1)) != 0 && regions != 0 {
                // SAFETY: system.xml maps client i's region at this address
                // (the contract in the module docs).
                *slot =
                    Some(unsafe { tenure_serial::client::region_at(regions + i * REGION_SIZE) });
                count = i + 1;
            }
        }
        uart.write(ICR, RX_INTERRUPTS);
        uart.write(IMSC, RX_INTERRUPTS);
        Serial { uart, clients, mux: Mux::new(count) }
    }

    impl Serial {
        fn drain(&mut self, client: usize) {
            let Some(region) = self.clients[client] else { return };
            let mut name = [0; NAME_LEN];
            let name = region.name(&mut name);
            let mut buf = [0; 64];
            loop {
                let n = region.tx().read(&mut buf);
                if n == 0 {
                    break;
                }
                let uart = &self.uart;
                self.mux.output(client, name, &buf[..n], &mut |b| uart.put(b));
            }
        }

        fn input(&mut self) {
            while let Some(byte) = self.uart.get() {
                if let Input::Deliver { client, byte } = self.mux.input(byte)
                    && let Some(region) = self.clients[client]
                    && region.rx().write(&[byte]) == 1
                {
                    Channel::new(client + 1).notify();
                }
            }
            self.uart.write(ICR, RX_INTERRUPTS);
        }
    }

    impl Handler for Serial {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            for channel in channels.iter() {
                if channel == UART_IRQ {
                    self.input();
                    UART_IRQ.irq_ack();
                } else if (1..=MAX_CLIENTS).contains(&channel.index()) {
                    self.drain(channel.index() - 1);
                }
            }
            Ok(())
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("serial is a protection domain: build it for aarch64-unknown-none");
}
