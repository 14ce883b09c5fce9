//! From a checked system and its PD programs to the boot image's system
//! sections: physical layout, PD stage-2 tables, patched programs,
//! capabilities, loads and interrupts, plus the human-readable report.
//!
//! Physical memory of a board's RAM region holding the kernel:
//!
//! ```text
//! RAM base          +-----------------------------------------+
//!                   | firmware / device tree (left alone)     |
//! kernel load addr  +-----------------------------------------+
//!                   | kernel block (text .. boot stack)       |
//! __boot_image      +-----------------------------------------+
//!                   | boot image window: BOOT_IMAGE_WINDOW    |
//!                   | (the image itself, any size up to it)   |
//! reserved end      +-----------------------------------------+
//!                   | PD programs, stacks, memory regions and |
//!                   | the PD table area, first fit            |
//! RAM end           +-----------------------------------------+
//! ```
//!
//! The image's size depends on what it carries (ELF data, tables), and
//! what it carries depends on where things are placed (tables map physical
//! addresses), so rather than iterate the tool reserves a fixed window of
//! [`BOOT_IMAGE_WINDOW`] bytes after the kernel — the same bound the
//! kernel puts on `total_size` — and refuses an image that outgrows it.
//! Other RAM regions of the board are free in full.

use crate::board::Board;
use crate::el2_map::{self, MapError};
use crate::elf::{ElfError, PdElf};
use crate::layout::{self, Content, Layout, LayoutError, PhysAllocator};
use crate::patch::patch_pd;
use crate::pd_tables::{TableArea, TableError};
use crate::sdf::{SystemDescription, Trigger};
use hyp_mm::{Geometry, PaRange, PhysAddr, Prot, VmId, VtcrBuilder};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use tenure_abi::{BADGE_PPC, CapKind, Slot};
use tenure_boot_image::{
    CapEntry, IrqEntry, LoadEntry, NO_PARENT, PD_NAME_LEN, Parts, PdEntry, Stage2Config,
};

/// Bytes reserved for the boot image after the kernel: the largest
/// `total_size` the kernel accepts (`docs/decisions/0003`).
pub const BOOT_IMAGE_WINDOW: u64 = 64 << 20;
/// The runtime symbol of a PD's IPC buffer (`libmicrokit/src/ipc.rs`).
pub const IPC_BUFFER_SYMBOL: &str = "__tenure_ipc_buffer";
/// PARange encoding of 40 bits (Arm ARM D19.2.64, ID_AA64MMFR0_EL1): the
/// smallest of the Cortex-A53 and A72, so one VTCR serves both.
const PA_RANGE_40: u8 = 0b010;
const PAGE: u64 = 0x1000;
const BLOCK_2M: u64 = 0x20_0000;
const BLOCK_1G: u64 = 0x4000_0000;

/// Why a system image could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// The layout failed.
    Layout(LayoutError),
    /// A PD's program could not be patched (or lacks a runtime symbol).
    Patch {
        /// The PD.
        pd: String,
        /// Why.
        why: ElfError,
    },
    /// A PD's stage-2 table could not be built.
    Table {
        /// The PD.
        pd: String,
        /// Why.
        why: TableError,
    },
    /// A PD's IPC buffer symbol is missing or not mapped.
    NoIpcBuffer(String),
    /// The board's kernel load address is not in its RAM.
    KernelNotInRam,
    /// The image outgrew [`BOOT_IMAGE_WINDOW`].
    ImageTooLarge(u64),
    /// The kernel's EL2 map cannot be built for the board.
    Map(MapError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Layout(e) => write!(f, "{e}"),
            BuildError::Patch { pd, why } => write!(f, "Error: PD '{pd}': {why}"),
            BuildError::Table { pd, why } => {
                write!(f, "Error: cannot build the address space of PD '{pd}': {why}")
            }
            BuildError::NoIpcBuffer(pd) => write!(
                f,
                "Error: PD '{pd}' has no mapped '{IPC_BUFFER_SYMBOL}' symbol (is it built \
                 against libmicrokit?)"
            ),
            BuildError::KernelNotInRam => {
                write!(f, "Error: the board's kernel load address is not in its RAM")
            }
            BuildError::Map(e) => write!(f, "Error: {e}"),
            BuildError::ImageTooLarge(size) => write!(
                f,
                "Error: the boot image ({size:#x} bytes) is larger than the {BOOT_IMAGE_WINDOW:#x} \
                 bytes reserved for it"
            ),
        }
    }
}

