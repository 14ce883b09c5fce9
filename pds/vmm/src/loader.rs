//! Loading a guest: the arm64 Image header, where the kernel and its
//! device tree go in guest RAM, and the registers it starts with (Linux
//! `Documentation/arch/arm64/booting.rst`, the arm64 boot protocol).
//!
//! ```text
//! RAM base (2 MiB aligned)
//!   + text_offset             kernel: the Image file, then its BSS and
//!                             whatever else image_size covers
//!   kernel + image_size
//!   ... up to a 2 MiB boundary
//!   DTB (at most 2 MiB)       2 MiB aligned, so no 2 MiB block the kernel
//!                             maps for itself holds anything else
//!   ... the rest of RAM
//! ```
//!
//! Everything an Image or device tree says is checked before it is used,
//! with checked arithmetic: a malformed or oversized file is a
//! [`LoadError`], never a wrap-around or a panic.

use crate::layout::{RAM_ALIGN, Range};
use crate::vcpu::{GuestVcpu, pstate};
use microkit::Reg;
use tenure_abi::Error;
use tenure_abi::mm::PAGE_SIZE;
use tenure_abi::vcpu::VcpuReg;

/// Bytes of the arm64 Image header.
pub const HEADER_LEN: usize = 64;
/// The header's magic at offset 56: "ARM\x64", little-endian.
pub const IMAGE_MAGIC: u32 = 0x644d_5241;
/// Header flags bit 0: the kernel is big-endian.
const FLAG_BE: u64 = 1 << 0;
/// A flattened device tree's magic (big-endian, at offset 0).
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Bytes of the device tree header the loader reads: magic and totalsize.
const FDT_HEADER_LEN: usize = 8;
/// Largest device tree the boot protocol allows ("must not exceed 2
/// megabytes in size").
pub const DTB_MAX: u64 = 2 << 20;
/// SCTLR_EL1 at entry: the RES1 bits of Armv8.0 (29, 28, 23, 22, 20,
/// 11) and nothing else: MMU, data cache and alignment checks off,
/// little-endian, as the boot protocol requires (Arm ARM, SCTLR_EL1).
pub const SCTLR_EL1_BOOT: u64 = 0x30d0_0800;

/// Why a guest cannot be loaded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LoadError {
    /// The image is shorter than the 64-byte arm64 Image header.
    TooShort,
    /// The image has no "ARM\x64" magic at offset 56: not an arm64 Image.
    BadMagic,
    /// The image is a big-endian kernel (header flags bit 0).
    BigEndian,
    /// `image_size` is zero: an Image older than Linux 3.17, whose memory
    /// needs are unknown.
    NoImageSize,
    /// `image_size` is smaller than the file itself.
    ImageSizeTooSmall,
    /// `text_offset` is not a multiple of 4 KiB.
    TextOffsetMisaligned,
    /// The kernel (`text_offset` + `image_size`) does not fit in RAM.
    KernelDoesNotFit,
    /// The device tree is shorter than its header, or than the size its
    /// header gives.
    DtbTruncated,
    /// The device tree does not start with the FDT magic.
    DtbBadMagic,
    /// The device tree is larger than the 2 MiB the boot protocol allows.
    DtbTooLarge,
    /// No room for the device tree in RAM above the kernel.
    DtbDoesNotFit,
}

impl LoadError {
    /// A sentence for reports.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            LoadError::TooShort => "the image is shorter than the 64-byte arm64 Image header",
            LoadError::BadMagic => "the image has no ARM\\x64 magic: not an arm64 Image",
            LoadError::BigEndian => "the image is a big-endian kernel",
            LoadError::NoImageSize => "the image gives no image_size (a pre-3.17 Image)",
            LoadError::ImageSizeTooSmall => "the image's image_size is smaller than the file",
            LoadError::TextOffsetMisaligned => "the image's text_offset is not 4 KiB aligned",
            LoadError::KernelDoesNotFit => "the kernel does not fit in guest RAM",
            LoadError::DtbTruncated => "the device tree is truncated",
            LoadError::DtbBadMagic => "the device tree has no FDT magic",
            LoadError::DtbTooLarge => "the device tree is larger than 2 MiB",
            LoadError::DtbDoesNotFit => "no room in guest RAM for the device tree above the kernel",
        }
    }
}

/// The fields of an arm64 Image header the loader uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ImageHeader {
    /// Where in RAM, above a 2 MiB aligned base, the image goes.
    pub text_offset: u64,
    /// Bytes of memory the kernel uses from its load address: the file,
    /// its BSS and more.
    pub image_size: u64,
    /// The flags word.
    pub flags: u64,
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl ImageHeader {
    /// Reads and checks the header of `image`.
    pub fn parse(image: &[u8]) -> Result<ImageHeader, LoadError> {
        if image.len() < HEADER_LEN {
            return Err(LoadError::TooShort);
        }
        if le64(image, 56) as u32 != IMAGE_MAGIC {
            return Err(LoadError::BadMagic);
        }
        let header = ImageHeader {
            text_offset: le64(image, 8),
            image_size: le64(image, 16),
            flags: le64(image, 24),
        };
        if header.flags & FLAG_BE != 0 {
            return Err(LoadError::BigEndian);
        }
        if header.image_size == 0 {
            return Err(LoadError::NoImageSize);
        }
        if header.image_size < image.len() as u64 {
            return Err(LoadError::ImageSizeTooSmall);
        }
        if !header.text_offset.is_multiple_of(PAGE_SIZE) {
            return Err(LoadError::TextOffsetMisaligned);
        }
        Ok(header)
    }
}

