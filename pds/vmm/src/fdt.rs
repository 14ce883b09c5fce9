//! The guest's machine as its device tree describes it: the RAM, the
//! PL011 and the GIC distributor the VMM emulates, read from the
//! flattened device tree the VMM hands the guest (Devicetree
//! Specification v0.4, chapter 5, "Flattened Devicetree (DTB) Format").
//!
//! The device tree is the one description of the guest's machine: the
//! guest believes it, so the VMM takes its layout from it rather than
//! from constants that could drift. system.xml must declare the same RAM
//! for the guest; if it does not, mm refuses the loader's `Donate`
//! (`NotDeclared`) and the VMM says so.
//!
//! Only the children of the root node are read, with the root's
//! `#address-cells` and `#size-cells` (1 or 2 each): that is where QEMU
//! virt's, libvmm's and the test guest's device trees put these nodes.
//! Every offset and length is checked: a malformed blob is an
//! [`FdtError`], never a panic.

use crate::layout::Range;

/// The FDT's magic (big-endian, at offset 0).
const MAGIC: u32 = 0xd00d_feed;
/// Bytes of the header fields read: up to `size_dt_struct` at 36.
const HEADER_LEN: usize = 40;
/// Structure block tokens (Devicetree Specification 5.4.1).
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

/// `compatible` strings of a PL011.
const PL011: &[&[u8]] = &[b"arm,pl011"];
/// `compatible` strings of a GICv2, whose first `reg` is the distributor.
const GIC_V2: &[&[u8]] = &[b"arm,cortex-a15-gic", b"arm,gic-400", b"arm,cortex-a9-gic"];

/// Why a device tree cannot be read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FdtError {
    /// Shorter than its header, or than the blocks the header names.
    Truncated,
    /// No FDT magic.
    BadMagic,
    /// A token, a name or a property runs past its block, or an unknown
    /// token.
    Malformed,
    /// `#address-cells` or `#size-cells` of the root is not 1 or 2.
    BadCells,
    /// No `/memory` node with a `reg`.
    NoMemory,
    /// No `arm,pl011` node with a `reg`.
    NoPl011,
}

impl FdtError {
    /// A sentence for reports.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            FdtError::Truncated => "the device tree is truncated",
            FdtError::BadMagic => "the device tree has no FDT magic",
            FdtError::Malformed => "the device tree's structure block is malformed",
            FdtError::BadCells => {
                "the device tree's root has #address-cells or #size-cells not 1 or 2"
            }
            FdtError::NoMemory => "the device tree has no /memory node with a reg",
            FdtError::NoPl011 => "the device tree has no arm,pl011 node with a reg",
        }
    }
}

/// What the VMM needs of the guest's machine.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Machine {
    /// The first range of the first `/memory` node.
    pub ram: Range,
    /// Base of the first PL011.
    pub pl011: u64,
    /// Base of the GICv2 distributor, if there is one.
    pub gic_distributor: Option<u64>,
    /// The GICv2 CPU interface (the GIC node's second `reg` entry), if
    /// there is one: the guest reaches it through the GICV page that
    /// system.xml passes through, which mm maps on the first fault.
    pub gic_cpu: Option<Range>,
}

