//! One boot: read the device tree, run the plan's probes, print their TAP
//! lines and the sentinel, then power off (or stop, without `off`).

use crate::arch::{self, Abort, Conduit};
use crate::console::{self, println};
use crate::hostile;
use core::panic::PanicInfo;
use core::ptr;
use fdt::Fdt;
use tenure_abi::hvc::{Function, GRANULE, MEMINFO_HAS_RANGE, Ret};
use tenure_test_guest::bench::{self, Figure, POPULATE_PAGES, ROUNDS, WARMUP};
use tenure_test_guest::bootargs::{End, Entry, Plan};
use tenure_test_guest::probe::{
    Expect, GICC_IIDR, Layout, PAGE_WORDS, Page, Probe, Scratch, Step, check_zeroed,
    gicc_iidr_plausible, secret_word,
};
use tenure_test_guest::tap::{Failure, Tap};

/// Exception class of a data abort taken without a change of exception
/// level (ESR_ELx.EC, Arm ARM D24.2.40).
const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
/// ESR_ELx.ISS bit 10 of a data abort, FnV: FAR is not valid.
const ESR_FNV: u64 = 1 << 10;

/// What the probes run against.
struct Guest {
    layout: Layout,
    expect: Expect,
    el: u64,
    /// The virtual count at the guest's first instruction and right
    /// before its first console byte, for `bench`.
    boot_counts: [u64; 2],
    /// `tag=`: the number the guest's secrets are built from.
    tag: u64,
    /// The end of the memory the image reserves.
    image_end: u64,
}

/// Rust entry, from `_start` with the device tree's address, the image's
/// load address, the exception level and the virtual count at `_start`.
#[unsafe(no_mangle)]
extern "C" fn guest_main(dtb: u64, load: u64, el: u64, entry_count: u64) -> ! {
    // SAFETY: the boot protocol passes the device tree's address in x0;
    // `from_ptr` checks its header before reading the rest, and nothing
    // writes to it while the guest runs.
    let Ok(fdt) = (unsafe { Fdt::from_ptr(dtb as *const u8) }) else {
        // No device tree, so no console to say so: stop.
        arch::halt()
    };
    let Some(uart) = fdt
        .find_compatible(&["arm,pl011"])
        .and_then(|node| node.reg())
        .and_then(|mut reg| reg.next())
        .map(|region| region.starting_address as usize)
    else {
        arch::halt()
    };
    // SAFETY: the device tree names this PL011 as the machine's; the MMU
    // is off, so it is reachable at its address, and nothing else in the
    // guest drives it.
    unsafe { console::init(uart) };
    arch::set_conduit(match fdt.find_node("/psci").and_then(|n| n.property("method")) {
        Some(method) if method.as_str() == Some("hvc") => Conduit::Hvc,
        Some(method) if method.as_str() == Some("smc") => Conduit::Smc,
        _ => Conduit::None,
    });

    let bootargs = fdt.find_node("/chosen").and_then(|_| fdt.chosen().bootargs()).unwrap_or("");
    let plan = Plan::parse(bootargs);
    let image = arch::image_layout();
    // The memory node that holds the image is the guest's RAM.
    let ram = fdt
        .find_node("/memory")
        .and_then(|_| {
            fdt.memory()
                .regions()
                .map(|r| (r.starting_address as u64, r.size.unwrap_or(0) as u64))
                .find(|&(start, size)| start <= load && load - start < size)
        })
        .unwrap_or((0, 0));
    let layout = Layout {
        ram_start: ram.0,
        ram_end: ram.0 + ram.1,
        uart: uart as u64,
        scratch: image.scratch,
        secret: plan.secret.unwrap_or(image.scratch + Scratch::Secret as u64 * GRANULE),
        image: [image.start, image.scratch],
        dtb: [dtb, dtb + fdt.total_size() as u64],
        gicc: gic_cpu_interface(&fdt),
    };
    let first_output = arch::virtual_count();
    let guest = Guest {
        layout,
        expect: plan.expect,
        el,
        boot_counts: [entry_count, first_output],
        tag: plan.tag,
        image_end: image.end,
    };

    println!(
        "# tenure-test-guest {}: EL{el}, image at {load:#x}..{:#x}, device tree at {dtb:#x}, RAM {:#x}..{:#x}, PL011 at {uart:#x}",
        env!("CARGO_PKG_VERSION"),
        image.end,
        layout.ram_start,
        layout.ram_end
    );
    println!("# bootargs: {bootargs}");
    let layout_problem = if image.scratch_pages < Scratch::COUNT {
        Some("link.ld reserves too few scratch pages")
    } else {
        layout.problem()
    };

    let mut out = console::Console;
    let mut tap = Tap::default();
    // `tap=none`: no TAP, only what the probes print and a comment for
    // each failure.
    if !plan.quiet {
        let _ = Tap::plan(&mut out, plan.entries().len());
    }
    for entry in plan.entries() {
        let (name, result) = match *entry {
            Entry::Probe(probe) => {
                let result = match layout_problem {
                    Some(why) if probe != Probe::Print => Err(Failure::Layout(why)),
                    _ => guest.run(probe),
                };
                (probe.name(), result)
            }
            Entry::Unknown(name) => (name, Err(Failure::Unknown)),
            Entry::BadArg(arg) => (arg, Err(Failure::BadArg)),
        };
        if !plan.quiet {
            let _ = tap.result(&mut out, name, result);
        } else if let Err(why) = result {
            println!("# {name}: {why}");
        }
    }
    if !plan.quiet {
        let _ = tap.finish(&mut out);
    }
    match plan.end {
        End::Off => power_off(),
        End::Reset => reset(),
        End::Stop => {
            println!("# no `off` or `reset` in probes: stopping here");
            arch::halt()
        }
    }
}

