//! Guests: Microkit's `virtual_machine` with Tenure's meaning, and
//! Tenure's `<guest_memory>`, which names the memory manager and its pool
//! (`docs/guests.md`, decision 0009).
//!
//! - A memory region mapped into a VM with `cached="true"` (the default)
//!   is **guest RAM**: the tool places nothing for it; the memory manager
//!   backs it from its pool page by page as the guest touches it. It is
//!   private to its guest: no PD and no other VM may map it, and it has no
//!   physical address to give (`phys_addr`, `prefill_path`, `setvar`).
//! - A memory region with a `phys_addr` mapped into a VM with
//!   `cached="false"` is **passthrough device memory**, mapped by the
//!   memory manager when the guest first touches it.
//! - The one PD with `<guest_memory mr="pool"/>` is the **memory
//!   manager**; `pool` is mapped into it (read-write, cached) and into
//!   nothing else.
//! - A **client** of the memory manager is a PD with a `pp="true"` channel
//!   end to it. Every client has a window: the 1 GiB at
//!   [`tenure_abi::vcpu::WINDOW_IPA`], which it may not map anything into.
//!   Every VMM must be a client: it controls its guest through mm.

use std::collections::{HashMap, HashSet};

use tenure_abi::mm_config::{
    MAX_CLIENTS, MAX_DEVICE_RANGES, MAX_GUESTS, MAX_RAM_RANGES, POOL_ALIGN,
};
use tenure_abi::vcpu::{WINDOW_IPA, WINDOW_SIZE};
use tenure_boot_image::MAX_SCHEDULED;

use super::{Location, Map, ProtectionDomain, SdfError, SystemDescription, VirtualMachine};

type Result<T> = std::result::Result<T, SdfError>;

/// What a memory region is for, as its maps say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionUse {
    /// Mapped into PDs only (or nowhere): placed by the tool.
    Ordinary,
    /// Mapped cached into a VM: backed by the memory manager, placed
    /// nowhere by the tool.
    GuestRam,
    /// Mapped uncached into a VM: device memory at its `phys_addr`.
    GuestDevice,
    /// The memory manager's pool.
    Pool,
}

/// How `mr` is used in `system` (which passed [`super::parse`]).
#[must_use]
pub fn region_use(system: &SystemDescription, mr: &str) -> RegionUse {
    if memory_manager(system).and_then(|pd| pd.guest_memory.as_ref()).is_some_and(|g| g.mr == mr) {
        return RegionUse::Pool;
    }
    let vm_maps = vms(system).flat_map(|(_, vm)| &vm.maps).filter(|m| m.mr == mr);
    match vm_maps.map(|m| m.cached).next() {
        Some(true) => RegionUse::GuestRam,
        Some(false) => RegionUse::GuestDevice,
        None => RegionUse::Ordinary,
    }
}

/// The VMs of `system` with their VMMs, in PD order (the VM index order).
pub fn vms(
    system: &SystemDescription,
) -> impl Iterator<Item = (&ProtectionDomain, &VirtualMachine)> {
    system.all_pds().into_iter().filter_map(|pd| pd.virtual_machine.as_ref().map(|vm| (pd, vm)))
}

/// The memory manager: the PD with a `<guest_memory>`.
#[must_use]
pub fn memory_manager(system: &SystemDescription) -> Option<&ProtectionDomain> {
    system.all_pds().into_iter().find(|pd| pd.guest_memory.is_some())
}

/// A PD that calls the memory manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmClient {
    /// The client PD.
    pub pd: String,
    /// The channel id of mm's end: the channel mm receives its calls on.
    pub mm_channel: u8,
    /// Where the client's end is.
    pub at: Location,
}

/// The memory manager's clients, in channel order (the client index
/// order).
#[must_use]
pub fn mm_clients(system: &SystemDescription) -> Vec<MmClient> {
    let Some(mm) = memory_manager(system) else { return Vec::new() };
    let mut clients = Vec::new();
    for channel in &system.channels {
        for (me, other) in [(0, 1), (1, 0)] {
            let (a, b) = (&channel.ends[me], &channel.ends[other]);
            if a.pp && b.pd == mm.name {
                clients.push(MmClient { pd: a.pd.clone(), mm_channel: b.id, at: a.at.clone() });
            }
        }
    }
    clients
}

