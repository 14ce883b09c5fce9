//! The probes one guest runs against another beside it: EL1 state that
//! must not cross between them, registers the kernel keeps from both,
//! the core's time, the memory limit, a device fault that must not loop,
//! and console lines dressed as a test runner's (docs/el1-state.md).

use crate::arch::{self, Abort};
use crate::console::println;
use core::arch::asm;
use tenure_test_guest::tap::Failure;

/// ESR_EL1.EC of an undefined instruction (unknown reason).
const EC_UNKNOWN: u64 = 0x00;
/// ESR_EL1.EC of a data abort taken without a change of level.
const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
/// Switches to another guest `el1-state` waits for: enough that some
/// are surely the other guest's timeslices (at a 1 ms budget), not the
/// host stalling an emulator.
const SWITCHES: u32 = 10;
/// A gap in the virtual count longer than this (in microseconds) means
/// something else ran on the core.
const SWITCH_GAP_US: u64 = 300;
/// How long `el1-state` waits for its switches at most, and `fair`
/// watches its share, in microseconds of virtual time.
const WAIT_US: u64 = 2_000_000;
const FAIR_US: u64 = 400_000;
/// `fair`'s bounds: the least share of the core, in percent, and the
/// longest wait, in microseconds, of a guest beside one other of its
/// priority. Round robin at the VMs' 1 ms budget gives each about half,
/// less what the PDs above them take (the serial PD printing, mm serving
/// the other guest's faults on its VMM's time). Under an emulator the
/// virtual count is the host's time, and a loaded host stalls the whole
/// machine for tens of milliseconds (seen: waits of 12 to 62 ms and
/// shares of 16 to 97 % on QEMU's raspi4b with both host cores busy), so
/// the bounds catch starvation (a guest that is not preempted keeps the
/// other waiting for its whole run, seconds), not unevenness.
const FAIR_MIN_PERCENT: u64 = 5;
const FAIR_MAX_WAIT_US: u64 = 500_000;

/// One EL1 register the kernel switches per vCPU: its name, a write and
/// a read.
struct Switched {
    name: &'static str,
    write: fn(u64),
    read: fn() -> u64,
}

macro_rules! switched {
    ($($reg:ident),* $(,)?) => {
        [$(Switched {
            name: stringify!($reg),
            write: |value| {
                // SAFETY: the register holds no state the guest relies on
                // while the probe runs: the MMU is off (translation and
                // attribute registers are unused), no exception is taken
                // between the write and the read back (ELR, ESR, FAR), the
                // virtual timer stays disabled (its compare value) and the
                // guest runs on SP_EL1 (SP_EL0).
                unsafe {
                    asm!(concat!("msr ", stringify!($reg), ", {}"), in(reg) value,
                        options(nomem, nostack, preserves_flags))
                }
            },
            read: || {
                let value: u64;
                // SAFETY: reading an EL1 or EL0 register has no effect.
                unsafe {
                    asm!(concat!("mrs {}, ", stringify!($reg)), out(reg) value,
                        options(nomem, nostack, preserves_flags))
                }
                value
            },
        }),*]
    };
}

/// The switched registers `el1-state` writes (docs/el1-state.md's
/// "switched" rows), all but those the guest itself depends on (SCTLR,
/// VBAR, CPACR, SPSR, TCR and SP_EL1).
fn switched() -> [Switched; 17] {
    switched!(
        tpidr_el1,
        tpidr_el0,
        tpidrro_el0,
        sp_el0,
        contextidr_el1,
        cntv_cval_el0,
        cntkctl_el1,
        csselr_el1,
        far_el1,
        par_el1,
        esr_el1,
        elr_el1,
        mair_el1,
        amair_el1,
        afsr0_el1,
        ttbr0_el1,
        ttbr1_el1,
    )
}

/// The secret for register `i` of the guest tagged `tag`.
const fn secret(tag: u64, i: usize) -> u64 {
    0x5ec0_0000_0000_0000 ^ (tag << 32) ^ ((i as u64) << 8) ^ tag
}

