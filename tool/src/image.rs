//! Packing: the kernel ELF and the boot image into the file a board boots.
//!
//! The kernel is a static PIE linked at 0 (`kernel/link.ld`). Packing
//! lays it out as one flat block of memory at the board's load address,
//! applies its `R_AARCH64_RELATIVE` relocations for that address, and
//! appends the boot image at the kernel's `__boot_image` symbol (the first
//! 4 KiB boundary after its stack), where the kernel looks for it:
//!
//! ```text
//! load address   +---------------------------+  <- entry (_start, offset 0)
//!                | text, rodata, data        |
//!                | bss + boot stack (zeroes) |
//! __boot_image   +---------------------------+
//!                | boot image (tenure-boot-  |
//!                | image: header, sections)  |
//!                +---------------------------+
//! ```
//!
//! The block is written as a one-segment ELF (QEMU `-kernel`) or as a raw
//! `kernel8.img`, as the board says. See
//! `docs/decisions/0003-boot-image-layout.md`.
//!
//! The kernel's segments (`kernel/link.ld`: text, rodata, data, stack,
//! each on its own pages) give the permissions of its pages in its EL2
//! map: packing writes them into the boot image's map, whose tables were
//! shaped for the kernel's size (`el2_map`,
//! `docs/decisions/0008-kernel-map-is-w-xor-x.md`).

use crate::board::{Board, ImageFormat};
use crate::el2_map::{self, Access, KernelLayout, KernelSegment, MapError};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, Rela, SectionHeader};
use object::{LittleEndian as LE, Object, ObjectSymbol};
use std::fmt;
use tenure_boot_image::{Image, Parts, SectionKind, Stage1Config, write_image};

/// Alignment of the boot image after the kernel, and of the load address.
const PAGE: u64 = 4096;
/// The kernel symbol that marks where the boot image goes.
const BOOT_IMAGE_SYMBOL: &str = "__boot_image";
/// File offset of the segment in an ELF image: one page, after the
/// headers.
const ELF_SEGMENT_OFFSET: u64 = 0x1000;

/// Why packing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackError {
    /// The kernel is not a readable ELF file.
    NotElf(String),
    /// The kernel is an ELF file of the wrong kind; the text says which.
    WrongKernel(String),
    /// The kernel has no `__boot_image` symbol, or it is misplaced.
    NoBootImageSymbol,
    /// The kernel has a relocation the packer cannot apply.
    UnsupportedRelocation(u32),
    /// A relocation or segment lies outside the kernel's memory.
    OutOfBounds(u64),
    /// The kernel's EL2 map cannot be built for the board.
    Map(MapError),
    /// The boot image cannot take the kernel's EL2 map; the text says
    /// why.
    BootImage(String),
    /// The packed image does not fit in the board's RAM.
    DoesNotFit {
        /// Bytes needed.
        size: u64,
        /// The board.
        board: &'static str,
    },
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotElf(why) => write!(f, "the kernel is not an ELF file: {why}"),
            Self::WrongKernel(why) => write!(f, "the kernel ELF is not a Tenure kernel: {why}"),
            Self::NoBootImageSymbol => write!(
                f,
                "the kernel ELF has no page-aligned '{BOOT_IMAGE_SYMBOL}' symbol after its segments (was it linked with kernel/link.ld and not stripped?)"
            ),
            Self::UnsupportedRelocation(kind) => write!(
                f,
                "the kernel ELF has a relocation of type {kind}; only R_AARCH64_RELATIVE can be applied"
            ),
            Self::OutOfBounds(addr) => {
                write!(f, "the kernel ELF refers to {addr:#x}, outside its memory")
            }
            Self::Map(e) => write!(f, "{e}"),
            Self::BootImage(why) => {
                write!(f, "the boot image cannot take the kernel's EL2 map: {why}")
            }
            Self::DoesNotFit { size, board } => write!(
                f,
                "the packed image ({size} bytes) does not fit in the RAM of board '{board}' at its kernel load address"
            ),
        }
    }
}

