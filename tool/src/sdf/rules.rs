//! Step 2: the rules that span elements, in the order Microkit checks them.

use std::collections::{HashMap, HashSet};

use tenure_abi::MAX_PDS;

use super::{
    BoardLimits, Location, Map, MemoryRegion, ProtectionDomain, SdfError, SystemDescription,
    Warning,
};

type Result<T> = std::result::Result<T, SdfError>;

/// Checks `system` as a whole; returns its warnings.
pub(super) fn check(system: &SystemDescription, board: &BoardLimits) -> Result<Vec<Warning>> {
    let pds = system.all_pds();
    for pd in &pds {
        child_ids(pd)?;
    }
    for end in system.channels.iter().flat_map(|ch| &ch.ends) {
        if !pds.iter().any(|pd| pd.name == end.pd) {
            return Err(SdfError::Element {
                message: format!("invalid PD name '{}'", end.pd),
                element: "end".to_string(),
                at: end.at.clone(),
            });
        }
    }

    if pds.is_empty() {
        return Err(global("at least one protection domain must be defined".to_string()));
    }
    if pds.len() > MAX_PDS {
        return Err(global(format!(
            "too many protection domains ({}) defined. Maximum is {MAX_PDS}.",
            pds.len()
        )));
    }
    unique_names(pds.iter().map(|pd| (&pd.name, &pd.at)), "protection domain")?;
    unique_names(system.memory_regions.iter().map(|mr| (&mr.name, &mr.at)), "memory region")?;
    let vms = pds.iter().filter_map(|pd| pd.virtual_machine.as_ref());
    unique_names(vms.map(|vm| (&vm.name, &vm.at)), "virtual machine")?;

    irqs_and_channels(system, &pds)?;
    end_symbols(system, &pds)?;

    for pd in &pds {
        let stack_bottom = board.pd_stack_top.saturating_sub(pd.stack_size);
        let space = Space { kind: "protection domain", name: &pd.name, limit: stack_bottom };
        maps(&system.memory_regions, &space, &pd.maps)?;
        if let Some(vm) = &pd.virtual_machine {
            let space =
                Space { kind: "virtual machine", name: &vm.name, limit: board.vm_max_vaddr };
            maps(&system.memory_regions, &space, &vm.maps)?;
        }
        for setvar in &pd.setvars {
            if system.memory_region(&setvar.region_paddr).is_none() {
                return Err(SdfError::At {
                    message: format!(
                        "invalid memory region name '{}' on 'setvar'",
                        setvar.region_paddr
                    ),
                    at: setvar.at.clone(),
                });
            }
        }
    }
    physical_overlaps(&system.memory_regions)?;
    super::guests::check(system, &pds)?;

    let mut used: HashSet<&str> = HashSet::new();
    for pd in &pds {
        used.extend(pd.maps.iter().map(|m| m.mr.as_str()));
        used.extend(pd.setvars.iter().map(|s| s.region_paddr.as_str()));
        used.extend(pd.guest_memory.iter().map(|g| g.mr.as_str()));
        if let Some(vm) = &pd.virtual_machine {
            used.extend(vm.maps.iter().map(|m| m.mr.as_str()));
        }
    }
    Ok(system
        .memory_regions
        .iter()
        .filter(|mr| !used.contains(mr.name.as_str()))
        .map(|mr| Warning::UnusedMemoryRegion { name: mr.name.clone(), at: mr.at.clone() })
        .collect())
}

fn global(message: String) -> SdfError {
    SdfError::Global { message }
}

/// Children's ids are unique in their parent and differ from its vCPUs'
/// (both index the parent's child capabilities).
fn child_ids(pd: &ProtectionDomain) -> Result<()> {
    let mut seen = HashSet::new();
    for child in &pd.children {
        let Some(id) = child.id else { continue };
        if !seen.insert(id) {
            return Err(SdfError::At {
                message: format!("duplicate id: {id} in protection domain: '{}'", pd.name),
                at: child.at.clone(),
            });
        }
        let vcpus = pd.virtual_machine.iter().flat_map(|vm| &vm.vcpus);
        if vcpus.into_iter().any(|vcpu| u64::from(vcpu.id) == id) {
            return Err(SdfError::At {
                message: format!(
                    "duplicate id: {id} clashes with virtual machine vcpu id in protection \
                     domain: '{}'",
                    pd.name
                ),
                at: child.at.clone(),
            });
        }
    }
    Ok(())
}

/// The second element with an already used name is refused.
fn unique_names<'a>(
    items: impl Iterator<Item = (&'a String, &'a Location)>,
    kind: &str,
) -> Result<()> {
    let mut seen = HashSet::new();
    for (name, at) in items {
        if !seen.insert(name) {
            return Err(SdfError::At {
                message: format!("duplicate {kind} name '{name}'"),
                at: at.clone(),
            });
        }
    }
    Ok(())
}

