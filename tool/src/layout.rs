//! Where everything of a system lives: the physical placement of each PD's
//! program, stack and memory regions, and the mappings of each PD's
//! address space.
//!
//! A PD's address space (stage 1 is off, so these are IPAs; 40 bits):
//!
//! ```text
//! 0x0             +------------------------------+
//!                 | unmapped (null page and up)  |
//! program         | ELF segments, as linked      |
//!                 | memory regions, at their map |
//!                 | vaddrs from system.xml       |
//! stack bottom    +------------------------------+ PD_STACK_TOP - stack_size
//!                 | stack                        |
//! PD_STACK_TOP    +------------------------------+ 0xff_ffff_e000
//!                 | guard page, then the top page|
//! 1 << 40         +------------------------------+
//! ```
//!
//! A client of the memory manager also has its window, the 1 GiB at
//! `WINDOW_IPA` (0x80_0000_0000) whose table mm owns: nothing of the PD's
//! own may lie there.
//!
//! Physical memory comes from the board's RAM minus what the kernel and the
//! boot image occupy, first fit. Memory regions with a `phys_addr` inside
//! RAM are reserved there; outside RAM they are device memory. Guest RAM
//! (a region mapped cached into a virtual machine) is placed nowhere: the
//! memory manager backs it from its pool, which is aligned for the roots
//! of mm's tables at its base.

use crate::elf::PdElf;
use crate::sdf::guests::{self, RegionUse};
use crate::sdf::{ProtectionDomain, SystemDescription};
use hyp_mm::Prot;
use std::collections::BTreeMap;
use std::fmt;
use tenure_abi::mm_config::POOL_ALIGN;
use tenure_abi::vcpu::{WINDOW_IPA, WINDOW_SIZE};

/// One past a PD's stack (Microkit's: the top page of the 40-bit space is
/// kept free and a guard page sits between it and the stack).
pub const PD_STACK_TOP: u64 = 0xff_ffff_e000;
/// The granule everything is placed and mapped at.
const PAGE: u64 = 0x1000;

/// Why a system could not be laid out.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum LayoutError {
    /// RAM ran out.
    OutOfMemory {
        /// What was being placed.
        what: String,
        /// Bytes asked for.
        size: u64,
    },
    /// A fixed physical range is not free RAM.
    PhysicalConflict {
        /// The memory region.
        region: String,
        /// Its physical address.
        phys_addr: u64,
    },
    /// Two things overlap in one PD's address space.
    Overlap {
        /// The PD.
        pd: String,
        /// The later of the two.
        what: String,
        /// Where.
        vaddr: u64,
    },
    /// A PD's program is missing from the loaded programs.
    NoProgram(String),
    /// Device memory (cached="false") mapped executable.
    ExecutableDevice {
        /// The PD.
        pd: String,
        /// The memory region.
        region: String,
    },
    /// A prefilled memory region outside RAM: nothing can fill it.
    PrefillOutsideRam {
        /// The memory region.
        region: String,
    },
    /// Part of a client's program lies in its memory-manager window.
    InWindow {
        /// The PD.
        pd: String,
        /// What lies there.
        what: String,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::OutOfMemory { what, size } => {
                write!(f, "Error: not enough memory for {what} ({size:#x} bytes)")
            }
            LayoutError::PhysicalConflict { region, phys_addr } => write!(
                f,
                "Error: memory region '{region}' at physical address {phys_addr:#x} overlaps \
                 memory already in use"
            ),
            LayoutError::Overlap { pd, what, vaddr } => {
                write!(f, "Error: {what} at {vaddr:#x} overlaps another mapping of PD '{pd}'")
            }
            LayoutError::NoProgram(pd) => write!(f, "Error: no program loaded for PD '{pd}'"),
            LayoutError::ExecutableDevice { pd, region } => write!(
                f,
                "Error: PD '{pd}' maps device memory region '{region}' executable \
                 (cached=\"false\" with perms containing 'x')"
            ),
            LayoutError::PrefillOutsideRam { region } => write!(
                f,
                "Error: memory region '{region}' has a prefill_path but its phys_addr is not in \
                 RAM"
            ),
            LayoutError::InWindow { pd, what } => write!(
                f,
                "Error: {what} of PD '{pd}' lies in its memory-manager window \
                 [{WINDOW_IPA:#x}..{:#x})",
                WINDOW_IPA + WINDOW_SIZE
            ),
        }
    }
}