impl std::error::Error for PackError {}

/// A packed image, ready to write to a file.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Its format.
    pub format: ImageFormat,
    /// Physical address the kernel runs at.
    pub load_addr: u64,
    /// Physical address of the entry point.
    pub entry: u64,
    /// Physical address of the boot image.
    pub boot_image_addr: u64,
    /// Bytes of memory from `load_addr` to the end of the boot image.
    pub memory_size: u64,
}

/// The kernel, relocated and laid out as memory from its link base.
struct KernelMemory {
    /// Kernel memory from the link base to `__boot_image`: segments,
    /// zero-filled bss and stack.
    bytes: Vec<u8>,
    /// Entry point, relative to the link base.
    entry: u64,
    /// The loadable segments, at their run-time addresses.
    segments: Vec<KernelSegment>,
}

impl KernelMemory {
    /// The kernel at `load_addr`, as its EL2 map sees it.
    fn layout(&self, load_addr: u64) -> KernelLayout {
        KernelLayout {
            base: load_addr,
            size: self.bytes.len() as u64,
            segments: self.segments.clone(),
        }
    }
}

/// Packs `kernel_elf` for `board` with an image that holds the board's
/// description and the kernel's EL2 map (no PDs).
pub fn pack_kernel(kernel_elf: &[u8], board: &Board) -> Result<Packed, PackError> {
    let kernel = load_kernel(kernel_elf, board.kernel_load_addr)?;
    let stage1 = el2_map::build_for_kernel(board, &kernel.layout(board.kernel_load_addr))
        .map_err(PackError::Map)?;
    let parts = Parts { stage1: Some(stage1), ..Parts::default() };
    pack(kernel_elf, board, &write_image(&board.boot_info(), &parts))
}

/// Bytes of memory the kernel occupies from its load address up to
/// `__boot_image`, where the boot image starts.
pub fn kernel_size(kernel_elf: &[u8]) -> Result<u64, PackError> {
    Ok(load_kernel(kernel_elf, 0)?.bytes.len() as u64)
}

/// Packs `kernel_elf` and an encoded `boot_image` for `board`. The boot
/// image's EL2 map (from [`el2_map::build`] or
/// [`el2_map::build_for_kernel`], for the image right after this kernel)
/// gets the permissions of the kernel's segments.
pub fn pack(kernel_elf: &[u8], board: &Board, boot_image: &[u8]) -> Result<Packed, PackError> {
    let kernel = load_kernel(kernel_elf, board.kernel_load_addr)?;
    let boot_image = with_kernel_map(boot_image, board, &kernel.layout(board.kernel_load_addr))?;
    let mut memory = kernel.bytes;
    let boot_image_offset = memory.len() as u64;
    memory.extend_from_slice(&boot_image);
    let memory_size = memory.len() as u64;
    let load_addr = board.kernel_load_addr;
    let fits = board
        .ram_containing(load_addr)
        .is_some_and(|ram| ram.base + ram.size - load_addr >= memory_size);
    if !fits {
        return Err(PackError::DoesNotFit { size: memory_size, board: board.name });
    }
    let entry = load_addr + kernel.entry;
    let bytes = match board.format {
        ImageFormat::Raw if kernel.entry != 0 => {
            return Err(PackError::WrongKernel(format!(
                "a raw image is entered at its first byte, but the entry point is at offset {:#x}",
                kernel.entry
            )));
        }
        ImageFormat::Raw => memory,
        ImageFormat::Elf => wrap_in_elf(&memory, load_addr, entry),
    };
    Ok(Packed {
        bytes,
        format: board.format,
        load_addr,
        entry,
        boot_image_addr: load_addr + boot_image_offset,
        memory_size,
    })
}

