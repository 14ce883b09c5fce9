//! Reading and checking a Microkit System Description File (system.xml).
//!
//! [`parse`] reads Microkit 2.x's System Description Format into a tree of
//! typed values and enforces every rule Microkit's own tool enforces that
//! does not need the PD images (see `shared/reference/microkit-semantics.md`
//! §1), with Microkit's error text. It proceeds in two steps:
//!
//! 1. `read`: each element on its own — known tags and attributes, no
//!    stray text, required attributes, number syntax, ranges;
//! 2. `rules`: what spans elements — unique names and ids, channel ends,
//!    PPC priorities, IRQs, maps against memory regions, physical overlaps.
//!
//! Board facts (page sizes, cores, SMC forwarding, the top of a PD's
//! address space) come in a [`BoardLimits`]. [`check_supported`] is a
//! separate step for what the SDF allows but Tenure does not run yet
//! (nothing at present).
//!
//! Guests follow Microkit's syntax with Tenure's meaning
//! (`docs/guests.md`): a region mapped cached into a `virtual_machine` is
//! guest RAM that the memory manager backs from its pool, one mapped
//! uncached is passthrough device memory, and Tenure's `<guest_memory
//! mr="..."/>` names the memory manager and its pool; [`guests`] holds
//! those rules and what the image builder needs from them. Microkit 2.2's
//! `prefill_path` files are read from the search paths
//! ([`parse_with_search_paths`]).
//!
//! Not covered here: maps overlapping a PD's ELF segments (needs the ELF,
//! checked when images are loaded), Microkit 2.3's `<domains>` and
//! `<cspace>` (refused as unknown elements), and the page-size promotion
//! of memory regions (a layout decision).

mod error;
pub mod guests;
pub mod number;
mod read;
mod rules;

use std::fmt;
use std::path::PathBuf;

pub use error::{Location, SdfError, Warning};

/// The board facts that decide some rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoardLimits {
    /// Page sizes the board maps, smallest first; `page_size` must be one
    /// of them, and the first is the default and the stack granule.
    pub page_sizes: Vec<u64>,
    /// Number of cores; a PD's or vCPU's `cpu` must be below it.
    pub cpus: u32,
    /// Whether the kernel forwards SMCs for PDs with `smc="true"`.
    pub smc_forwarding: bool,
    /// One past the highest address of a PD's stack; its maps must end at
    /// or below `pd_stack_top - stack_size` (the stack bottom).
    pub pd_stack_top: u64,
    /// One past the highest guest-physical address a VM map may use.
    pub vm_max_vaddr: u64,
}

/// 4 KiB and 2 MiB: the AArch64 page sizes Microkit uses.
const AARCH64_PAGE_SIZES: [u64; 2] = [0x1000, 0x20_0000];

/// Microkit's `user_top` for an AArch64 hypervisor kernel with a 40-bit
/// physical address space (`qemu_virt_aarch64`). Tenure's layout will own
/// this number once the PD address space map exists.
const DEFAULT_USER_TOP: u64 = 0x100_0000_0000;

impl Default for BoardLimits {
    /// A uniprocessor AArch64 board without SMC forwarding: what Tenure
    /// runs today.
    fn default() -> Self {
        BoardLimits {
            page_sizes: AARCH64_PAGE_SIZES.to_vec(),
            cpus: 1,
            smc_forwarding: false,
            pd_stack_top: DEFAULT_USER_TOP,
            vm_max_vaddr: DEFAULT_USER_TOP,
        }
    }
}

/// A whole system: the PD tree, the memory regions and the channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemDescription {
    /// Top-level PDs; children hang off their parents.
    pub protection_domains: Vec<ProtectionDomain>,
    /// Memory regions, in file order.
    pub memory_regions: Vec<MemoryRegion>,
    /// Channels, in file order.
    pub channels: Vec<Channel>,
    /// Legal but suspicious things, for the caller to print.
    pub warnings: Vec<Warning>,
}