fn be32(b: &[u8], at: usize) -> Result<u32, FdtError> {
    let end = at.checked_add(4).ok_or(FdtError::Malformed)?;
    let w = b.get(at..end).ok_or(FdtError::Malformed)?;
    Ok(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

/// Reads `cells` big-endian 32-bit cells as one number.
fn cells(b: &[u8], cells: usize) -> u64 {
    b.chunks_exact(4)
        .take(cells)
        .fold(0, |acc, c| (acc << 32) | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
}

/// Whether the string list `list` (NUL separated) holds one of `names`.
fn compatible(list: &[u8], names: &[&[u8]]) -> bool {
    list.split(|&b| b == 0).any(|s| names.contains(&s))
}

/// A child of the root being read.
#[derive(Default)]
struct Node<'a> {
    memory: bool,
    compatible: &'a [u8],
    reg: Option<&'a [u8]>,
}

/// Reads the guest's machine from `dtb`.
pub fn machine(dtb: &[u8]) -> Result<Machine, FdtError> {
    if dtb.len() < HEADER_LEN {
        return Err(FdtError::Truncated);
    }
    if be32(dtb, 0)? != MAGIC {
        return Err(FdtError::BadMagic);
    }
    let block = |off: usize, len: usize| -> Result<&[u8], FdtError> {
        let (start, size) = (be32(dtb, off)? as usize, be32(dtb, len)? as usize);
        dtb.get(start..start.checked_add(size).ok_or(FdtError::Truncated)?)
            .ok_or(FdtError::Truncated)
    };
    let structure = block(8, 36)?;
    let strings = block(12, 32)?;
    let string = |off: u32| -> Result<&[u8], FdtError> {
        let s = strings.get(off as usize..).ok_or(FdtError::Malformed)?;
        let len = s.iter().position(|&b| b == 0).ok_or(FdtError::Malformed)?;
        Ok(&s[..len])
    };

    let (mut address_cells, mut size_cells) = (2, 1);
    let mut depth = 0usize;
    let mut node = Node::default();
    let (mut ram, mut pl011, mut gicd, mut gicc) = (None, None, None, None);
    let mut at = 0usize;
    loop {
        let token = be32(structure, at)?;
        at += 4;
        match token {
            BEGIN_NODE => {
                let rest = structure.get(at..).ok_or(FdtError::Malformed)?;
                let len = rest.iter().position(|&b| b == 0).ok_or(FdtError::Malformed)?;
                depth += 1;
                if depth == 2 {
                    node = Node { memory: rest[..len].starts_with(b"memory"), ..Node::default() };
                }
                at = (at + len + 1).next_multiple_of(4);
            }
            END_NODE => {
                if depth == 2 {
                    // Cells of the root: they come before its children.
                    if !(1..=2).contains(&address_cells) || !(1..=2).contains(&size_cells) {
                        return Err(FdtError::BadCells);
                    }
                    if let Some(reg) = node.reg {
                        let base = cells(reg, address_cells);
                        let enough = reg.len() >= 4 * (address_cells + size_cells);
                        let size = cells(reg.get(4 * address_cells..).unwrap_or(&[]), size_cells);
                        if node.memory && ram.is_none() && enough {
                            ram = Some(Range { start: base, size });
                        } else if compatible(node.compatible, PL011) && pl011.is_none() {
                            pl011 = Some(base);
                        } else if compatible(node.compatible, GIC_V2) && gicd.is_none() {
                            gicd = Some(base);
                            // The CPU interface: the second (address, size).
                            let pair = 4 * (address_cells + size_cells);
                            if let Some(second) = reg.get(pair..2 * pair) {
                                gicc = Some(Range {
                                    start: cells(second, address_cells),
                                    size: cells(&second[4 * address_cells..], size_cells),
                                });
                            }
                        }
                    }
                }
                depth = depth.checked_sub(1).ok_or(FdtError::Malformed)?;
            }
            PROP => {
                let len = be32(structure, at)? as usize;
                let name = string(be32(structure, at + 4)?)?;
                at += 8;
                let value = structure
                    .get(at..at.checked_add(len).ok_or(FdtError::Malformed)?)
                    .ok_or(FdtError::Malformed)?;
                at = (at + len).next_multiple_of(4);
                match (depth, name) {
                    (1, b"#address-cells") => address_cells = cells(value, 1) as usize,
                    (1, b"#size-cells") => size_cells = cells(value, 1) as usize,
                    (2, b"reg") => node.reg = Some(value),
                    (2, b"compatible") => node.compatible = value,
                    (2, b"device_type") => node.memory |= value == b"memory\0",
                    _ => {}
                }
            }
            NOP => {}
            END => break,
            _ => return Err(FdtError::Malformed),
        }
    }
    Ok(Machine {
        ram: ram.ok_or(FdtError::NoMemory)?,
        pl011: pl011.ok_or(FdtError::NoPl011)?,
        gic_distributor: gicd,
        gic_cpu: gicc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device tree builder: just enough of dtc's output format.
    #[derive(Default)]
    struct Blob {
        structure: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Blob {
        fn begin(&mut self, name: &str) -> &mut Self {
            self.token(BEGIN_NODE);
            self.structure.extend(name.as_bytes());
            self.structure.push(0);
            self.pad();
            self
        }

        fn end(&mut self) -> &mut Self {
            self.token(END_NODE);
            self
        }

        fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
            self.token(PROP);
            self.structure.extend((value.len() as u32).to_be_bytes());
            self.structure.extend((self.strings.len() as u32).to_be_bytes());
            self.strings.extend(name.as_bytes());
            self.strings.push(0);
            self.structure.extend(value);
            self.pad();
            self
        }

        fn u32s(&mut self, name: &str, values: &[u32]) -> &mut Self {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
            self.prop(name, &bytes)
        }

        fn token(&mut self, t: u32) {
            self.structure.extend(t.to_be_bytes());
        }

        fn pad(&mut self) {
            while !self.structure.len().is_multiple_of(4) {
                self.structure.push(0);
            }
        }

        fn build(&mut self) -> Vec<u8> {
            self.token(END);
            let off_struct = HEADER_LEN as u32;
            let off_strings = off_struct + self.structure.len() as u32;
            let total = off_strings + self.strings.len() as u32;
            let mut b = Vec::new();
            for w in [
                MAGIC,
                total,
                off_struct,
                off_strings,
                0,
                17,
                16,
                0,
                self.strings.len() as u32,
                self.structure.len() as u32,
            ] {
                b.extend(w.to_be_bytes());
            }
            b.extend(&self.structure);
            b.extend(&self.strings);
            b
        }
    }

    /// The test guest's machine (guest-images/test-guest.dts).
    fn test_guest() -> Vec<u8> {
        Blob::default()
            .begin("")
            .u32s("#address-cells", &[2])
            .u32s("#size-cells", &[2])
            .begin("chosen")
            .prop("bootargs", b"probes=print\0")
            .end()
            .begin("memory@40000000")
            .prop("device_type", b"memory\0")
            .u32s("reg", &[0, 0x4000_0000, 0, 0x0400_0000])
            .end()
            .begin("interrupt-controller@8000000")
            .prop("compatible", b"arm,cortex-a15-gic\0")
            .u32s("reg", &[0, 0x0800_0000, 0, 0x1000, 0, 0x0801_0000, 0, 0x2000])
            .end()
            .begin("pl011@9000000")
            .prop("compatible", b"arm,pl011\0arm,primecell\0")
            .u32s("reg", &[0, 0x0900_0000, 0, 0x1000])
            .end()
            .end()
            .build()
    }

    #[test]
    fn the_test_guests_machine_is_read() {
        assert_eq!(
            machine(&test_guest()),
            Ok(Machine {
                ram: Range { start: 0x4000_0000, size: 64 << 20 },
                pl011: 0x0900_0000,
                gic_distributor: Some(0x0800_0000),
                gic_cpu: Some(Range { start: 0x0801_0000, size: 0x2000 }),
            })
        );
    }

    #[test]
    fn one_cell_addresses_and_nested_nodes() {
        let dtb = Blob::default()
            .begin("")
            .u32s("#address-cells", &[1])
            .u32s("#size-cells", &[1])
            .begin("soc")
            .begin("memory@1")
            .u32s("reg", &[1, 1])
            .end()
            .end()
            .begin("mem")
            .prop("device_type", b"memory\0")
            .u32s("reg", &[0x8000_0000, 0x1000_0000])
            .end()
            .begin("uart")
            .prop("compatible", b"arm,pl011\0")
            .u32s("reg", &[0x1c09_0000, 0x1000])
            .end()
            .end()
            .build();
        let m = machine(&dtb).unwrap();
        assert_eq!(m.ram, Range { start: 0x8000_0000, size: 0x1000_0000 }, "not soc's child");
        assert_eq!((m.pl011, m.gic_distributor), (0x1c09_0000, None));
    }

    #[test]
    fn the_gic_cpu_interface_is_the_second_reg_entry_if_there_is_one() {
        let gic = |reg: &[u32]| {
            let dtb = Blob::default()
                .begin("")
                .u32s("#address-cells", &[1])
                .u32s("#size-cells", &[1])
                .begin("memory@0")
                .u32s("reg", &[0x8000_0000, 0x1000_0000])
                .end()
                .begin("uart")
                .prop("compatible", b"arm,pl011\0")
                .u32s("reg", &[0x1c09_0000, 0x1000])
                .end()
                .begin("gic")
                .prop("compatible", b"arm,gic-400\0")
                .u32s("reg", reg)
                .end()
                .end()
                .build();
            let m = machine(&dtb).unwrap();
            (m.gic_distributor, m.gic_cpu)
        };
        assert_eq!(
            gic(&[0xff84_1000, 0x1000, 0xff84_2000, 0x2000]),
            (Some(0xff84_1000), Some(Range { start: 0xff84_2000, size: 0x2000 }))
        );
        assert_eq!(gic(&[0xff84_1000, 0x1000]), (Some(0xff84_1000), None), "no CPU interface");
        assert_eq!(
            gic(&[0xff84_1000, 0x1000, 0xff84_2000]),
            (Some(0xff84_1000), None),
            "cut short"
        );
    }

    #[test]
    fn missing_nodes_are_named() {
        let no_uart = Blob::default()
            .begin("")
            .begin("memory@0")
            .u32s("reg", &[0, 0, 0, 0x1000])
            .end()
            .end()
            .build();
        assert_eq!(machine(&no_uart), Err(FdtError::NoPl011));
        let no_memory = Blob::default().begin("").end().build();
        assert_eq!(machine(&no_memory), Err(FdtError::NoMemory));
        let bad_cells = Blob::default()
            .begin("")
            .u32s("#address-cells", &[3])
            .begin("memory")
            .end()
            .end()
            .build();
        assert_eq!(machine(&bad_cells), Err(FdtError::BadCells));
    }

    #[test]
    fn malformed_blobs_are_errors_not_panics() {
        let good = test_guest();
        assert_eq!(machine(&good[..20]), Err(FdtError::Truncated));
        let mut bad = good.clone();
        bad[0] = 0;
        assert_eq!(machine(&bad), Err(FdtError::BadMagic));
        // Every truncation and every single corrupted byte.
        for len in 0..good.len() {
            let _ = machine(&good[..len]);
        }
        for i in 0..good.len() {
            for v in [0, 0xff, 0x7f] {
                let mut b = good.clone();
                b[i] = v;
                let _ = machine(&b);
            }
        }
    }
}