impl Guest {
    fn run(&self, probe: Probe) -> Result<(), Failure> {
        match probe {
            Probe::Print => self.print(),
            Probe::Meminfo => self.meminfo(),
            Probe::Outside => outside(self.layout.ram_end),
            Probe::SecretWrite => secret_write(self.layout.secret),
            Probe::SecretRead => read_zeroed(self.layout.secret, false),
            Probe::Bench => self.bench(probe.steps()),
            Probe::GiccIidr => gicc_iidr(self.layout.gicc),
            Probe::El1State => hostile::el1_state(self.tag),
            Probe::Trapped => hostile::trapped(self.expect == Expect::Tenure),
            Probe::Fair => hostile::fair(self.expect == Expect::Tenure),
            Probe::Quota => {
                // From past the image and the device tree to below the
                // last page of RAM, which other probes name untouched.
                let from = self.image_end.max(self.layout.dtb[1]).next_multiple_of(GRANULE);
                let to = self.layout.ram_end - 2 * GRANULE;
                hostile::quota(from, to, self.expect == Expect::Tenure)
            }
            Probe::Refault => hostile::refault(self.layout.gicc),
            Probe::Forge => hostile::forge(),
            Probe::Share => {
                self.steps(probe.steps())?;
                // Shared in place: the page still reads what it is written.
                write_and_read_back(self.layout.address(Page::Scratch(Scratch::Shared)))
            }
            Probe::Relinquish => {
                let page = self.layout.address(Page::Scratch(Scratch::Relinquish));
                write_secret(page);
                self.steps(probe.steps())?;
                match self.expect {
                    // Given up: gone, or scrubbed before it came back.
                    Expect::Tenure => read_zeroed(page, true),
                    Expect::Native => Ok(()),
                }
            }
            _ => self.steps(probe.steps()),
        }
    }

    /// Makes the calls of `steps`, each of which must return what it
    /// expects; successful memory calls must have done every granule.
    fn steps(&self, steps: &[Step]) -> Result<(), Failure> {
        for (i, step) in steps.iter().enumerate() {
            let x1 = self.layout.address(step.page);
            let [x0, done, ..] = arch::smccc(step.call.id, [x1, step.granules, step.x3]);
            self.check(i, step, x1, [x0, done])?;
        }
        Ok(())
    }