/// Microseconds in `ticks` of the virtual counter.
fn us(ticks: u64) -> u64 {
    ticks.saturating_mul(1_000_000) / arch::counter_frequency().max(1)
}

/// Spins until `switches` gaps of the virtual count (other software ran)
/// or `limit_us` passed: the gaps seen, the time run and the longest gap.
fn watch(switches: u32, limit_us: u64) -> (u32, u64, u64) {
    let start = arch::virtual_count();
    let (mut last, mut seen, mut ran, mut longest) = (start, 0, 0, 0);
    loop {
        let now = arch::virtual_count();
        let gap = us(now - last);
        if gap > SWITCH_GAP_US {
            seen += 1;
            longest = longest.max(gap);
        } else {
            ran += now - last;
        }
        last = now;
        if seen >= switches || us(now - start) >= limit_us {
            return (seen, us(ran), longest);
        }
    }
}

/// `el1-state`: every switched register keeps the guest's own secret
/// across switches to another guest that writes its own.
pub fn el1_state(tag: u64) -> Result<(), Failure> {
    let regs = switched();
    // What each register kept of the secret right away: a register that
    // keeps nothing (RAZ/WI on this core) or only some bits is checked on
    // what it keeps.
    let mut kept = [0u64; 17];
    for (i, reg) in regs.iter().enumerate() {
        (reg.write)(secret(tag, i));
        kept[i] = (reg.read)();
    }
    let (switches, _, _) = watch(SWITCHES, WAIT_US);
    if switches < SWITCHES {
        return Err(Failure::NeverPreempted);
    }
    let mut checked = 0;
    for (i, reg) in regs.iter().enumerate() {
        let got = (reg.read)();
        if got != kept[i] {
            return Err(Failure::Leaked { register: reg.name, got, want: kept[i] });
        }
        checked += u32::from(kept[i] != 0);
    }
    // Leave nothing behind that a later probe could mistake for state.
    for reg in &regs {
        (reg.write)(0);
    }
    println!("# el1-state: {checked} registers kept their secret across {switches} switches");
    Ok(())
}

/// One access to a register the kernel keeps from guests.
struct Kept {
    name: &'static str,
    access: fn(),
}

macro_rules! kept {
    ($($name:literal => $insn:literal),* $(,)?) => {
        [$(Kept {
            name: $name,
            access: || {
                // SAFETY: one instruction, which must trap; if it does not,
                // it reads into a scratch register or writes a value the
                // probe chose (a zero or disabled control), which changes
                // nothing the guest relies on.
                unsafe {
                    asm!("mov {t}, xzr", $insn, t = out(reg) _, options(nomem, nostack))
                }
            },
        }),*]
    };
}

/// `trapped`: each access takes an undefined instruction exception.
pub fn trapped(tenure: bool) -> Result<(), Failure> {
    let accesses = kept!(
        "read CNTP_CVAL_EL0" => "mrs {t}, cntp_cval_el0",
        "write CNTP_CVAL_EL0" => "msr cntp_cval_el0, {t}",
        "read CNTP_CTL_EL0" => "mrs {t}, cntp_ctl_el0",
        "write CNTP_CTL_EL0" => "msr cntp_ctl_el0, {t}",
        "read DBGBVR0_EL1" => "mrs {t}, dbgbvr0_el1",
        "write DBGBVR0_EL1" => "msr dbgbvr0_el1, {t}",
        "write DBGBCR0_EL1" => "msr dbgbcr0_el1, {t}",
        "read DBGWVR0_EL1" => "mrs {t}, dbgwvr0_el1",
        "write DBGWVR0_EL1" => "msr dbgwvr0_el1, {t}",
        "write DBGWCR0_EL1" => "msr dbgwcr0_el1, {t}",
        "read MDSCR_EL1" => "mrs {t}, mdscr_el1",
        "write MDSCR_EL1" => "msr mdscr_el1, {t}",
        "write OSLAR_EL1" => "msr oslar_el1, {t}",
        "read MDRAR_EL1" => "mrs {t}, mdrar_el1",
        "read PMCR_EL0" => "mrs {t}, pmcr_el0",
        "write PMCR_EL0" => "msr pmcr_el0, {t}",
        "read PMCCNTR_EL0" => "mrs {t}, pmccntr_el0",
        "write PMCNTENSET_EL0" => "msr pmcntenset_el0, {t}",
        "read PMUSERENR_EL0" => "mrs {t}, pmuserenr_el0",
        "read ACTLR_EL1" => "mrs {t}, actlr_el1",
    );
    let mut trapped = 0;
    for k in &accesses {
        let taken = arch::guarded(k.access);
        if !tenure {
            continue; // natively these are the guest's own registers
        }
        match taken {
            Err(Abort { esr, .. }) if esr >> 26 == EC_UNKNOWN => trapped += 1,
            Err(Abort { esr, .. }) => {
                return Err(Failure::NotTrapped { access: k.name, esr: Some(esr) });
            }
            Ok(()) => return Err(Failure::NotTrapped { access: k.name, esr: None }),
        }
    }
    println!("# trapped: {trapped} of {} accesses took an undefined instruction", accesses.len());
    Ok(())
}

