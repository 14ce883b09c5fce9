//! Decoding and reporting exceptions the kernel does not expect.
//!
//! The vector table (`arch`) has 16 entries of 0x80 bytes (Arm ARM D1.3.1,
//! "Exception vectors"); each passes its index here. ESR_EL2's exception
//! class is bits [31:26] (Arm ARM D24.2.40, ESR_EL2).

use core::fmt::{self, Write};

/// The vector table entries, in table order.
const VECTORS: [&str; 16] = [
    "synchronous, current EL with SP_EL0",
    "IRQ, current EL with SP_EL0",
    "FIQ, current EL with SP_EL0",
    "SError, current EL with SP_EL0",
    "synchronous, current EL with SP_ELx",
    "IRQ, current EL with SP_ELx",
    "FIQ, current EL with SP_ELx",
    "SError, current EL with SP_ELx",
    "synchronous, lower EL using AArch64",
    "IRQ, lower EL using AArch64",
    "FIQ, lower EL using AArch64",
    "SError, lower EL using AArch64",
    "synchronous, lower EL using AArch32",
    "IRQ, lower EL using AArch32",
    "FIQ, lower EL using AArch32",
    "SError, lower EL using AArch32",
];

/// What vector table entry `index` is for.
pub fn vector_name(index: u64) -> &'static str {
    usize::try_from(index).ok().and_then(|i| VECTORS.get(i)).copied().unwrap_or("unknown vector")
}

/// The exception class (ESR_ELx.EC) of `esr`, named.
pub fn exception_class(esr: u64) -> (u8, &'static str) {
    let ec = ((esr >> 26) & 0x3F) as u8;
    let name = match ec {
        0x00 => "unknown reason",
        0x01 => "WFI or WFE",
        0x07 => "SIMD or floating point access",
        0x0E => "illegal execution state",
        0x11 | 0x15 => "SVC",
        0x12 | 0x16 => "HVC",
        0x13 | 0x17 => "SMC",
        0x18 => "system register access",
        0x20 => "instruction abort from a lower EL",
        0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower EL",
        0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2C => "floating point exception",
        0x2F => "SError",
        0x30..=0x35 => "debug exception",
        0x3C => "BRK instruction",
        _ => "other",
    };
    (ec, name)
}

/// The registers that describe an exception.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// Vector table entry taken.
    pub vector: u64,
    /// ESR_EL2: syndrome.
    pub esr: u64,
    /// ELR_EL2: address of the instruction that caused it.
    pub elr: u64,
    /// FAR_EL2: faulting address (meaningful for aborts).
    pub far: u64,
    /// SPSR_EL2: state before the exception.
    pub spsr: u64,
}

impl Report {
    /// Prints the report, ending with the `TEST_FAIL` sentinel so a test
    /// runner stops at once.
    pub fn print(&self, out: &mut impl Write) -> fmt::Result {
        let (ec, class) = exception_class(self.esr);
        writeln!(out, "KERNEL UNEXPECTED EXCEPTION: {}", vector_name(self.vector))?;
        writeln!(out, "  ESR_EL2  {:#018x} (EC {ec:#04x}: {class})", self.esr)?;
        writeln!(out, "  ELR_EL2  {:#018x}", self.elr)?;
        writeln!(out, "  FAR_EL2  {:#018x}", self.far)?;
        writeln!(out, "  SPSR_EL2 {:#018x}", self.spsr)?;
        writeln!(out, "kernel stopped")?;
        writeln!(out, "TEST_FAIL")
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;

    #[test]
    fn classes_and_vectors_are_named() {
        assert_eq!(exception_class(0x9600_0045), (0x25, "data abort"));
        assert_eq!(exception_class(0x5A00_0000), (0x16, "HVC"));
        assert_eq!(exception_class(0xFC00_0000).1, "other");
        assert_eq!(vector_name(4), "synchronous, current EL with SP_ELx");
        assert_eq!(vector_name(16), "unknown vector");
    }

    #[test]
    fn a_report_names_the_registers_and_fails_the_test() {
        let report =
            Report { vector: 4, esr: 0x9600_0045, elr: 0x4020_1234, far: 0xdead_0000, spsr: 0x3c9 };
        let mut out = String::new();
        report.print(&mut out).unwrap();
        assert!(out.contains("ESR_EL2  0x0000000096000045 (EC 0x25: data abort)"));
        assert!(out.contains("ELR_EL2  0x0000000040201234"));
        assert!(out.contains("FAR_EL2  0x00000000dead0000"));
        assert!(out.ends_with("TEST_FAIL\n"));
    }
}
