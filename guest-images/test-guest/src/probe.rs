//! The probes: their names, what each does as a list of hypercall steps,
//! what each step must return under Tenure and on plain hardware, and
//! where in the guest's memory the steps point.
//!
//! Every memory probe uses pages of its own (`Page`), so probes are
//! independent of each other and of their order. A hostile probe is the
//! refused call first, then calls that show it changed nothing (a page
//! stays private, or stays shared exactly once).

use tenure_abi::hvc::{Function, GRANULE, OWNER_VENDOR_HYP, Ret, function_id};

/// What the guest expects of the calls it makes (`expect=` in bootargs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expect {
    /// Under Tenure's VMM: the memory calls work and refuse what they
    /// must (`expect=tenure`, the default).
    Tenure,
    /// On a machine with no hypervisor of this ABI, such as QEMU's virt
    /// board at EL1 (`expect=native`): every vendor-hypervisor call is
    /// NOT_SUPPORTED, and the memory probes check just that.
    Native,
}

impl Expect {
    /// Decodes the value of `expect=`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "tenure" => Some(Expect::Tenure),
            "native" => Some(Expect::Native),
            _ => None,
        }
    }
}

/// One probe: one TAP line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Probe {
    /// Prints where the guest runs (EL, load address, DTB, RAM, UART) and
    /// checks it runs at EL1.
    Print,
    /// HYP_MEMINFO answers the 4 KiB granule and range support.
    Meminfo,
    /// MEM_SHARE of a private page succeeds, and the page still reads and
    /// writes in place; the page stays shared.
    Share,
    /// MEM_UNSHARE of a page this probe shared succeeds.
    Unshare,
    /// MEM_RELINQUISH of a written page succeeds, and what was written
    /// is no longer readable (the page reads as zeros, or aborts).
    Relinquish,
    /// MEM_SHARE of a page outside the guest's RAM (just below it) is
    /// refused.
    ShareOutside,
    /// Sharing a shared page is refused; the page stays shared once.
    ShareTwice,
    /// Unsharing a private page is refused; the page stays private.
    UnshareUnshared,
    /// Sharing the device page of the UART is refused.
    ShareDevice,
    /// A range from the last page of RAM past its end is refused, and the
    /// last page is left private.
    SharePastEnd,
    /// A range whose end wraps around the address space is refused.
    ShareOverflow,
    /// An address that is not granule-aligned is refused.
    ShareMisaligned,
    /// A non-zero reserved register (`x3`) is refused.
    ShareReserved,
    /// An address beyond any IPA space (2^56) is refused.
    ShareBeyondIpa,
    /// A vendor-hypervisor function nobody defines is NOT_SUPPORTED.
    UnknownCall,
    /// A read just past the end of RAM takes a synchronous data abort
    /// (the hypervisor injects one), reported with ESR_EL1 and FAR_EL1;
    /// the guest goes on after the faulting load.
    Outside,
    /// Writes a secret pattern into the secret page and reads it back.
    SecretWrite,
    /// In a later boot: the secret page reads all zeros.
    SecretRead,
    /// Times the hypervisor (`crate::bench`): prints `BENCH` lines for
    /// the boot, [`bench::POPULATE_PAGES`] first touches of unpopulated
    /// RAM and [`bench::ROUNDS`] rounds of its steps (MEM_SHARE and
    /// MEM_UNSHARE of a page), then `BENCH_DONE`. Once per boot: a second
    /// run finds the pages populated.
    ///
    /// [`bench::POPULATE_PAGES`]: crate::bench::POPULATE_PAGES
    /// [`bench::ROUNDS`]: crate::bench::ROUNDS
    Bench,
    /// Shares a page, asks to relinquish it (DENIED: a shared page cannot
    /// be given up), and unshares it: it was still shared.
    RelinquishShared,
    /// Asks to relinquish a page of RAM nobody touched (DENIED: the guest
    /// holds no page there), then to unshare it (DENIED: nothing changed).
    RelinquishUnbacked,
    /// Writes a secret built from `tag=` into every EL1 register the
    /// kernel switches per vCPU, waits until another guest has run on the
    /// core in between, and reads its own secret back from each: a guest
    /// beside it that writes its own can neither show through nor be seen.
    El1State,
    /// Touches each register the kernel keeps from guests (the EL1
    /// physical timer, debug breakpoints and watchpoints, MDSCR_EL1, the
    /// OS lock, the debug ROM address, the PMU, ACTLR_EL1): each access
    /// must take an undefined instruction exception, so nothing a guest
    /// writes there reaches another guest or a PD, and nothing they left
    /// there can be read.
    Trapped,
    /// Spins for a while beside a busy guest and checks its share of the
    /// core: it ran at least 5 % of the time and never waited half a
    /// second (starvation, not unevenness: `hostile.rs` says why).
    Fair,
    /// Touches RAM page after page until the hypervisor refuses one (an
    /// injected abort): its memory limit. Natively, all RAM is there.
    Quota,
    /// An unaligned 8-byte load from the GIC CPU interface page, a
    /// passthrough device: it must complete (a value or one abort), not
    /// fault forever.
    Refault,
    /// Prints lines a test runner reads: sentinels, results, a kernel
    /// panic, a PD fault report and a benchmark figure. They reach the console under
    /// the guest's label, where no runner takes them for its own.
    Forge,
    /// Reads GICC_IIDR, the GIC CPU interface's identification register,
    /// at the address the device tree gives: a GICv1 or GICv2 interface
    /// must answer. Under Tenure that is the GICV page, which mm maps
    /// only when this first access faults.
    GiccIidr,
}