/// A guest's memory as the memory manager sees it: adjacent maps merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestRanges {
    /// RAM: `(ipa, size)`, by IPA.
    pub ram: Vec<(u64, u64)>,
    /// Devices: `(ipa, pa, size)`, by IPA.
    pub devices: Vec<(u64, u64, u64)>,
}

/// The RAM and device ranges of `vm` in `system`.
#[must_use]
pub fn guest_ranges(system: &SystemDescription, vm: &VirtualMachine) -> GuestRanges {
    let mut maps: Vec<&Map> = vm.maps.iter().collect();
    maps.sort_by_key(|m| m.vaddr);
    let mut out = GuestRanges::default();
    for map in maps {
        let Some(mr) = system.memory_region(&map.mr) else { continue };
        if map.cached {
            match out.ram.last_mut() {
                Some((ipa, size)) if *ipa + *size == map.vaddr => *size += mr.size,
                _ => out.ram.push((map.vaddr, mr.size)),
            }
        } else {
            let pa = mr.phys_addr.unwrap_or(0);
            match out.devices.last_mut() {
                Some((ipa, dpa, size)) if *ipa + *size == map.vaddr && *dpa + *size == pa => {
                    *size += mr.size;
                }
                _ => out.devices.push((map.vaddr, pa, mr.size)),
            }
        }
    }
    out
}

/// The most bytes of the pool `vm` may own: its `memory_limit`, or the
/// size of its RAM.
pub fn memory_limit(system: &SystemDescription, vm: &VirtualMachine) -> u64 {
    vm.memory_limit.unwrap_or_else(|| guest_ranges(system, vm).ram.iter().map(|&(_, s)| s).sum())
}

fn element(message: String, element: &str, at: &Location) -> SdfError {
    SdfError::Element { message, element: element.to_string(), at: at.clone() }
}

/// The rules of guests and the memory manager; run after every other rule,
/// so names and maps are known to be sound.
pub(super) fn check(system: &SystemDescription, pds: &[&ProtectionDomain]) -> Result<()> {
    let mm = memory_manager_rules(system, pds)?;
    let ram_owner = guest_memory_rules(system, pds)?;
    for pd in pds {
        for map in &pd.maps {
            if let Some(vm) = ram_owner.get(map.mr.as_str()) {
                return Err(element(
                    format!(
                        "memory region '{}' is guest RAM of virtual machine '{vm}' and cannot \
                         be mapped into protection domain '{}' (guest memory is private)",
                        map.mr, pd.name
                    ),
                    "map",
                    &map.at,
                ));
            }
        }
        for setvar in &pd.setvars {
            if let Some(vm) = ram_owner.get(setvar.region_paddr.as_str()) {
                return Err(element(
                    format!(
                        "memory region '{}' is guest RAM of virtual machine '{vm}' and has no \
                         physical address to give",
                        setvar.region_paddr
                    ),
                    "setvar",
                    &setvar.at,
                ));
            }
        }
    }
    client_rules(system, pds, mm)
}