impl SystemDescription {
    /// Every PD, parents before their children (depth first, file order):
    /// the order Microkit numbers them in.
    #[must_use]
    pub fn all_pds(&self) -> Vec<&ProtectionDomain> {
        fn walk<'a>(pd: &'a ProtectionDomain, out: &mut Vec<&'a ProtectionDomain>) {
            out.push(pd);
            for child in &pd.children {
                walk(child, out);
            }
        }
        let mut out = Vec::new();
        for pd in &self.protection_domains {
            walk(pd, &mut out);
        }
        out
    }

    /// The PD called `name`, wherever it is in the tree.
    #[must_use]
    pub fn pd(&self, name: &str) -> Option<&ProtectionDomain> {
        self.all_pds().into_iter().find(|pd| pd.name == name)
    }

    /// The memory region called `name`.
    #[must_use]
    pub fn memory_region(&self, name: &str) -> Option<&MemoryRegion> {
        self.memory_regions.iter().find(|mr| mr.name == name)
    }
}

/// A `<protection_domain>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtectionDomain {
    /// Unique across the system, at most [`tenure_abi::PD_NAME_LEN`] bytes.
    pub name: String,
    /// `0..=MAX_PRIORITY`, default 0.
    pub priority: u8,
    /// A passive PD runs only on its callers' scheduling contexts.
    pub passive: bool,
    /// Bytes, a multiple of the smallest page size.
    pub stack_size: u64,
    /// Microseconds per period, default 1000.
    pub budget: u64,
    /// Microseconds, default the budget.
    pub period: u64,
    /// The core it runs on.
    pub cpu: u32,
    /// May it make SMC calls (forwarded by the kernel)?
    pub smc: bool,
    /// May it use the FPU (default true)?
    pub fpu: bool,
    /// A child's id in its parent (`microkit_child`); `None` at top level.
    pub id: Option<u64>,
    /// Symbol in the parent's image patched with the child's id.
    pub setvar_id: Option<String>,
    /// The ELF to run.
    pub program_image: ProgramImage,
    /// Memory regions mapped into it.
    pub maps: Vec<Map>,
    /// Interrupts it handles.
    pub irqs: Vec<Irq>,
    /// `<setvar>` physical-address symbols.
    pub setvars: Vec<Setvar>,
    /// Child PDs it manages.
    pub children: Vec<ProtectionDomain>,
    /// The guest it is the VMM of, if any.
    pub virtual_machine: Option<VirtualMachine>,
    /// Tenure's `<guest_memory>`: this PD is the memory manager.
    pub guest_memory: Option<GuestMemory>,
    /// Where the element starts.
    pub at: Location,
}

/// A `<program_image>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramImage {
    /// The ELF to load, looked up in the search path.
    pub path: PathBuf,
    /// An ELF with symbols, when `path` is stripped.
    pub path_for_symbols: Option<PathBuf>,
}

/// Access rights of a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    /// `r`.
    pub read: bool,
    /// `w`.
    pub write: bool,
    /// `x`.
    pub execute: bool,
}

/// A `<map>` of a memory region into a PD or VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Map {
    /// The memory region's name.
    pub mr: String,
    /// Where it starts: a PD virtual address, or a guest-physical one.
    pub vaddr: u64,
    /// Default `rw`.
    pub perms: Perms,
    /// Default true.
    pub cached: bool,
    /// Symbol patched with `vaddr`.
    pub setvar_vaddr: Option<String>,
    /// Symbol patched with the region's size.
    pub setvar_size: Option<String>,
    /// Symbol patched with the length of the region's prefill data.
    pub setvar_prefill_size: Option<String>,
    /// Where the element starts.
    pub at: Location,
}

/// A `<memory_region>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Unique among memory regions.
    pub name: String,
    /// Bytes, a multiple of `page_size`.
    pub size: u64,
    /// The given page size, or the board's smallest.
    pub page_size: u64,
    /// A fixed physical address (devices, shared buffers), page aligned.
    pub phys_addr: Option<u64>,
    /// Microkit 2.2's `prefill_path`: the region starts with this data.
    pub prefill: Option<Prefill>,
    /// Where the element starts.
    pub at: Location,
}

/// The data a memory region is filled with at boot (`prefill_path`).
#[derive(Clone, PartialEq, Eq)]
pub struct Prefill {
    /// The file name as system.xml gives it.
    pub path: PathBuf,
    /// Its bytes, at most the region's size; the rest of the region is
    /// zero.
    pub data: Vec<u8>,
}