/// The probes `hostile` stands for, in order.
pub const HOSTILE: [Probe; 12] = [
    Probe::ShareOutside,
    Probe::ShareTwice,
    Probe::UnshareUnshared,
    Probe::ShareDevice,
    Probe::SharePastEnd,
    Probe::ShareOverflow,
    Probe::ShareMisaligned,
    Probe::ShareReserved,
    Probe::ShareBeyondIpa,
    Probe::UnknownCall,
    Probe::RelinquishShared,
    Probe::RelinquishUnbacked,
];

impl Probe {
    /// Every probe, in the order of the list above.
    pub const ALL: [Probe; 28] = [
        Probe::Print,
        Probe::Meminfo,
        Probe::Share,
        Probe::Unshare,
        Probe::Relinquish,
        Probe::ShareOutside,
        Probe::ShareTwice,
        Probe::UnshareUnshared,
        Probe::ShareDevice,
        Probe::SharePastEnd,
        Probe::ShareOverflow,
        Probe::ShareMisaligned,
        Probe::ShareReserved,
        Probe::ShareBeyondIpa,
        Probe::UnknownCall,
        Probe::Outside,
        Probe::SecretWrite,
        Probe::SecretRead,
        Probe::Bench,
        Probe::GiccIidr,
        Probe::RelinquishShared,
        Probe::RelinquishUnbacked,
        Probe::El1State,
        Probe::Trapped,
        Probe::Fair,
        Probe::Quota,
        Probe::Refault,
        Probe::Forge,
    ];

