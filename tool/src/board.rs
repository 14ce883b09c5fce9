//! Boards as data: every address the kernel and PDs use comes from here.
//!
//! Names are Microkit's. Sources: QEMU's `hw/arm/virt.c` (memory map
//! `base_memmap`, `a15irqmap`: UART SPI 1) and the Linux device trees
//! `bcm2711.dtsi` / `bcm2711-rpi-4-b.dts` (GIC-400 at 0x40041000 on the
//! legacy bus, 0xFF841000 in low-peripheral mode; UART0 at 0x7e201000,
//! 0xFE201000 for the Arm; its SPI 121, INTID 153). Both boards use the
//! architectural PPIs: EL2 physical timer (CNTHP) INTID 26, virtual timer
//! INTID 27 (Arm GIC architecture, Server Base System Architecture PPI
//! assignments).
//!
//! ```text
//! qemu_virt_aarch64 (-M virt,virtualization=on,gic-version=2 -m 2G)
//!   0x0800_0000  GICD          0x0801_0000  GICC
//!   0x0900_0000  PL011 UART0 (INTID 33)
//!   0x4000_0000  RAM, 2 GiB: QEMU's DTB at its start,
//!   0x4020_0000    the kernel, then the boot image
//!
//! rpi4b_* (BCM2711, low-peripheral mode; QEMU -M raspi4b)
//!   0x0000_0000  RAM: firmware stubs, then
//!   0x0008_0000    kernel8.img (the kernel, then the boot image)
//!   0x3B40_0000  end of the Arm's share of the first GiB (GPU above)
//!   0x4000_0000  more RAM on the 2, 4 and 8 GB boards
//!   0xFE20_1000  PL011 UART0 (INTID 153)
//!   0xFF84_1000  GIC-400 GICD  0xFF84_2000  GICC
//! ```

use tenure_boot_image::{BoardInfo, MAX_MEMORY_REGIONS, MemoryRegion};

/// A RAM range: `base..base + size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ram {
    /// Physical address of the first byte.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

/// How the board's firmware or QEMU loads and enters the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// An ELF whose one segment is loaded at its physical address and
    /// entered at its entry point at EL2 (QEMU `-kernel`).
    Elf,
    /// A raw binary (`kernel8.img`) loaded at the kernel load address and
    /// entered at its first byte at EL2 (Raspberry Pi firmware, QEMU
    /// `raspi4b`).
    Raw,
}

/// Everything the tool knows about a board.
#[derive(Clone, Copy, Debug)]
pub struct Board {
    /// Microkit's board name.
    pub name: &'static str,
    /// RAM regions, sorted by base.
    pub ram: &'static [Ram],
    /// Physical address the kernel is loaded at; inside `ram`.
    pub kernel_load_addr: u64,
    /// How the image is loaded and entered.
    pub format: ImageFormat,
    /// PL011 console base.
    pub uart_base: u64,
    /// The console UART's INTID.
    pub uart_intid: u32,
    /// GICv2 distributor base.
    pub gicd_base: u64,
    /// GICv2 CPU interface base.
    pub gicc_base: u64,
    /// EL2 physical timer (CNTHP) PPI INTID.
    pub timer_el2_phys_intid: u32,
    /// Virtual timer (CNTV) PPI INTID.
    pub timer_virt_intid: u32,
    /// GICv2 virtual interface control (GICH) base.
    pub gich_base: u64,
    /// GICv2 virtual CPU interface (GICV) base.
    pub gicv_base: u64,
    /// vGIC maintenance interrupt PPI INTID.
    pub vgic_maintenance_intid: u32,
    /// The QEMU machine that emulates the board, before `-kernel IMAGE`.
    pub qemu_machine: &'static [&'static str],
}

const GIB: u64 = 1 << 30;

/// QEMU virt's machine arguments, as the design fixes them.
const QEMU_VIRT: &[&str] =
    &["-M", "virt,virtualization=on,gic-version=2", "-cpu", "cortex-a72", "-m", "2G"];

/// QEMU's Raspberry Pi 4B (2 GiB, fixed by QEMU); its PL011 UART0 is the
/// first serial port, so `-nographic` puts it on stdio.
const QEMU_RASPI4B: &[&str] = &["-M", "raspi4b"];

/// The Arm's share of the Pi 4's first GiB with the firmware's default
/// GPU memory split (76 MiB for the VideoCore at the top).
const RPI4_LOW_RAM: Ram = Ram { base: 0, size: 0x3B40_0000 };

/// A Raspberry Pi 4B with `ram`.
const fn rpi4b(name: &'static str, ram: &'static [Ram]) -> Board {
    Board {
        name,
        ram,
        kernel_load_addr: 0x8_0000,
        format: ImageFormat::Raw,
        uart_base: 0xFE20_1000,
        uart_intid: 32 + 121,
        gicd_base: 0xFF84_1000,
        gicc_base: 0xFF84_2000,
        timer_el2_phys_intid: 26,
        timer_virt_intid: 27,
        // BCM2711 peripherals manual, GIC-400: GICH and GICV follow GICC.
        gich_base: 0xFF84_4000,
        gicv_base: 0xFF84_6000,
        vgic_maintenance_intid: 25,
        qemu_machine: QEMU_RASPI4B,
    }
}