impl From<LayoutError> for BuildError {
    fn from(e: LayoutError) -> Self {
        BuildError::Layout(e)
    }
}

/// A built system: the image parts, the layout they came from, and the
/// report.
#[derive(Debug)]
pub struct SystemImage {
    /// The boot image's system sections.
    pub parts: Parts,
    /// Where everything went.
    pub layout: Layout,
    /// The PD table area: physical base and bytes in use.
    pub tables: (u64, u64),
    /// The RAM reserved for the kernel and the boot image.
    pub reserved: (u64, u64),
    /// report.txt.
    pub report: String,
}

/// A board's RAM with the kernel's share taken out.
struct FreeRam {
    /// All RAM, `(base, size)`.
    ram: Vec<(u64, u64)>,
    /// The RAM left for PDs.
    alloc: PhysAllocator,
    /// What the kernel and the boot image window take, `(base, size)`.
    reserved: (u64, u64),
}

/// The free RAM of `board` once `kernel_size` bytes of kernel at its load
/// address and the boot image window after them are taken out (with all
/// of the RAM region below the kernel: firmware and device tree).
fn free_ram(board: &Board, kernel_size: u64) -> Result<FreeRam, BuildError> {
    let ram: Vec<(u64, u64)> = board.ram.iter().map(|r| (r.base, r.size)).collect();
    let region = board.ram_containing(board.kernel_load_addr).ok_or(BuildError::KernelNotInRam)?;
    let end = (board.kernel_load_addr + kernel_size).next_multiple_of(PAGE) + BOOT_IMAGE_WINDOW;
    let end = end.min(region.base + region.size);
    let mut alloc = PhysAllocator::new(&ram);
    let reserved = (region.base, end - region.base);
    assert!(alloc.reserve(reserved.0, reserved.1), "a fresh allocator has its RAM free");
    Ok(FreeRam { ram, alloc, reserved })
}

/// Table pages a PD's mappings can need at most: its concatenated root,
/// plus per mapping the level-2 and level-3 tables its range touches.
fn table_pages_bound(pd: &layout::PdLayout) -> usize {
    let per_mapping: u64 = pd
        .mappings
        .iter()
        .map(|m| m.size.div_ceil(BLOCK_2M) + 1 + m.size.div_ceil(BLOCK_1G) + 1)
        .sum();
    Geometry::IPA_40.root_pages() + per_mapping as usize
}

