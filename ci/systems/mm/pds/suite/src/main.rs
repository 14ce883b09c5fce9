//! Memory-manager suite: the VMM client (`vmm`), which drives mm through
//! the protocol and prints TAP, and its child `prober`, which touches its
//! own window before mm has put anything there. One program, the role
//! chosen by the PD's name (see ../../README.md).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::abi::mm::{
        Access, Direction, FaultAddr, GuestId, Label, MmError, Outcome, PAGE_SIZE, PageInfo,
        PageRange, PageState, Reply, Request, Target, Transfer, WalkFlags, decode_reply,
    };
    use microkit::abi::vcpu::WINDOW_IPA;
    use microkit::symbols::pd_name;
    use microkit::{
        Channel, ChannelSet, Child, Handler, MessageInfo, debug_println, get_mr, protection_domain,
        with_msg_regs, with_msg_regs_mut,
    };

    /// Both roles call mm on their channel 0.
    const MM: Channel = Channel::new(0);
    /// vmm: the prober's report that its touch did not fault.
    const FROM_PROBER: Channel = Channel::new(2);
    /// prober: to vmm.
    const TO_VMM: Channel = Channel::new(1);
    const PROBER: Child = Child::new(1);

    /// The guest: VM index 0 in system.xml, so guest id 1.
    const GUEST: GuestId = match GuestId::new(1) {
        Some(g) => g,
        None => panic!("guest ids start at 1"),
    };
    /// A guest id no VM has (system.xml declares one VM).
    const NO_GUEST: u64 = 2;
    /// system.xml's `guest_ram` map into the VM: its IPA and size.
    const RAM: u64 = 0x4000_0000;
    const RAM_SIZE: u64 = 0x100_0000;
    /// Window pages, by use.
    const W0: u64 = WINDOW_IPA;
    const W1: u64 = WINDOW_IPA + PAGE_SIZE;
    const W2: u64 = WINDOW_IPA + 2 * PAGE_SIZE;
    const W3: u64 = WINDOW_IPA + 3 * PAGE_SIZE;
    const W4: u64 = WINDOW_IPA + 4 * PAGE_SIZE;

    /// Fault label of a stage-2 data abort (seL4 MCS numbering).
    const VM_FAULT: u64 = 6;
    const PLAN: u32 = 17;
    const PATTERN: u64 = 0x7e57_0000_c0de_0001;
    /// Garbage messages sent in check 14.
    const GARBAGE: u32 = 300;

    struct Vmm {
        next: u32,
        failed: u32,
    }

    impl Vmm {
        fn check(&mut self, ok: bool, what: &str) {
            self.next += 1;
            let n = self.next;
            if ok {
                debug_println!("ok {n} - {what}");
            } else {
                self.failed += 1;
                debug_println!("not ok {n} - {what}");
            }
        }
    }

    /// Reads the word at `addr` of this PD's window.
    fn peek(addr: u64) -> u64 {
        // SAFETY: `addr` is a word of this PD's window, which only mm maps
        // into; the caller has had mm put a page there (or, for the
        // prober, means to fault).
        unsafe { core::ptr::read_volatile(addr as *const u64) }
    }

    /// Writes the word at `addr` of this PD's window.
    fn poke(addr: u64, value: u64) {
        // SAFETY: as in `peek`; the page is this PD's, read-write.
        unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
    }

    /// A raw PPC to mm: the reply's label and words.
    fn raw(label: u64, words: &[u64]) -> (u64, [u64; 4], usize) {
        with_msg_regs_mut(|mrs| mrs[..words.len()].copy_from_slice(words));
        let info = MessageInfo::new(label, words.len()).unwrap_or_default();
        let reply = MM.pp_call(info);
        let count = reply.count().min(4);
        let mut out = [0; 4];
        with_msg_regs(|mrs| out[..count].copy_from_slice(&mrs[..count]));
        (reply.label(), out, reply.count())
    }

    /// A request to mm, encoded and its reply decoded.
    fn call(request: Request) -> Outcome {
        let message = request.encode();
        let (label, words, count) = raw(message.label, message.words());
        decode_reply(request.label(), label, &words[..count.min(4)])
    }

    fn populate(target: Target, ipa: u64) -> Outcome {
        match FaultAddr::from_raw(ipa) {
            Ok(addr) => call(Request::Populate { target, addr, flags: WalkFlags::NONE }),
            Err(e) => Err(e),
        }
    }

    fn query(target: Target, ipa: u64) -> Outcome {
        match FaultAddr::from_raw(ipa) {
            Ok(addr) => call(Request::Query { target, addr }),
            Err(e) => Err(e),
        }
    }

    fn state(target: Target, ipa: u64) -> Option<PageState> {
        match query(target, ipa) {
            Ok(Reply::Page(info)) => Some(info.state),
            _ => None,
        }
    }

    fn transfer(direction: Direction, from: u64, to: u64, pages: u64) -> Option<Transfer> {
        let from = PageRange::new(from, pages).ok()?;
        let to = PageRange::new(to, pages).ok()?;
        Some(Transfer { guest: GUEST, direction, from, to })
    }

    /// What a refused request must leave alone: how mm sees every page
    /// the suite uses, and what the window's first page holds.
    fn snapshot() -> [u64; 9] {
        let seen = |target, ipa| match query(target, ipa) {
            Ok(Reply::Page(PageInfo { state, access, borrowers })) => {
                state as u64 | u64::from(access.bits()) << 8 | u64::from(borrowers) << 16
            }
            Ok(_) => u64::MAX,
            Err(e) => 0xe000_0000 | e.raw(),
        };
        let g = Target::Guest(GUEST);
        [
            seen(Target::Caller, W0),
            seen(Target::Caller, W1),
            seen(Target::Caller, W2),
            seen(Target::Caller, W3),
            seen(g, RAM),
            seen(g, RAM + PAGE_SIZE),
            seen(g, RAM + 2 * PAGE_SIZE),
            seen(g, RAM + 3 * PAGE_SIZE),
            peek(W0),
        ]
    }

    /// Populates guest RAM from its start until mm runs out of pool (or
    /// reaches the guest's limit, which is the whole pool):
    /// the pages it got, or `None` if it stopped for another reason.
    fn fill() -> Option<u64> {
        let mut pages = 0;
        loop {
            match populate(Target::Guest(GUEST), RAM + pages * PAGE_SIZE) {
                Ok(Reply::Mapped { pages: 1, .. }) => pages += 1,
                // The guest's memory_limit is all the pool holds for
                // guests, so it stops the fill only when no page is lost.
                Err(MmError::PoolExhausted | MmError::OverLimit) => return Some(pages),
                other => {
                    debug_println!("# fill stopped at page {pages}: {other:?}");
                    return None;
                }
            }
        }
    }

    /// Creates the guest, fills its RAM from the pool and tears it down:
    /// how many pages the pool had free, if teardown gave them all back.
    fn free_pool_pages() -> Option<u64> {
        if call(Request::CreateGuest { guest: GUEST }) != Ok(Reply::Done) {
            return None;
        }
        let pages = fill();
        match (pages, call(Request::Teardown { guest: GUEST })) {
            (Some(n), Ok(Reply::TornDown { pages, .. })) if pages == n => Some(n),
            (n, other) => {
                debug_println!("# filled {n:?} pages; teardown: {other:?}");
                None
            }
        }
    }

    /// A cheap deterministic generator (xorshift64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A word that names neither the caller's window (target 0) nor
        /// the guest (1): random, or small.
        fn word(&mut self) -> u64 {
            match self.next() % 3 {
                0 => 2 + self.next() % 14,
                _ => self.next(),
            }
        }
    }

    impl Vmm {
        /// Everything after check 1, in order.
        fn run(&mut self) {
            let caller = Target::Caller;
            let guest = Target::Guest(GUEST);
            // The pool's free pages, before anything else takes one.
            let before = free_pool_pages();

            // The window is linked: a page mm puts there is this PD's.
            let mapped = populate(caller, W0) == Ok(Reply::Mapped { ipa: W0, pages: 1 });
            let zeroed = mapped && peek(W0) == 0 && peek(W0 + PAGE_SIZE - 8) == 0;
            if mapped {
                poke(W0, PATTERN);
                poke(W0 + PAGE_SIZE - 8, !PATTERN);
            }
            let kept = mapped && peek(W0) == PATTERN && peek(W0 + PAGE_SIZE - 8) == !PATTERN;
            self.check(
                zeroed && kept,
                "a page mm populates in the window reads zero, then what this PD writes",
            );

            let created = call(Request::CreateGuest { guest: GUEST }) == Ok(Reply::Done);
            self.check(created, "CreateGuest of the declared guest succeeds");

            let populated =
                populate(guest, RAM + 0x123) == Ok(Reply::Mapped { ipa: RAM, pages: 1 });
            let owned = PageInfo { state: PageState::Owned, access: Access::RWX, borrowers: 0 };
            let info = query(guest, RAM);
            self.check(
                populated && info == Ok(Reply::Page(owned)),
                "Populate of guest RAM succeeds and Query reports the page the guest's, RWX",
            );

            // Donate: a loaded page leaves the window for good.
            let donated = populate(caller, W1).is_ok() && {
                poke(W1, PATTERN);
                transfer(Direction::ToGuest, W1, RAM + PAGE_SIZE, 1).is_some_and(|t| {
                    call(Request::Donate { transfer: t, access: Access::RWX }) == Ok(Reply::Done)
                })
            };
            let gone = state(caller, W1) == Some(PageState::NoPage);
            let theirs = state(guest, RAM + PAGE_SIZE) == Some(PageState::Owned);
            self.check(
                donated && gone && theirs,
                "after Donate the window no longer maps the page (Query: no page) and the guest owns it",
            );

            // The state the hostile requests must leave alone: W0 owned,
            // W2 shared with the guest at RAM + 2 pages, W3 owned alone.
            let shared = populate(caller, W2).is_ok()
                && populate(caller, W3).is_ok()
                && transfer(Direction::ToGuest, W2, RAM + 2 * PAGE_SIZE, 1).is_some_and(|t| {
                    call(Request::Share { transfer: t, access: Access::RW }) == Ok(Reply::Done)
                });
            if !shared {
                debug_println!("# setting up the hostile requests failed");
            }
            let s = snapshot();
            let hostile = |vmm: &mut Vmm, got: Result<(), MmError>, want: MmError, what: &str| {
                let unchanged = snapshot() == s;
                if got != Err(want) || !unchanged {
                    debug_println!("# {what}: {got:?} (want {want:?}), unchanged: {unchanged}");
                }
                vmm.check(shared && got == Err(want) && unchanged, what);
            };
            let code = |(label, _, count): (u64, [u64; 4], usize)| match MmError::from_raw(label) {
                Some(e) if count == 0 => Err(e),
                _ => Ok(()),
            };
            let done = |o: Outcome| o.map(drop);

            hostile(
                self,
                code(raw(99, &[1])),
                MmError::UnknownRequest,
                "an unknown label is refused (UnknownRequest) and changes nothing",
            );
            hostile(
                self,
                code(raw(Label::Populate as u64, &[1, RAM])),
                MmError::BadLength,
                "a request with a word missing is refused (BadLength) and changes nothing",
            );
            hostile(
                self,
                code(raw(Label::Populate as u64, &[NO_GUEST, RAM, 0])),
                MmError::NoSuchGuest,
                "a guest id no VM has is refused (NoSuchGuest) and changes nothing",
            );
            let past_end = transfer(Direction::ToGuest, W3, RAM + RAM_SIZE - PAGE_SIZE, 2)
                .map_or(Ok(()), |t| {
                    done(call(Request::Donate { transfer: t, access: Access::RW }))
                });
            hostile(
                self,
                past_end,
                MmError::NotDeclared,
                "a range past the end of guest RAM is refused (NotDeclared) and changes nothing",
            );
            hostile(
                self,
                code(raw(Label::Relinquish as u64, &[0, 0xffff_ffff_ffff_f000, 2])),
                MmError::Overflow,
                "a range whose end overflows is refused (Overflow) and changes nothing",
            );
            hostile(
                self,
                code(raw(Label::Relinquish as u64, &[0, W3 + 8, 1])),
                MmError::Misaligned,
                "a misaligned address is refused (Misaligned) and changes nothing",
            );
            let not_owned = transfer(Direction::FromGuest, RAM + 2 * PAGE_SIZE, W4, 1)
                .map_or(Ok(()), |t| done(call(Request::Share { transfer: t, access: Access::R })));
            hostile(
                self,
                not_owned,
                MmError::NotOwned,
                "the guest sharing a page it only borrows is refused (NotOwned) and changes nothing",
            );
            let not_shared = transfer(Direction::ToGuest, W3, RAM + 3 * PAGE_SIZE, 1)
                .map_or(Ok(()), |t| done(call(Request::Unshare(t))));
            hostile(
                self,
                not_shared,
                MmError::NotShared,
                "unsharing a page that is not shared is refused (NotShared) and changes nothing",
            );

            // Garbage: random labels and words; every reply is success or
            // a code with no words, and nothing the suite holds changes.
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let mut sane = true;
            for _ in 0..GARBAGE {
                let label = match rng.next() % 3 {
                    0 => rng.next() % 16,
                    _ => rng.next() & MessageInfo::MAX_LABEL,
                };
                let mut words = [0u64; 8];
                let count = (rng.next() % 9) as usize;
                for w in &mut words[..count] {
                    *w = rng.word();
                }
                let (reply, _, n) = raw(label, &words[..count]);
                sane &= reply == 0 || (MmError::from_raw(reply).is_some() && n == 0);
            }
            let unchanged = snapshot() == s;
            let valid = query(caller, W0)
                == Ok(Reply::Page(PageInfo {
                    state: PageState::Owned,
                    access: Access::RW,
                    borrowers: 0,
                }));
            self.check(
                sane && unchanged && valid,
                "mm survives a PD sending it garbage: known codes, nothing changed, a valid request succeeds",
            );

            // Teardown: the guest's two pages (populated, donated) go
            // back; the page it borrowed returns to the window.
            let torn = call(Request::Teardown { guest: GUEST });
            let freed = matches!(torn, Ok(Reply::TornDown { pages: 2, .. }));
            let back = query(caller, W2)
                == Ok(Reply::Page(PageInfo {
                    state: PageState::Owned,
                    access: Access::RW,
                    borrowers: 0,
                }));
            let forgotten = query(guest, RAM) == Err(MmError::NoSuchGuest);
            if !freed {
                debug_println!("# teardown: {torn:?}");
            }
            self.check(
                freed && back && forgotten,
                "Teardown frees the guest's pages, ends its shares and forgets it",
            );

            // The window gives its pages back too; then the pool holds
            // what it held before the first request.
            let given_back = [W0, W2, W3].iter().all(|&w| {
                PageRange::new(w, 1).is_ok_and(|range| {
                    call(Request::Relinquish { target: caller, range }) == Ok(Reply::Done)
                })
            });
            let after = free_pool_pages();
            debug_println!("# free pool pages: {before:?} at start, {after:?} at the end");
            self.check(
                given_back && before.is_some_and(|n| n > 0) && after == before,
                "after Teardown and Relinquish the pool has every page free again",
            );

            // The window emptied and the pool's table pages were reused
            // since: the table the kernel linked must still be the one mm
            // fills.
            let mapped = populate(caller, W0) == Ok(Reply::Mapped { ipa: W0, pages: 1 });
            let fresh = mapped && peek(W0) == 0;
            if mapped {
                poke(W0, !PATTERN);
            }
            self.check(
                fresh && peek(W0) == !PATTERN,
                "the window still works after it emptied and its tables' pages were reused",
            );
            let all = self.next == PLAN;
            debug_println!("{}", if self.failed == 0 && all { "TEST_PASS" } else { "TEST_FAIL" });
        }
    }

    enum Pd {
        Vmm(Vmm),
        Prober,
    }

    fn init() -> Pd {
        if pd_name() == "prober" {
            // Nothing is in the window yet: this faults, and vmm hears.
            let _ = peek(WINDOW_IPA);
            TO_VMM.notify();
            return Pd::Prober;
        }
        debug_println!("1..{PLAN}");
        Pd::Vmm(Vmm { next: 0, failed: 0 })
    }

    impl Handler for Pd {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            if let Pd::Vmm(vmm) = self
                && channels.contains(FROM_PROBER)
            {
                vmm.check(false, "touching the window before mm maps anything there faults");
                vmm.run();
            }
            Ok(())
        }

        fn fault(
            &mut self,
            child: Child,
            msg_info: MessageInfo,
        ) -> Result<Option<MessageInfo>, Self::Error> {
            if let Pd::Vmm(vmm) = self {
                let (label, addr) = (msg_info.label(), get_mr(1));
                if label != VM_FAULT || addr != WINDOW_IPA {
                    debug_println!("# child {} fault {label} at {addr:#x}", child.index());
                }
                let ok = child == PROBER && label == VM_FAULT && addr == WINDOW_IPA;
                vmm.check(ok, "touching the window before mm maps anything there faults");
                vmm.run();
            }
            // The prober stays stopped.
            Ok(None)
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("mm_suite is a protection domain: build it for aarch64-unknown-none");
}