    /// Checks the code (`x0`) and granules done (`x1`) that step number
    /// `i` of a probe returned; `x1` is the address it named.
    fn check(&self, i: usize, step: &Step, x1: u64, [x0, done]: [u64; 2]) -> Result<(), Failure> {
        let want = step.want(self.expect);
        if x0 != want.raw() {
            return Err(Failure::Returned {
                step: i + 1,
                call: step.call,
                args: [x1, step.granules],
                got: x0,
                want,
            });
        }
        if want == Ret::Success && done != step.granules {
            return Err(Failure::Done { call: step.call, got: done, want: step.granules });
        }
        Ok(())
    }

    /// The `bench` probe (`tenure_test_guest::bench`): the boot figures,
    /// then the first touches, then `steps` round after round (each
    /// step's mean on a line of its own), then `BENCH_DONE`.
    fn bench(&self, steps: &[Step]) -> Result<(), Failure> {
        let [first, end] = bench::touch_pages(&self.layout).map_err(Failure::Layout)?;
        let mut out = console::Console;
        let hz = arch::counter_frequency();
        let [entry, output] = self.boot_counts.map(|ticks| bench::nanoseconds(ticks, hz));
        let _ = bench::line(&mut out, bench::name::RESET_TO_ENTRY, Figure::Total(entry));
        let _ = bench::line(&mut out, bench::name::RESET_TO_OUTPUT, Figure::Total(output));

        // Without a PMU the figures read 0 and the probe runs all the same.
        let pmu = arch::has_pmu();
        let count = || if pmu { arch::instructions() } else { 0 };

        let start = count();
        for page in (first..end).step_by(GRANULE as usize) {
            // SAFETY: `touch_pages` keeps the pages in RAM, clear of the
            // image, its stack and scratch pages, the device tree and the
            // secret page, so nothing of the guest's uses them; reading
            // them changes nothing.
            let _ = unsafe { ptr::read_volatile(page as *const u64) };
        }
        let total = bench::counted(start, count());
        let _ = bench::line(
            &mut out,
            bench::name::POPULATE,
            Figure::Mean { total, count: POPULATE_PAGES },
        );

        // The steps are MEM_SHARE then MEM_UNSHARE of one page.
        let mut totals = [0; 2];
        for round in 0..WARMUP + ROUNDS {
            for (i, (step, total)) in steps.iter().zip(&mut totals).enumerate() {
                let x1 = self.layout.address(step.page);
                let start = count();
                let [x0, done, ..] = arch::smccc(step.call.id, [x1, step.granules, step.x3]);
                let spent = bench::counted(start, count());
                self.check(i, step, x1, [x0, done])?;
                if round >= WARMUP {
                    *total += spent;
                }
            }
        }
        for (name, total) in [bench::name::SHARE, bench::name::UNSHARE].into_iter().zip(totals) {
            let _ = bench::line(&mut out, name, Figure::Mean { total, count: ROUNDS });
        }
        println!("{}", bench::DONE);
        Ok(())
    }

    fn print(&self) -> Result<(), Failure> {
        println!("# hello from EL{} at {:#x}", self.el, self.layout.image[0]);
        if self.el == 1 { Ok(()) } else { Err(Failure::WrongEl(self.el)) }
    }

    fn meminfo(&self) -> Result<(), Failure> {
        let [granule, flags, ..] = arch::smccc(Function::HypMeminfo.id(), [0; 3]);
        match self.expect {
            Expect::Tenure if granule == GRANULE && flags & MEMINFO_HAS_RANGE != 0 => Ok(()),
            Expect::Native if granule == Ret::NotSupported.raw() => Ok(()),
            _ => Err(Failure::Meminfo { granule, flags }),
        }
    }
}

/// Reads the first byte past RAM: it must take a data abort at that
/// address, which the guest reports and steps over.
fn outside(addr: u64) -> Result<(), Failure> {
    match arch::guarded_read(addr) {
        Ok(_) => Err(Failure::NoAbort { addr }),
        Err(Abort { esr, far }) => {
            println!("# data abort reading {addr:#x}: ESR_EL1 {esr:#x} FAR_EL1 {far:#x}");
            let far_ok = esr & ESR_FNV != 0 || far == addr;
            if esr >> 26 == EC_DATA_ABORT_SAME_EL && far_ok {
                Ok(())
            } else {
                Err(Failure::WrongAbort { addr, esr, far })
            }
        }
    }
}