/// First-fit allocator over free physical ranges.
#[derive(Clone, Debug)]
pub struct PhysAllocator {
    /// Free ranges `(base, size)`, sorted and disjoint.
    free: Vec<(u64, u64)>,
}

impl PhysAllocator {
    /// Everything in `ram` is free.
    #[must_use]
    pub fn new(ram: &[(u64, u64)]) -> Self {
        let mut free: Vec<_> = ram.iter().copied().filter(|&(_, s)| s > 0).collect();
        free.sort_unstable();
        PhysAllocator { free }
    }

    /// Whether `base..base + size` lies entirely in free memory.
    #[must_use]
    pub fn is_free(&self, base: u64, size: u64) -> bool {
        self.free.iter().any(|&(b, s)| base >= b && base.saturating_add(size) <= b + s)
    }

    /// Takes `base..base + size` out of the free memory; `false` if it is
    /// not all free.
    pub fn reserve(&mut self, base: u64, size: u64) -> bool {
        let Some(i) = self.free.iter().position(|&(b, s)| base >= b && base + size <= b + s) else {
            return false;
        };
        let (b, s) = self.free.remove(i);
        let after = (base + size, b + s - (base + size));
        let before = (b, base - b);
        for piece in [after, before] {
            if piece.1 > 0 {
                self.free.insert(i, piece);
            }
        }
        true
    }

    /// `size` bytes aligned to `align` (a power of two), first fit.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let base = self.free.iter().find_map(|&(b, s)| {
            let start = b.checked_add(align - 1)? & !(align - 1);
            (start.checked_add(size)? <= b + s).then_some(start)
        })?;
        self.reserve(base, size).then_some(base)
    }
}

/// What a mapping holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Content {
    /// Loadable segment `n` of the program, with its bytes at `offset` in
    /// the mapping.
    Segment {
        /// Index among the program's segments.
        index: usize,
        /// Where the segment's bytes start in the mapping.
        offset: u64,
    },
    /// The stack.
    Stack,
    /// A memory region.
    Region(String),
}

/// One mapping of a PD's address space.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Mapping {
    /// First IPA.
    pub vaddr: u64,
    /// First physical address.
    pub paddr: u64,
    /// Bytes.
    pub size: u64,
    /// Access and memory type.
    pub prot: Prot,
    /// What it holds.
    pub content: Content,
}

/// The laid-out address space of one PD.
#[derive(Clone, Debug)]
pub struct PdLayout {
    /// The PD's name.
    pub name: String,
    /// Where it starts.
    pub entry: u64,
    /// Its initial stack pointer.
    pub sp: u64,
    /// Its mappings, by address.
    pub mappings: Vec<Mapping>,
}

/// A whole system's layout.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Each PD, in `SystemDescription::all_pds` order.
    pub pds: Vec<PdLayout>,
    /// Physical address of each memory region but guest RAM, which has
    /// none.
    pub regions: BTreeMap<String, u64>,
}

/// Whether any part of `base..base + size` is RAM.
fn touches_ram(base: u64, size: u64, ram: &[(u64, u64)]) -> bool {
    ram.iter().any(|&(b, s)| base < b + s && base.saturating_add(size) > b)
}

fn align_up(x: u64, a: u64) -> u64 {
    (x + a - 1) & !(a - 1)
}