/// Lays out `system` (its programs loaded in `programs`, by PD name) for
/// `board` with a kernel block of `kernel_size` bytes, builds the PD
/// tables, patches the programs and returns the image's system sections.
pub fn build(
    system: &SystemDescription,
    mut programs: BTreeMap<String, PdElf>,
    board: &Board,
    kernel_size: u64,
) -> Result<SystemImage, BuildError> {
    let FreeRam { ram, mut alloc, reserved } = free_ram(board, kernel_size)?;
    let layout = layout::lay_out(system, &programs, &mut alloc, &ram)?;
    let pds = system.all_pds();
    let index: BTreeMap<&str, usize> =
        pds.iter().enumerate().map(|(i, pd)| (pd.name.as_str(), i)).collect();

    // Table area: roots must be 8 KiB aligned (two concatenated pages).
    let pages: usize = layout.pds.iter().map(table_pages_bound).sum();
    let root_align = Geometry::IPA_40.root_bytes();
    let area_base = alloc.alloc(pages as u64 * PAGE, root_align).ok_or_else(|| {
        LayoutError::OutOfMemory { what: "the PD table area".into(), size: pages as u64 * PAGE }
    })?;
    let mut area = TableArea::new(PhysAddr::new(area_base), pages);

    let mut parts = Parts {
        stage2: Some(Stage2Config {
            vtcr: VtcrBuilder::new(
                Geometry::IPA_40,
                PaRange::from_encoding(PA_RANGE_40).expect("40 bits is a PARange"),
            )
            .build()
            .expect("a 40-bit IPA fits a 40-bit PA range")
            .into(),
        }),
        ..Parts::default()
    };

    for (i, (pd, pd_layout)) in pds.iter().zip(&layout.pds).enumerate() {
        let program = programs.get_mut(&pd.name).expect("lay_out found every program");
        patch_pd(system, pd, pd_layout, &layout.regions, program)
            .map_err(|why| BuildError::Patch { pd: pd.name.clone(), why })?;

        let table_err = |why| BuildError::Table { pd: pd.name.clone(), why };
        let mut space = area.new_space(VmId(i as u16 + 1)).map_err(table_err)?;
        for m in &pd_layout.mappings {
            area.map(&mut space, m.vaddr, m.paddr, m.size, m.prot).map_err(table_err)?;
        }

        let ipc_buffer = program
            .symbol(IPC_BUFFER_SYMBOL)
            .and_then(|(vaddr, _)| {
                pd_layout
                    .mappings
                    .iter()
                    .find(|m| (m.vaddr..m.vaddr + m.size).contains(&vaddr))
                    .map(|m| (m.paddr + (vaddr - m.vaddr)) & !(PAGE - 1))
            })
            .ok_or_else(|| BuildError::NoIpcBuffer(pd.name.clone()))?;

        // Capabilities, Microkit's rules (microkit-semantics.md §3).
        let mut caps: Vec<CapEntry> = Vec::new();
        let mut cap = |slot: Slot, kind: CapKind, target: u64, badge: u64| {
            caps.push(CapEntry {
                slot: slot.0.into(),
                kind: kind as u8,
                reserved: 0,
                target: (target as u32).into(),
                badge: badge.into(),
            });
        };
        for channel in &system.channels {
            for (me, other) in [(0, 1), (1, 0)] {
                let (a, b) = (&channel.ends[me], &channel.ends[other]);
                if a.pd != pd.name {
                    continue;
                }
                let target = index[b.pd.as_str()] as u64;
                if a.notify {
                    cap(Slot::notification(a.id), CapKind::Notification, target, 1 << b.id);
                }
                if a.pp {
                    cap(
                        Slot::endpoint(a.id),
                        CapKind::Endpoint,
                        target,
                        BADGE_PPC | u64::from(b.id),
                    );
                }
            }
        }
        for irq in &pd.irqs {
            cap(Slot::irq(irq.id), CapKind::IrqHandler, irq.irq, 0);
            parts.irqs.push(IrqEntry {
                intid: (irq.irq as u32).into(),
                pd: i as u8,
                edge: u8::from(irq.trigger == Trigger::Edge),
                reserved: 0.into(),
                badge: (1u64 << irq.id).into(),
            });
        }
        for child in &pd.children {
            let id = child.id.expect("the SDF requires a child id") as u8;
            cap(Slot::child(id), CapKind::ChildTcb, index[child.name.as_str()] as u64, 0);
        }
        caps.sort_by_key(|c| c.slot.get());

        let parent = pds.iter().position(|p| p.children.iter().any(|c| c.name == pd.name));
        let mut name = [0u8; PD_NAME_LEN];
        let len = pd.name.len().min(PD_NAME_LEN);
        name[..len].copy_from_slice(&pd.name.as_bytes()[..len]);
        parts.pds.push(PdEntry {
            name,
            priority: pd.priority,
            passive: u8::from(pd.passive),
            parent: parent.map_or(NO_PARENT, |p| p as u8),
            child_id: pd.id.map_or(0, |id| id as u8),
            vmid: (i as u32 + 1).into(),
            entry: pd_layout.entry.into(),
            sp: pd_layout.sp.into(),
            stage2_root: space.root().raw().into(),
            ipc_buffer: ipc_buffer.into(),
            cap_first: (parts.caps.len() as u32).into(),
            cap_count: (caps.len() as u32).into(),
            budget_us: pd.budget.into(),
            period_us: pd.period.into(),
        });
        parts.caps.extend(caps);

        // Program segments and stacks: private to this PD.
        for m in &pd_layout.mappings {
            match &m.content {
                Content::Segment { index: seg, offset } => {
                    let data = &program.segments[*seg].data;
                    let start = parts.blob.len() as u64;
                    parts.blob.resize(parts.blob.len() + *offset as usize, 0);
                    parts.blob.extend_from_slice(data);
                    load(&mut parts.loads, m.paddr, m.size, start, *offset + data.len() as u64);
                    parts.blob.resize(parts.blob.len().next_multiple_of(8), 0);
                }
                Content::Stack => load(&mut parts.loads, m.paddr, m.size, 0, 0),
                Content::Region(_) => {}
            }
        }
    }

    // Memory regions in RAM are zeroed once, however many PDs map them;
    // device memory is never touched.
    for mr in &system.memory_regions {
        let paddr = layout.regions[&mr.name];
        if ram.iter().any(|&(b, s)| paddr >= b && paddr + mr.size <= b + s) {
            load(&mut parts.loads, paddr, mr.size, 0, 0);
        }
    }

    let table_bytes = area.bytes();
    let tables = (area_base, table_bytes.len() as u64);
    let start = parts.blob.len() as u64;
    parts.blob.extend_from_slice(&table_bytes);
    load(&mut parts.loads, area_base, tables.1, start, tables.1);

    // The kernel's own map, for the image right after the kernel.
    let image_paddr = board.kernel_load_addr + kernel_size;
    parts.stage1 = Some(el2_map::build(board, image_paddr).map_err(BuildError::Map)?);

    let report = report(system, board, &layout, &parts, tables, reserved);
    Ok(SystemImage { parts, layout, tables, reserved, report })
}