    /// The probe's name in bootargs and in its TAP line.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Probe::Print => "print",
            Probe::Meminfo => "meminfo",
            Probe::Share => "share",
            Probe::Unshare => "unshare",
            Probe::Relinquish => "relinquish",
            Probe::ShareOutside => "share-outside",
            Probe::ShareTwice => "share-twice",
            Probe::UnshareUnshared => "unshare-unshared",
            Probe::ShareDevice => "share-device",
            Probe::SharePastEnd => "share-past-end",
            Probe::ShareOverflow => "share-overflow",
            Probe::ShareMisaligned => "share-misaligned",
            Probe::ShareReserved => "share-reserved",
            Probe::ShareBeyondIpa => "share-beyond-ipa",
            Probe::UnknownCall => "unknown-call",
            Probe::Outside => "outside",
            Probe::SecretWrite => "secret-write",
            Probe::SecretRead => "secret-read",
            Probe::Bench => "bench",
            Probe::GiccIidr => "gicc-iidr",
            Probe::RelinquishShared => "relinquish-shared",
            Probe::RelinquishUnbacked => "relinquish-unbacked",
            Probe::El1State => "el1-state",
            Probe::Trapped => "trapped",
            Probe::Fair => "fair",
            Probe::Quota => "quota",
            Probe::Refault => "refault",
            Probe::Forge => "forge",
        }
    }

    /// The probe named `name`, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The hypercalls of the probe, in order; empty for probes that make
    /// none (their work is memory accesses). `bench` makes its steps once
    /// per round.
    #[must_use]
    pub const fn steps(self) -> &'static [Step] {
        use Page::{Device, LastRam, Outside};
        const SHARE: Call = Call::of(Function::MemShare);
        const UNSHARE: Call = Call::of(Function::MemUnshare);
        const RELINQUISH: Call = Call::of(Function::MemRelinquish);
        match self {
            Probe::Share => {
                const { &[Step::new(SHARE, Page::Scratch(Scratch::Shared), Ret::Success)] }
            }
            Probe::Unshare => {
                const {
                    &[
                        Step::new(SHARE, Page::Scratch(Scratch::Unshare), Ret::Success),
                        Step::new(UNSHARE, Page::Scratch(Scratch::Unshare), Ret::Success),
                    ]
                }
            }
            Probe::Relinquish => {
                const {
                    &[Step::new(
                        Call::of(Function::MemRelinquish),
                        Page::Scratch(Scratch::Relinquish),
                        Ret::Success,
                    )]
                }
            }
            Probe::ShareOutside => const { &[Step::new(SHARE, Outside, Ret::Denied)] },
            Probe::ShareTwice => {
                const {
                    &[
                        Step::new(SHARE, Page::Scratch(Scratch::Twice), Ret::Success),
                        Step::new(SHARE, Page::Scratch(Scratch::Twice), Ret::Denied),
                        Step::new(UNSHARE, Page::Scratch(Scratch::Twice), Ret::Success),
                        Step::new(UNSHARE, Page::Scratch(Scratch::Twice), Ret::Denied),
                    ]
                }
            }
            Probe::UnshareUnshared => {
                const {
                    &[
                        Step::new(UNSHARE, Page::Scratch(Scratch::Unshared), Ret::Denied),
                        Step::new(SHARE, Page::Scratch(Scratch::Unshared), Ret::Success),
                        Step::new(UNSHARE, Page::Scratch(Scratch::Unshared), Ret::Success),
                    ]
                }
            }
            Probe::ShareDevice => const { &[Step::new(SHARE, Device, Ret::Denied)] },
            Probe::SharePastEnd => {
                const {
                    &[
                        Step::new(SHARE, LastRam, Ret::Denied).granules(2),
                        Step::new(UNSHARE, LastRam, Ret::Denied),
                    ]
                }
            }
            Probe::ShareOverflow => {
                const {
                    &[
                        Step::new(SHARE, LastRam, Ret::InvalidParameter)
                            .granules(WRAPPING_GRANULES),
                        Step::new(UNSHARE, LastRam, Ret::Denied),
                    ]
                }
            }
            Probe::ShareMisaligned => {
                const {
                    &[
                        Step::new(SHARE, Page::Misaligned(Scratch::Refused), Ret::InvalidParameter),
                        Step::new(UNSHARE, Page::Scratch(Scratch::Refused), Ret::Denied),
                    ]
                }
            }
            Probe::ShareReserved => {
                const {
                    &[
                        Step::new(SHARE, Page::Scratch(Scratch::Refused), Ret::InvalidParameter)
                            .x3(1),
                        Step::new(UNSHARE, Page::Scratch(Scratch::Refused), Ret::Denied),
                    ]
                }
            }
            Probe::RelinquishShared => {
                const {
                    &[
                        Step::new(SHARE, Page::Scratch(Scratch::Refused), Ret::Success),
                        Step::new(RELINQUISH, Page::Scratch(Scratch::Refused), Ret::Denied),
                        Step::new(UNSHARE, Page::Scratch(Scratch::Refused), Ret::Success),
                    ]
                }
            }
            Probe::RelinquishUnbacked => {
                const {
                    &[
                        Step::new(RELINQUISH, LastRam, Ret::Denied),
                        Step::new(UNSHARE, LastRam, Ret::Denied),
                    ]
                }
            }
            Probe::ShareBeyondIpa => {
                const { &[Step::new(SHARE, Page::Fixed(BEYOND_IPA), Ret::InvalidParameter)] }
            }
            Probe::UnknownCall => {
                const { &[Step::new(UNKNOWN_CALL, Page::Fixed(0), Ret::NotSupported)] }
            }
            Probe::Bench => {
                const {
                    &[
                        Step::new(SHARE, Page::Scratch(Scratch::Bench), Ret::Success),
                        Step::new(UNSHARE, Page::Scratch(Scratch::Bench), Ret::Success),
                    ]
                }
            }
            Probe::Print
            | Probe::Meminfo
            | Probe::Outside
            | Probe::SecretWrite
            | Probe::SecretRead
            | Probe::GiccIidr
            | Probe::El1State
            | Probe::Trapped
            | Probe::Fair
            | Probe::Quota
            | Probe::Refault
            | Probe::Forge => const { &[] },
        }
    }
}