/// Places every memory region and every PD's program and stack in the
/// free memory of `alloc` (whose RAM is `ram`), and lists each PD's
/// mappings.
pub fn lay_out(
    system: &SystemDescription,
    programs: &BTreeMap<String, PdElf>,
    alloc: &mut PhysAllocator,
    ram: &[(u64, u64)],
) -> Result<Layout, LayoutError> {
    let mut regions = BTreeMap::new();
    for mr in &system.memory_regions {
        let usage = guests::region_use(system, &mr.name);
        if usage == RegionUse::GuestRam {
            continue;
        }
        let align =
            if usage == RegionUse::Pool { mr.page_size.max(POOL_ALIGN) } else { mr.page_size };
        if mr.prefill.is_some() && mr.phys_addr.is_some_and(|p| !touches_ram(p, mr.size, ram)) {
            return Err(LayoutError::PrefillOutsideRam { region: mr.name.clone() });
        }
        let paddr = match mr.phys_addr {
            Some(p) if touches_ram(p, mr.size, ram) => {
                if !alloc.reserve(p, mr.size) {
                    return Err(LayoutError::PhysicalConflict {
                        region: mr.name.clone(),
                        phys_addr: p,
                    });
                }
                p
            }
            Some(p) => p,
            None => alloc.alloc(mr.size, align).ok_or_else(|| LayoutError::OutOfMemory {
                what: format!("memory region '{}'", mr.name),
                size: mr.size,
            })?,
        };
        regions.insert(mr.name.clone(), paddr);
    }
    let clients = guests::mm_clients(system);
    let mut pds = Vec::new();
    for pd in system.all_pds() {
        let program =
            programs.get(&pd.name).ok_or_else(|| LayoutError::NoProgram(pd.name.clone()))?;
        let layout = lay_out_pd(system, pd, program, alloc, &regions)?;
        if clients.iter().any(|c| c.pd == pd.name) {
            let window_end = WINDOW_IPA + WINDOW_SIZE;
            let inside = layout.mappings.iter().find(|m| {
                !matches!(m.content, Content::Region(_))
                    && m.vaddr < window_end
                    && WINDOW_IPA < m.vaddr + m.size
            });
            if let Some(m) = inside {
                let what = match &m.content {
                    Content::Segment { index, .. } => format!("segment {index} of the program"),
                    _ => "the stack".to_string(),
                };
                return Err(LayoutError::InWindow { pd: pd.name.clone(), what });
            }
        }
        pds.push(layout);
    }
    Ok(Layout { pds, regions })
}

fn lay_out_pd(
    system: &SystemDescription,
    pd: &ProtectionDomain,
    program: &PdElf,
    alloc: &mut PhysAllocator,
    regions: &BTreeMap<String, u64>,
) -> Result<PdLayout, LayoutError> {
    let mut mappings: Vec<Mapping> = Vec::new();
    let mut place = |what: String, size: u64| {
        alloc.alloc(size, PAGE).ok_or(LayoutError::OutOfMemory { what, size })
    };
    for (index, seg) in program.segments.iter().enumerate() {
        let vaddr = seg.vaddr & !(PAGE - 1);
        let size = align_up(seg.vaddr + seg.mem_size, PAGE) - vaddr;
        let paddr = place(format!("segment {index} of PD '{}'", pd.name), size)?;
        let mut prot = Prot::R;
        prot.set(Prot::W, seg.perms.write);
        prot.set(Prot::X, seg.perms.execute);
        let mapping = Mapping {
            vaddr,
            paddr,
            size,
            prot,
            content: Content::Segment { index, offset: seg.vaddr - vaddr },
        };
        insert(&mut mappings, mapping, &pd.name, format!("segment {index} of the program"))?;
    }
    let stack_bottom = PD_STACK_TOP - pd.stack_size;
    let paddr = place(format!("the stack of PD '{}'", pd.name), pd.stack_size)?;
    let stack = Mapping {
        vaddr: stack_bottom,
        paddr,
        size: pd.stack_size,
        prot: Prot::RW,
        content: Content::Stack,
    };
    insert(&mut mappings, stack, &pd.name, "the stack".into())?;
    for map in &pd.maps {
        let mr = system.memory_region(&map.mr).expect("the SDF checks map regions exist");
        let mut prot = Prot::empty();
        prot.set(Prot::R, map.perms.read);
        prot.set(Prot::W, map.perms.write);
        prot.set(Prot::X, map.perms.execute);
        if !map.cached {
            if map.perms.execute {
                return Err(LayoutError::ExecutableDevice {
                    pd: pd.name.clone(),
                    region: mr.name.clone(),
                });
            }
            prot |= Prot::DEVICE;
        }
        let mapping = Mapping {
            vaddr: map.vaddr,
            paddr: regions[&mr.name],
            size: mr.size,
            prot,
            content: Content::Region(mr.name.clone()),
        };
        insert(
            &mut mappings,
            mapping,
            &pd.name,
            format!("the map of memory region '{}'", mr.name),
        )?;
    }
    Ok(PdLayout { name: pd.name.clone(), entry: program.entry, sp: PD_STACK_TOP, mappings })
}