/// `boot_image` with its EL2 map's tables replaced by the W^X map of
/// `kernel`: the same registers and the same tables, but for the
/// permissions of the kernel's pages.
fn with_kernel_map(
    boot_image: &[u8],
    board: &Board,
    kernel: &KernelLayout,
) -> Result<Vec<u8>, PackError> {
    let image = Image::parse(boot_image)
        .map_err(|e| PackError::BootImage(format!("it is not a valid boot image ({e})")))?;
    let old = image.stage1().ok_or_else(|| PackError::BootImage("it has none".into()))?.config;
    let (config, tables) = el2_map::build_for_kernel(board, kernel).map_err(PackError::Map)?;
    let section = image
        .sections()
        .iter()
        .find(|s| s.kind.get() == SectionKind::Stage1Tables as u32)
        .ok_or_else(|| PackError::BootImage("it has no tables".into()))?;
    let registers =
        |c: &Stage1Config| [c.mair.get(), c.tcr.get(), c.ttbr0.get(), c.image_paddr.get()];
    if registers(old) != registers(&config) || section.size.get() != tables.len() as u64 {
        return Err(PackError::BootImage(format!(
            "it was built for an image at {:#x} with {} table pages, the kernel needs one at {:#x} with {}",
            old.image_paddr.get(),
            section.size.get() / PAGE,
            config.image_paddr.get(),
            tables.len() as u64 / PAGE
        )));
    }
    let mut out = boot_image.to_vec();
    let at = section.offset.get() as usize;
    out[at..at + tables.len()].copy_from_slice(&tables);
    Ok(out)
}

/// Reads the kernel's segments into memory laid out from its link base,
/// relocated to run at `load_addr`.
fn load_kernel(data: &[u8], load_addr: u64) -> Result<KernelMemory, PackError> {
    let file = ElfFile64::<LE>::parse(data).map_err(|e| PackError::NotElf(e.to_string()))?;
    let header = file.elf_header();
    let endian = LE;
    if header.e_machine(endian) != elf::EM_AARCH64 {
        return Err(PackError::WrongKernel("it is not an AArch64 ELF".into()));
    }
    if header.e_type(endian) != elf::ET_DYN {
        return Err(PackError::WrongKernel(
            "it is not position independent (ET_DYN); link it with kernel/link.ld".into(),
        ));
    }
    let segments: Vec<_> =
        file.elf_program_headers().iter().filter(|ph| ph.p_type(endian) == elf::PT_LOAD).collect();
    let base = segments
        .iter()
        .map(|ph| ph.p_vaddr(endian))
        .min()
        .ok_or_else(|| PackError::WrongKernel("it has no loadable segment".into()))?;
    if base % PAGE != 0 {
        return Err(PackError::WrongKernel(format!("its link base {base:#x} is not page aligned")));
    }
    let boot_image = file
        .symbols()
        .find(|sym| sym.name() == Ok(BOOT_IMAGE_SYMBOL))
        .map(|sym| sym.address())
        .ok_or(PackError::NoBootImageSymbol)?;
    let segments_end = segments
        .iter()
        .map(|ph| ph.p_vaddr(endian).saturating_add(ph.p_memsz(endian)))
        .max()
        .unwrap_or(base);
    if boot_image % PAGE != 0 || boot_image < segments_end {
        return Err(PackError::NoBootImageSymbol);
    }

    let size = boot_image - base;
    let mut bytes = vec![0u8; usize::try_from(size).map_err(|_| PackError::OutOfBounds(size))?];
    let mut kernel_segments = Vec::new();
    for ph in &segments {
        let contents = ph
            .data(endian, data)
            .map_err(|()| PackError::WrongKernel("a segment lies outside the file".into()))?;
        let start = (ph.p_vaddr(endian) - base) as usize;
        if ph.p_filesz(endian) > ph.p_memsz(endian) {
            return Err(PackError::WrongKernel("a segment has more file bytes than memory".into()));
        }
        bytes[start..start + contents.len()].copy_from_slice(contents);
        let flags = ph.p_flags(endian);
        let access = match (flags & elf::PF_W != 0, flags & elf::PF_X != 0) {
            (true, true) => {
                return Err(PackError::WrongKernel(format!(
                    "its segment at {:#x} is both writable and executable; link it with kernel/link.ld",
                    ph.p_vaddr(endian)
                )));
            }
            (false, true) => Access::ReadExecute,
            (true, false) => Access::ReadWrite,
            (false, false) => Access::ReadOnly,
        };
        kernel_segments.push(KernelSegment {
            addr: load_addr + start as u64,
            size: ph.p_memsz(endian),
            access,
        });
    }

    for section in file.elf_section_table().iter() {
        match section.sh_type(endian) {
            elf::SHT_REL => return Err(PackError::UnsupportedRelocation(0)),
            elf::SHT_RELA if section.sh_flags(endian) & u64::from(elf::SHF_ALLOC) != 0 => {
                let relas: &[elf::Rela64<LE>] = section
                    .data_as_array(endian, data)
                    .map_err(|_| PackError::WrongKernel("its relocations are unreadable".into()))?;
                for rela in relas {
                    let kind = rela.r_type(endian, false);
                    if kind != elf::R_AARCH64_RELATIVE {
                        return Err(PackError::UnsupportedRelocation(kind));
                    }
                    relocate(
                        &mut bytes,
                        base,
                        load_addr,
                        rela.r_offset(endian),
                        rela.r_addend(endian),
                    )?;
                }
            }
            _ => {}
        }
    }
    Ok(KernelMemory {
        bytes,
        entry: header.e_entry(endian).wrapping_sub(base),
        segments: kernel_segments,
    })
}

