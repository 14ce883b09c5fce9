//! The values the tool writes into each PD's program: its name, passive
//! flag and channel masks for the runtime, every `setvar_*` system.xml
//! asks for, and the memory manager's configuration.

use crate::elf::{ElfError, PdElf};
use crate::layout::{Content, PdLayout};
use crate::sdf::{ProtectionDomain, SystemDescription};
use std::collections::BTreeMap;
use std::fmt;
use tenure_abi::PD_NAME_LEN;

/// Runtime symbols of libmicrokit (`libmicrokit/src/symbols.rs`).
pub mod symbol {
    /// The PD's name, NUL padded to 64 bytes.
    pub const NAME: &str = "__tenure_name";
    /// Bit per channel the PD may notify.
    pub const NOTIFICATIONS: &str = "__tenure_notifications";
    /// Bit per channel the PD may call.
    pub const PPS: &str = "__tenure_pps";
    /// Bit per channel that is an interrupt.
    pub const IRQS: &str = "__tenure_irqs";
    /// 1 if the PD is passive.
    pub const PASSIVE: &str = "__tenure_passive";
    /// The mm guest id of the PD's virtual machine (VM index + 1), 0 for
    /// none.
    pub const GUEST: &str = "__tenure_guest";
    /// The memory manager's configuration: an array of `u64`, at least
    /// `tenure_abi::mm_config::WORDS` long (`abi/src/mm_config.rs`).
    pub const MM_CONFIG: &str = "__tenure_mm_config";
}

/// Why the memory manager's configuration could not be patched.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MmConfigError {
    /// The program has no [`symbol::MM_CONFIG`].
    Missing,
    /// The symbol is smaller than the configuration, or not whole words.
    TooSmall {
        /// Its size in bytes.
        size: u64,
        /// Bytes the configuration needs.
        need: u64,
    },
    /// The symbol lies in no loadable segment.
    Elf(ElfError),
}

impl fmt::Display for MmConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = symbol::MM_CONFIG;
        match self {
            MmConfigError::Missing => write!(
                f,
                "the memory manager's program has no '{name}' symbol (an array of u64 the tool \
                 fills with mm's configuration; is it built against tenure-mm?)"
            ),
            MmConfigError::TooSmall { size, need } => write!(
                f,
                "the memory manager's '{name}' symbol is {size} bytes; its configuration needs \
                 {need} bytes ({} words)",
                need / 8
            ),
            MmConfigError::Elf(e) => write!(f, "{e}"),
        }
    }
}

/// Writes the memory manager's configuration `words` over
/// [`symbol::MM_CONFIG`] in `program`, zeroing the rest of a larger
/// symbol.
pub fn patch_mm_config(program: &mut PdElf, words: &[u64]) -> Result<(), MmConfigError> {
    let (_, size) = program.symbol(symbol::MM_CONFIG).ok_or(MmConfigError::Missing)?;
    let need = 8 * words.len() as u64;
    if size < need || !size.is_multiple_of(8) {
        return Err(MmConfigError::TooSmall { size, need });
    }
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.resize(size as usize, 0);
    program.patch(symbol::MM_CONFIG, &bytes).map_err(MmConfigError::Elf)
}

/// The channel masks of one PD.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Masks {
    /// Channels it may notify.
    pub notifications: u64,
    /// Channels it may call.
    pub pps: u64,
    /// Channels that are its interrupts.
    pub irqs: u64,
}

/// The masks of `pd` from the system's channels and its IRQs.
#[must_use]
pub fn masks(system: &SystemDescription, pd: &ProtectionDomain) -> Masks {
    let mut m = Masks::default();
    for end in system.channels.iter().flat_map(|c| &c.ends).filter(|e| e.pd == pd.name) {
        if end.notify {
            m.notifications |= 1 << end.id;
        }
        if end.pp {
            m.pps |= 1 << end.id;
        }
    }
    for irq in &pd.irqs {
        m.irqs |= 1 << irq.id;
    }
    m
}