/// The GICv2 CPU interface's base: the second `reg` entry of the
/// device tree's GIC node (the first is the distributor).
fn gic_cpu_interface(fdt: &Fdt<'_>) -> Option<u64> {
    fdt.find_compatible(&["arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a9-gic"])
        .and_then(|node| node.reg())
        .and_then(|mut reg| reg.nth(1))
        .map(|region| region.starting_address as u64)
}

/// Reads GICC_IIDR at `gicc`, the CPU interface the device tree gives;
/// it must read as a GICv1 or GICv2 interface.
fn gicc_iidr(gicc: Option<u64>) -> Result<(), Failure> {
    let gicc = gicc.ok_or(Failure::NoGicc)?;
    let addr = gicc + GICC_IIDR;
    match arch::guarded_read32(addr) {
        Ok(iidr) => {
            println!("# GICC_IIDR at {addr:#x} reads {iidr:#010x}");
            if gicc_iidr_plausible(iidr) { Ok(()) } else { Err(Failure::Iidr { addr, got: iidr }) }
        }
        Err(Abort { esr, far }) => Err(Failure::DeviceAbort { addr, esr, far }),
    }
}

/// Writes the secret pattern into `page`.
fn write_secret(page: u64) {
    for i in 0..PAGE_WORDS {
        // SAFETY: `page` is a page of the guest's RAM outside its image
        // and device tree (`Layout::problem`), so nothing else of the
        // guest's uses it; it is 8-byte aligned.
        unsafe { ptr::write_volatile((page + 8 * i as u64) as *mut u64, secret_word(i)) };
    }
}

/// Writes the secret pattern into `page` and reads it back.
fn secret_write(page: u64) -> Result<(), Failure> {
    write_secret(page);
    for i in 0..PAGE_WORDS {
        let addr = page + 8 * i as u64;
        // SAFETY: as in `write_secret`.
        let got = unsafe { ptr::read_volatile(addr as *const u64) };
        if got != secret_word(i) {
            return Err(Failure::Readback { addr, got, want: secret_word(i) });
        }
    }
    Ok(())
}

/// Writes a word into `page` and reads it back.
fn write_and_read_back(page: u64) -> Result<(), Failure> {
    let want = secret_word(0);
    // SAFETY: `page` is one of the guest's scratch pages, 8-byte aligned,
    // which only this probe uses.
    unsafe { ptr::write_volatile(page as *mut u64, want) };
    // SAFETY: as above.
    let got = unsafe { ptr::read_volatile(page as *const u64) };
    if got == want { Ok(()) } else { Err(Failure::Readback { addr: page, got, want }) }
}

/// Checks that `page` reads as zeros; an abort on the first word passes
/// too if `may_abort` (the page is gone).
fn read_zeroed(page: u64, may_abort: bool) -> Result<(), Failure> {
    let mut words = [0; PAGE_WORDS];
    for (i, word) in words.iter_mut().enumerate() {
        let addr = page + 8 * i as u64;
        *word = match arch::guarded_read(addr) {
            Ok(value) => value,
            Err(Abort { esr, far }) if may_abort && i == 0 => {
                println!("# {page:#x} is gone: ESR_EL1 {esr:#x} FAR_EL1 {far:#x}");
                return Ok(());
            }
            Err(Abort { esr, far }) => return Err(Failure::WrongAbort { addr, esr, far }),
        };
    }
    check_zeroed(words).map_err(|leftover| Failure::Leftover { page, leftover })
}

/// Ends the boot with PSCI SYSTEM_OFF; stops the core if that returns.
pub fn power_off() -> ! {
    let [ret, ..] = arch::smccc(Function::SystemOff.id(), [0; 3]);
    println!("# SYSTEM_OFF returned {:#x}", ret);
    arch::halt()
}

/// Ends the boot with PSCI SYSTEM_RESET; powers off if that returns.
fn reset() -> ! {
    let [ret, ..] = arch::smccc(Function::SystemReset.id(), [0; 3]);
    println!("# SYSTEM_RESET returned {:#x}", ret);
    power_off()
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("# panic: {info}");
    println!("TEST_FAIL");
    power_off()
}
