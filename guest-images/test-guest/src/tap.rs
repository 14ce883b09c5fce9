//! TAP output: the plan line, one `ok N - name` or `not ok N - name:
//! reason` line per probe, and the sentinel (`TEST_PASS` or `TEST_FAIL`)
//! that Tenure's suite runner and `guest-images/test.sh` wait for.

use crate::probe::{Call, Leftover};
use core::fmt::{self, Display, Write};
use tenure_abi::hvc::{GRANULE, MEMINFO_HAS_RANGE, Ret};

/// Why a probe failed: the text after `not ok N - name: `.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Failure {
    /// A call returned the wrong code.
    Returned {
        /// Which step of the probe (from 1).
        step: usize,
        /// The call.
        call: Call,
        /// Its `x1` and `x2`.
        args: [u64; 2],
        /// What `x0` held.
        got: u64,
        /// What it should have held.
        want: Ret,
    },
    /// A successful memory call reported fewer (or more) granules done
    /// than asked.
    Done {
        /// The call.
        call: Call,
        /// `x1` on return.
        got: u64,
        /// The count asked for.
        want: u64,
    },
    /// HYP_MEMINFO answered something other than the 4 KiB granule with
    /// range support.
    Meminfo {
        /// `x0`.
        granule: u64,
        /// `x1`.
        flags: u64,
    },
    /// The guest runs at another exception level than EL1.
    WrongEl(u64),
    /// A read that had to abort did not.
    NoAbort {
        /// The address read.
        addr: u64,
    },
    /// An abort came, but not the data abort at the address read.
    WrongAbort {
        /// The address read.
        addr: u64,
        /// ESR_EL1.
        esr: u64,
        /// FAR_EL1.
        far: u64,
    },
    /// A word read back differs from the one written.
    Readback {
        /// Its address.
        addr: u64,
        /// What was read.
        got: u64,
        /// What was written.
        want: u64,
    },
    /// A page that had to read as zeros does not.
    Leftover {
        /// The page.
        page: u64,
        /// What it holds.
        leftover: Leftover,
    },
    /// The device tree names no GICv2 CPU interface.
    NoGicc,
    /// A device register read aborted.
    DeviceAbort {
        /// The address read.
        addr: u64,
        /// ESR_EL1.
        esr: u64,
        /// FAR_EL1.
        far: u64,
    },
    /// GICC_IIDR read as no GICv1 or GICv2 CPU interface.
    Iidr {
        /// Its address.
        addr: u64,
        /// What it read.
        got: u32,
    },
    /// A register the kernel switches per vCPU read back another value
    /// than the guest wrote, after another guest ran.
    Leaked {
        /// The register.
        register: &'static str,
        /// What it read.
        got: u64,
        /// What the guest wrote.
        want: u64,
    },
    /// No other guest ran on the core while the probe waited for one.
    NeverPreempted,
    /// An access to a register the kernel keeps from guests did not take
    /// an undefined instruction exception.
    NotTrapped {
        /// The access.
        access: &'static str,
        /// ESR_EL1 of the exception it took, or `None` for none.
        esr: Option<u64>,
    },
    /// The guest ran too little of the time, or waited too long.
    Starved {
        /// Percent of the time it ran.
        ran_percent: u64,
        /// Its longest wait, in microseconds.
        longest_wait_us: u64,
    },
    /// Every page of RAM was given: no memory limit held the guest back.
    NoLimit {
        /// Pages touched.
        pages: u64,
    },
    /// The guest's memory cannot hold the probes.
    Layout(&'static str),
    /// A probe name the guest does not know.
    Unknown,
    /// A bootarg the guest cannot read.
    BadArg,
}

/// An `x0` value as a code and its name where it is one (`-3
/// (INVALID_PARAMETER)`), in hex otherwise.
struct Code(u64);

impl Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Ret::from_raw(self.0) {
            Some(ret) => write!(f, "{} ({})", ret.raw() as i64, ret.name()),
            None => write!(f, "{:#x}", self.0),
        }
    }
}