fn load(loads: &mut Vec<LoadEntry>, paddr: u64, size: u64, data_offset: u64, data_size: u64) {
    loads.push(LoadEntry {
        paddr: paddr.into(),
        size: size.into(),
        data_offset: data_offset.into(),
        data_size: data_size.into(),
    });
}

/// Checks the encoded image fits the window reserved for it.
pub fn check_size(image: &[u8]) -> Result<(), BuildError> {
    let size = image.len() as u64;
    if size > BOOT_IMAGE_WINDOW { Err(BuildError::ImageTooLarge(size)) } else { Ok(()) }
}

fn kind_name(kind: u8) -> &'static str {
    match CapKind::from_raw(kind) {
        Some(CapKind::Notification) => "notification",
        Some(CapKind::Endpoint) => "endpoint",
        Some(CapKind::IrqHandler) => "irq handler",
        Some(CapKind::ChildTcb) => "child tcb",
        Some(CapKind::Vcpu) => "vcpu",
        Some(CapKind::Stage2Control) => "stage-2 control",
        Some(CapKind::Null) | None => "?",
    }
}

fn prot_name(prot: Prot) -> String {
    let mut s = String::new();
    s.push(if prot.contains(Prot::R) { 'r' } else { '-' });
    s.push(if prot.contains(Prot::W) { 'w' } else { '-' });
    s.push(if prot.contains(Prot::X) { 'x' } else { '-' });
    if prot.contains(Prot::DEVICE) {
        s.push_str(" device");
    }
    s
}