/// One memory manager at most, with a sound pool; VMs need one, and one
/// needs VMs. Returns it.
fn memory_manager_rules<'a>(
    system: &SystemDescription,
    pds: &[&'a ProtectionDomain],
) -> Result<Option<&'a ProtectionDomain>> {
    let mut mm: Option<&ProtectionDomain> = None;
    for pd in pds {
        let Some(gm) = &pd.guest_memory else { continue };
        if let Some(first) = mm {
            return Err(element(
                format!(
                    "only one protection domain may be the memory manager, and '{}' already \
                     is",
                    first.name
                ),
                "guest_memory",
                &gm.at,
            ));
        }
        mm = Some(pd);
    }
    let first_vm = pds.iter().find_map(|pd| pd.virtual_machine.as_ref());
    let Some(mm) = mm else {
        if let Some(vm) = first_vm {
            return Err(element(
                format!(
                    "virtual machine '{}' needs a memory manager, but no protection domain has \
                     a 'guest_memory' element",
                    vm.name
                ),
                "virtual_machine",
                &vm.at,
            ));
        }
        return Ok(None);
    };
    let gm = mm.guest_memory.as_ref().expect("found by its guest_memory");
    if first_vm.is_none() {
        return Err(element(
            "a memory manager needs at least one virtual machine to serve".to_string(),
            "guest_memory",
            &gm.at,
        ));
    }
    let Some(pool) = system.memory_region(&gm.mr) else {
        return Err(element(
            format!("invalid memory region name '{}'", gm.mr),
            "guest_memory",
            &gm.at,
        ));
    };
    if pool.prefill.is_some() {
        return Err(element(
            format!("memory region '{}' is the guest memory pool and cannot be prefilled", gm.mr),
            "guest_memory",
            &gm.at,
        ));
    }
    if pool.phys_addr.is_some_and(|pa| !pa.is_multiple_of(POOL_ALIGN)) {
        return Err(element(
            format!(
                "memory region '{}' is the guest memory pool and its phys_addr must be aligned \
                 to {POOL_ALIGN:#x}",
                gm.mr
            ),
            "guest_memory",
            &gm.at,
        ));
    }
    let in_mm: Vec<&Map> = mm.maps.iter().filter(|m| m.mr == gm.mr).collect();
    match in_mm.as_slice() {
        [] => {
            return Err(element(
                format!(
                    "memory region '{}' is the guest memory pool but is not mapped into the \
                     memory manager '{}'",
                    gm.mr, mm.name
                ),
                "guest_memory",
                &gm.at,
            ));
        }
        [map] => {
            let p = map.perms;
            if !map.cached || !p.read || !p.write || p.execute {
                return Err(element(
                    "the guest memory pool must be mapped into the memory manager with \
                     perms=\"rw\" and cached=\"true\""
                        .to_string(),
                    "map",
                    &map.at,
                ));
            }
        }
        [_, second, ..] => {
            return Err(element(
                format!(
                    "the guest memory pool '{}' is mapped into the memory manager twice",
                    gm.mr
                ),
                "map",
                &second.at,
            ));
        }
    }
    for pd in pds {
        let vm_maps = pd.virtual_machine.iter().flat_map(|vm| &vm.maps);
        let other = pd.maps.iter().filter(|_| pd.name != mm.name).chain(vm_maps);
        if let Some(map) = other.into_iter().find(|m| m.mr == gm.mr) {
            return Err(element(
                format!(
                    "memory region '{}' is the guest memory pool and may be mapped only into \
                     the memory manager '{}'",
                    gm.mr, mm.name
                ),
                "map",
                &map.at,
            ));
        }
    }
    Ok(Some(mm))
}