/// A granule count that makes any range from a non-zero page wrap past
/// 2^64 (the largest count whose byte size itself does not overflow).
pub const WRAPPING_GRANULES: u64 = u64::MAX / GRANULE;
/// An address beyond every IPA space (IPAs have at most 52 bits, Arm ARM
/// D8.1.7).
pub const BEYOND_IPA: u64 = 1 << 56;
/// A vendor-hypervisor function no hypervisor defines: number 0xfe, past
/// Linux's `ARM_SMCCC_KVM_NUM_FUNCS` (128).
pub const UNKNOWN_CALL: Call =
    Call { id: function_id(true, true, OWNER_VENDOR_HYP, 0xfe), name: "VENDOR_HYP_0xfe" };

/// A function id and its name for reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Call {
    /// The SMCCC function id, in `w0`.
    pub id: u32,
    /// The name in reports.
    pub name: &'static str,
}

impl Call {
    /// The call of an ABI function.
    #[must_use]
    pub const fn of(function: Function) -> Self {
        Call { id: function.id(), name: function.name() }
    }
}

/// One hypercall of a probe and the code it must return under Tenure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Step {
    /// The call.
    pub call: Call,
    /// The page `x1` names.
    pub page: Page,
    /// `x2`: the granule count.
    pub granules: u64,
    /// `x3`: reserved, 0 unless the probe tests that.
    pub x3: u64,
    /// The return code under Tenure ([`Step::want`] gives it for either
    /// expectation).
    pub tenure: Ret,
}

impl Step {
    const fn new(call: Call, page: Page, tenure: Ret) -> Self {
        Step { call, page, granules: 1, x3: 0, tenure }
    }

    const fn granules(self, granules: u64) -> Self {
        Step { granules, ..self }
    }

    const fn x3(self, x3: u64) -> Self {
        Step { x3, ..self }
    }

    /// The code the step must return: under Tenure as listed; natively
    /// every vendor-hypervisor call is NOT_SUPPORTED.
    #[must_use]
    pub const fn want(&self, expect: Expect) -> Ret {
        match expect {
            Expect::Tenure => self.tenure,
            Expect::Native => Ret::NotSupported,
        }
    }
}

