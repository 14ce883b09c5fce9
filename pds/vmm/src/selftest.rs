//! The VMM's own checks of a guest that prints TAP: what the guest's
//! probes did, seen from the host side, added to the guest's TAP stream.
//!
//! A guest that prints a plan line (`1..N`) is a test guest
//! (`guest-images/test-guest`). For it the VMM:
//!
//! - routes its TAP lines (the plan, `ok N` / `not ok N`, the sentinel)
//!   to the kernel's console unlabelled, where a suite's runner finds
//!   them, and its other lines to the serial PD ([`SelfTest::route`]);
//! - raises the plan by [`CHECKS`] and holds the guest's sentinel back;
//! - watches the exits ([`SelfTest::observe`]): after a MEM_SHARE that
//!   succeeded, mm must report each page borrowed (shared) in the VMM's
//!   window; after a MEM_UNSHARE, no page there; after a refused one, the
//!   first page it names (if RAM) just as before: there exactly if the
//!   guest shares it; an access outside the guest's memory must get an
//!   abort injected;
//! - when the guest powers off, reads the pages still shared through its
//!   window (the guest wrote them after sharing: in place, the VMM sees
//!   the words), prints its checks as `ok N+1` ... and then the sentinel,
//!   `TEST_PASS` only if the guest's was and every check passed
//!   ([`SelfTest::finish`]).
//!
//! Each check fails when what it watches did not happen at all, so a
//! suite that drops a probe cannot pass by accident. A guest without a
//! plan line is no test guest: its lines all go to the serial PD and
//! nothing is added.

use crate::Decision;
use crate::exit::Event;
use crate::inject::Reason;
use crate::layout::Layout;
use crate::memory::MmClient;
use core::fmt::{self, Write};
use tenure_abi::hvc::{Function, GRANULE, MemRange, Ret};
use tenure_abi::mm::{FaultAddr, IPA_BITS, PageState, Reply, Request, Target};

/// How many checks the VMM adds to the guest's plan.
pub const CHECKS: u32 = 4;
/// Most pages of one memory call the VMM queries; a larger call is
/// checked on its first pages only, to bound the calls to mm per exit.
pub const QUERY_PAGES: u64 = 16;
/// Most pages the VMM remembers as shared, to read at power-off and to
/// know where a refused call must leave a page; a test guest shares a few.
pub const MAX_SHARED: usize = 16;

/// Where a line of the guest's console goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    /// To the serial PD, labelled.
    Console,
    /// To the kernel's console as it is: a TAP result line.
    Tap,
    /// To the kernel's console: the plan, raised to this count.
    Plan(u32),
    /// Nowhere yet: the guest's sentinel, printed after the VMM's checks.
    Withheld,
}

/// What the VMM saw of one kind of memory call.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Tally {
    /// Pages checked.
    pages: u64,
    /// Pages whose window state was not as it should be.
    wrong: u64,
}

/// The VMM's checks of a test guest.
#[derive(Debug, Default)]
pub struct SelfTest {
    plan: Option<u32>,
    verdict: Option<bool>,
    shared: [Option<u64>; MAX_SHARED],
    share: Tally,
    unshare: Tally,
    refused: Tally,
    outside: u64,
}

/// A TAP result line: `prefix` then a number.
fn is_result(line: &str, prefix: &str) -> bool {
    line.strip_prefix(prefix).is_some_and(|rest| {
        let number = rest.split([' ', '\t']).next().unwrap_or("");
        !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
    })
}

impl SelfTest {
    /// Nothing seen yet.
    #[must_use]
    pub fn new() -> SelfTest {
        SelfTest::default()
    }

    /// Whether the guest printed a plan: it is a test guest.
    #[must_use]
    pub const fn active(&self) -> bool {
        self.plan.is_some()
    }

    /// Where the guest's console line `bytes` goes.
    pub fn route(&mut self, bytes: &[u8]) -> Route {
        let Ok(line) = core::str::from_utf8(bytes) else { return Route::Console };
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(n) = line.strip_prefix("1..").and_then(|n| n.parse::<u32>().ok()) {
            self.plan = Some(n);
            return Route::Plan(n.saturating_add(CHECKS));
        }
        if is_result(line, "ok ") || is_result(line, "not ok ") {
            return Route::Tap;
        }
        let verdict = match line {
            "TEST_PASS" => true,
            "TEST_FAIL" => false,
            _ => return Route::Console,
        };
        if self.active() {
            self.verdict = Some(verdict);
            Route::Withheld
        } else {
            Route::Tap
        }
    }

