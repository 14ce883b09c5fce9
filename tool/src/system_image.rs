//! From a checked system and its PD programs to the boot image's system
//! sections: physical layout, PD stage-2 tables, patched programs,
//! capabilities, loads and interrupts, virtual machines, their vCPUs and
//! the memory manager's pool and configuration, plus the human-readable
//! report.
//!
//! Guests (`docs/guests.md`): VM `j` (in PD order) gets VMID `pds + 1 +
//! j`, after the PDs' `1..=pds`; its vCPUs follow each other in the
//! `Vcpus` section and its VMM holds one vCPU capability per vCPU at
//! `Slot::vcpu(id)`. The memory manager holds the stage-2 control
//! capability and finds its configuration (`tenure_abi::mm_config`)
//! patched into `__tenure_mm_config`. Guest RAM takes no physical memory
//! here; prefilled regions are loads with data.
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
use crate::patch::{MmConfigError, patch_mm_config, patch_pd};
use crate::pd_tables::{TableArea, TableError};
use crate::sdf::guests::{self, MmClient};
use crate::sdf::{ProtectionDomain, SystemDescription, Trigger, VirtualMachine};
use hyp_mm::{Geometry, PaRange, PhysAddr, Prot, VmId, VtcrBuilder};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use tenure_abi::mm_config::{self, MmConfig, ROOT_AREA_PAGES};
use tenure_abi::vcpu::WINDOW_SIZE;
use tenure_abi::{BADGE_PPC, CapKind, Slot};
use tenure_boot_image::{
    CapEntry, GuestPool, IrqEntry, LoadEntry, NO_PARENT, PD_NAME_LEN, Parts, PdEntry, Stage2Config,
    VcpuEntry, VmEntry,
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
/// Table pages mm keeps in its cache between requests
/// (`pds/mm/src/manager.rs`, `CACHE_PAGES`).
const MM_CACHE_PAGES: u64 = 16;
/// MPIDR_EL1 bit 31 is RES1 (Arm ARM D24.2.106); Aff0 is the vCPU's place
/// in its VM.
const MPIDR_RES1: u64 = 1 << 31;

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
    /// The guest memory pool cannot hold mm's roots, its table pages and
    /// one page of guest memory.
    PoolTooSmall {
        /// The pool's memory region.
        region: String,
        /// Its size.
        size: u64,
        /// Bytes of roots and table pages.
        tables: u64,
    },
    /// The guests' memory limits together exceed what the pool can give
    /// them: one guest could starve another.
    PoolOvercommitted {
        /// The pool's memory region.
        region: String,
        /// Bytes of the pool left for guests, after roots and tables.
        available: u64,
        /// Each virtual machine's limit, in bytes.
        limits: Vec<(String, u64)>,
    },
    /// The memory manager's configuration could not be written.
    MmConfig {
        /// The mm PD.
        pd: String,
        /// Why.
        why: MmConfigError,
    },
    /// The memory manager's configuration breaks its own rules (a bug of
    /// the SDF checks if it happens).
    MmConfigInvalid(mm_config::MmConfigError),
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
            BuildError::PoolTooSmall { region, size, tables } => write!(
                f,
                "Error: the guest memory pool '{region}' ({size:#x} bytes) is too small: the \
                 memory manager's roots and table pages take {tables:#x} bytes, and guests \
                 need memory beyond them"
            ),
            BuildError::PoolOvercommitted { region, available, limits } => {
                let total: u64 = limits.iter().map(|(_, limit)| limit).sum();
                write!(
                    f,
                    "Error: the guest memory pool '{region}' has {available:#x} bytes for guests, \
                     but their memory limits add up to {total:#x} ("
                )?;
                for (i, (vm, limit)) in limits.iter().enumerate() {
                    write!(f, "{}'{vm}' {limit:#x}", if i == 0 { "" } else { ", " })?;
                }
                write!(
                    f,
                    "): one guest could take the pages another needs; give the virtual \
                     machines a smaller memory_limit or the pool more memory"
                )
            }
            BuildError::MmConfig { pd, why } => write!(f, "Error: PD '{pd}': {why}"),
            BuildError::MmConfigInvalid(e) => {
                write!(f, "Error: the memory manager's configuration is invalid: {e:?}")
            }
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

/// The guests of a system as the image numbers them.
struct Guests<'a> {
    /// Each VM with its VMM's PD index, in VM index order.
    vms: Vec<(usize, &'a VirtualMachine)>,
    /// Index of each VM's first vCPU in the `Vcpus` section.
    vcpu_first: Vec<usize>,
    /// The memory manager's clients, in client index order.
    clients: Vec<MmClient>,
    /// The memory manager's PD index.
    mm: Option<usize>,
}

impl<'a> Guests<'a> {
    fn of(pds: &[&'a ProtectionDomain]) -> Self {
        let vms: Vec<(usize, &VirtualMachine)> = pds
            .iter()
            .enumerate()
            .filter_map(|(i, pd)| pd.virtual_machine.as_ref().map(|vm| (i, vm)))
            .collect();
        let mut vcpu_first = Vec::with_capacity(vms.len());
        let mut next = 0;
        for (_, vm) in &vms {
            vcpu_first.push(next);
            next += vm.vcpus.len();
        }
        let mm = pds.iter().position(|pd| pd.guest_memory.is_some());
        Guests { vms, vcpu_first, clients: Vec::new(), mm }
    }

    /// The VM index of the VM PD `pd` is the VMM of.
    fn vm_of(&self, pd: usize) -> Option<usize> {
        self.vms.iter().position(|&(vmm, _)| vmm == pd)
    }

    /// The VMID of VM `vm`: after every PD's.
    fn vmid(vm: usize, pds: usize) -> u32 {
        (pds + 1 + vm) as u32
    }
}

/// Table pages one table needs at most to map `bytes` page by page into
/// an empty range: the level-3 and level-2 tables the range can touch
/// (as `pds/mm`'s `tables_for`).
fn tables_for(bytes: u64) -> u64 {
    let pages = bytes.div_ceil(PAGE);
    pages.div_ceil(512) + 1 + pages.div_ceil(512 * 512) + 1
}

/// The table pages the memory manager reserves in a pool of `pool_size`
/// bytes: enough to map every guest's RAM and devices page by page, every
/// client's whole window, and the ledger over the whole pool, plus its
/// cache and the refcount pages of the lot.
fn mm_table_pages(system: &SystemDescription, guests: &Guests, pool_size: u64) -> u64 {
    let mut pages = tables_for(pool_size) + MM_CACHE_PAGES;
    for (_, vm) in &guests.vms {
        let ranges = guests::guest_ranges(system, vm);
        pages += ranges.ram.iter().map(|&(_, size)| tables_for(size)).sum::<u64>();
        pages += ranges.devices.iter().map(|&(_, _, size)| tables_for(size)).sum::<u64>();
    }
    pages += guests.clients.len() as u64 * tables_for(WINDOW_SIZE);
    // One refcount word per page of the page source (pds/mm/src/pool.rs).
    pages + pages.div_ceil(PAGE / 8)
}

/// The memory manager's configuration for `system`, whose mm is PD
/// `mm` with its pool at `pool_base`.
fn mm_config(
    system: &SystemDescription,
    guests: &Guests,
    pds: &[&ProtectionDomain],
    mm: usize,
    pool_base: u64,
) -> Result<MmConfig, BuildError> {
    let index = |name: &str| pds.iter().position(|pd| pd.name == name).expect("checked names");
    let gm = pds[mm].guest_memory.as_ref().expect("mm has guest_memory");
    let pool = system.memory_region(&gm.mr).expect("the SDF checks the pool exists");
    let vaddr = pds[mm].maps.iter().find(|m| m.mr == gm.mr).expect("the SDF checks it").vaddr;
    let table_pages = mm_table_pages(system, guests, pool.size);
    let reserved = (ROOT_AREA_PAGES + table_pages) * PAGE;
    if pool.size <= reserved {
        return Err(BuildError::PoolTooSmall {
            region: pool.name.clone(),
            size: pool.size,
            tables: reserved,
        });
    }
    // Admission: every guest can reach its limit whatever the others do.
    let limits: Vec<(String, u64)> = guests
        .vms
        .iter()
        .map(|&(_, vm)| (vm.name.clone(), guests::memory_limit(system, vm)))
        .collect();
    let available = pool.size - reserved;
    if limits.iter().map(|(_, limit)| limit).sum::<u64>() > available {
        return Err(BuildError::PoolOvercommitted { region: pool.name.clone(), available, limits });
    }
    let invalid = BuildError::MmConfigInvalid;
    let mut config =
        MmConfig::new(mm_config::Pool { base: pool_base, size: pool.size, vaddr, table_pages });
    for client in &guests.clients {
        config
            .add_client(mm_config::Client {
                channel: client.mm_channel,
                vmid: (index(&client.pd) + 1) as u8,
                window: true,
                pd: index(&client.pd) as u8,
            })
            .map_err(invalid)?;
    }
    for (j, &(vmm, vm)) in guests.vms.iter().enumerate() {
        let controller = guests.clients.iter().position(|c| c.pd == pds[vmm].name);
        let controller = controller.expect("the SDF checks every VMM is a client");
        let vmid = Guests::vmid(j, pds.len());
        let mut guest = mm_config::Guest::new(j as u8, vmid as u8, controller as u8);
        guest.limit_pages = guests::memory_limit(system, vm) / PAGE;
        let ranges = guests::guest_ranges(system, vm);
        for (ipa, size) in ranges.ram {
            guest.add_ram(mm_config::RamRange { ipa, size }).map_err(invalid)?;
        }
        for (ipa, pa, size) in ranges.devices {
            guest.add_device(mm_config::DeviceRange { ipa, pa, size }).map_err(invalid)?;
        }
        config.add_guest(guest).map_err(invalid)?;
    }
    config.validate().map_err(invalid)?;
    Ok(config)
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

    let mut guests = Guests::of(&pds);
    guests.clients = guests::mm_clients(system);
    let mm_config = match guests.mm {
        Some(mm) => {
            let pool = &pds[mm].guest_memory.as_ref().expect("mm has guest_memory").mr;
            let base = layout.regions[pool];
            Some(mm_config(system, &guests, &pds, mm, base)?)
        }
        None => None,
    };

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
        if guests.mm == Some(i)
            && let Some(config) = &mm_config
        {
            let words = config.encode().map_err(BuildError::MmConfigInvalid)?;
            patch_mm_config(program, &words)
                .map_err(|why| BuildError::MmConfig { pd: pd.name.clone(), why })?;
        }

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
        if let (Some(vm), Some(j)) = (&pd.virtual_machine, guests.vm_of(i)) {
            for (k, vcpu) in vm.vcpus.iter().enumerate() {
                let target = (guests.vcpu_first[j] + k) as u64;
                cap(Slot::vcpu(vcpu.id), CapKind::Vcpu, target, 0);
            }
        }
        if guests.mm == Some(i) {
            cap(Slot::STAGE2_CONTROL, CapKind::Stage2Control, 0, 0);
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

    // Memory regions in RAM are filled once, however many PDs map them:
    // with their prefill data, then zeroes. Device memory is never
    // touched; guest RAM has no physical memory of its own.
    for mr in &system.memory_regions {
        let Some(&paddr) = layout.regions.get(&mr.name) else { continue };
        if !ram.iter().any(|&(b, s)| paddr >= b && paddr + mr.size <= b + s) {
            continue;
        }
        match &mr.prefill {
            Some(prefill) => {
                let start = parts.blob.len() as u64;
                parts.blob.extend_from_slice(&prefill.data);
                load(&mut parts.loads, paddr, mr.size, start, prefill.data.len() as u64);
                parts.blob.resize(parts.blob.len().next_multiple_of(8), 0);
            }
            None => load(&mut parts.loads, paddr, mr.size, 0, 0),
        }
    }

    for (j, &(vmm, vm)) in guests.vms.iter().enumerate() {
        let mut name = [0u8; PD_NAME_LEN];
        let len = vm.name.len().min(PD_NAME_LEN);
        name[..len].copy_from_slice(&vm.name.as_bytes()[..len]);
        parts.vms.push(VmEntry {
            name,
            vmid: Guests::vmid(j, pds.len()).into(),
            vcpu_first: (guests.vcpu_first[j] as u32).into(),
            vcpu_count: (vm.vcpus.len() as u32).into(),
            vmm: vmm as u8,
            reserved: [0; 3],
        });
        for (k, vcpu) in vm.vcpus.iter().enumerate() {
            parts.vcpus.push(VcpuEntry {
                vm: (j as u32).into(),
                id: vcpu.id,
                priority: vm.priority,
                reserved: [0; 2],
                mpidr: (MPIDR_RES1 | k as u64).into(),
                budget_us: vm.budget.into(),
                period_us: vm.period.into(),
            });
        }
    }
    if let (Some(mm), Some(config)) = (guests.mm, &mm_config) {
        parts.guest_pool = Some(GuestPool {
            base: config.pool.base.into(),
            size: config.pool.size.into(),
            mm: mm as u8,
            reserved: [0; 7],
        });
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
    let report = guest_report(report, &pds, &guests, &parts, mm_config.as_ref());
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
             W^X: kernel text RX, rodata R, data and stack RW, a guard page below the stack, \
             other RAM RW execute-never; UART and GIC device)",
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
            let t = c.target.get() as usize;
            let target = match CapKind::from_raw(c.kind) {
                Some(CapKind::IrqHandler) => format!("INTID {t}"),
                Some(CapKind::Vcpu) => match parts.vcpus.get(t) {
                    Some(v) => format!(
                        "vCPU {t} (VM '{}', id {})",
                        parts.vms.get(v.vm.get() as usize).map_or("?", vm_name),
                        v.id
                    ),
                    None => format!("vCPU {t}"),
                },
                Some(CapKind::Stage2Control) => "the guest memory pool".to_string(),
                _ => format!("PD '{}'", pds.get(t).map_or("?", |pd| pd.name.as_str())),
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
        let Some(&paddr) = layout.regions.get(&mr.name) else { continue };
        let what = match guests::region_use(system, &mr.name) {
            guests::RegionUse::Pool => format!("memory region '{}' (guest memory pool)", mr.name),
            guests::RegionUse::GuestDevice => format!("memory region '{}' (guest device)", mr.name),
            _ => format!("memory region '{}'", mr.name),
        };
        let what = match &mr.prefill {
            Some(p) => format!("{what}, prefilled from '{}'", p.path.display()),
            None => what,
        };
        rows.push((paddr, mr.size, what));
    }
    rows.push((tables.0, tables.1, "PD stage-2 tables".into()));
    rows.sort();
    for (base, size, what) in rows {
        let _ = writeln!(r, "{base:#012x}..{:#012x} {size:#10x} {what}", base + size);
    }
    r
}

/// A VM entry's name, without its NUL padding.
fn vm_name(vm: &VmEntry) -> &str {
    let len = vm.name.iter().position(|&b| b == 0).unwrap_or(PD_NAME_LEN);
    std::str::from_utf8(&vm.name[..len]).unwrap_or("?")
}

/// The guest sections of report.txt: VMs, vCPUs, the pool and mm's
/// clients, appended to `r`.
fn guest_report(
    mut r: String,
    pds: &[&ProtectionDomain],
    guests: &Guests,
    parts: &Parts,
    config: Option<&MmConfig>,
) -> String {
    let _ = writeln!(r, "\n# Virtual machines\n");
    if parts.vms.is_empty() {
        let _ = writeln!(r, "(none)");
    }
    for (j, (vm, (_, sdf_vm))) in parts.vms.iter().zip(&guests.vms).enumerate() {
        let _ = writeln!(
            r,
            "VM {j} '{}': VMID {}, VMM PD '{}', vCPUs {}..{}, priority {}, budget {} us per {} us",
            vm_name(vm),
            vm.vmid.get(),
            pds[usize::from(vm.vmm)].name,
            vm.vcpu_first.get(),
            vm.vcpu_first.get() + vm.vcpu_count.get(),
            sdf_vm.priority,
            sdf_vm.budget,
            sdf_vm.period,
        );
        if let Some(guest) = config.and_then(|c| c.guests().get(j)) {
            for ram in guest.ram() {
                let _ = writeln!(
                    r,
                    "  RAM    IPA {:#012x}..{:#012x} backed by the memory manager on demand",
                    ram.ipa,
                    ram.ipa + ram.size
                );
            }
            for dev in guest.devices() {
                let _ = writeln!(
                    r,
                    "  device IPA {:#012x}..{:#012x} -> PA {:#012x}, mapped on first touch",
                    dev.ipa,
                    dev.ipa + dev.size,
                    dev.pa
                );
            }
        }
    }
    let _ = writeln!(r, "\n# vCPUs\n");
    if parts.vcpus.is_empty() {
        let _ = writeln!(r, "(none)");
    }
    for (k, vcpu) in parts.vcpus.iter().enumerate() {
        let vm = &parts.vms[vcpu.vm.get() as usize];
        let _ = writeln!(
            r,
            "vCPU {k}: VM '{}' id {} (slot {} of PD '{}'), MPIDR {:#x}, priority {}, budget {} us \
             per {} us",
            vm_name(vm),
            vcpu.id,
            Slot::vcpu(vcpu.id).0,
            pds[usize::from(vm.vmm)].name,
            vcpu.mpidr.get(),
            vcpu.priority,
            vcpu.budget_us.get(),
            vcpu.period_us.get(),
        );
    }
    let _ = writeln!(r, "\n# Guest memory pool\n");
    match (parts.guest_pool.as_ref(), config) {
        (Some(pool), Some(c)) => {
            let (base, size) = (pool.base.get(), pool.size.get());
            let tables = base + ROOT_AREA_PAGES * PAGE;
            let managed = tables + c.pool.table_pages * PAGE;
            let _ = writeln!(
                r,
                "{base:#012x}..{:#012x} {size:#x} bytes, memory manager PD '{}' at IPA {:#x}\n  \
                 roots   {base:#012x}..{tables:#012x} ({ROOT_AREA_PAGES} pages)\n  \
                 tables  {tables:#012x}..{managed:#012x} ({} pages)\n  \
                 managed {managed:#012x}..{:#012x} ({} pages)",
                base + size,
                pds[usize::from(pool.mm)].name,
                c.pool.vaddr,
                c.pool.table_pages,
                base + size,
                (base + size - managed) / PAGE,
            );
        }
        _ => {
            let _ = writeln!(r, "(none)");
        }
    }
    let _ = writeln!(r, "\n# Memory manager clients\n");
    if guests.clients.is_empty() {
        let _ = writeln!(r, "(none)");
    }
    for (c, client) in guests.clients.iter().enumerate() {
        let info = config.and_then(|cfg| cfg.clients().get(c));
        let _ = writeln!(
            r,
            "client {c}: PD '{}', calls on mm's channel {}, VMID {}, window {}",
            client.pd,
            client.mm_channel,
            info.map_or(0, |i| i.vmid),
            if info.is_some_and(|i| i.window) {
                format!(
                    "IPA {:#x}..{:#x}",
                    tenure_abi::vcpu::WINDOW_IPA,
                    tenure_abi::vcpu::WINDOW_IPA + WINDOW_SIZE
                )
            } else {
                "none".to_string()
            }
        );
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
    use tenure_abi::mm_config;
    use tenure_boot_image::{Image, write_image};

    /// A PD program with libmicrokit's runtime symbols.
    fn program() -> PdElf {
        program_with(&[])
    }

    /// [`program`] with `extra` symbols in its data segment
    /// (0x20_1200..0x20_3000 is free).
    fn program_with(extra: &[(&str, u64, u64)]) -> PdElf {
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
        let mut symbols = vec![
            (symbol::NAME, 0x20_1100, 64),
            (symbol::NOTIFICATIONS, 0x20_1140, 8),
            (symbol::PPS, 0x20_1148, 8),
            (symbol::IRQS, 0x20_1150, 8),
            (symbol::PASSIVE, 0x20_1158, 1),
            (symbol::GUEST, 0x20_1160, 8),
            (IPC_BUFFER_SYMBOL, 0x20_3000, 512),
        ];
        symbols.extend_from_slice(extra);
        PdElf::parse(&build_elf(elf::EM_AARCH64, elf::ET_EXEC, &[text, data], &symbols)).unwrap()
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

    /// Where the mm test program keeps its configuration.
    const MM_CONFIG_AT: u64 = 0x20_1200;

    fn guest_system(pool_size: &str) -> (SystemDescription, Vec<u8>) {
        // One directory per call: the tests run in parallel threads.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tenure-system-image-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..0x1234u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("guest.bin"), &data).unwrap();
        let xml = format!(
            r#"<system>
            <memory_region name="scratch" size="0x1000"/>
            <memory_region name="pool" size="{pool_size}"/>
            <memory_region name="ram" size="0x800000" page_size="0x200000"/>
            <memory_region name="uart" size="0x1000" phys_addr="0x9000000"/>
            <memory_region name="image" size="0x3000" prefill_path="guest.bin"/>
            <protection_domain name="mm" priority="200" passive="true">
                <program_image path="mm.elf"/>
                <map mr="pool" vaddr="0x10000000" perms="rw"/>
                <guest_memory mr="pool"/>
            </protection_domain>
            <protection_domain name="vmm" priority="100">
                <program_image path="vmm.elf"/>
                <map mr="scratch" vaddr="0x300000"/>
                <map mr="image" vaddr="0x400000" perms="r"/>
                <virtual_machine name="guest" priority="50" budget="500" period="1000">
                    <vcpu id="2"/>
                    <vcpu id="5"/>
                    <map mr="ram" vaddr="0x40000000" perms="rwx"/>
                    <map mr="uart" vaddr="0x9000000" perms="rw" cached="false"/>
                </virtual_machine>
            </protection_domain>
            <channel><end pd="vmm" id="1" pp="true"/><end pd="mm" id="6"/></channel>
        </system>"#
        );
        let system = crate::sdf::parse_with_search_paths(
            "g.system",
            &xml,
            &BoardLimits::default(),
            std::slice::from_ref(&dir),
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (system, data)
    }

    fn guest_programs(mm_config_bytes: u64) -> BTreeMap<String, PdElf> {
        let mm = program_with(&[(symbol::MM_CONFIG, MM_CONFIG_AT, mm_config_bytes)]);
        [("mm".to_string(), mm), ("vmm".to_string(), program())].into()
    }

    fn build_guest(pool_size: &str, mm_config_bytes: u64) -> Result<SystemImage, BuildError> {
        let (system, _) = guest_system(pool_size);
        let board = by_name("qemu_virt_aarch64").unwrap();
        build(&system, guest_programs(mm_config_bytes), board, 0x10_0000)
    }

    const CONFIG_BYTES: u64 = 8 * mm_config::WORDS as u64;

    #[test]
    fn a_guest_gets_its_vm_vcpus_pool_and_capabilities() {
        let image = build_guest("0x1000000", CONFIG_BYTES + 16).unwrap();
        let parts = &image.parts;
        let [vm] = parts.vms.as_slice() else { panic!("one VM") };
        assert_eq!(vm_name(vm), "guest");
        assert_eq!((vm.vmid.get(), vm.vcpu_first.get(), vm.vcpu_count.get()), (3, 0, 2));
        assert_eq!(vm.vmm, 1);
        let vcpus: Vec<_> = parts
            .vcpus
            .iter()
            .map(|v| (v.vm.get(), v.id, v.priority, v.mpidr.get(), v.budget_us.get()))
            .collect();
        assert_eq!(vcpus, [(0, 2, 50, 0x8000_0000, 500), (0, 5, 50, 0x8000_0001, 500)]);
        assert!(parts.vcpus.iter().all(|v| v.period_us.get() == 1000));
        let pool = parts.guest_pool.unwrap();
        assert_eq!(pool.base.get(), image.layout.regions["pool"]);
        assert_eq!(pool.base.get() % 0x2000, 0, "roots need 8 KiB alignment");
        assert_eq!((pool.size.get(), pool.mm), (0x100_0000, 0));

        let (n, e) = (CapKind::Notification as u8, CapKind::Endpoint as u8);
        let (vcpu, s2) = (CapKind::Vcpu as u8, CapKind::Stage2Control as u8);
        assert_eq!(
            caps(&image, 0),
            [(Slot::notification(6).0, n, 1, 1 << 1), (Slot::STAGE2_CONTROL.0, s2, 0, 0)]
        );
        assert_eq!(
            caps(&image, 1),
            [
                (Slot::notification(1).0, n, 0, 1 << 6),
                (Slot::endpoint(1).0, e, 0, BADGE_PPC | 6),
                (Slot::vcpu(2).0, vcpu, 0, 0),
                (Slot::vcpu(5).0, vcpu, 1, 0),
            ]
        );
        // The kernel's reader accepts the sections.
        let encoded = write_image(&by_name("qemu_virt_aarch64").unwrap().boot_info(), parts);
        let parsed = Image::parse(&encoded).unwrap();
        assert_eq!(parsed.system().vcpus_of(&parsed.system().vms[0]).len(), 2);

        for section in ["# Virtual machines", "# vCPUs", "# Guest memory pool", "# Memory manager"]
        {
            assert!(image.report.contains(section), "{section} missing:\n{}", image.report);
        }
        assert!(image.report.contains("VM 0 'guest': VMID 3, VMM PD 'vmm', vCPUs 0..2"));
        assert!(image.report.contains("slot 332: vcpu         -> vCPU 0 (VM 'guest', id 2)"));
        assert!(image.report.contains("client 0: PD 'vmm', calls on mm's channel 6, VMID 2"));
        assert!(image.report.contains("RAM    IPA 0x0040000000..0x0040800000"));
    }

    #[test]
    fn guest_ram_takes_no_memory_and_prefilled_regions_are_loaded() {
        let (_, data) = guest_system("0x1000000");
        let image = build_guest("0x1000000", CONFIG_BYTES).unwrap();
        assert!(!image.layout.regions.contains_key("ram"), "guest RAM is mm's to back");
        assert!(image.layout.pds.iter().flat_map(|p| &p.mappings).all(|m| m.size != 0x80_0000));
        let encoded = write_image(&by_name("qemu_virt_aarch64").unwrap().boot_info(), &image.parts);
        let parsed = Image::parse(&encoded).unwrap();
        let system = parsed.system();
        let at = image.layout.regions["image"];
        let load = system.loads.iter().find(|l| l.paddr.get() == at).unwrap();
        assert_eq!((load.size.get(), load.data_size.get()), (0x3000, data.len() as u64));
        assert_eq!(system.data_of(load), data.as_slice());
        // The pool is zeroed (mm's roots must start empty).
        let pool = image.layout.regions["pool"];
        let load = system.loads.iter().find(|l| l.paddr.get() == pool).unwrap();
        assert_eq!((load.size.get(), load.data_size.get()), (0x100_0000, 0));
    }

    #[test]
    fn the_memory_manager_gets_its_configuration() {
        let image = build_guest("0x1000000", CONFIG_BYTES + 16).unwrap();
        let data = &image.layout.pds[0].mappings[1];
        assert_eq!(data.vaddr, 0x20_1000);
        let load = image.parts.loads.iter().find(|l| l.paddr.get() == data.paddr).unwrap();
        let start = (load.data_offset.get() + MM_CONFIG_AT - data.vaddr) as usize;
        let bytes = &image.parts.blob[start..start + CONFIG_BYTES as usize + 16];
        let words: Vec<u64> =
            bytes.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(&words[mm_config::WORDS..], [0, 0], "the rest of the symbol is zeroed");
        let config = MmConfig::decode(&words).unwrap();
        let pool = config.pool;
        assert_eq!(
            (pool.base, pool.size, pool.vaddr),
            (image.layout.regions["pool"], 0x100_0000, 0x1000_0000)
        );
        // Ledger 11 + cache 16 + RAM 7 + device 4 + window 515, then refcounts.
        assert_eq!(pool.table_pages, 553 + 2);
        assert_eq!(
            config.clients(),
            [mm_config::Client { channel: 6, vmid: 2, window: true, pd: 1 }]
        );
        let [guest] = config.guests() else { panic!("one guest") };
        assert_eq!((guest.vm, guest.vmid, guest.controller), (0, 3, 0));
        assert_eq!(guest.limit_pages, 0x80_0000 / PAGE, "no memory_limit: its RAM");
        assert_eq!(guest.ram(), [mm_config::RamRange { ipa: 0x4000_0000, size: 0x80_0000 }]);
        assert_eq!(
            guest.devices(),
            [mm_config::DeviceRange { ipa: 0x900_0000, pa: 0x900_0000, size: 0x1000 }]
        );
        assert!(image.report.contains("tables  "), "{}", image.report);
        if std::env::var_os("TENURE_PRINT_REPORT").is_some() {
            println!("{}", image.report);
        }
    }

    #[test]
    fn a_missing_or_small_configuration_symbol_and_a_small_pool_are_refused() {
        let err = build_guest("0x1000000", CONFIG_BYTES - 8).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Error: PD 'mm': the memory manager's '__tenure_mm_config' symbol is {} bytes; \
                 its configuration needs {CONFIG_BYTES} bytes (343 words)",
                CONFIG_BYTES - 8
            )
        );
        let (system, _) = guest_system("0x1000000");
        let mut programs = guest_programs(CONFIG_BYTES);
        programs.insert("mm".into(), program());
        let board = by_name("qemu_virt_aarch64").unwrap();
        let err = build(&system, programs, board, 0x10_0000).unwrap_err();
        assert!(matches!(err, BuildError::MmConfig { why: MmConfigError::Missing, .. }), "{err:?}");
        assert!(err.to_string().contains("has no '__tenure_mm_config' symbol"), "{err}");
        let err = build_guest("0x200000", CONFIG_BYTES).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Error: the guest memory pool 'pool' (0x200000 bytes) is too small"),
            "{err}"
        );
        // 8 MiB of pool holds its tables, but not the 8 MiB the guest may own.
        let err = build_guest("0x800000", CONFIG_BYTES).unwrap_err();
        let BuildError::PoolOvercommitted { available, limits, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(*available < 0x80_0000, "{available:#x}");
        assert_eq!(limits, &[("guest".to_string(), 0x80_0000)]);
        assert!(err.to_string().contains("their memory limits add up to 0x800000"), "{err}");
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