/// The guest's scratch pages, one per use, in the image's `.scratch`
/// section (`link.ld`), after its stack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum Scratch {
    /// Shared by `share`, left shared.
    Shared = 0,
    /// Shared then unshared by `unshare`.
    Unshare = 1,
    /// Written, then given up by `relinquish`.
    Relinquish = 2,
    /// Shared twice by `share-twice`.
    Twice = 3,
    /// Unshared while private by `unshare-unshared`.
    Unshared = 4,
    /// Named by the malformed requests, which must leave it private.
    Refused = 5,
    /// The default secret page of `secret-write` and `secret-read`.
    Secret = 6,
    /// Shared and unshared round after round by `bench`.
    Bench = 7,
}

impl Scratch {
    /// Scratch pages the probes use; `link.ld` reserves at least this many.
    pub const COUNT: u64 = 8;
}

/// Offset of GICC_IIDR, the CPU interface's identification register
/// (Arm IHI 0048B 4.4.14).
pub const GICC_IIDR: u64 = 0xfc;

/// Whether `iidr`, read from GICC_IIDR, names a GIC CPU interface:
/// ArchitectureVersion (bits \[19:16\]) 1 or 2 (GICv1, GICv2) and an
/// Implementer (bits \[11:0\], a JEP106 code) that is not zero. QEMU's
/// GICv2 and its virtual CPU interface answer 0x0002_043b (Arm, 0x43b),
/// on QEMU virt as on raspi4b.
#[must_use]
pub const fn gicc_iidr_plausible(iidr: u32) -> bool {
    let version = (iidr >> 16) & 0xf;
    let implementer = iidr & 0xfff;
    (version == 1 || version == 2) && implementer != 0
}

/// Where a step's `x1` points.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Page {
    /// A scratch page.
    Scratch(Scratch),
    /// 16 bytes into a scratch page.
    Misaligned(Scratch),
    /// The last page of RAM.
    LastRam,
    /// The page just below RAM (or, if RAM starts at 0, 1 GiB past its
    /// end): not the guest's.
    Outside,
    /// The UART's register page.
    Device,
    /// A fixed address.
    Fixed(u64),
}

/// The guest's memory as the device tree and its image say.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Layout {
    /// First byte of RAM.
    pub ram_start: u64,
    /// First byte after RAM.
    pub ram_end: u64,
    /// The PL011's base.
    pub uart: u64,
    /// The first scratch page.
    pub scratch: u64,
    /// The secret page (the `Secret` scratch page unless `secret=` says).
    pub secret: u64,
    /// The image's code, data and stack: `[start, end)`, up to the first
    /// scratch page.
    pub image: [u64; 2],
    /// The device tree: `[start, end)`.
    pub dtb: [u64; 2],
    /// The GIC CPU interface's base, if the device tree has a GICv2.
    pub gicc: Option<u64>,
}

impl Layout {
    /// The address `page` stands for.
    #[must_use]
    pub const fn address(&self, page: Page) -> u64 {
        match page {
            Page::Scratch(s) => self.scratch + s as u64 * GRANULE,
            Page::Misaligned(s) => self.scratch + s as u64 * GRANULE + 16,
            Page::LastRam => self.ram_end - GRANULE,
            Page::Outside if self.ram_start >= GRANULE => self.ram_start - GRANULE,
            Page::Outside => self.ram_end + (1 << 30),
            Page::Device => self.uart & !(GRANULE - 1),
            Page::Fixed(a) => a,
        }
    }