/// Where a guest's files go and how it starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LoadPlan {
    /// IPA of the image's first byte: RAM base + `text_offset`.
    pub kernel: u64,
    /// First IPA past the memory the kernel uses (`image_size`).
    pub kernel_end: u64,
    /// IPA of the device tree.
    pub dtb: u64,
    /// Bytes of the device tree (its header's `totalsize`).
    pub dtb_len: u64,
    /// The registers the guest starts with.
    pub boot: BootRegs,
}

/// The registers the boot protocol fixes at entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BootRegs {
    /// The entry point: the image's first byte.
    pub pc: u64,
    /// `x0`: the device tree's IPA (`x1..=x3` are zero, reserved).
    pub x0: u64,
    /// EL1h, D, A, I and F masked.
    pub pstate: u64,
    /// MMU and data cache off.
    pub sctlr_el1: u64,
}

impl BootRegs {
    /// Writes the registers into the stopped vCPU; the VMM then restarts
    /// it at [`BootRegs::pc`]. Also stops the virtual timer, which a
    /// guest reset must not carry over.
    pub fn apply(&self, vcpu: &mut impl GuestVcpu) -> Result<(), Error> {
        let x = |n| Reg::X(n);
        for (reg, value) in [
            (x(0), self.x0),
            (x(1), 0),
            (x(2), 0),
            (x(3), 0),
            (Reg::PC, self.pc),
            (Reg::PSTATE, self.pstate),
            (Reg::Named(VcpuReg::SctlrEl1), self.sctlr_el1),
            (Reg::Named(VcpuReg::CntvCtl), 0),
        ] {
            vcpu.write(reg, value)?;
        }
        Ok(())
    }
}

/// Plans loading `image` and `dtb` into `ram` (which
/// [`crate::layout::Layout::check`] has checked: 2 MiB aligned).
pub fn plan(image: &[u8], dtb: &[u8], ram: Range) -> Result<LoadPlan, LoadError> {
    let header = ImageHeader::parse(image)?;
    let dtb_len = dtb_len(dtb)?;
    let kernel = ram.start.checked_add(header.text_offset).ok_or(LoadError::KernelDoesNotFit)?;
    let kernel_end = kernel.checked_add(header.image_size).ok_or(LoadError::KernelDoesNotFit)?;
    if kernel_end > ram.end() {
        return Err(LoadError::KernelDoesNotFit);
    }
    let dtb_ipa = kernel_end.checked_next_multiple_of(RAM_ALIGN).ok_or(LoadError::DtbDoesNotFit)?;
    let dtb_end = dtb_ipa.checked_add(dtb_len).ok_or(LoadError::DtbDoesNotFit)?;
    if dtb_end > ram.end() {
        return Err(LoadError::DtbDoesNotFit);
    }
    Ok(LoadPlan {
        kernel,
        kernel_end,
        dtb: dtb_ipa,
        dtb_len,
        boot: BootRegs {
            pc: kernel,
            x0: dtb_ipa,
            pstate: pstate::EL1H_MASKED,
            sctlr_el1: SCTLR_EL1_BOOT,
        },
    })
}