/// Patches `program` (of `pd`, laid out as `layout`) with everything the
/// runtime and system.xml's `setvar_*` attributes need. The runtime symbols
/// must exist (a PD is built against libmicrokit); a `setvar` symbol must
/// exist and be 8 bytes, as Microkit requires.
pub fn patch_pd(
    system: &SystemDescription,
    pd: &ProtectionDomain,
    layout: &PdLayout,
    regions: &BTreeMap<String, u64>,
    program: &mut PdElf,
) -> Result<(), ElfError> {
    let mut name = [0u8; PD_NAME_LEN];
    let bytes = pd.name.as_bytes();
    name[..bytes.len().min(PD_NAME_LEN)].copy_from_slice(&bytes[..bytes.len().min(PD_NAME_LEN)]);
    program.patch(symbol::NAME, &name)?;
    let m = masks(system, pd);
    program.patch_u64(symbol::NOTIFICATIONS, m.notifications)?;
    program.patch_u64(symbol::PPS, m.pps)?;
    program.patch_u64(symbol::IRQS, m.irqs)?;
    program.patch(symbol::PASSIVE, &[u8::from(pd.passive)])?;
    let vm = crate::sdf::guests::vms(system).position(|(vmm, _)| vmm.name == pd.name);
    program.patch_u64(symbol::GUEST, vm.map_or(0, |index| index as u64 + 1))?;
    for map in &pd.maps {
        let mapping = layout
            .mappings
            .iter()
            .find(|x| x.vaddr == map.vaddr && x.content == Content::Region(map.mr.clone()));
        if let Some(sym) = &map.setvar_vaddr {
            program.patch_u64(sym, map.vaddr)?;
        }
        if let (Some(sym), Some(mapping)) = (&map.setvar_size, mapping) {
            program.patch_u64(sym, mapping.size)?;
        }
        if let Some(sym) = &map.setvar_prefill_size {
            let mr = system.memory_region(&map.mr);
            let len = mr.and_then(|mr| mr.prefill.as_ref()).map_or(0, |p| p.data.len());
            program.patch_u64(sym, len as u64)?;
        }
    }
    for setvar in &pd.setvars {
        program.patch_u64(&setvar.symbol, regions[&setvar.region_paddr])?;
    }
    for end in system.channels.iter().flat_map(|c| &c.ends).filter(|e| e.pd == pd.name) {
        if let Some(sym) = &end.setvar_id {
            program.patch_u64(sym, end.id.into())?;
        }
    }
    for irq in &pd.irqs {
        if let Some(sym) = &irq.setvar_id {
            program.patch_u64(sym, irq.id.into())?;
        }
    }
    for child in &pd.children {
        if let (Some(sym), Some(id)) = (&child.setvar_id, child.id) {
            program.patch_u64(sym, id)?;
        }
    }
    for vcpu in pd.virtual_machine.iter().flat_map(|vm| &vm.vcpus) {
        if let Some(sym) = &vcpu.setvar_id {
            program.patch_u64(sym, vcpu.id.into())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::{Seg, build};
    use crate::layout::{PhysAllocator, lay_out};
    use crate::sdf::{BoardLimits, parse};
    use object::elf;

    fn program(extra: &[(&str, u64, u64)]) -> PdElf {
        let data = Seg {
            vaddr: 0x20_0000,
            data: &[0; 0x100],
            mem_size: 0x2000,
            flags: elf::PF_R | elf::PF_W,
        };
        let mut syms = vec![
            (symbol::NAME, 0x20_0000, 64),
            (symbol::NOTIFICATIONS, 0x20_0040, 8),
            (symbol::PPS, 0x20_0048, 8),
            (symbol::IRQS, 0x20_0050, 8),
            (symbol::PASSIVE, 0x20_0058, 1),
            (symbol::GUEST, 0x20_00f0, 8),
        ];
        syms.extend_from_slice(extra);
        PdElf::parse(&build(elf::EM_AARCH64, elf::ET_EXEC, &[data], &syms)).unwrap()
    }

    const XML: &str = r#"<system>
        <memory_region name="buf" size="0x3000"/>
        <protection_domain name="client" priority="1">
            <program_image path="c.elf"/>
            <map mr="buf" vaddr="0x400000" perms="rw" setvar_vaddr="buf_vaddr" setvar_size="buf_size"/>
            <setvar symbol="buf_paddr" region_paddr="buf"/>
            <irq irq="33" id="5" setvar_id="uart_irq"/>
        </protection_domain>
        <protection_domain name="server" priority="9" passive="true">
            <program_image path="s.elf"/>
        </protection_domain>
        <channel>
            <end pd="client" id="2" pp="true" setvar_id="server_ch"/>
            <end pd="server" id="0" notify="false"/>
        </channel>
    </system>"#;

    #[test]
    fn names_masks_and_setvars_are_written_into_the_program() {
        let sys = parse("t.system", XML, &BoardLimits::default()).unwrap();
        let extra = [
            ("buf_vaddr", 0x20_0060, 8),
            ("buf_size", 0x20_0068, 8),
            ("buf_paddr", 0x20_0070, 8),
            ("uart_irq", 0x20_0078, 8),
            ("server_ch", 0x20_0080, 8),
        ];
        let mut programs: BTreeMap<String, PdElf> =
            [("client".to_string(), program(&extra)), ("server".to_string(), program(&[]))].into();
        let ram = [(0x4000_0000, 0x100_0000)];
        let layout = lay_out(&sys, &programs, &mut PhysAllocator::new(&ram), &ram).unwrap();
        let client = programs.get_mut("client").unwrap();
        patch_pd(&sys, sys.pd("client").unwrap(), &layout.pds[0], &layout.regions, client).unwrap();
        let word = |p: &PdElf, at| u64::from_le_bytes(p.read(at, 8).unwrap().try_into().unwrap());
        assert_eq!(&client.read(0x20_0000, 7).unwrap(), b"client\0");
        assert_eq!(word(client, 0x20_0040), 1 << 2, "client may notify channel 2");
        assert_eq!(word(client, 0x20_0048), 1 << 2, "and call it");
        assert_eq!(word(client, 0x20_0050), 1 << 5);
        assert_eq!(word(client, 0x20_0060), 0x40_0000);
        assert_eq!(word(client, 0x20_0068), 0x3000);
        assert_eq!(word(client, 0x20_0070), layout.regions["buf"]);
        assert_eq!(word(client, 0x20_0078), 5);
        assert_eq!(word(client, 0x20_0080), 2);
        let server = programs.get_mut("server").unwrap();
        patch_pd(&sys, sys.pd("server").unwrap(), &layout.pds[1], &layout.regions, server).unwrap();
        assert_eq!(word(server, 0x20_0040), 0, "the server end has notify=false");
        assert_eq!(server.read(0x20_0058, 1).unwrap(), [1], "passive");
    }

    #[test]
    fn vcpu_ids_and_prefill_sizes_are_patched() {
        let dir = std::env::temp_dir().join(format!("tenure-patch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("blob.bin"), [7u8; 300]).unwrap();
        let xml = r#"<system>
            <memory_region name="blob" prefill_path="blob.bin"/>
            <memory_region name="pool" size="0x400000"/>
            <memory_region name="ram" size="0x200000"/>
            <protection_domain name="mm" priority="9">
                <program_image path="m.elf"/>
                <map mr="pool" vaddr="0x10000000"/>
                <guest_memory mr="pool"/>
            </protection_domain>
            <protection_domain name="vmm" priority="1">
                <program_image path="v.elf"/>
                <map mr="blob" vaddr="0x400000" perms="r" setvar_prefill_size="blob_len"/>
                <virtual_machine name="g">
                    <vcpu id="4" setvar_id="boot_vcpu"/>
                    <map mr="ram" vaddr="0x40000000"/>
                </virtual_machine>
            </protection_domain>
            <channel><end pd="vmm" id="0" pp="true"/><end pd="mm" id="0"/></channel>
        </system>"#;
        let sys = crate::sdf::parse_with_search_paths(
            "t.system",
            xml,
            &BoardLimits::default(),
            std::slice::from_ref(&dir),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let sys = sys.unwrap();
        let extra = [("blob_len", 0x20_0060, 8), ("boot_vcpu", 0x20_0068, 8)];
        let mut programs: BTreeMap<String, PdElf> =
            [("mm".to_string(), program(&[])), ("vmm".to_string(), program(&extra))].into();
        let ram = [(0x4000_0000, 0x100_0000)];
        let layout = lay_out(&sys, &programs, &mut PhysAllocator::new(&ram), &ram).unwrap();
        let vmm = programs.get_mut("vmm").unwrap();
        patch_pd(&sys, sys.pd("vmm").unwrap(), &layout.pds[1], &layout.regions, vmm).unwrap();
        let word = |p: &PdElf, at| u64::from_le_bytes(p.read(at, 8).unwrap().try_into().unwrap());
        assert_eq!(word(vmm, 0x20_0060), 300, "the prefill's length, not the region's size");
        assert_eq!(word(vmm, 0x20_0068), 4);
        assert_eq!(word(vmm, 0x20_00f0), 1, "the VMM of VM 0: guest id 1");
        let mm = programs.get_mut("mm").unwrap();
        patch_pd(&sys, sys.pd("mm").unwrap(), &layout.pds[0], &layout.regions, mm).unwrap();
        assert_eq!(word(mm, 0x20_00f0), 0, "no virtual machine");
    }

    #[test]
    fn the_mm_configuration_fills_its_symbol() {
        let mut p = program(&[(symbol::MM_CONFIG, 0x20_0100, 32)]);
        patch_mm_config(&mut p, &[1, 2, 3]).unwrap();
        let word = |at| u64::from_le_bytes(p.read(at, 8).unwrap().try_into().unwrap());
        assert_eq!(
            [word(0x20_0100), word(0x20_0108), word(0x20_0110), word(0x20_0118)],
            [1, 2, 3, 0]
        );
        assert_eq!(
            patch_mm_config(&mut p, &[0; 5]),
            Err(MmConfigError::TooSmall { size: 32, need: 40 })
        );
        let mut bare = program(&[]);
        assert_eq!(patch_mm_config(&mut bare, &[0]), Err(MmConfigError::Missing));
    }

    #[test]
    fn a_missing_setvar_symbol_is_an_error() {
        let sys = parse("t.system", XML, &BoardLimits::default()).unwrap();
        let mut programs: BTreeMap<String, PdElf> =
            [("client".to_string(), program(&[])), ("server".to_string(), program(&[]))].into();
        let ram = [(0x4000_0000, 0x100_0000)];
        let layout = lay_out(&sys, &programs, &mut PhysAllocator::new(&ram), &ram).unwrap();
        let client = programs.get_mut("client").unwrap();
        let err =
            patch_pd(&sys, sys.pd("client").unwrap(), &layout.pds[0], &layout.regions, client)
                .unwrap_err();
        assert_eq!(err.to_string(), "could not patch symbol 'buf_vaddr': it does not exist");
    }
}