    /// Why the layout cannot run the probes, if it cannot: each page they
    /// touch must lie in RAM, page-aligned.
    #[must_use]
    pub const fn problem(&self) -> Option<&'static str> {
        let scratch_end = self.scratch + Scratch::COUNT * GRANULE;
        if self.ram_start >= self.ram_end || !self.ram_end.is_multiple_of(GRANULE) {
            Some("RAM is empty or not page-aligned")
        } else if !self.scratch.is_multiple_of(GRANULE)
            || self.scratch < self.ram_start
            || scratch_end > self.ram_end
        {
            Some("the scratch pages are not page-aligned in RAM")
        } else if !self.secret.is_multiple_of(GRANULE)
            || self.secret < self.ram_start
            || self.secret >= self.ram_end
        {
            Some("the secret page is not a page of RAM")
        } else if overlaps(self.secret, self.image) || overlaps(self.secret, self.dtb) {
            Some("the secret page overlaps the guest's image or device tree")
        } else {
            None
        }
    }
}

/// Whether the page at `page` overlaps `[start, end)`.
const fn overlaps(page: u64, [start, end]: [u64; 2]) -> bool {
    page < end && start < page + GRANULE
}

/// Words in one page.
pub const PAGE_WORDS: usize = (GRANULE / 8) as usize;

/// Word `i` of the secret pattern: distinct per word, never zero.
#[must_use]
pub const fn secret_word(i: usize) -> u64 {
    0x5ec7_e75e_c7e7_0000 | i as u64
}

/// What a page that should have been scrubbed holds instead.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Leftover {
    /// This many words of the secret pattern are still there.
    Secret(usize),
    /// Not the secret, but not zeros either: the first non-zero word.
    Garbage {
        /// Byte offset in the page.
        offset: usize,
        /// Its value.
        value: u64,
    },
}