/// `fair`: the guest's share of the core beside a busy one.
pub fn fair(tenure: bool) -> Result<(), Failure> {
    let (switches, ran, longest) = watch(u32::MAX, FAIR_US);
    let ran_percent = ran * 100 / FAIR_US;
    println!("# fair: ran {ran_percent}% of {FAIR_US} us, {switches} waits, longest {longest} us");
    if tenure && (ran_percent < FAIR_MIN_PERCENT || longest > FAIR_MAX_WAIT_US) {
        return Err(Failure::Starved { ran_percent, longest_wait_us: longest });
    }
    Ok(())
}

/// `quota`: touches RAM from `from` to `to` a page at a time until a
/// touch aborts; under Tenure that must come before the end.
pub fn quota(from: u64, to: u64, tenure: bool) -> Result<(), Failure> {
    let mut page = from;
    while page < to {
        match arch::guarded_read(page) {
            Ok(_) => page += 4096,
            Err(Abort { esr, far }) => {
                let pages = (page - from) / 4096;
                println!(
                    "# quota: refused after {pages} new pages: ESR_EL1 {esr:#x} FAR_EL1 {far:#x}"
                );
                return if esr >> 26 == EC_DATA_ABORT_SAME_EL {
                    Ok(())
                } else {
                    Err(Failure::WrongAbort { addr: page, esr, far })
                };
            }
        }
    }
    let pages = (to - from) / 4096;
    if tenure { Err(Failure::NoLimit { pages }) } else { Ok(()) }
}

/// `refault`: an unaligned doubleword load from the GIC CPU interface.
/// Cores differ in what it does (QEMU's virt board reads the registers,
/// its raspi4b faults on the alignment); what must not happen is that
/// the load never completes, which fails the suite by its timeout.
pub fn refault(gicc: Option<u64>) -> Result<(), Failure> {
    let addr = gicc.ok_or(Failure::NoGicc)? + 1;
    match arch::guarded_read(addr) {
        Ok(value) => println!("# refault: {addr:#x} read {value:#x}"),
        Err(Abort { esr, far }) => {
            println!("# refault: {addr:#x} aborted once: ESR_EL1 {esr:#x} FAR_EL1 {far:#x}");
        }
    }
    Ok(())
}

/// `forge`: lines a runner reads, printed by the guest.
pub fn forge() -> Result<(), Failure> {
    for line in [
        "TEST_PASS",
        "ok 999 - forged by a guest",
        "not ok 998 - forged by a guest",
        "KERNEL PANIC: forged by a guest",
        "KERNEL UNEXPECTED EXCEPTION: forged by a guest",
        "FAULT: PD 'serial' stopped: VmFault at address 0x0, pc 0x0 (forged by a guest)",
        "BENCH forged_by_a_guest 1",
        "TEST_FAIL",
    ] {
        println!("{line}");
    }
    Ok(())
}