    /// Takes note of an exit and what the VMM did about it; asks mm about
    /// the VMM's window after a MEM_SHARE or MEM_UNSHARE.
    pub fn observe(
        &mut self,
        event: &Event,
        decision: &Decision,
        layout: &Layout,
        mm: &mut impl MmClient,
    ) {
        match (event, decision) {
            (Event::Call { call, .. }, Decision::Memory { function, outcome })
                if outcome.ret == Ret::Success =>
            {
                let share = *function == Function::MemShare.id();
                if !share && *function != Function::MemUnshare.id() {
                    return;
                }
                let Ok(range) =
                    MemRange::decode(call.args[0], call.args[1], call.args[2], IPA_BITS)
                else {
                    return;
                };
                for i in 0..range.granules.min(QUERY_PAGES) {
                    let ipa = range.start + i * GRANULE;
                    let state = window_state(mm, layout, ipa);
                    if share {
                        self.share.pages += 1;
                        self.share.wrong += u64::from(state != Some(PageState::SharedBorrowed));
                        self.remember(ipa);
                    } else {
                        self.unshare.pages += 1;
                        self.unshare.wrong += u64::from(state != Some(PageState::NoPage));
                        self.forget(ipa);
                    }
                }
            }
            (Event::Call { call, .. }, Decision::Memory { function, .. })
                if *function == Function::MemShare.id()
                    || *function == Function::MemUnshare.id() =>
            {
                // Refused: the first page the call names, if it is RAM,
                // must be in the window exactly if the guest shares it.
                let ipa = call.args[0] & !(GRANULE - 1);
                if !layout.ram.contains(ipa) {
                    return;
                }
                let want = if self.shared.contains(&Some(ipa)) {
                    PageState::SharedBorrowed
                } else {
                    PageState::NoPage
                };
                self.refused.pages += 1;
                self.refused.wrong += u64::from(window_state(mm, layout, ipa) != Some(want));
            }
            (_, Decision::Injected(done)) if done.reason == Reason::Outside => self.outside += 1,
            _ => {}
        }
    }

    fn remember(&mut self, ipa: u64) {
        if !self.shared.contains(&Some(ipa))
            && let Some(slot) = self.shared.iter_mut().find(|s| s.is_none())
        {
            *slot = Some(ipa);
        }
    }

    fn forget(&mut self, ipa: u64) {
        for slot in self.shared.iter_mut().filter(|s| **s == Some(ipa)) {
            *slot = None;
        }
    }