/// Checks that a page's words are all zero.
pub fn check_zeroed(words: impl IntoIterator<Item = u64>) -> Result<(), Leftover> {
    let mut secret = 0;
    let mut first = None;
    for (i, word) in words.into_iter().enumerate() {
        if word == secret_word(i) {
            secret += 1;
        } else if word != 0 && first.is_none() {
            first = Some((i * 8, word));
        }
    }
    match (secret, first) {
        (0, None) => Ok(()),
        (0, Some((offset, value))) => Err(Leftover::Garbage { offset, value }),
        (n, _) => Err(Leftover::Secret(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout {
        ram_start: 0x4000_0000,
        ram_end: 0x5000_0000,
        uart: 0x0900_0000,
        scratch: 0x4010_0000,
        secret: 0x4010_6000,
        image: [0x4008_0000, 0x4010_0000],
        dtb: [0x4800_0000, 0x4810_0000],
        gicc: Some(0x0801_0000),
    };

    #[test]
    fn gicc_iidr_wants_an_arm_gicv1_or_v2() {
        // QEMU's GICv2 (and its GICV): Arm, revision 0, version 2.
        assert!(gicc_iidr_plausible(0x0002_043b));
        assert!(gicc_iidr_plausible(0x0001_043b), "GICv1");
        // GIC-400 r0p1: product 0x2, variant 0, revision 1.
        assert!(gicc_iidr_plausible(0x0202_143b));
        assert!(!gicc_iidr_plausible(0), "nothing there");
        assert!(!gicc_iidr_plausible(u32::MAX), "a bus that reads ones");
        assert!(!gicc_iidr_plausible(0x0003_043b), "GICv3");
        assert!(!gicc_iidr_plausible(0x0002_0000), "no implementer");
    }

    #[test]
    fn names_round_trip() {
        for p in Probe::ALL {
            assert_eq!(Probe::from_name(p.name()), Some(p));
        }
        assert_eq!(Probe::from_name("hostile"), None);
        assert_eq!(Probe::from_name("off"), None);
    }

    #[test]
    fn hostile_probes_are_refused_and_memory_probes_succeed_under_tenure() {
        for p in HOSTILE {
            let refused = |s: &Step| {
                matches!(s.tenure, Ret::Denied | Ret::InvalidParameter | Ret::NotSupported)
            };
            assert!(p.steps().iter().any(refused), "{p:?}");
        }
        for p in [Probe::Share, Probe::Unshare, Probe::Relinquish, Probe::Bench] {
            assert!(p.steps().iter().all(|s| s.tenure == Ret::Success), "{p:?}");
        }
    }

    #[test]
    fn native_expects_not_supported_everywhere() {
        for p in Probe::ALL {
            assert!(p.steps().iter().all(|s| s.want(Expect::Native) == Ret::NotSupported));
        }
    }

    #[test]
    fn steps_use_linuxs_function_ids() {
        assert_eq!(Probe::Share.steps()[0].call.id, 0xc600_0003);
        assert_eq!(Probe::Unshare.steps()[1].call.id, 0xc600_0004);
        assert_eq!(Probe::Relinquish.steps()[0].call.id, 0xc600_0009);
        assert_eq!(UNKNOWN_CALL.id, 0xc600_00fe);
        assert_eq!(Function::from_raw(UNKNOWN_CALL.id.into()), None);
    }

    #[test]
    fn refusals_that_are_malformed_match_the_abi_decoder() {
        // The steps Tenure must call malformed are the ones the ABI's own
        // decoder refuses, whatever the memory holds.
        use tenure_abi::hvc::MemRange;
        for p in Probe::ALL {
            for s in p.steps().iter().filter(|s| s.call.id != UNKNOWN_CALL.id) {
                let x1 = LAYOUT.address(s.page);
                let malformed = MemRange::decode(x1, s.granules, s.x3, 40).is_err();
                assert_eq!(malformed, s.tenure == Ret::InvalidParameter, "{p:?} {s:?}");
            }
        }
    }

    #[test]
    fn pages_resolve_in_the_layout() {
        assert_eq!(LAYOUT.address(Page::Scratch(Scratch::Shared)), 0x4010_0000);
        assert_eq!(LAYOUT.address(Page::Scratch(Scratch::Refused)), 0x4010_5000);
        assert_eq!(LAYOUT.address(Page::Misaligned(Scratch::Refused)), 0x4010_5010);
        assert_eq!(LAYOUT.address(Page::LastRam), 0x4fff_f000);
        assert_eq!(LAYOUT.address(Page::Outside), 0x3fff_f000);
        assert_eq!(LAYOUT.address(Page::Device), 0x0900_0000);
        let at_zero = Layout { ram_start: 0, ram_end: 0x1000_0000, ..LAYOUT };
        assert_eq!(at_zero.address(Page::Outside), 0x5000_0000);
        assert_eq!(LAYOUT.problem(), None);
    }

    #[test]
    fn layout_problems_are_found() {
        assert!(Layout { scratch: 0x4fff_c000, ..LAYOUT }.problem().is_some());
        assert!(Layout { scratch: 0x4010_0010, ..LAYOUT }.problem().is_some());
        assert!(Layout { secret: 0x5000_0000, ..LAYOUT }.problem().is_some());
        assert!(Layout { ram_end: 0x4000_0000, ..LAYOUT }.problem().is_some());
        assert!(Layout { secret: 0x400f_f000, ..LAYOUT }.problem().is_some(), "in the image");
        assert!(Layout { secret: 0x4800_0000, ..LAYOUT }.problem().is_some(), "in the DTB");
        assert!(Layout { secret: 0x4810_0000, ..LAYOUT }.problem().is_none(), "past the DTB");
    }

    #[test]
    fn zeroed_pages_pass_and_leftovers_are_told_apart() {
        assert_eq!(check_zeroed([0; PAGE_WORDS]), Ok(()));
        let secret = (0..PAGE_WORDS).map(secret_word);
        assert_eq!(check_zeroed(secret), Err(Leftover::Secret(PAGE_WORDS)));
        let mut garbage = [0; PAGE_WORDS];
        garbage[3] = 7;
        assert_eq!(check_zeroed(garbage), Err(Leftover::Garbage { offset: 24, value: 7 }));
    }
}