/// report.txt: human readable, not machine readable (as Microkit's).
fn report(
    system: &SystemDescription,
    board: &Board,
    layout: &Layout,
    parts: &Parts,
    tables: (u64, u64),
    reserved: (u64, u64),
) -> String {
    let pds = system.all_pds();
    let mut r = String::new();
    let _ = writeln!(r, "# Tenure system report\n\nBoard: {}", board.name);
    if let Some(s) = &parts.stage2 {
        let _ = writeln!(r, "VTCR_EL2: {:#x} (40-bit IPA, 40-bit PA range)", s.vtcr.get());
    }
    if let Some((s, tables)) = &parts.stage1 {
        let _ = writeln!(
            r,
            "Kernel EL2 map: TCR_EL2 {:#x}, MAIR_EL2 {:#x}, TTBR0_EL2 {:#x} ({} table pages; \
             RAM normal RWX, UART and GIC device)",
            s.tcr.get(),
            s.mair.get(),
            s.ttbr0.get(),
            tables.len() / 4096
        );
    }
    let _ = writeln!(r, "\n# Protection domains\n");
    for (i, (pd, entry)) in pds.iter().zip(&parts.pds).enumerate() {
        let parent = match entry.parent {
            NO_PARENT => String::from("none"),
            p => format!("{} (child id {})", pds[usize::from(p)].name, entry.child_id),
        };
        let _ = writeln!(
            r,
            "PD {i} '{}': priority {}, {}, budget {} us per {} us, parent {parent}, VMID {}\n  \
             entry {:#x}, SP {:#x}, stage-2 root {:#x}, IPC buffer {:#x}",
            pd.name,
            entry.priority,
            if entry.passive == 1 { "passive" } else { "active" },
            entry.budget_us.get(),
            entry.period_us.get(),
            entry.vmid.get(),
            entry.entry.get(),
            entry.sp.get(),
            entry.stage2_root.get(),
            entry.ipc_buffer.get(),
        );
        let first = entry.cap_first.get() as usize;
        let caps = &parts.caps[first..first + entry.cap_count.get() as usize];
        let _ = writeln!(r, "  capabilities:");
        if caps.is_empty() {
            let _ = writeln!(r, "    (none)");
        }
        for c in caps {
            let target = match CapKind::from_raw(c.kind) {
                Some(CapKind::IrqHandler) => format!("INTID {}", c.target.get()),
                _ => format!("PD '{}'", pds[c.target.get() as usize].name),
            };
            let _ = writeln!(
                r,
                "    slot {:3}: {:12} -> {target}, badge {:#x}",
                c.slot.get(),
                kind_name(c.kind),
                c.badge.get()
            );
        }
        let _ = writeln!(r, "  address space:");
        for m in &layout.pds[i].mappings {
            let what = match &m.content {
                Content::Segment { index, .. } => format!("program segment {index}"),
                Content::Stack => "stack".into(),
                Content::Region(name) => format!("memory region '{name}'"),
            };
            let _ = writeln!(
                r,
                "    {:#012x}..{:#012x} -> {:#012x} {:10} {what}",
                m.vaddr,
                m.vaddr + m.size,
                m.paddr,
                prot_name(m.prot)
            );
        }
    }
    let _ = writeln!(r, "\n# IRQs\n");
    if parts.irqs.is_empty() {
        let _ = writeln!(r, "(none)");
    }
    for irq in &parts.irqs {
        let _ = writeln!(
            r,
            "INTID {} -> PD '{}', badge {:#x}, {}",
            irq.intid.get(),
            pds[usize::from(irq.pd)].name,
            irq.badge.get(),
            if irq.edge == 1 { "edge" } else { "level" }
        );
    }
    let _ = writeln!(r, "\n# Physical memory\n");
    let mut rows: Vec<(u64, u64, String)> = vec![(
        reserved.0,
        reserved.1,
        format!("kernel and boot image window (kernel at {:#x})", board.kernel_load_addr),
    )];
    for (pd, l) in pds.iter().zip(&layout.pds) {
        for m in &l.mappings {
            match &m.content {
                Content::Segment { index, .. } => {
                    rows.push((m.paddr, m.size, format!("PD '{}' segment {index}", pd.name)));
                }
                Content::Stack => rows.push((m.paddr, m.size, format!("PD '{}' stack", pd.name))),
                Content::Region(_) => {}
            }
        }
    }
    for mr in &system.memory_regions {
        rows.push((layout.regions[&mr.name], mr.size, format!("memory region '{}'", mr.name)));
    }
    rows.push((tables.0, tables.1, "PD stage-2 tables".into()));
    rows.sort();
    for (base, size, what) in rows {
        let _ = writeln!(r, "{base:#012x}..{:#012x} {size:#10x} {what}", base + size);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::by_name;
    use crate::elf::tests::{Seg, build as build_elf};
    use crate::patch::symbol;
    use crate::sdf::{BoardLimits, parse};
    use object::elf;
    use tenure_boot_image::{Image, write_image};

    /// A PD program with libmicrokit's runtime symbols.
    fn program() -> PdElf {
        let text = Seg {
            vaddr: 0x20_0000,
            data: &[0x1f, 0x20, 0x03, 0xd5],
            mem_size: 4,
            flags: elf::PF_R | elf::PF_X,
        };
        let data = Seg {
            vaddr: 0x20_1010,
            data: &[9; 16],
            mem_size: 0x2ff0,
            flags: elf::PF_R | elf::PF_W,
        };
        PdElf::parse(&build_elf(
            elf::EM_AARCH64,
            elf::ET_EXEC,
            &[text, data],
            &[
                (symbol::NAME, 0x20_1100, 64),
                (symbol::NOTIFICATIONS, 0x20_1140, 8),
                (symbol::PPS, 0x20_1148, 8),
                (symbol::IRQS, 0x20_1150, 8),
                (symbol::PASSIVE, 0x20_1158, 1),
                (IPC_BUFFER_SYMBOL, 0x20_3000, 512),
            ],
        ))
        .unwrap()
    }

    const SYSTEM: &str = r#"<system>
        <memory_region name="shared" size="0x1000"/>
        <memory_region name="uart" size="0x1000" phys_addr="0x9000000"/>
        <protection_domain name="client" priority="1">
            <program_image path="client.elf"/>
            <map mr="shared" vaddr="0x400000" perms="rw"/>
            <map mr="uart" vaddr="0x500000" perms="rw" cached="false"/>
            <protection_domain name="kid" id="3" priority="0">
                <program_image path="kid.elf"/>
            </protection_domain>
        </protection_domain>
        <protection_domain name="server" priority="5" passive="true">
            <program_image path="server.elf"/>
            <map mr="shared" vaddr="0x600000" perms="r"/>
            <irq irq="40" id="7" trigger="edge"/>
        </protection_domain>
        <channel><end pd="client" id="2" pp="true"/><end pd="server" id="4"/></channel>
        <channel><end pd="client" id="0"/><end pd="kid" id="1" notify="false"/></channel>
    </system>"#;

    fn built() -> SystemImage {
        let system = parse("test.system", SYSTEM, &BoardLimits::default()).unwrap();
        let programs = ["client", "kid", "server"].map(|n| (n.to_string(), program())).into();
        build(&system, programs, by_name("qemu_virt_aarch64").unwrap(), 0x10_0000).unwrap()
    }

    fn caps(image: &SystemImage, pd: usize) -> Vec<(u16, u8, u32, u64)> {
        let e = &image.parts.pds[pd];
        let first = e.cap_first.get() as usize;
        image.parts.caps[first..first + e.cap_count.get() as usize]
            .iter()
            .map(|c| (c.slot.get(), c.kind, c.target.get(), c.badge.get()))
            .collect()
    }

    #[test]
    fn capabilities_follow_microkit() {
        let image = built();
        let (n, e, irq, child) = (
            CapKind::Notification as u8,
            CapKind::Endpoint as u8,
            CapKind::IrqHandler as u8,
            CapKind::ChildTcb as u8,
        );
        // client (0): notify server on 2 (badge 1<<4), call it (BADGE_PPC|4),
        // notify kid on 0 (badge 1<<1), child 3 = kid (1).
        assert_eq!(
            caps(&image, 0),
            [
                (Slot::notification(0).0, n, 1, 1 << 1),
                (Slot::notification(2).0, n, 2, 1 << 4),
                (Slot::endpoint(2).0, e, 2, BADGE_PPC | 4),
                (Slot::child(3).0, child, 1, 0),
            ]
        );
        // kid (1): notify="false", so nothing.
        assert_eq!(caps(&image, 1), []);
        // server (2): notify client on 4 (badge 1<<2), its IRQ.
        assert_eq!(
            caps(&image, 2),
            [(Slot::notification(4).0, n, 0, 1 << 2), (Slot::irq(7).0, irq, 40, 0)]
        );
        let irqs = &image.parts.irqs;
        assert_eq!(irqs.len(), 1);
        assert_eq!((irqs[0].intid.get(), irqs[0].pd, irqs[0].edge), (40, 2, 1));
        assert_eq!(irqs[0].badge.get(), 1 << 7);
    }

    #[test]
    fn pd_entries_carry_tree_ids_and_addresses() {
        let image = built();
        let pds = &image.parts.pds;
        assert_eq!(pds.iter().map(PdEntry::name).collect::<Vec<_>>(), ["client", "kid", "server"]);
        assert_eq!((pds[0].parent, pds[1].parent, pds[1].child_id), (NO_PARENT, 0, 3));
        assert_eq!((pds[2].priority, pds[2].passive), (5, 1));
        assert_eq!(pds.iter().map(|p| p.vmid.get()).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(pds[0].entry.get(), 0x20_0000);
        assert_eq!(pds[0].sp.get(), layout::PD_STACK_TOP);
        // The IPC buffer is the physical page behind 0x20_3000: the data
        // mapping starts at 0x20_1000.
        let data = &image.layout.pds[0].mappings[1];
        assert_eq!(data.vaddr, 0x20_1000);
        assert_eq!(pds[0].ipc_buffer.get(), data.paddr + 0x2000);
    }

    #[test]
    fn the_tables_translate_each_mapping() {
        let image = built();
        let (base, size) = image.tables;
        assert!(size > 0 && base % 0x2000 == 0);
        for pd in &image.parts.pds {
            let root = pd.stage2_root.get();
            assert!(root >= base && root < base + size && root % 0x2000 == 0);
        }
        // Nothing lands in the kernel's reserved window.
        let (r0, rs) = image.reserved;
        assert!(image.reserved.1 >= BOOT_IMAGE_WINDOW);
        for load in &image.parts.loads {
            let p = load.paddr.get();
            assert!(p + load.size.get() <= r0 || p >= r0 + rs, "load at {p:#x} in reserved RAM");
        }
    }

    #[test]
    fn loads_copy_patched_segments_and_zero_the_rest_but_never_devices() {
        let image = built();
        let parts = &image.parts;
        let encoded = write_image(&by_name("qemu_virt_aarch64").unwrap().boot_info(), parts);
        let parsed = Image::parse(&encoded).unwrap();
        let system = parsed.system();
        assert_eq!(system.pds.len(), 3);
        // The client's data segment: 0x10 bytes of offset, then its data
        // with the patched name at 0x100 into the segment's page.
        let data = &image.layout.pds[0].mappings[1];
        let load = system.loads.iter().find(|l| l.paddr.get() == data.paddr).unwrap();
        assert_eq!(load.size.get(), data.size);
        let bytes = system.data_of(load);
        assert_eq!(&bytes[..0x10], &[0; 0x10]);
        assert_eq!(&bytes[0x10..0x20], &[9; 16]);
        assert_eq!(&bytes[0x100..0x106], b"client");
        // The device region has no load; the shared one has exactly one.
        assert!(system.loads.iter().all(|l| l.paddr.get() != 0x900_0000));
        let shared = image.layout.regions["shared"];
        assert_eq!(system.loads.iter().filter(|l| l.paddr.get() == shared).count(), 1);
        // The tables are the last load, all data.
        let tables = system.loads.last().unwrap();
        assert_eq!((tables.paddr.get(), tables.data_size.get()), image.tables);
        assert!(image.report.contains("slot  10: notification -> PD 'kid', badge 0x2"));
        assert!(check_size(&encoded).is_ok());
    }

    #[test]
    fn a_program_without_runtime_symbols_is_refused() {
        let system = parse("test.system", SYSTEM, &BoardLimits::default()).unwrap();
        let bare = PdElf::parse(&crate::elf::tests::pd()).unwrap();
        let mut programs: BTreeMap<String, PdElf> =
            ["client", "kid", "server"].map(|n| (n.to_string(), program())).into();
        programs.insert("kid".into(), bare);
        let err = build(&system, programs, by_name("rpi4b_1gb").unwrap(), 0x10_0000).unwrap_err();
        assert!(matches!(err, BuildError::Patch { ref pd, .. } if pd == "kid"), "{err:?}");
    }
}