/// Guest RAM and device maps, and the capacities of the memory manager
/// and the scheduler. Returns each guest RAM region's VM.
fn guest_memory_rules<'a>(
    system: &'a SystemDescription,
    pds: &[&'a ProtectionDomain],
) -> Result<HashMap<&'a str, &'a str>> {
    let mut ram_owner: HashMap<&str, &str> = HashMap::new();
    let mut devices: HashSet<&str> = HashSet::new();
    let mut scheduled = pds.len();
    let mut count = 0;
    for pd in pds {
        let Some(vm) = &pd.virtual_machine else { continue };
        count += 1;
        if count > MAX_GUESTS {
            return Err(element(
                format!(
                    "too many virtual machines; the memory manager serves at most {MAX_GUESTS}"
                ),
                "virtual_machine",
                &vm.at,
            ));
        }
        for vcpu in &vm.vcpus {
            scheduled += 1;
            if scheduled > MAX_SCHEDULED {
                return Err(element(
                    format!(
                        "too many protection domains and vcpus; at most {MAX_SCHEDULED} are \
                         scheduled"
                    ),
                    "vcpu",
                    &vcpu.at,
                ));
            }
        }
        for map in &vm.maps {
            let mr = system.memory_region(&map.mr).expect("maps name regions");
            let what = if map.cached { "guest RAM" } else { "device memory" };
            let clash = if map.cached {
                devices.contains(mr.name.as_str())
            } else {
                ram_owner.contains_key(mr.name.as_str())
            };
            if clash {
                return Err(element(
                    format!(
                        "memory region '{}' is mapped into virtual machines both cached (guest \
                         RAM) and uncached (device memory)",
                        mr.name
                    ),
                    "map",
                    &map.at,
                ));
            }
            if !map.cached {
                if mr.phys_addr.is_none() {
                    return Err(element(
                        format!(
                            "memory region '{}' is mapped uncached into virtual machine '{}' \
                             as device memory, and needs a phys_addr",
                            mr.name, vm.name
                        ),
                        "map",
                        &map.at,
                    ));
                }
                if map.perms.execute {
                    return Err(element(
                        format!("device memory '{}' cannot be mapped executable", mr.name),
                        "map",
                        &map.at,
                    ));
                }
                devices.insert(&mr.name);
                continue;
            }
            if let Some(owner) = ram_owner.insert(&mr.name, &vm.name) {
                return Err(element(
                    format!(
                        "memory region '{}' is already guest RAM of virtual machine '{owner}' \
                         and cannot be mapped again (guest memory is private)",
                        mr.name
                    ),
                    "map",
                    &map.at,
                ));
            }
            let problem = if mr.phys_addr.is_some() {
                Some("have a phys_addr")
            } else if mr.prefill.is_some() {
                Some("be prefilled")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(element(
                    format!(
                        "memory region '{}' is {what} of virtual machine '{}' and cannot \
                         {problem}: the memory manager backs it from its pool",
                        mr.name, vm.name
                    ),
                    "map",
                    &map.at,
                ));
            }
        }
        let ranges = guest_ranges(system, vm);
        let ram: u64 = ranges.ram.iter().map(|&(_, size)| size).sum();
        if let Some(limit) = vm.memory_limit {
            let problem = if limit == 0 || !limit.is_multiple_of(tenure_abi::mm::PAGE_SIZE) {
                Some("must be a non-zero multiple of 0x1000".to_string())
            } else if limit > ram {
                Some(format!("exceeds its RAM (0x{ram:x} bytes)"))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(element(
                    format!("memory_limit 0x{limit:x} of virtual machine '{}' {problem}", vm.name),
                    "virtual_machine",
                    &vm.at,
                ));
            }
        }
        for (n, max, what) in [
            (ranges.ram.len(), MAX_RAM_RANGES, "RAM ranges"),
            (ranges.devices.len(), MAX_DEVICE_RANGES, "device ranges"),
        ] {
            if n > max {
                return Err(element(
                    format!(
                        "virtual machine '{}' has {n} {what} (adjacent maps merged); the memory \
                         manager takes at most {max}",
                        vm.name
                    ),
                    "virtual_machine",
                    &vm.at,
                ));
            }
        }
    }
    Ok(ram_owner)
}

/// Clients within capacity, each VMM one of them, and no client mapping
/// anything into its window.
fn client_rules(
    system: &SystemDescription,
    pds: &[&ProtectionDomain],
    mm: Option<&ProtectionDomain>,
) -> Result<()> {
    let Some(mm) = mm else { return Ok(()) };
    let clients = mm_clients(system);
    if let Some(extra) = clients.get(MAX_CLIENTS) {
        return Err(element(
            format!(
                "too many clients of the memory manager '{}'; it serves at most {MAX_CLIENTS}",
                mm.name
            ),
            "end",
            &extra.at,
        ));
    }
    let mut seen = HashSet::new();
    for client in &clients {
        if !seen.insert(client.pd.as_str()) {
            return Err(element(
                format!(
                    "protection domain '{}' has a second channel calling the memory manager '{}'; \
                     mm knows a client by its one channel",
                    client.pd, mm.name
                ),
                "end",
                &client.at,
            ));
        }
    }
    for pd in pds {
        if let Some(vm) = &pd.virtual_machine
            && !seen.contains(pd.name.as_str())
        {
            return Err(element(
                format!(
                    "the VMM '{}' of virtual machine '{}' must have a channel with pp=\"true\" \
                     to the memory manager '{}'",
                    pd.name, vm.name, mm.name
                ),
                "virtual_machine",
                &vm.at,
            ));
        }
        if !seen.contains(pd.name.as_str()) {
            continue;
        }
        let window_end = WINDOW_IPA + WINDOW_SIZE;
        for map in &pd.maps {
            let size = system.memory_region(&map.mr).map_or(0, |mr| mr.size);
            let end = map.vaddr.saturating_add(size);
            if map.vaddr < window_end && WINDOW_IPA < end {
                return Err(element(
                    format!(
                        "map for '{}' has virtual address range [{:#x}..{end:#x}) which overlaps \
                         the memory manager's window [{WINDOW_IPA:#x}..{window_end:#x}) of \
                         protection domain '{}'",
                        map.mr, map.vaddr, pd.name
                    ),
                    "map",
                    &map.at,
                ));
            }
        }
    }
    Ok(())
}