/// Adds `m` to `mappings` (kept sorted), refusing an overlap.
fn insert(
    mappings: &mut Vec<Mapping>,
    m: Mapping,
    pd: &str,
    what: String,
) -> Result<(), LayoutError> {
    let i = mappings.partition_point(|x| x.vaddr < m.vaddr);
    let clash_before = i > 0 && mappings[i - 1].vaddr + mappings[i - 1].size > m.vaddr;
    let clash_after = mappings.get(i).is_some_and(|x| m.vaddr + m.size > x.vaddr);
    if clash_before || clash_after {
        return Err(LayoutError::Overlap { pd: pd.into(), what, vaddr: m.vaddr });
    }
    mappings.insert(i, m);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::{Seg, build};
    use crate::sdf::{BoardLimits, parse};
    use object::elf;

    const RAM: (u64, u64) = (0x4000_0000, 0x1000_0000);

    fn program(text_at: u64) -> PdElf {
        let text =
            Seg { vaddr: text_at, data: &[0; 16], mem_size: 16, flags: elf::PF_R | elf::PF_X };
        let data = Seg {
            vaddr: text_at + 0x1000,
            data: &[7; 8],
            mem_size: 0x1800,
            flags: elf::PF_R | elf::PF_W,
        };
        PdElf::parse(&build(elf::EM_AARCH64, elf::ET_EXEC, &[text, data], &[])).unwrap()
    }

    fn system(xml: &str) -> SystemDescription {
        parse("test.system", xml, &BoardLimits::default()).unwrap()
    }

    fn programs(names: &[&str]) -> BTreeMap<String, PdElf> {
        names.iter().map(|n| (n.to_string(), program(0x20_0000))).collect()
    }

    const TWO_PDS: &str = r#"<system>
        <memory_region name="shared" size="0x2000"/>
        <memory_region name="uart" size="0x1000" phys_addr="0x9000000"/>
        <protection_domain name="a" priority="2">
            <program_image path="a.elf"/>
            <map mr="shared" vaddr="0x400000" perms="rw"/>
            <map mr="uart" vaddr="0x500000" perms="rw" cached="false"/>
        </protection_domain>
        <protection_domain name="b" priority="1" stack_size="0x4000">
            <program_image path="b.elf"/>
            <map mr="shared" vaddr="0x600000" perms="r"/>
        </protection_domain>
    </system>"#;

    #[test]
    fn each_pd_gets_its_program_stack_and_regions() {
        let sys = system(TWO_PDS);
        let mut alloc = PhysAllocator::new(&[RAM]);
        let layout = lay_out(&sys, &programs(&["a", "b"]), &mut alloc, &[RAM]).unwrap();
        let a = &layout.pds[0];
        assert_eq!((a.entry, a.sp), (0x20_0000, PD_STACK_TOP));
        let kinds: Vec<_> = a.mappings.iter().map(|m| (m.vaddr, m.size, m.prot)).collect();
        assert_eq!(
            kinds,
            [
                (0x20_0000, 0x1000, Prot::R | Prot::X),
                (0x20_1000, 0x2000, Prot::RW),
                (0x40_0000, 0x2000, Prot::RW),
                (0x50_0000, 0x1000, Prot::DEVICE_RW),
                (PD_STACK_TOP - 0x2000, 0x2000, Prot::RW),
            ]
        );
        assert_eq!(layout.regions["uart"], 0x900_0000, "device memory stays where it is");
        let shared = layout.regions["shared"];
        assert!((RAM.0..RAM.0 + RAM.1).contains(&shared));
        let b = &layout.pds[1];
        let b_shared =
            b.mappings.iter().find(|m| m.content == Content::Region("shared".into())).unwrap();
        assert_eq!((b_shared.paddr, b_shared.prot), (shared, Prot::R), "one region, two views");
        assert_eq!(b.mappings.last().unwrap().size, 0x4000);
        // No two PDs share program or stack memory.
        let mut private: Vec<(u64, u64)> = layout
            .pds
            .iter()
            .flat_map(|p| p.mappings.iter().filter(|m| !matches!(m.content, Content::Region(_))))
            .map(|m| (m.paddr, m.size))
            .collect();
        private.sort_unstable();
        assert!(private.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
    }

    #[test]
    fn a_map_over_the_program_is_refused() {
        let sys = system(
            r#"<system><memory_region name="m" size="0x1000"/>
            <protection_domain name="a"><program_image path="a.elf"/>
            <map mr="m" vaddr="0x201000" perms="rw"/></protection_domain></system>"#,
        );
        let err =
            lay_out(&sys, &programs(&["a"]), &mut PhysAllocator::new(&[RAM]), &[RAM]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Error: the map of memory region 'm' at 0x201000 overlaps another mapping of PD 'a'"
        );
    }

    #[test]
    fn an_executable_device_map_is_refused() {
        let sys = system(
            r#"<system><memory_region name="dev" size="0x1000" phys_addr="0x9000000"/>
            <protection_domain name="a"><program_image path="a.elf"/>
            <map mr="dev" vaddr="0x400000" perms="rx" cached="false"/></protection_domain></system>"#,
        );
        let err =
            lay_out(&sys, &programs(&["a"]), &mut PhysAllocator::new(&[RAM]), &[RAM]).unwrap_err();
        assert_eq!(err, LayoutError::ExecutableDevice { pd: "a".into(), region: "dev".into() });
    }

    #[test]
    fn fixed_regions_in_ram_are_reserved_and_conflicts_reported() {
        let xml = r#"<system><memory_region name="f" size="0x1000" phys_addr="0x40000000"/>
            <protection_domain name="a"><program_image path="a.elf"/>
            <map mr="f" vaddr="0x400000" perms="rw"/></protection_domain></system>"#;
        let sys = system(xml);
        let mut alloc = PhysAllocator::new(&[RAM]);
        let layout = lay_out(&sys, &programs(&["a"]), &mut alloc, &[RAM]).unwrap();
        assert!(
            layout.pds[0]
                .mappings
                .iter()
                .all(|m| m.content == Content::Region("f".into()) || m.paddr != RAM.0)
        );
        let mut taken = PhysAllocator::new(&[RAM]);
        assert!(taken.reserve(RAM.0, 0x1000));
        let err = lay_out(&sys, &programs(&["a"]), &mut taken, &[RAM]).unwrap_err();
        assert_eq!(err, LayoutError::PhysicalConflict { region: "f".into(), phys_addr: RAM.0 });
    }

    #[test]
    fn running_out_of_ram_is_reported() {
        let sys = system(TWO_PDS);
        let small = (RAM.0, 0x4000);
        let err =
            lay_out(&sys, &programs(&["a", "b"]), &mut PhysAllocator::new(&[small]), &[small])
                .unwrap_err();
        assert!(matches!(err, LayoutError::OutOfMemory { .. }), "{err:?}");
    }

    const GUEST: &str = r#"<system>
        <memory_region name="pool" size="0x400000"/>
        <memory_region name="ram" size="0x200000"/>
        <protection_domain name="mm" priority="9">
            <program_image path="mm.elf"/>
            <map mr="pool" vaddr="0x10000000"/>
            <guest_memory mr="pool"/>
        </protection_domain>
        <protection_domain name="vmm" priority="1">
            <program_image path="vmm.elf"/>
            <virtual_machine name="g"><vcpu id="0"/><map mr="ram" vaddr="0x40000000"/></virtual_machine>
        </protection_domain>
        <channel><end pd="vmm" id="0" pp="true"/><end pd="mm" id="0"/></channel>
    </system>"#;

    #[test]
    fn guest_ram_is_not_placed_and_the_pool_is_root_aligned() {
        let sys = system(GUEST);
        // Take one page first so that 4 KiB alignment alone would not do.
        let mut alloc = PhysAllocator::new(&[RAM]);
        assert!(alloc.reserve(RAM.0, 0x1000));
        let layout = lay_out(&sys, &programs(&["mm", "vmm"]), &mut alloc, &[RAM]).unwrap();
        assert!(!layout.regions.contains_key("ram"));
        assert_eq!(layout.regions["pool"] % POOL_ALIGN, 0);
    }

    #[test]
    fn a_client_program_in_its_window_is_refused() {
        let sys = system(GUEST);
        let mut progs = programs(&["mm"]);
        progs.insert("vmm".into(), program(WINDOW_IPA + 0x1000));
        let err = lay_out(&sys, &progs, &mut PhysAllocator::new(&[RAM]), &[RAM]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Error: segment 0 of the program of PD 'vmm' lies in its memory-manager window \
             [0x8000000000..0x8040000000)"
        );
        // The memory manager is no client: its program may lie there.
        let mut progs = programs(&["vmm"]);
        progs.insert("mm".into(), program(WINDOW_IPA));
        assert!(lay_out(&sys, &progs, &mut PhysAllocator::new(&[RAM]), &[RAM]).is_ok());
    }

    #[test]
    fn the_allocator_splits_ranges_and_honours_alignment() {
        let mut a = PhysAllocator::new(&[(0x1000, 0x10_0000)]);
        assert_eq!(a.alloc(0x1000, 0x1000), Some(0x1000));
        assert_eq!(a.alloc(0x1000, 0x4_0000), Some(0x4_0000));
        assert!(a.is_free(0x2000, 0x3_e000));
        assert!(!a.reserve(0x4_0000, 0x1000));
        assert_eq!(a.alloc(0x20_0000, 0x1000), None);
    }
}