/// IRQ numbers are unique in the system; a PD's IRQ and channel ids share
/// one namespace; a PPC goes to a strictly higher priority.
fn irqs_and_channels(system: &SystemDescription, pds: &[&ProtectionDomain]) -> Result<()> {
    let mut irq_numbers = HashSet::new();
    for pd in pds {
        for irq in &pd.irqs {
            if !irq_numbers.insert(irq.irq) {
                return Err(SdfError::At {
                    message: format!(
                        "duplicate irq: {} in protection domain: '{}'",
                        irq.irq, pd.name
                    ),
                    at: irq.at.clone(),
                });
            }
        }
    }

    let duplicate_id = |id: u8, pd: &str, at: &Location| SdfError::At {
        message: format!("duplicate channel id: {id} in protection domain: '{pd}'"),
        at: at.clone(),
    };
    let mut ids: HashMap<&str, HashSet<u8>> = HashMap::new();
    for pd in pds {
        let set = ids.entry(pd.name.as_str()).or_default();
        for irq in &pd.irqs {
            if !set.insert(irq.id) {
                return Err(duplicate_id(irq.id, &pd.name, &irq.at));
            }
        }
    }
    let by_name: HashMap<&str, &ProtectionDomain> =
        pds.iter().map(|pd| (pd.name.as_str(), *pd)).collect();
    for channel in &system.channels {
        for end in &channel.ends {
            if !ids.entry(end.pd.as_str()).or_default().insert(end.id) {
                return Err(duplicate_id(end.id, &end.pd, &end.at));
            }
        }
        for (caller, callee) in [(0, 1), (1, 0)] {
            let (caller, callee) = (&channel.ends[caller], &channel.ends[callee]);
            let (from, to) = (by_name[caller.pd.as_str()], by_name[callee.pd.as_str()]);
            if caller.pp && from.priority >= to.priority {
                return Err(SdfError::At {
                    message: format!(
                        "PPCs must be to protection domains of strictly higher priorities; \
                         channel with PPC exists from pd {} (priority: {}) to pd {} \
                         (priority: {})",
                        from.name, from.priority, to.name, to.priority
                    ),
                    at: caller.at.clone(),
                });
            }
        }
    }
    Ok(())
}

/// An end's `setvar_id` is one more symbol of its PD's image.
fn end_symbols(system: &SystemDescription, pds: &[&ProtectionDomain]) -> Result<()> {
    let mut symbols: HashMap<&str, HashSet<&str>> = HashMap::new();
    for pd in pds {
        let set = symbols.entry(pd.name.as_str()).or_default();
        for map in &pd.maps {
            set.extend(map.setvar_vaddr.as_deref());
            set.extend(map.setvar_size.as_deref());
            set.extend(map.setvar_prefill_size.as_deref());
        }
        set.extend(pd.irqs.iter().filter_map(|irq| irq.setvar_id.as_deref()));
        set.extend(pd.setvars.iter().map(|s| s.symbol.as_str()));
        set.extend(pd.children.iter().filter_map(|c| c.setvar_id.as_deref()));
        let vcpus = pd.virtual_machine.iter().flat_map(|vm| &vm.vcpus);
        set.extend(vcpus.filter_map(|v| v.setvar_id.as_deref()));
    }
    for end in system.channels.iter().flat_map(|ch| &ch.ends) {
        let Some(symbol) = end.setvar_id.as_deref() else { continue };
        if !symbols.entry(end.pd.as_str()).or_default().insert(symbol) {
            return Err(SdfError::Element {
                message: format!("setvar on symbol '{symbol}' already exists"),
                element: "end".to_string(),
                at: end.at.clone(),
            });
        }
    }
    Ok(())
}

/// One address space that maps memory regions.
struct Space<'a> {
    /// "protection domain" or "virtual machine".
    kind: &'static str,
    name: &'a str,
    /// Maps must end at or below this: a PD's stack bottom, a VM's top.
    limit: u64,
}

/// Maps name existing regions, are aligned to the region's page size,
/// stay below the limit and do not overlap each other.
fn maps(mrs: &[MemoryRegion], space: &Space, maps: &[Map]) -> Result<()> {
    let mut placed: Vec<(&str, u64, u64)> = Vec::with_capacity(maps.len());
    for map in maps {
        let Some(mr) = mrs.iter().find(|mr| mr.name == map.mr) else {
            return Err(SdfError::At {
                message: format!("invalid memory region name '{}' on 'map'", map.mr),
                at: map.at.clone(),
            });
        };
        if map.vaddr % mr.page_size != 0 {
            return Err(SdfError::At {
                message: "invalid vaddr alignment on 'map'".to_string(),
                at: map.at.clone(),
            });
        }
        let (start, end) = (map.vaddr, map.vaddr.saturating_add(mr.size));
        if end > space.limit {
            let what = match space.kind {
                "protection domain" => "the stack bottom",
                _ => "the top of guest memory",
            };
            return Err(SdfError::At {
                message: format!(
                    "map for '{}' has virtual address range [0x{start:x}..0x{end:x}) which \
                     extends beyond {what} 0x{:x} in {} '{}'",
                    map.mr, space.limit, space.kind, space.name
                ),
                at: map.at.clone(),
            });
        }
        if let Some((other, o_start, o_end)) =
            placed.iter().find(|&&(_, s, e)| start < e && s < end)
        {
            return Err(SdfError::At {
                message: format!(
                    "map for '{}' has virtual address range [0x{start:x}..0x{end:x}) which \
                     overlaps with map for '{other}' [0x{o_start:x}..0x{o_end:x}) in {} '{}'",
                    map.mr, space.kind, space.name
                ),
                at: map.at.clone(),
            });
        }
        placed.push((&map.mr, start, end));
    }
    Ok(())
}

/// Regions at fixed physical addresses may not share memory.
fn physical_overlaps(mrs: &[MemoryRegion]) -> Result<()> {
    let mut placed: Vec<(&str, u64, u64)> = Vec::new();
    for mr in mrs {
        let Some(start) = mr.phys_addr else { continue };
        let end = start.saturating_add(mr.size);
        if let Some((other, o_start, o_end)) =
            placed.iter().find(|&&(_, s, e)| start < e && s < end)
        {
            return Err(SdfError::At {
                message: format!(
                    "memory region '{}' physical address range [0x{start:x}..0x{end:x}) \
                     overlaps with another memory region '{other}' [0x{o_start:x}..0x{o_end:x})",
                    mr.name
                ),
                at: mr.at.clone(),
            });
        }
        placed.push((&mr.name, start, end));
    }
    Ok(())
}
