//! The values the tool writes into each PD's program: its name, passive
//! flag and channel masks for the runtime, and every `setvar_*` system.xml
//! asks for.

use crate::elf::{ElfError, PdElf};
use crate::layout::{Content, PdLayout};
use crate::sdf::{ProtectionDomain, SystemDescription};
use std::collections::BTreeMap;
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