/// Applies one `R_AARCH64_RELATIVE` relocation: the 64-bit word at link
/// address `offset` becomes the run-time address of link address
/// `addend` (ELF for the Arm 64-bit Architecture, section 5.7.12).
fn relocate(
    memory: &mut [u8],
    base: u64,
    load_addr: u64,
    offset: u64,
    addend: i64,
) -> Result<(), PackError> {
    let at = offset
        .checked_sub(base)
        .filter(|at| at.checked_add(8).is_some_and(|end| end <= memory.len() as u64))
        .ok_or(PackError::OutOfBounds(offset))?;
    let target = (addend as u64).wrapping_sub(base);
    if target > memory.len() as u64 {
        return Err(PackError::OutOfBounds(addend as u64));
    }
    let value = load_addr + target;
    memory[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// An ELF executable with one RWX segment holding `memory` at `load_addr`
/// (virtual and physical), entered at `entry`.
fn wrap_in_elf(memory: &[u8], load_addr: u64, entry: u64) -> Vec<u8> {
    use object::{U16, U32, U64};
    let header = elf::FileHeader64::<LE> {
        e_ident: elf::Ident {
            magic: elf::ELFMAG,
            class: elf::ELFCLASS64,
            data: elf::ELFDATA2LSB,
            version: elf::EV_CURRENT,
            os_abi: elf::ELFOSABI_NONE,
            abi_version: 0,
            padding: [0; 7],
        },
        e_type: U16::new(LE, elf::ET_EXEC),
        e_machine: U16::new(LE, elf::EM_AARCH64),
        e_version: U32::new(LE, u32::from(elf::EV_CURRENT)),
        e_entry: U64::new(LE, entry),
        e_phoff: U64::new(LE, size_of::<elf::FileHeader64<LE>>() as u64),
        e_shoff: U64::new(LE, 0),
        e_flags: U32::new(LE, 0),
        e_ehsize: U16::new(LE, size_of::<elf::FileHeader64<LE>>() as u16),
        e_phentsize: U16::new(LE, size_of::<elf::ProgramHeader64<LE>>() as u16),
        e_phnum: U16::new(LE, 1),
        e_shentsize: U16::new(LE, size_of::<elf::SectionHeader64<LE>>() as u16),
        e_shnum: U16::new(LE, 0),
        e_shstrndx: U16::new(LE, 0),
    };
    let segment = elf::ProgramHeader64::<LE> {
        p_type: U32::new(LE, elf::PT_LOAD),
        p_flags: U32::new(LE, elf::PF_R | elf::PF_W | elf::PF_X),
        p_offset: U64::new(LE, ELF_SEGMENT_OFFSET),
        p_vaddr: U64::new(LE, load_addr),
        p_paddr: U64::new(LE, load_addr),
        p_filesz: U64::new(LE, memory.len() as u64),
        p_memsz: U64::new(LE, memory.len() as u64),
        p_align: U64::new(LE, PAGE),
    };
    let mut out = Vec::with_capacity(ELF_SEGMENT_OFFSET as usize + memory.len());
    out.extend_from_slice(object::pod::bytes_of(&header));
    out.extend_from_slice(object::pod::bytes_of(&segment));
    out.resize(ELF_SEGMENT_OFFSET as usize, 0);
    out.extend_from_slice(memory);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::by_name;
    use crate::elf::tests::{Seg, build as build_elf};

    #[test]
    fn relative_relocations_add_the_load_address() {
        let mut memory = vec![0u8; 32];
        relocate(&mut memory, 0, 0x4020_0000, 8, 0x18).unwrap();
        assert_eq!(memory[8..16], 0x4020_0018u64.to_le_bytes());
        assert_eq!(memory[..8], [0; 8]);
    }

    #[test]
    fn relocations_outside_the_kernel_are_refused() {
        let mut memory = vec![0u8; 32];
        assert_eq!(relocate(&mut memory, 0, 0x8_0000, 25, 0), Err(PackError::OutOfBounds(25)));
        assert_eq!(
            relocate(&mut memory, 0, 0x8_0000, u64::MAX, 0),
            Err(PackError::OutOfBounds(u64::MAX))
        );
        assert_eq!(relocate(&mut memory, 0x1000, 0x8_0000, 8, 0), Err(PackError::OutOfBounds(8)));
        assert_eq!(
            relocate(&mut memory, 0, 0x8_0000, 0, 0x1000),
            Err(PackError::OutOfBounds(0x1000))
        );
    }

    #[test]
    fn the_elf_wrapper_has_one_segment_at_the_load_address() {
        let memory = vec![0xAB; 5000];
        let bytes = wrap_in_elf(&memory, 0x4020_0000, 0x4020_0000);
        let file = ElfFile64::<LE>::parse(&*bytes).unwrap();
        assert_eq!(file.elf_header().e_entry(LE), 0x4020_0000);
        let phs = file.elf_program_headers();
        assert_eq!(phs.len(), 1);
        assert_eq!(phs[0].p_paddr(LE), 0x4020_0000);
        assert_eq!(phs[0].data(LE, &*bytes).unwrap(), &memory[..]);
    }

    /// A kernel laid out as `kernel/link.ld` does, in small: text at 0,
    /// rodata at 0x1000, data and bss at 0x2000..0x3800, the guard page
    /// at 0x4000, a stack at 0x5000..0x7000, the boot image at 0x7000.
    fn kernel_elf(text_flags: u32) -> Vec<u8> {
        let segment = |vaddr, data, mem_size, flags| Seg { vaddr, data, mem_size, flags };
        let segments = [
            segment(0, &[0x1f, 0x20, 0x03, 0xd5][..], 4, text_flags),
            segment(0x1000, &[1; 8], 8, elf::PF_R),
            segment(0x2000, &[2; 8], 0x1800, elf::PF_R | elf::PF_W),
            segment(0x5000, &[], 0x2000, elf::PF_R | elf::PF_W),
        ];
        build_elf(elf::EM_AARCH64, elf::ET_DYN, &segments, &[(BOOT_IMAGE_SYMBOL, 0x7000, 0)])
    }

    /// The boot image inside a packed file.
    fn boot_image_of(packed: &Packed) -> &[u8] {
        let offset = match packed.format {
            ImageFormat::Elf => ELF_SEGMENT_OFFSET,
            ImageFormat::Raw => 0,
        };
        &packed.bytes[(offset + packed.boot_image_addr - packed.load_addr) as usize..]
    }

    #[test]
    fn each_segment_is_mapped_with_its_permissions() {
        for name in ["qemu_virt_aarch64", "rpi4b_1gb"] {
            let board = by_name(name).unwrap();
            let packed = pack_kernel(&kernel_elf(elf::PF_R | elf::PF_X), board).unwrap();
            let load = board.kernel_load_addr;
            assert_eq!(packed.boot_image_addr, load + 0x7000);
            let image = Image::parse(boot_image_of(&packed)).unwrap();
            let map = image.stage1().unwrap();
            // (offset, mapped, read-only, execute-never)
            for (offset, mapped, read_only, xn) in [
                (0, true, true, false),
                (0x1000, true, true, true),
                (0x2000, true, false, true),
                (0x3000, true, false, true),
                (0x4000, false, false, false),
                (0x5000, true, false, true),
                (0x6ff8, true, false, true),
                (0x7000, true, false, true),
            ] {
                let leaf = map.translate(load + offset);
                assert_eq!(leaf.is_some(), mapped, "{name} +{offset:#x}");
                if let Some(leaf) = leaf {
                    assert_eq!((leaf.pa, leaf.attr_index()), (load + offset, 0));
                    assert_eq!(
                        (leaf.read_only(), leaf.execute_never()),
                        (read_only, xn),
                        "{name} +{offset:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn packing_writes_the_permissions_into_a_map_built_for_the_size() {
        let board = by_name("qemu_virt_aarch64").unwrap();
        let kernel = kernel_elf(elf::PF_R | elf::PF_X);
        let image_paddr = board.kernel_load_addr + kernel_size(&kernel).unwrap();
        let stage1 = el2_map::build(board, image_paddr).unwrap();
        let image =
            write_image(&board.boot_info(), &Parts { stage1: Some(stage1), ..Parts::default() });
        let packed = pack(&kernel, board, &image).unwrap();
        assert_ne!(boot_image_of(&packed), &image[..]);
        assert_eq!(packed.bytes, pack_kernel(&kernel, board).unwrap().bytes);
    }

    #[test]
    fn a_boot_image_without_a_map_for_this_kernel_is_refused() {
        let board = by_name("qemu_virt_aarch64").unwrap();
        let kernel = kernel_elf(elf::PF_R | elf::PF_X);
        let elsewhere = el2_map::build(board, board.kernel_load_addr + 0x8000).unwrap();
        let image =
            write_image(&board.boot_info(), &Parts { stage1: Some(elsewhere), ..Parts::default() });
        let Err(PackError::BootImage(why)) = pack(&kernel, board, &image) else { panic!() };
        assert!(why.contains("0x40208000"), "{why}");
        let image = write_image(&board.boot_info(), &Parts::default());
        assert_eq!(
            pack(&kernel, board, &image).unwrap_err(),
            PackError::BootImage("it has none".into())
        );
        assert!(matches!(pack(&kernel, board, b"junk"), Err(PackError::BootImage(_))));
    }

    #[test]
    fn a_writable_executable_segment_is_refused() {
        let board = by_name("rpi4b_1gb").unwrap();
        let kernel = kernel_elf(elf::PF_R | elf::PF_W | elf::PF_X);
        let Err(PackError::WrongKernel(why)) = pack_kernel(&kernel, board) else { panic!() };
        assert!(why.contains("at 0x0 is both writable and executable"), "{why}");
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let board = by_name("qemu_virt_aarch64").unwrap();
        assert!(matches!(pack_kernel(b"not an elf", board), Err(PackError::NotElf(_))));
        // An executable without the boot image symbol or PIE type.
        let exec = wrap_in_elf(&[0; 16], 0x4020_0000, 0x4020_0000);
        assert!(matches!(pack_kernel(&exec, board), Err(PackError::WrongKernel(_))));
    }
}
