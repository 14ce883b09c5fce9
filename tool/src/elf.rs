//! Protection-domain programs: reading a PD's ELF file and patching the
//! symbols the tool fills in (`var!`, channel masks, the PD's name).
//!
//! A PD is a static aarch64 executable (`ET_EXEC`) linked at the addresses
//! it runs at: with stage 1 off, its virtual addresses are IPAs.

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{LittleEndian as LE, Object, ObjectSymbol};
use std::collections::BTreeMap;
use std::fmt;

/// Access of a loadable segment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SegmentPerms {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub execute: bool,
}

/// A loadable segment: its bytes and how much memory it spans.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Segment {
    /// First virtual address (an IPA for a PD).
    pub vaddr: u64,
    /// Bytes of memory it spans; past `data` it is zero.
    pub mem_size: u64,
    /// Its initialised bytes (possibly extended by patching).
    pub data: Vec<u8>,
    /// Access.
    pub perms: SegmentPerms,
}

/// A PD program, ready to be patched and laid out.
#[derive(Clone, Debug)]
pub struct PdElf {
    /// Where the kernel starts it.
    pub entry: u64,
    /// Loadable segments in address order.
    pub segments: Vec<Segment>,
    symbols: BTreeMap<String, (u64, u64)>,
}

/// Why a PD program was refused or could not be patched.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ElfError {
    /// Not an ELF file the tool can read.
    Unreadable(String),
    /// An ELF file of the wrong kind; the text says what is wrong.
    Unsupported(String),
    /// Two loadable segments overlap.
    Overlap(u64),
    /// The symbol does not exist.
    NoSymbol(String),
    /// The symbol's size differs from what is written into it.
    SymbolSize {
        /// The symbol.
        symbol: String,
        /// Its size in the ELF file.
        size: u64,
        /// Bytes the tool writes.
        want: usize,
    },
    /// The symbol lies in no loadable segment.
    NotLoaded(String),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElfError::Unreadable(why) => write!(f, "not a readable ELF file: {why}"),
            ElfError::Unsupported(why) => write!(f, "unsupported ELF file: {why}"),
            ElfError::Overlap(addr) => write!(f, "loadable segments overlap at {addr:#x}"),
            ElfError::NoSymbol(s) => write!(f, "could not patch symbol '{s}': it does not exist"),
            ElfError::SymbolSize { symbol, size, want } => write!(
                f,
                "could not patch symbol '{symbol}': it is {size} bytes, the value is {want}"
            ),
            ElfError::NotLoaded(s) => {
                write!(f, "could not patch symbol '{s}': it lies in no loadable segment")
            }
        }
    }
}

impl PdElf {
    /// Reads a PD program: a little-endian aarch64 `ET_EXEC` with at least
    /// one loadable segment, none overlapping.
    pub fn parse(bytes: &[u8]) -> Result<PdElf, ElfError> {
        let file =
            ElfFile64::<LE>::parse(bytes).map_err(|e| ElfError::Unreadable(e.to_string()))?;
        let header = file.elf_header();
        if header.e_machine(LE) != elf::EM_AARCH64 {
            return Err(ElfError::Unsupported("not an aarch64 program".into()));
        }
        if header.e_type(LE) != elf::ET_EXEC {
            return Err(ElfError::Unsupported("not a static executable (ET_EXEC)".into()));
        }
        let mut segments = Vec::new();
        for ph in file.elf_program_headers() {
            if ph.p_type(LE) != elf::PT_LOAD || ph.p_memsz(LE) == 0 {
                continue;
            }
            let data = ph
                .data(LE, bytes)
                .map_err(|()| ElfError::Unreadable("segment outside the file".into()))?
                .to_vec();
            let flags = ph.p_flags(LE);
            segments.push(Segment {
                vaddr: ph.p_vaddr(LE),
                mem_size: ph.p_memsz(LE).max(data.len() as u64),
                data,
                perms: SegmentPerms {
                    read: flags & elf::PF_R != 0,
                    write: flags & elf::PF_W != 0,
                    execute: flags & elf::PF_X != 0,
                },
            });
        }
        if segments.is_empty() {
            return Err(ElfError::Unsupported("no loadable segment".into()));
        }
        segments.sort_by_key(|s| s.vaddr);
        for pair in segments.windows(2) {
            let end = pair[0].vaddr.checked_add(pair[0].mem_size);
            if end.is_none_or(|end| end > pair[1].vaddr) {
                return Err(ElfError::Overlap(pair[1].vaddr));
            }
        }
        let symbols = file
            .symbols()
            .filter_map(|s| Some((s.name().ok()?.to_string(), (s.address(), s.size()))))
            .collect();
        Ok(PdElf { entry: header.e_entry(LE), segments, symbols })
    }

