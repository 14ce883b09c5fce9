//! Memory-manager benchmark (ci/bench/README.md): the VMM-side client of
//! mm times its requests, every instruction on the CPU counted (the
//! `benchmark` kernel lets EL0 read PMU event counter 0), and prints
//! `BENCH <name> <instructions>` lines, then `BENCH_DONE` and `TEST_PASS`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::abi::mm::{
        Access, Direction, FaultAddr, GuestId, Outcome, PAGE_SIZE, PageRange, Reply, Request,
        Target, Transfer, WalkFlags, decode_reply,
    };
    use microkit::abi::vcpu::WINDOW_IPA;
    use microkit::{
        Channel, MessageInfo, NullHandler, debug_println, protection_domain, with_msg_regs,
        with_msg_regs_mut,
    };

    const MM: Channel = Channel::new(0);
    /// VM index 0, so guest id 1.
    const GUEST: GuestId = match GuestId::new(1) {
        Some(g) => g,
        None => panic!("guest ids start at 1"),
    };
    /// system.xml's guest RAM: 64 MiB at 0x4000_0000.
    const RAM: u64 = 0x4000_0000;
    const RAM_PAGES: u64 = (64 << 20) / PAGE_SIZE;
    /// 1 MiB in pages.
    const MIB_PAGES: u64 = (1 << 20) / PAGE_SIZE;
    /// Share/unshare round trips timed, after the warm-up.
    const ROUNDS: u64 = 1000;
    const WARMUP: u64 = 10;

    fn instructions() -> u64 {
        let n: u64;
        // SAFETY: a `benchmark` kernel lets EL0 read event counter 0; the
        // read has no side effect.
        unsafe { core::arch::asm!("mrs {}, pmevcntr0_el0", out(reg) n, options(nomem, nostack)) };
        n & 0xffff_ffff
    }

    /// Instructions since `start` (the counter is 32 bits wide).
    fn since(start: u64) -> u64 {
        instructions().wrapping_sub(start) & 0xffff_ffff
    }

    fn call(request: Request) -> Outcome {
        let message = request.encode();
        let words = message.words();
        with_msg_regs_mut(|mrs| mrs[..words.len()].copy_from_slice(words));
        let info = MessageInfo::new(message.label, words.len()).unwrap_or_default();
        let reply = MM.pp_call(info);
        let count = reply.count().min(4);
        let mut out = [0; 4];
        with_msg_regs(|mrs| out[..count].copy_from_slice(&mrs[..count]));
        decode_reply(request.label(), reply.label(), &out[..count])
    }

    fn populate(target: Target, ipa: u64) -> Outcome {
        let addr = FaultAddr::from_raw(ipa)?;
        call(Request::Populate { target, addr, flags: WalkFlags::NONE })
    }

    fn transfer(direction: Direction, from: u64, to: u64, pages: u64) -> Option<Transfer> {
        let from = PageRange::new(from, pages).ok()?;
        let to = PageRange::new(to, pages).ok()?;
        Some(Transfer { guest: GUEST, direction, from, to })
    }

    /// Prints `total` instructions over `n` operations, one decimal.
    fn report(name: &str, total: u64, n: u64) {
        let tenths = total * 10 / n.max(1);
        debug_println!("BENCH {name} {}.{}", tenths / 10, tenths % 10);
    }

    fn fail(what: &str) {
        debug_println!("# {what}");
        debug_println!("TEST_FAIL");
    }

    fn run() {
        let (me, guest) = (Target::Caller, Target::Guest(GUEST));
        if call(Request::CreateGuest { guest: GUEST }) != Ok(Reply::Done) {
            return fail("CreateGuest refused");
        }
        // Populate: one page of guest RAM per request, as a guest's
        // stage-2 fault asks for it; the whole 64 MiB.
        let start = instructions();
        for page in 0..RAM_PAGES {
            if !matches!(populate(guest, RAM + page * PAGE_SIZE), Ok(Reply::Mapped { .. })) {
                return fail("Populate of guest RAM refused");
            }
        }
        report("mm_populate_page", since(start), RAM_PAGES);

        // A guest's MEM_SHARE and MEM_UNSHARE of one page, as its VMM
        // forwards them: from the guest's RAM into this PD's window.
        let share = transfer(Direction::FromGuest, RAM, WINDOW_IPA, 1);
        let Some(t) = share else { return fail("bad transfer") };
        let (mut shared, mut unshared) = (0, 0);
        for round in 0..WARMUP + ROUNDS {
            let s = instructions();
            if call(Request::Share { transfer: t, access: Access::RW }) != Ok(Reply::Done) {
                return fail("Share refused");
            }
            let u = instructions();
            if call(Request::Unshare(t)) != Ok(Reply::Done) {
                return fail("Unshare refused");
            }
            if round >= WARMUP {
                shared += u.wrapping_sub(s) & 0xffff_ffff;
                unshared += since(u);
            }
        }
        report("mm_share_page", shared, ROUNDS);
        report("mm_unshare_page", unshared, ROUNDS);

        // Teardown of the 64 MiB guest.
        let start = instructions();
        let torn = call(Request::Teardown { guest: GUEST });
        let spent = since(start);
        if !matches!(torn, Ok(Reply::TornDown { pages, .. }) if pages == RAM_PAGES) {
            return fail("Teardown did not return the guest's 64 MiB");
        }
        report("mm_teardown_64mib", spent, 1);

        // Donate 1 MiB: pages this PD loaded in its window (as a VMM
        // loads a kernel) go to a new guest in one request.
        if call(Request::CreateGuest { guest: GUEST }) != Ok(Reply::Done) {
            return fail("CreateGuest after teardown refused");
        }
        for page in 0..MIB_PAGES {
            if populate(me, WINDOW_IPA + page * PAGE_SIZE).is_err() {
                return fail("Populate of the window refused");
            }
        }
        let Some(t) = transfer(Direction::ToGuest, WINDOW_IPA, RAM, MIB_PAGES) else {
            return fail("bad transfer");
        };
        let start = instructions();
        let donated = call(Request::Donate { transfer: t, access: Access::RWX });
        let spent = since(start);
        if donated != Ok(Reply::Done) {
            debug_println!("# Donate of 1 MiB: {donated:?}");
            return fail("Donate of 1 MiB refused");
        }
        report("mm_donate_1mib", spent, 1);
        debug_println!("BENCH_DONE");
        debug_println!("TEST_PASS");
    }

    fn init() -> NullHandler {
        run();
        NullHandler
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("bench_mm is a protection domain: build it for aarch64-unknown-none");
}