    /// When the guest has stopped: reads the pages still shared through
    /// the window (`read` gives the first word of a window page), prints
    /// the checks and the sentinel to `out`. Returns whether everything
    /// passed; prints nothing and returns `true` for a guest that printed
    /// no plan.
    pub fn finish(
        &mut self,
        layout: &Layout,
        mm: &mut impl MmClient,
        mut read: impl FnMut(u64) -> u64,
        out: &mut impl Write,
    ) -> Result<bool, fmt::Error> {
        let Some(plan) = self.plan else { return Ok(true) };
        // Pages still shared: still borrowed in the window, and what the
        // guest wrote into them after sharing shows there.
        let (mut still, mut written, mut wrong) = (0, 0, 0);
        for ipa in self.shared.iter().flatten() {
            still += 1;
            let Some(window) = layout.window_of(*ipa) else { continue };
            if window_state(mm, layout, *ipa) != Some(PageState::SharedBorrowed) {
                wrong += 1;
                writeln!(out, "# vmm: guest page {ipa:#x} is no longer shared with the VMM")?;
                continue;
            }
            let word = read(window);
            writeln!(out, "# vmm: guest page {ipa:#x} reads {word:#x} in the VMM's window")?;
            written += u64::from(word != 0);
        }
        let (share, unshare) = (self.share, self.unshare);
        let checks: [(bool, &str, fmt::Arguments<'_>); CHECKS as usize] = [
            (
                share.pages > 0 && share.wrong == 0 && wrong == 0 && written > 0,
                "vmm: pages the guest shares are borrowed in the VMM's window and show its writes",
                format_args!(
                    "{} pages shared, {} not borrowed in the window; at power-off {still} still \
                     shared, {wrong} gone from the window, {written} showing the guest's writes",
                    share.pages, share.wrong
                ),
            ),
            (
                unshare.pages > 0 && unshare.wrong == 0,
                "vmm: pages the guest unshares leave the VMM's window",
                format_args!(
                    "{} pages unshared, {} still in the window",
                    unshare.pages, unshare.wrong
                ),
            ),
            (
                self.refused.pages > 0 && self.refused.wrong == 0,
                "vmm: refused memory calls leave the VMM's window as it was",
                format_args!(
                    "{} refused calls on RAM, {} changed the window",
                    self.refused.pages, self.refused.wrong
                ),
            ),
            (
                self.outside > 0,
                "vmm: an access outside guest memory got an abort injected",
                format_args!("no abort injected for an access outside guest memory"),
            ),
        ];
        let mut all = self.verdict == Some(true);
        for (i, (ok, what, why)) in checks.into_iter().enumerate() {
            let n = plan.saturating_add(i as u32 + 1);
            if ok {
                writeln!(out, "ok {n} - {what}")?;
            } else {
                writeln!(out, "not ok {n} - {what}: {why}")?;
            }
            all &= ok;
        }
        if self.verdict.is_none() {
            writeln!(out, "# vmm: the guest stopped before its sentinel")?;
        }
        writeln!(out, "{}", if all { "TEST_PASS" } else { "TEST_FAIL" })?;
        Ok(all)
    }
}

/// The state mm reports for the window page of guest page `ipa`; `None`
/// if mm refuses to say.
fn window_state(mm: &mut impl MmClient, layout: &Layout, ipa: u64) -> Option<PageState> {
    let addr = FaultAddr::from_raw(layout.window_of(ipa)?).ok()?;
    match mm.call(Request::Query { target: Target::Caller, addr }) {
        Ok(Reply::Page(info)) => Some(info.state),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests::virt;
    use crate::memory::fake::FakeMm;
    use crate::smccc::Call;
    use crate::{Decision, memory, smccc::MemOp};

    const RAM: u64 = 0x4000_0000;

    fn call(function: Function, ipa: u64, granules: u64) -> Event {
        Event::Call {
            conduit: crate::smccc::Conduit::Hvc,
            imm: 0,
            call: Call { function: function.id(), args: [ipa, granules, 0] },
            pc: RAM,
        }
    }

    /// Runs a memory call through the fake mm, as the VMM would, and
    /// lets `t` observe it.
    fn mem(t: &mut SelfTest, mm: &mut FakeMm, function: Function, op: MemOp, ipa: u64, n: u64) {
        let l = virt();
        let outcome = memory::forward(mm, &l, op, MemRange { start: ipa, granules: n });
        let decision = Decision::Memory { function: function.id(), outcome };
        t.observe(&call(function, ipa, n), &decision, &l, mm);
    }

    fn outside() -> Decision {
        Decision::Injected(crate::inject::Injected {
            exception: crate::inject::Exception::DataAbort(Some(0x4400_0000)),
            reason: Reason::Outside,
            esr: 0,
            vector: 0,
        })
    }

    #[test]
    fn tap_lines_are_routed_and_the_plan_raised() {
        let mut t = SelfTest::new();
        assert_eq!(t.route(b"# hello\n"), Route::Console);
        assert_eq!(t.route(b"TEST_PASS\n"), Route::Tap, "no plan: no test guest");
        assert_eq!(t.route(b"1..5\n"), Route::Plan(5 + CHECKS));
        assert_eq!(t.route(b"ok 1 - print\n"), Route::Tap);
        assert_eq!(t.route(b"not ok 2 - share: no\r\n"), Route::Tap);
        assert_eq!(t.route(b"okay 3\n"), Route::Console);
        assert_eq!(t.route(b"ok x\n"), Route::Console);
        assert_eq!(t.route(b"\xff\n"), Route::Console);
        assert_eq!(t.route(b"TEST_PASS\n"), Route::Withheld);
    }

    #[test]
    fn a_guest_that_did_everything_passes() {
        let (mut t, mut mm, l) = (SelfTest::new(), FakeMm::default(), virt());
        t.route(b"1..4\n");
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_0000, 1);
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_1000, 1);
        mem(&mut t, &mut mm, Function::MemUnshare, MemOp::Unshare, RAM + 0x10_1000, 1);
        // Hostile: sharing a shared page again, unsharing a private one.
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_0000, 1);
        mem(&mut t, &mut mm, Function::MemUnshare, MemOp::Unshare, RAM + 0x10_1000, 1);
        assert_eq!(t.refused, Tally { pages: 2, wrong: 0 });
        t.observe(&call(Function::SystemOff, 0, 0), &outside(), &l, &mut mm);
        t.route(b"TEST_PASS\n");
        let mut out = String::new();
        let read = |w: u64| if w == l.window_of(RAM + 0x10_0000).unwrap() { 0x5ec7 } else { 0 };
        assert_eq!(t.finish(&l, &mut mm, read, &mut out), Ok(true), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "# vmm: guest page 0x40100000 reads 0x5ec7 in the VMM's window");
        assert!(lines[1].starts_with("ok 5 - vmm: pages the guest shares"));
        assert!(lines[2].starts_with("ok 6 - vmm: pages the guest unshares"));
        assert!(lines[3].starts_with("ok 7 - vmm: refused memory calls"));
        assert!(lines[4].starts_with("ok 8 - vmm: an access outside"));
        assert_eq!(lines[5], "TEST_PASS");
    }

    #[test]
    fn each_check_fails_when_its_event_did_not_happen() {
        let (mut t, mut mm, l) = (SelfTest::new(), FakeMm::default(), virt());
        t.route(b"1..1\n");
        t.route(b"TEST_PASS\n");
        let mut out = String::new();
        assert_eq!(t.finish(&l, &mut mm, |_| 1, &mut out), Ok(false));
        assert_eq!(out.matches("not ok").count(), CHECKS as usize, "{out}");
        assert!(out.ends_with("TEST_FAIL\n"));
    }

    #[test]
    fn a_share_the_window_does_not_show_fails() {
        let (mut t, mut mm, l) = (SelfTest::new(), FakeMm::default(), virt());
        t.route(b"1..1\n");
        // mm said yes but the window has no page: the fake's Query
        // reports what its model holds, which a lying reply bypasses.
        let outcome =
            memory::MemOutcome { ret: Ret::Success, done: 1, refused: None, left_changed: 0 };
        let decision = Decision::Memory { function: Function::MemShare.id(), outcome };
        t.observe(&call(Function::MemShare, RAM, 1), &decision, &l, &mut mm);
        assert_eq!(t.share, Tally { pages: 1, wrong: 1 });
        // A page that still shows shared after an unshare counts too.
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x2000, 1);
        let outcome =
            memory::MemOutcome { ret: Ret::Success, done: 1, refused: None, left_changed: 0 };
        let decision = Decision::Memory { function: Function::MemUnshare.id(), outcome };
        t.observe(&call(Function::MemUnshare, RAM + 0x2000, 1), &decision, &l, &mut mm);
        assert_eq!(t.unshare, Tally { pages: 1, wrong: 1 });
        // A refusal after which the window shows a page the guest does
        // not share (mm's model shares RAM + 0x2000; the VMM forgot it).
        let outcome =
            memory::MemOutcome { ret: Ret::Denied, done: 0, refused: None, left_changed: 0 };
        let decision = Decision::Memory { function: Function::MemShare.id(), outcome };
        t.observe(&call(Function::MemShare, RAM + 0x2010, 1), &decision, &l, &mut mm);
        assert_eq!(t.refused, Tally { pages: 1, wrong: 1 }, "the page, not the misaligned address");
        // Outside RAM: nothing to look at.
        t.observe(&call(Function::MemShare, RAM - GRANULE, 1), &decision, &l, &mut mm);
        assert_eq!(t.refused.pages, 1);
    }

    #[test]
    fn refused_calls_and_unwritten_pages_do_not_pass() {
        let (mut t, mut mm, l) = (SelfTest::new(), FakeMm::default(), virt());
        t.route(b"1..2\n");
        // Refused: nothing shared.
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM - GRANULE, 1);
        assert_eq!(t.share.pages, 0);
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM, 1);
        t.route(b"TEST_FAIL\n");
        let mut out = String::new();
        // The shared page reads zero: the guest's write did not show.
        assert_eq!(t.finish(&l, &mut mm, |_| 0, &mut out), Ok(false));
        assert!(out.contains("not ok 3 - vmm: pages the guest shares"), "{out}");
        assert!(out.ends_with("TEST_FAIL\n"));
        // mm was asked only about the window.
        assert!(mm.requests.iter().all(|r| match r {
            Request::Query { target, .. } => *target == Target::Caller,
            _ => true,
        }));
    }

    #[test]
    fn a_guest_without_a_plan_gets_nothing_added() {
        let (mut t, mut mm, l) = (SelfTest::new(), FakeMm::default(), virt());
        let mut out = String::new();
        assert_eq!(t.finish(&l, &mut mm, |_| 0, &mut out), Ok(true));
        assert!(out.is_empty());
    }
}