/// Every board the tool knows, the default first.
pub const BOARDS: &[Board] = &[
    Board {
        name: "qemu_virt_aarch64",
        ram: &[Ram { base: GIB, size: 2 * GIB }],
        // 2 MiB into RAM: QEMU puts the DTB at the start of RAM for an ELF
        // that leaves it free.
        kernel_load_addr: GIB + 0x20_0000,
        format: ImageFormat::Elf,
        uart_base: 0x0900_0000,
        uart_intid: 32 + 1,
        gicd_base: 0x0800_0000,
        gicc_base: 0x0801_0000,
        timer_el2_phys_intid: 26,
        timer_virt_intid: 27,
        // QEMU's hw/arm/virt.c memory map (VIRT_GIC_HYP, VIRT_GIC_VCPU)
        // and its maintenance interrupt, PPI 9.
        gich_base: 0x0803_0000,
        gicv_base: 0x0804_0000,
        vgic_maintenance_intid: 25,
        qemu_machine: QEMU_VIRT,
    },
    rpi4b("rpi4b_1gb", &[RPI4_LOW_RAM]),
    rpi4b("rpi4b_2gb", &[RPI4_LOW_RAM, Ram { base: GIB, size: GIB }]),
    // Up to the peripherals at 0xFC00_0000.
    rpi4b("rpi4b_4gb", &[RPI4_LOW_RAM, Ram { base: GIB, size: 0xBC00_0000 }]),
    rpi4b(
        "rpi4b_8gb",
        &[RPI4_LOW_RAM, Ram { base: GIB, size: 0xBC00_0000 }, Ram { base: 4 * GIB, size: 4 * GIB }],
    ),
];

/// The board called `name`.
pub fn by_name(name: &str) -> Option<&'static Board> {
    BOARDS.iter().find(|board| board.name == name)
}

/// The board names, for error messages.
pub fn names() -> impl Iterator<Item = &'static str> {
    BOARDS.iter().map(|board| board.name)
}

impl Board {
    /// The board as the boot image describes it to the kernel.
    pub fn boot_info(&self) -> BoardInfo {
        let mut memory = [MemoryRegion::default(); MAX_MEMORY_REGIONS];
        for (slot, ram) in memory.iter_mut().zip(self.ram) {
            *slot = MemoryRegion { base: ram.base.into(), size: ram.size.into() };
        }
        BoardInfo {
            name: BoardInfo::encode_name(self.name).expect("board names fit (tested)"),
            kernel_load_addr: self.kernel_load_addr.into(),
            uart_base: self.uart_base.into(),
            gicd_base: self.gicd_base.into(),
            gicc_base: self.gicc_base.into(),
            uart_intid: self.uart_intid.into(),
            timer_el2_phys_intid: self.timer_el2_phys_intid.into(),
            timer_virt_intid: self.timer_virt_intid.into(),
            gich_base: self.gich_base.into(),
            gicv_base: self.gicv_base.into(),
            vgic_maintenance_intid: self.vgic_maintenance_intid.into(),
            reserved: 0.into(),
            memory_region_count: (self.ram.len() as u32).into(),
            memory,
        }
    }

    /// The RAM region holding `addr`, if any.
    pub fn ram_containing(&self, addr: u64) -> Option<Ram> {
        self.ram.iter().copied().find(|ram| ram.base <= addr && addr - ram.base < ram.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenure_boot_image::{BOARD_ONLY_SIZE, Image, write_board_only};

    #[test]
    fn board_names_are_unique_and_default_first() {
        assert_eq!(BOARDS[0].name, "qemu_virt_aarch64");
        for (i, board) in BOARDS.iter().enumerate() {
            assert!(BOARDS[i + 1..].iter().all(|b| b.name != board.name), "{}", board.name);
            assert_eq!(by_name(board.name).map(|b| b.name), Some(board.name));
        }
        assert!(by_name("zynqmp").is_none());
    }

    #[test]
    fn every_board_encodes_into_a_valid_image() {
        for board in BOARDS {
            let mut bytes = vec![0; BOARD_ONLY_SIZE];
            write_board_only(&mut bytes, &board.boot_info());
            let image = Image::parse(&bytes).expect(board.name);
            assert_eq!(image.board().name(), board.name);
            assert_eq!(image.board().memory().len(), board.ram.len());
        }
    }

    #[test]
    fn load_addresses_are_in_ram_and_devices_are_not() {
        for board in BOARDS {
            assert!(board.ram.len() <= MAX_MEMORY_REGIONS, "{}", board.name);
            assert!(board.kernel_load_addr % 4096 == 0, "{}", board.name);
            let ram = board.ram_containing(board.kernel_load_addr).expect(board.name);
            // Room for a kernel and its image.
            assert!(ram.base + ram.size - board.kernel_load_addr >= 16 << 20);
            for device in [board.uart_base, board.gicd_base, board.gicc_base] {
                assert!(board.ram_containing(device).is_none(), "{}", board.name);
            }
            assert!((16..32).contains(&board.timer_el2_phys_intid));
            assert!((16..32).contains(&board.timer_virt_intid));
            assert!(board.uart_intid >= 32, "the UART's interrupt is an SPI");
        }
    }

    #[test]
    fn the_design_addresses() {
        let virt = by_name("qemu_virt_aarch64").unwrap();
        assert_eq!(
            (virt.uart_base, virt.uart_intid, virt.gicd_base, virt.gicc_base),
            (0x0900_0000, 33, 0x0800_0000, 0x0801_0000)
        );
        assert_eq!(virt.format, ImageFormat::Elf);
        let pi = by_name("rpi4b_1gb").unwrap();
        assert_eq!(
            (pi.uart_base, pi.gicd_base, pi.gicc_base, pi.kernel_load_addr),
            (0xFE20_1000, 0xFF84_1000, 0xFF84_2000, 0x8_0000)
        );
        assert_eq!(pi.format, ImageFormat::Raw);
        assert_eq!(by_name("rpi4b_8gb").unwrap().ram.len(), 3);
    }
}