    /// Address and size of `symbol`.
    #[must_use]
    pub fn symbol(&self, symbol: &str) -> Option<(u64, u64)> {
        self.symbols.get(symbol).copied()
    }

    /// Writes `value` over `symbol`, whose size must be `value.len()`. A
    /// symbol in zero-initialised memory (`.bss`) grows its segment's data
    /// up to it.
    pub fn patch(&mut self, symbol: &str, value: &[u8]) -> Result<(), ElfError> {
        let (addr, size) = self.symbol(symbol).ok_or_else(|| ElfError::NoSymbol(symbol.into()))?;
        if size != value.len() as u64 {
            return Err(ElfError::SymbolSize { symbol: symbol.into(), size, want: value.len() });
        }
        let segment = self
            .segments
            .iter_mut()
            .find(|s| addr >= s.vaddr && addr + size <= s.vaddr + s.mem_size)
            .ok_or_else(|| ElfError::NotLoaded(symbol.into()))?;
        let start = (addr - segment.vaddr) as usize;
        let end = start + value.len();
        if segment.data.len() < end {
            segment.data.resize(end, 0);
        }
        segment.data[start..end].copy_from_slice(value);
        Ok(())
    }

    /// Writes a little-endian `u64` over an 8-byte symbol.
    pub fn patch_u64(&mut self, symbol: &str, value: u64) -> Result<(), ElfError> {
        self.patch(symbol, &value.to_le_bytes())
    }

    /// The bytes at `addr..addr + len` as loaded (zeroes past the data).
    #[must_use]
    pub fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let s = self
            .segments
            .iter()
            .find(|s| addr >= s.vaddr && addr + len as u64 <= s.vaddr + s.mem_size)?;
        let start = (addr - s.vaddr) as usize;
        Some((start..start + len).map(|i| s.data.get(i).copied().unwrap_or(0)).collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use object::write::elf::{
        FileHeader as WFileHeader, ProgramHeader as WProgramHeader, Sym, Writer,
    };

    /// One loadable segment of a test program.
    pub(crate) struct Seg<'a> {
        pub vaddr: u64,
        pub data: &'a [u8],
        pub mem_size: u64,
        pub flags: u32,
    }