/// Checks a device tree's header; returns its `totalsize`.
fn dtb_len(dtb: &[u8]) -> Result<u64, LoadError> {
    if dtb.len() < FDT_HEADER_LEN {
        return Err(LoadError::DtbTruncated);
    }
    let be32 = |at: usize| u32::from_be_bytes([dtb[at], dtb[at + 1], dtb[at + 2], dtb[at + 3]]);
    if be32(0) != FDT_MAGIC {
        return Err(LoadError::DtbBadMagic);
    }
    let total = u64::from(be32(4));
    if total > DTB_MAX {
        return Err(LoadError::DtbTooLarge);
    }
    if total < FDT_HEADER_LEN as u64 || total > dtb.len() as u64 {
        return Err(LoadError::DtbTruncated);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::fake::FakeVcpu;

    const RAM: Range = Range { start: 0x4000_0000, size: 64 << 20 };

    /// An Image of `len` bytes with the test guest's header fields.
    fn image(len: usize, text_offset: u64, image_size: u64) -> Vec<u8> {
        let mut b = vec![0; len.max(HEADER_LEN)];
        b[..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b +0x40
        b[8..16].copy_from_slice(&text_offset.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[24..32].copy_from_slice(&2u64.to_le_bytes()); // LE, 4 KiB pages
        b[56..60].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        b.truncate(len);
        b
    }

    fn dtb(total: u32, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        if len >= 8 {
            b[..4].copy_from_slice(&FDT_MAGIC.to_be_bytes());
            b[4..8].copy_from_slice(&total.to_be_bytes());
        }
        b
    }

    #[test]
    fn the_test_guest_loads_at_text_offset_with_its_dtb_2_mib_above() {
        // The header of build/guest-images/test-guest.Image: a 44,424-byte
        // file, text_offset 0x80000, image_size 0x23000.
        let p = plan(&image(44_424, 0x8_0000, 0x2_3000), &dtb(0x1000, 0x1000), RAM).unwrap();
        assert_eq!(p.kernel, 0x4008_0000);
        assert_eq!(p.kernel_end, 0x400a_3000);
        assert_eq!(p.dtb, 0x4020_0000);
        assert_eq!(p.dtb_len, 0x1000);
        assert_eq!(p.boot.pc, 0x4008_0000);
        assert_eq!(p.boot.x0, 0x4020_0000);
        assert_eq!(p.boot.pstate, 0x3c5);
    }

    #[test]
    fn a_kernel_ending_on_a_2_mib_boundary_has_its_dtb_right_above() {
        let p = plan(&image(0x1000, 0, 2 << 20), &dtb(0x100, 0x100), RAM).unwrap();
        assert_eq!(p.dtb, 0x4020_0000);
    }

    #[test]
    fn boot_registers_follow_the_boot_protocol() {
        let p = plan(&image(0x1000, 0x8_0000, 0x1000), &dtb(0x100, 0x100), RAM).unwrap();
        let mut v = FakeVcpu::default();
        (1..4).for_each(|n| v.set_x(n, 0xdead));
        v.set(Reg::Named(VcpuReg::SctlrEl1), 1); // MMU on, as a reset might leave it
        p.boot.apply(&mut v).unwrap();
        assert_eq!([v.x(0), v.x(1), v.x(2), v.x(3)], [p.dtb, 0, 0, 0]);
        assert_eq!(v.get(Reg::PC), 0x4008_0000);
        assert_eq!(v.get(Reg::PSTATE) & pstate::M_MASK, pstate::EL1H);
        assert_eq!(v.get(Reg::PSTATE) & pstate::DAIF, pstate::DAIF);
        assert_eq!(v.named(VcpuReg::SctlrEl1) & 0b101, 0, "MMU and D-cache off");
        let mut refused = FakeVcpu { refuse: Some(Reg::PC), ..FakeVcpu::default() };
        assert_eq!(p.boot.apply(&mut refused), Err(Error::InvalidState));
    }

    #[test]
    fn malformed_images_are_refused_with_a_reason() {
        let d = dtb(0x100, 0x100);
        let cases = [
            (image(63, 0, 0x1000), LoadError::TooShort),
            (vec![0; 4096], LoadError::BadMagic),
            (image(0x1000, 0x8_0000, 0), LoadError::NoImageSize),
            (image(0x2000, 0x8_0000, 0x1000), LoadError::ImageSizeTooSmall),
            (image(0x1000, 0x8_0010, 0x1000), LoadError::TextOffsetMisaligned),
        ];
        for (img, want) in cases {
            assert_eq!(plan(&img, &d, RAM), Err(want), "{}", want.describe());
        }
        let mut be = image(0x1000, 0, 0x1000);
        be[24] |= 1;
        assert_eq!(plan(&be, &d, RAM), Err(LoadError::BigEndian));
    }

    #[test]
    fn images_that_do_not_fit_are_refused() {
        let d = dtb(0x100, 0x100);
        let big = image(0x1000, 0x8_0000, 64 << 20);
        assert_eq!(plan(&big, &d, RAM), Err(LoadError::KernelDoesNotFit));
        let huge_offset = image(0x1000, !0xfff, 0x1000);
        assert_eq!(plan(&huge_offset, &d, RAM), Err(LoadError::KernelDoesNotFit));
        let huge_size = image(0x1000, 0x8_0000, u64::MAX);
        assert_eq!(plan(&huge_size, &d, RAM), Err(LoadError::KernelDoesNotFit));
        // The kernel fills RAM up to its last 2 MiB but one page: no room
        // for a 2 MiB aligned device tree.
        let almost = image(0x1000, 0, (62 << 20) + 0x1000);
        assert_eq!(plan(&almost, &d, RAM), Err(LoadError::DtbDoesNotFit));
        let exact = image(0x1000, 0, 62 << 20);
        assert_eq!(plan(&exact, &d, RAM).unwrap().dtb, 0x4000_0000 + (62 << 20));
    }

    #[test]
    fn malformed_device_trees_are_refused() {
        let img = image(0x1000, 0x8_0000, 0x1000);
        assert_eq!(plan(&img, &dtb(0x100, 4), RAM), Err(LoadError::DtbTruncated));
        assert_eq!(plan(&img, &dtb(0x200, 0x100), RAM), Err(LoadError::DtbTruncated));
        assert_eq!(plan(&img, &dtb(4, 0x100), RAM), Err(LoadError::DtbTruncated));
        assert_eq!(plan(&img, &vec![0; 0x100], RAM), Err(LoadError::DtbBadMagic));
        let big = (DTB_MAX + 1) as u32;
        assert_eq!(plan(&img, &dtb(big, 0x100), RAM), Err(LoadError::DtbTooLarge));
    }
}