impl fmt::Debug for Prefill {
    /// The path and length: a guest image's bytes help no one in a test
    /// failure.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prefill").field("path", &self.path).field("len", &self.data.len()).finish()
    }
}

/// Tenure's `<guest_memory mr="..."/>`: its PD is the memory manager and
/// the region is the pool it backs guest memory and its tables from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestMemory {
    /// The pool's memory region.
    pub mr: String,
    /// Where the element starts.
    pub at: Location,
}

/// A `<channel>` between two PDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    /// The two `<end>`s, in file order.
    pub ends: [End; 2],
    /// Where the element starts.
    pub at: Location,
}

/// One `<end>` of a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
    /// The PD's name.
    pub pd: String,
    /// The channel id in that PD, `0..=MAX_CHANNEL_ID`.
    pub id: u8,
    /// May this end make protected procedure calls to the other?
    pub pp: bool,
    /// May this end notify the other (default true)?
    pub notify: bool,
    /// Symbol in the PD's image patched with `id`.
    pub setvar_id: Option<String>,
    /// Where the element starts.
    pub at: Location,
}

/// How an interrupt line signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Level-sensitive (the default).
    Level,
    /// Edge-triggered.
    Edge,
}

/// An `<irq>` a PD handles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Irq {
    /// The hardware interrupt id (GIC INTID), unique in the system.
    pub irq: u64,
    /// The channel id it arrives on, shared with the PD's channels.
    pub id: u8,
    /// Level or edge.
    pub trigger: Trigger,
    /// Symbol patched with `id`.
    pub setvar_id: Option<String>,
    /// Where the element starts.
    pub at: Location,
}

/// A `<setvar>`: a symbol patched with a memory region's physical address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setvar {
    /// The symbol in the PD's image.
    pub symbol: String,
    /// The memory region whose physical address it gets.
    pub region_paddr: String,
    /// Where the element starts.
    pub at: Location,
}

/// A `<virtual_machine>` inside its VMM PD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualMachine {
    /// Unique among virtual machines.
    pub name: String,
    /// Like a PD's.
    pub priority: u8,
    /// Microseconds, default 1000.
    pub budget: u64,
    /// Microseconds, default the budget.
    pub period: u64,
    /// At least one.
    pub vcpus: Vec<Vcpu>,
    /// Guest-physical maps.
    pub maps: Vec<Map>,
    /// Tenure's `memory_limit`: the most bytes of the memory manager's
    /// pool the guest may own at once; default its RAM size.
    pub memory_limit: Option<u64>,
    /// Where the element starts.
    pub at: Location,
}

/// A `<vcpu>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vcpu {
    /// `0..=MAX_CHANNEL_ID`, unique in the VM and among the VMM's children.
    pub id: u8,
    /// The core it runs on; default the VMM's.
    pub cpu: Option<u32>,
    /// Symbol in the VMM's image patched with `id`.
    pub setvar_id: Option<String>,
    /// Where the element starts.
    pub at: Location,
}

/// Reads and checks the system description `xml`; `file_name` is only
/// used in messages. On success the warnings are in
/// [`SystemDescription::warnings`]. With no search paths, a `prefill_path`
/// is never found: see [`parse_with_search_paths`].
pub fn parse(
    file_name: &str,
    xml: &str,
    board: &BoardLimits,
) -> Result<SystemDescription, SdfError> {
    parse_with_search_paths(file_name, xml, board, &[])
}

/// [`parse`], reading `prefill_path` files from the first of
/// `search_paths` that has them (as `tenure pack` finds program images).
pub fn parse_with_search_paths(
    file_name: &str,
    xml: &str,
    board: &BoardLimits,
    search_paths: &[PathBuf],
) -> Result<SystemDescription, SdfError> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| SdfError::Xml { file: file_name.to_string(), message: e.to_string() })?;
    let reader = read::Reader::new(file_name, &doc, board, search_paths);
    let mut system = reader.system()?;
    system.warnings = rules::check(&system, board)?;
    Ok(system)
}

/// Refuses what the SDF allows but Tenure cannot run yet. Nothing today:
/// virtual machines are accepted since the memory manager arrived; the
/// step stays so that `tenure pack` and the fuzz target keep one place
/// for such limits.
pub fn check_supported(_system: &SystemDescription) -> Result<(), SdfError> {
    Ok(())
}