    /// Writes an ELF file with the given segments and absolute symbols.
    pub(crate) fn build(
        machine: u16,
        e_type: u16,
        segs: &[Seg<'_>],
        syms: &[(&str, u64, u64)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer::new(object::Endianness::Little, true, &mut out);
        w.reserve_file_header();
        w.reserve_program_headers(segs.len() as u32);
        let offsets: Vec<usize> = segs.iter().map(|s| w.reserve(s.data.len(), 4096)).collect();
        let names: Vec<_> = syms.iter().map(|(n, _, _)| w.add_string(n.as_bytes())).collect();
        w.reserve_null_symbol_index();
        for _ in syms {
            w.reserve_symbol_index(None);
        }
        w.reserve_null_section_index();
        w.reserve_symtab_section_index();
        w.reserve_strtab_section_index();
        w.reserve_shstrtab_section_index();
        w.reserve_symtab();
        w.reserve_strtab();
        w.reserve_shstrtab();
        w.reserve_section_headers();
        w.write_file_header(&WFileHeader {
            os_abi: 0,
            abi_version: 0,
            e_type,
            e_machine: machine,
            e_entry: segs.first().map_or(0, |s| s.vaddr),
            e_flags: 0,
        })
        .unwrap();
        w.write_align_program_headers();
        for (s, &off) in segs.iter().zip(&offsets) {
            w.write_program_header(&WProgramHeader {
                p_type: elf::PT_LOAD,
                p_flags: s.flags,
                p_offset: off as u64,
                p_vaddr: s.vaddr,
                p_paddr: s.vaddr,
                p_filesz: s.data.len() as u64,
                p_memsz: s.mem_size,
                p_align: 4096,
            });
        }
        for (s, &off) in segs.iter().zip(&offsets) {
            w.pad_until(off);
            w.write(s.data);
        }
        w.write_null_symbol();
        for (&(_, addr, size), &name) in syms.iter().zip(&names) {
            w.write_symbol(&Sym {
                name: Some(name),
                section: None,
                st_info: (elf::STB_GLOBAL << 4) | elf::STT_OBJECT,
                st_other: 0,
                st_shndx: elf::SHN_ABS,
                st_value: addr,
                st_size: size,
            });
        }
        w.write_strtab();
        w.write_shstrtab();
        w.write_null_section_header();
        w.write_symtab_section_header(1);
        w.write_strtab_section_header();
        w.write_shstrtab_section_header();
        out
    }

    pub(crate) fn pd() -> Vec<u8> {
        let text = Seg {
            vaddr: 0x20_0000,
            data: &[0x1f, 0x20, 0x03, 0xd5],
            mem_size: 4,
            flags: elf::PF_R | elf::PF_X,
        };
        let data = Seg {
            vaddr: 0x20_1000,
            data: &[1, 2, 3, 4, 5, 6, 7, 8],
            mem_size: 0x2000,
            flags: elf::PF_R | elf::PF_W,
        };
        build(
            elf::EM_AARCH64,
            elf::ET_EXEC,
            &[text, data],
            &[("in_data", 0x20_1000, 8), ("in_bss", 0x20_2000, 8), ("name", 0x20_1800, 4)],
        )
    }

    #[test]
    fn segments_and_symbols_are_read() {
        let elf = PdElf::parse(&pd()).unwrap();
        assert_eq!(elf.entry, 0x20_0000);
        assert_eq!(elf.segments.len(), 2);
        assert!(elf.segments[0].perms.execute && !elf.segments[0].perms.write);
        assert_eq!(elf.segments[1].mem_size, 0x2000);
        assert_eq!(elf.symbol("in_bss"), Some((0x20_2000, 8)));
    }

    #[test]
    fn patching_writes_into_data_and_grows_into_bss() {
        let mut elf = PdElf::parse(&pd()).unwrap();
        elf.patch_u64("in_data", 0x1122_3344_5566_7788).unwrap();
        assert_eq!(elf.read(0x20_1000, 8).unwrap(), 0x1122_3344_5566_7788u64.to_le_bytes());
        elf.patch_u64("in_bss", 42).unwrap();
        assert_eq!(elf.segments[1].data.len(), 0x1008);
        assert_eq!(elf.read(0x20_2000, 8).unwrap(), 42u64.to_le_bytes());
        assert_eq!(elf.read(0x20_1ff8, 8).unwrap(), [0; 8], "the gap stays zero");
    }

    #[test]
    fn patching_a_missing_or_mis_sized_symbol_is_refused() {
        let mut elf = PdElf::parse(&pd()).unwrap();
        assert_eq!(elf.patch_u64("nope", 1), Err(ElfError::NoSymbol("nope".into())));
        assert_eq!(
            elf.patch_u64("name", 1),
            Err(ElfError::SymbolSize { symbol: "name".into(), size: 4, want: 8 })
        );
        assert_eq!(
            elf.patch_u64("nope", 1).unwrap_err().to_string(),
            "could not patch symbol 'nope': it does not exist"
        );
    }

    #[test]
    fn wrong_machines_types_and_overlaps_are_refused() {
        let seg = |vaddr, mem_size| Seg { vaddr, data: &[0u8; 4], mem_size, flags: elf::PF_R };
        let x86 = build(elf::EM_X86_64, elf::ET_EXEC, &[seg(0x1000, 4)], &[]);
        assert!(matches!(PdElf::parse(&x86), Err(ElfError::Unsupported(_))));
        let pie = build(elf::EM_AARCH64, elf::ET_DYN, &[seg(0x1000, 4)], &[]);
        assert!(matches!(PdElf::parse(&pie), Err(ElfError::Unsupported(_))));
        let overlap =
            build(elf::EM_AARCH64, elf::ET_EXEC, &[seg(0x1000, 0x2000), seg(0x2000, 4)], &[]);
        assert_eq!(PdElf::parse(&overlap).unwrap_err(), ElfError::Overlap(0x2000));
        assert!(matches!(PdElf::parse(b"not an elf"), Err(ElfError::Unreadable(_))));
    }
}