impl Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Failure::Returned { step, call, args: [x1, x2], got, want } => write!(
                f,
                "step {step}: {}({x1:#x}, {x2}) returned {}, want {}",
                call.name,
                Code(got),
                Code(want.raw())
            ),
            Failure::Done { call, got, want } => {
                write!(f, "{} did {got} granules, want {want}", call.name)
            }
            Failure::Meminfo { granule, flags } => write!(
                f,
                "HYP_MEMINFO returned {} with flags {flags:#x}, want granule {GRANULE} with flags {MEMINFO_HAS_RANGE:#x}",
                Code(granule)
            ),
            Failure::WrongEl(el) => write!(f, "running at EL{el}, want EL1"),
            Failure::NoAbort { addr } => write!(f, "reading {addr:#x} did not abort"),
            Failure::WrongAbort { addr, esr, far } => write!(
                f,
                "reading {addr:#x} took ESR_EL1 {esr:#x} FAR_EL1 {far:#x}, want a data abort (EC 0x25) at {addr:#x}"
            ),
            Failure::Readback { addr, got, want } => {
                write!(f, "{addr:#x} reads {got:#x} after writing {want:#x}")
            }
            Failure::Leftover { page, leftover: Leftover::Secret(words) } => {
                write!(f, "page {page:#x} still holds {words} words of the secret")
            }
            Failure::Leftover { page, leftover: Leftover::Garbage { offset, value } } => {
                write!(f, "page {page:#x} is not zeroed: {value:#x} at offset {offset:#x}")
            }
            Failure::NoGicc => f.write_str("the device tree has no GICv2 CPU interface"),
            Failure::DeviceAbort { addr, esr, far } => {
                write!(f, "reading {addr:#x} aborted: ESR_EL1 {esr:#x} FAR_EL1 {far:#x}")
            }
            Failure::Iidr { addr, got } => write!(
                f,
                "GICC_IIDR at {addr:#x} reads {got:#010x}, want architecture version 1 or 2 and an implementer"
            ),
            Failure::Leaked { register, got, want } => {
                write!(f, "{register} reads {got:#x} after another guest ran, want {want:#x}")
            }
            Failure::NeverPreempted => f.write_str("no other guest ran while this one waited"),
            Failure::NotTrapped { access, esr: None } => {
                write!(f, "{access} did not trap")
            }
            Failure::NotTrapped { access, esr: Some(esr) } => {
                write!(f, "{access} took ESR_EL1 {esr:#x}, want an undefined instruction (EC 0)")
            }
            Failure::Starved { ran_percent, longest_wait_us } => write!(
                f,
                "ran {ran_percent}% of the time, longest wait {longest_wait_us} us, want at least \
                 5% and at most 500000 us"
            ),
            Failure::NoLimit { pages } => {
                write!(f, "all {pages} pages touched were given: no memory limit")
            }
            Failure::Layout(why) => f.write_str(why),
            Failure::Unknown => f.write_str("no such probe"),
            Failure::BadArg => f.write_str("cannot read this bootarg"),
        }
    }
}

/// The running count of TAP lines.
#[derive(Default, Debug)]
pub struct Tap {
    done: u32,
    failed: u32,
}

impl Tap {
    /// The plan line, `1..N`.
    pub fn plan(out: &mut impl Write, count: usize) -> fmt::Result {
        writeln!(out, "1..{count}")
    }

    /// Prints the result of the next test, `name`.
    pub fn result(
        &mut self,
        out: &mut impl Write,
        name: &str,
        result: Result<(), Failure>,
    ) -> fmt::Result {
        self.done += 1;
        match result {
            Ok(()) => writeln!(out, "ok {} - {name}", self.done),
            Err(why) => {
                self.failed += 1;
                writeln!(out, "not ok {} - {name}: {why}", self.done)
            }
        }
    }

    /// Whether every test so far passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.failed == 0
    }

    /// Prints the sentinel: `TEST_PASS` if every test passed, `TEST_FAIL`
    /// otherwise.
    pub fn finish(&self, out: &mut impl Write) -> fmt::Result {
        writeln!(out, "{}", if self.passed() { "TEST_PASS" } else { "TEST_FAIL" })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::probe::{Probe, UNKNOWN_CALL};
    use std::string::String;
    use tenure_abi::hvc::Function;

    #[test]
    fn lines_number_from_one_and_the_sentinel_tells_the_outcome() {
        let mut out = String::new();
        let mut tap = Tap::default();
        Tap::plan(&mut out, 2).unwrap();
        tap.result(&mut out, "print", Ok(())).unwrap();
        tap.finish(&mut out).unwrap();
        tap.result(&mut out, "outside", Err(Failure::NoAbort { addr: 0x5000_0000 })).unwrap();
        tap.finish(&mut out).unwrap();
        assert_eq!(
            out,
            "1..2\nok 1 - print\nTEST_PASS\nnot ok 2 - outside: reading 0x50000000 did not abort\nTEST_FAIL\n"
        );
        assert!(!tap.passed());
    }

    #[test]
    fn return_codes_print_as_numbers_and_names() {
        let call = Probe::Share.steps()[0].call;
        let why = Failure::Returned {
            step: 2,
            call,
            args: [0x4010_0000, 1],
            got: u64::MAX,
            want: Ret::Denied,
        };
        assert_eq!(
            std::format!("{why}"),
            "step 2: MEM_SHARE(0x40100000, 1) returned -1 (NOT_SUPPORTED), want -4 (DENIED)"
        );
        let odd = Failure::Returned {
            step: 1,
            call: UNKNOWN_CALL,
            args: [0, 1],
            got: 4096,
            want: Ret::NotSupported,
        };
        assert_eq!(
            std::format!("{odd}"),
            "step 1: VENDOR_HYP_0xfe(0x0, 1) returned 0x1000, want -1 (NOT_SUPPORTED)"
        );
        let info = Failure::Meminfo { granule: u64::MAX, flags: 0 };
        assert!(std::format!("{info}").starts_with("HYP_MEMINFO returned -1 (NOT_SUPPORTED)"));
        assert_eq!(Function::MemShare.name(), call.name);
    }

    #[test]
    fn leftovers_and_aborts_read_as_sentences() {
        let secret = Failure::Leftover { page: 0x4010_6000, leftover: Leftover::Secret(512) };
        assert_eq!(std::format!("{secret}"), "page 0x40106000 still holds 512 words of the secret");
        let abort = Failure::WrongAbort { addr: 0x5000_0000, esr: 0x9600_0010, far: 0x5000_0008 };
        assert_eq!(
            std::format!("{abort}"),
            "reading 0x50000000 took ESR_EL1 0x96000010 FAR_EL1 0x50000008, want a data abort (EC 0x25) at 0x50000000"
        );
    }
}
