//! The VMM's own checks of a guest that prints TAP: what the guest's
//! probes did, seen from the host side, added to the guest's TAP stream.
//!
//! A guest that prints a plan line (`1..N`) is a test guest
//! (`guest-images/test-guest`). For it the VMM:
//!
//! - routes its TAP lines (the plan, `ok N` / `not ok N`, the sentinel)
//!   to the kernel's console unlabelled, where a suite's runner finds
//!   them, and its other lines to the serial PD ([`SelfTest::route`]);
//! - raises the plan by its own checks and holds the guest's sentinel
//!   back;
//! - watches the exits ([`SelfTest::observe`]): after a MEM_SHARE that
//!   succeeded, mm must report each page borrowed (shared) in the VMM's
//!   window; after a MEM_UNSHARE, no page there; after a refused one, the
//!   first page it names (if RAM) just as before: there exactly if the
//!   guest shares it; an access outside the guest's memory must get an
//!   abort injected; a fault on a passthrough device page must be mapped
//!   by mm (MapDevice), once ([`SelfTest::expect_device`]);
//! - when the guest powers off, reads the pages still shared through its
//!   window (the guest wrote them after sharing: in place, the VMM sees
//!   the words), prints its checks as `ok N+1` ... and then the sentinel,
//!   `TEST_PASS` only if the guest's was and every check passed
//!   ([`SelfTest::finish`]).
//!
//! # Streams of several boots or VMMs
//!
//! One suite's TAP may come from more than one guest boot (a guest that
//! asks for SYSTEM_RESET boots again, [`SelfTest::reset`]) or from more
//! than one VMM (each hands a [`Relay`] to the next). Then the VMM
//! ([`SelfTest::deferred`]) numbers the guest's results after those
//! printed before (each boot's `ok 1` follows the last line printed),
//! adds up the plans and prints the plan last (TAP allows a trailing
//! plan), with the sentinel, or hands the counts on instead. Two checks
//! join its own there: with a second device tree for resets, that the
//! guest was reset and the teardown took back every page it had shared
//! with the VMM; after another VMM, that none of the pages the other
//! VMM's guest shared shows in this VMM's window.
//!
//! Each check fails when what it watches did not happen at all, so a
//! suite that drops a probe cannot pass by accident. A guest without a
//! plan line is no test guest: its lines all go to the serial PD and
//! nothing is added.
//!
//! # Benchmarks
//!
//! A guest's `BENCH <name> <value>` lines go to the kernel's console as
//! they are, where `ci/bench/kernel.sh` reads them (`guest-images/
//! test-guest`'s `bench` probe prints them); before the guest's
//! `BENCH_DONE` the VMM adds its own part of the guest's boot
//! ([`LoadTimes`], [`SelfTest::bench_done`]). From the guest's first
//! `BENCH` line to its `BENCH_DONE` the VMM asks mm nothing for its
//! checks: the guest is timing its memory calls, and the Queries would
//! count in its figures. It still tracks which pages are shared, and
//! checks the calls before and after.

use crate::Decision;
use crate::exit::Event;
use crate::inject::Reason;
use crate::layout::Layout;
use crate::memory::MmClient;
use core::fmt::{self, Write};
use tenure_abi::hvc::{Function, GRANULE, MemRange, Ret};
use tenure_abi::mm::{Access, FaultAddr, IPA_BITS, PageInfo, PageState, Reply, Request, Target};

/// How many checks the VMM adds to the guest's plan, at least.
pub const CHECKS: u32 = 4;
/// Most pages of one memory call the VMM queries; a larger call is
/// checked on its first pages only, to bound the calls to mm per exit.
pub const QUERY_PAGES: u64 = 16;
/// Most pages the VMM remembers as shared, to read at power-off and to
/// know where a refused call must leave a page; a test guest shares a few.
pub const MAX_SHARED: usize = 16;
/// Most shared pages a [`Relay`] carries to the next VMM.
pub const RELAY_SHARED: usize = 8;

/// Where a line of the guest's console goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route<'a> {
    /// To the serial PD, labelled.
    Console,
    /// To the kernel's console as it is: a `BENCH` line, or the sentinel
    /// of a guest that printed no plan.
    Tap,
    /// To the kernel's console: a TAP result, numbered in the suite's
    /// stream.
    Result {
        /// `ok` (else `not ok`).
        ok: bool,
        /// Its number in the suite's stream.
        number: u32,
        /// The rest of the line after the guest's number (` - name ...`).
        rest: &'a str,
    },
    /// To the kernel's console: the plan, raised to this count.
    Plan(u32),
    /// To the kernel's console: the guest's `BENCH_DONE`, after the VMM's
    /// own figures ([`SelfTest::bench_done`]).
    BenchDone,
    /// Nowhere yet: the guest's sentinel, printed after the VMM's checks;
    /// a later boot's plan, or any plan of a deferred stream, added to
    /// the plan printed last.
    Withheld,
}

/// What the VMM saw of one kind of page check.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Tally {
    /// Pages checked.
    pages: u64,
    /// Pages whose window state was not as it should be.
    wrong: u64,
}

/// The TAP counts one VMM hands the next (or its monitor) in a page they
/// share, so that the suite prints one stream: one plan, results
/// numbered in order, one sentinel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Relay {
    /// Results the stream plans so far.
    pub planned: u32,
    /// Results printed so far.
    pub printed: u32,
    /// Of them, failures.
    pub failed: u32,
    /// Whether every guest printed `TEST_PASS`.
    pub pass: bool,
    /// The window address the VMM reads last, which must fault (for a
    /// monitor: the address its fault must name); 0 if none.
    pub probe: u64,
    /// Guest pages the VMM's guest left shared with it.
    pub shared: [Option<u64>; RELAY_SHARED],
}

impl Default for Relay {
    /// Nothing printed before: the first VMM of a stream.
    fn default() -> Self {
        Relay {
            planned: 0,
            printed: 0,
            failed: 0,
            pass: true,
            probe: 0,
            shared: [None; RELAY_SHARED],
        }
    }
}

impl Relay {
    /// Words of a relay in its page.
    pub const WORDS: usize = 7 + RELAY_SHARED;
    /// Its first word: a page without it is an empty relay.
    pub const MAGIC: u64 = 0x7461_705f_7265_6c61;

    /// The relay as words.
    #[must_use]
    pub fn encode(&self) -> [u64; Self::WORDS] {
        let mut w = [0; Self::WORDS];
        w[0] = Self::MAGIC;
        w[1] = self.planned.into();
        w[2] = self.printed.into();
        w[3] = self.failed.into();
        w[4] = self.pass.into();
        w[5] = self.probe;
        let mut n = 0;
        for (slot, ipa) in w[7..].iter_mut().zip(self.shared.iter().flatten()) {
            *slot = *ipa;
            n += 1;
        }
        w[6] = n;
        w
    }

    /// Reads words another PD wrote: a page without [`Relay::MAGIC`] is
    /// an empty relay; counts past `u32` saturate and a bad count of
    /// shared pages is cut to what the page holds.
    #[must_use]
    pub fn decode(w: &[u64; Self::WORDS]) -> Relay {
        if w[0] != Self::MAGIC {
            return Relay::default();
        }
        let count = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let mut shared = [None; RELAY_SHARED];
        let n = usize::try_from(w[6]).unwrap_or(RELAY_SHARED).min(RELAY_SHARED);
        for (slot, ipa) in shared.iter_mut().zip(&w[7..7 + n]) {
            *slot = Some(*ipa);
        }
        Relay {
            planned: count(w[1]),
            printed: count(w[2]),
            failed: count(w[3]),
            pass: w[4] == 1,
            probe: w[5],
            shared,
        }
    }
}

/// The VMM's checks of a test guest.
#[derive(Debug, Default)]
pub struct SelfTest {
    /// Sum of the plans the guest printed (every boot's).
    plans: u32,
    /// Plans the guest printed: one per boot that got that far.
    plan_lines: u32,
    /// `Some` (what came before) for a deferred stream.
    deferred: Option<Relay>,
    /// Expect a reset: the VMM has a second device tree.
    expect_reset: bool,
    /// Results routed, and of them failures.
    printed: u32,
    failed: u32,
    /// Results printed before the running boot.
    boot_base: u32,
    /// Boots started, and sentinels seen (all must be `TEST_PASS`).
    boots: u32,
    sentinels: u32,
    sentinel_failed: bool,
    shared: [Option<u64>; MAX_SHARED],
    share: Tally,
    unshare: Tally,
    refused: Tally,
    outside: u64,
    resets: u32,
    /// Pages shared before a reset that the teardown took back.
    revoked: Tally,
    /// Another VMM's guest's shared pages, looked up in this window.
    foreign: Tally,
    /// The page the guest unshared last in this boot and has not shared
    /// again: the VMM's window must no longer reach it.
    unshared: Option<u64>,
    /// The passthrough device the guest must touch
    /// ([`SelfTest::expect_device`]): its first page, and its state in
    /// the guest's space before the guest ran.
    device: Option<(u64, Option<PageState>)>,
    /// The guest's faults on that page that mm mapped (MapDevice), and the
    /// pages it mapped for them.
    device_faults: u32,
    device_pages: u64,
    /// Between the guest's first `BENCH` line and its `BENCH_DONE`: no
    /// Queries to mm.
    benchmarking: bool,
    /// The VMM's part of the first boot.
    load: Option<LoadTimes>,
}

/// The VMM's part of a guest's boot, in ticks of the system counter
/// (CNTPCT_EL0, which counts from reset).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LoadTimes {
    /// When the VMM's `init` began: the kernel had booted and the PDs
    /// of higher priority had run theirs.
    pub init: u64,
    /// When it began to load the guest: at `init`, or when the VMM
    /// before it notified it.
    pub begun: u64,
    /// When it had loaded the guest, before it started the vCPU.
    pub loaded: u64,
    /// The counter's frequency (CNTFRQ_EL0), in Hz.
    pub frequency: u64,
}

/// Nanoseconds in `ticks` of a counter at `frequency` Hz (0 if unknown):
/// instructions under QEMU's `-icount shift=0`.
#[must_use]
pub const fn nanoseconds(ticks: u64, frequency: u64) -> u64 {
    if frequency == 0 {
        return 0;
    }
    let ns = ticks as u128 * 1_000_000_000 / frequency as u128;
    if ns > u64::MAX as u128 { u64::MAX } else { ns as u64 }
}

/// What starts a benchmark's line: `BENCH <name> <value>`.
pub const BENCH_PREFIX: &str = "BENCH ";
/// The line that ends a benchmark's figures.
pub const BENCH_DONE: &str = "BENCH_DONE";

/// Whether `line` is a figure: `BENCH `, a name of lower-case letters,
/// digits and `_`, a space and a decimal number, nothing else.
fn bench_line(line: &str) -> bool {
    let Some((name, value)) = line.strip_prefix(BENCH_PREFIX).and_then(|r| r.split_once(' '))
    else {
        return false;
    };
    let name_ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    name_ok && !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())
}

/// A TAP result line: `prefix`, a number, the rest.
fn result<'a>(line: &'a str, prefix: &str) -> Option<(u32, &'a str)> {
    let rest = line.strip_prefix(prefix)?;
    let end = rest.find([' ', '\t']).unwrap_or(rest.len());
    let number = &rest[..end];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((number.parse().unwrap_or(u32::MAX), &rest[end..]))
}

impl SelfTest {
    /// Nothing seen yet: one boot of one guest, the plan printed first.
    #[must_use]
    pub fn new() -> SelfTest {
        SelfTest { boots: 1, ..SelfTest::default() }
    }

    /// A stream of several boots or VMMs, after `before` (the previous
    /// VMM's relay, or an empty one): the plan is printed last, by
    /// [`SelfTest::finish`]. `expect_reset`: the guest must ask for
    /// SYSTEM_RESET once and boot again (the VMM has a second device
    /// tree).
    #[must_use]
    pub fn deferred(before: Relay, expect_reset: bool) -> SelfTest {
        SelfTest { deferred: Some(before), expect_reset, ..SelfTest::new() }
    }

    /// Whether the guest printed a plan: it is a test guest.
    #[must_use]
    pub const fn active(&self) -> bool {
        self.plan_lines > 0
    }

    /// How many checks the VMM adds.
    #[must_use]
    pub fn checks(&self) -> u32 {
        let before = self.deferred.is_some_and(|r| r.planned > 0);
        CHECKS + u32::from(self.expect_reset) + u32::from(before) + u32::from(self.device.is_some())
    }

    /// Before the guest runs: system.xml passes a device through at the
    /// first page of the layout's first passthrough range, and the guest
    /// must touch it. Adds a check: mm had not mapped the page before the
    /// guest ran (`Query` in the guest's space), mm mapped it for exactly
    /// one of the guest's faults (MapDevice), and at power-off it reports
    /// it mapped as device memory. Nothing to check without a passthrough range.
    pub fn expect_device(&mut self, layout: &Layout, mm: &mut impl MmClient) {
        let Some(range) = layout.passthrough.iter().flatten().next() else { return };
        self.device = Some((range.start, guest_state(mm, layout, range.start).map(|i| i.state)));
    }

    /// The page the guest unshared last and has not shared again, if it
    /// unshared one in the running boot.
    #[must_use]
    pub const fn unshared(&self) -> Option<u64> {
        self.unshared
    }

    /// Results printed before this VMM's.
    fn base(&self) -> u32 {
        self.deferred.map_or(0, |r| r.printed)
    }

    /// Where the guest's console line `bytes` goes.
    pub fn route<'a>(&mut self, bytes: &'a [u8]) -> Route<'a> {
        let Ok(line) = core::str::from_utf8(bytes) else { return Route::Console };
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(n) = line.strip_prefix("1..").and_then(|n| n.parse::<u32>().ok()) {
            self.plans = self.plans.saturating_add(n);
            self.plan_lines += 1;
            if self.deferred.is_some() || self.plan_lines > 1 {
                return Route::Withheld;
            }
            return Route::Plan(n.saturating_add(self.checks()));
        }
        if line.starts_with(BENCH_PREFIX) {
            // Only a figure the VMM can vouch for the shape of reaches the
            // kernel's console; anything else is an ordinary line.
            if !bench_line(line) {
                return Route::Console;
            }
            self.benchmarking = true;
            return Route::Tap;
        }
        if line == BENCH_DONE {
            self.benchmarking = false;
            return Route::BenchDone;
        }
        let ok = result(line, "ok ").map(|r| (true, r));
        let ok = ok.or_else(|| result(line, "not ok ").map(|r| (false, r)));
        // Results before a plan are no test guest's: ordinary lines.
        if let Some((ok, (n, rest))) = ok.filter(|_| self.active()) {
            self.printed = self.printed.saturating_add(1);
            self.failed += u32::from(!ok);
            let number = self.base().saturating_add(self.boot_base).saturating_add(n);
            return Route::Result { ok, number, rest };
        }
        let verdict = match line {
            "TEST_PASS" => true,
            "TEST_FAIL" => false,
            _ => return Route::Console,
        };
        if self.active() {
            self.sentinels += 1;
            self.sentinel_failed |= !verdict;
            Route::Withheld
        } else {
            // A guest that printed no plan is no test guest: its sentinel
            // is a line of its console like any other, labelled.
            Route::Console
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
                    let (tally, want) = if share {
                        self.remember(ipa);
                        (&mut self.share, PageState::SharedBorrowed)
                    } else {
                        self.forget(ipa);
                        self.unshared = Some(ipa);
                        (&mut self.unshare, PageState::NoPage)
                    };
                    if !self.benchmarking {
                        tally.pages += 1;
                        tally.wrong += u64::from(window_state(mm, layout, ipa) != Some(want));
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
                if !layout.ram.contains(ipa) || self.benchmarking {
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
            (Event::DataAbort { ipa, .. }, Decision::MappedDevice { pages, .. })
                if self.device.is_some_and(|(page, _)| *ipa & !(GRANULE - 1) == page) =>
            {
                self.device_faults += 1;
                self.device_pages += pages;
            }
            _ => {}
        }
    }

    /// Notes the VMM's part of the guest's boot; the first boot's stays.
    pub fn loaded(&mut self, times: LoadTimes) {
        self.load.get_or_insert(times);
    }

    /// At the guest's `BENCH_DONE`: prints the VMM's figures of the boot,
    /// then `BENCH_DONE`. `guest_reset_to_vmm` is reset to the VMM's
    /// `init` (the kernel's boot, then the `init`s of higher priority),
    /// `guest_vmm_load` its loading of the guest (`CreateGuest`,
    /// then each page of the image and device tree populated in its
    /// window, copied and donated), both in nanoseconds.
    pub fn bench_done(&self, out: &mut impl Write) -> fmt::Result {
        if let Some(LoadTimes { init, begun, loaded, frequency }) = self.load {
            let ns = |ticks| nanoseconds(ticks, frequency);
            writeln!(out, "{BENCH_PREFIX}guest_reset_to_vmm {}", ns(init))?;
            writeln!(out, "{BENCH_PREFIX}guest_vmm_load {}", ns(loaded.saturating_sub(begun)))?;
        }
        writeln!(out, "{BENCH_DONE}")
    }

    fn remember(&mut self, ipa: u64) {
        if self.unshared == Some(ipa) {
            self.unshared = None;
        }
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

    /// After the VMM tore the guest down (SYSTEM_RESET), before it loads
    /// it again: every page the guest had shared must be gone from the
    /// window; the next boot's results follow this one's.
    pub fn reset(&mut self, layout: &Layout, mm: &mut impl MmClient) {
        for ipa in self.shared.iter().flatten() {
            self.revoked.pages += 1;
            self.revoked.wrong +=
                u64::from(window_state(mm, layout, *ipa) != Some(PageState::NoPage));
        }
        self.shared = [None; MAX_SHARED];
        self.unshared = None;
        // A boot that reset before its sentinel failed.
        if self.sentinels < self.boots {
            self.sentinel_failed = true;
            self.sentinels = self.boots;
        }
        self.resets += 1;
        self.boots += 1;
        self.boot_base = self.printed;
    }

    /// Before this VMM's guest runs: the pages the previous VMM's guest
    /// left shared (`before.shared`) must not be in this VMM's window.
    pub fn foreign(&mut self, layout: &Layout, mm: &mut impl MmClient) {
        let Some(before) = self.deferred else { return };
        for ipa in before.shared.iter().flatten() {
            self.foreign.pages += 1;
            self.foreign.wrong +=
                u64::from(window_state(mm, layout, *ipa) != Some(PageState::NoPage));
        }
    }

    /// The pages the guest still shares, for the next VMM's [`Relay`].
    #[must_use]
    pub fn shared(&self) -> [Option<u64>; RELAY_SHARED] {
        let mut out = [None; RELAY_SHARED];
        for (slot, ipa) in out.iter_mut().zip(self.shared.iter().flatten()) {
            *slot = Some(*ipa);
        }
        out
    }

    /// When the guest has stopped: reads the pages still shared through
    /// the window (`read` gives the first word of a window page), prints
    /// the checks to `out`, then, if `close`, the plan (of a deferred
    /// stream) and the sentinel, `TEST_PASS` only if everything passed.
    /// Returns the stream's counts so far, for a [`Relay`] when another
    /// PD closes the stream. Prints nothing and returns an empty relay
    /// for a guest that printed no plan.
    pub fn finish(
        &mut self,
        layout: &Layout,
        mm: &mut impl MmClient,
        mut read: impl FnMut(u64) -> u64,
        close: bool,
        out: &mut impl Write,
    ) -> Result<Relay, fmt::Error> {
        if !self.active() {
            return Ok(Relay::default());
        }
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
        let (share, unshare, revoked, foreign) =
            (self.share, self.unshare, self.revoked, self.foreign);
        let base: [(bool, &str, fmt::Arguments<'_>); CHECKS as usize] = [
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
        let reset = (
            self.resets == 1 && self.plan_lines == 2 && revoked.pages > 0 && revoked.wrong == 0,
            "vmm: SYSTEM_RESET tore the guest down, took back the pages it shared with the VMM \
             and booted it again",
            format_args!(
                "{} resets, {} plans printed, {} pages shared before the reset, {} still in \
                 the window after it",
                self.resets, self.plan_lines, revoked.pages, revoked.wrong
            ),
        );
        let other = (
            foreign.pages > 0 && foreign.wrong == 0,
            "vmm: no page the other VMM's guest shares shows in this VMM's window",
            format_args!("{} pages looked up, {} in this window", foreign.pages, foreign.wrong),
        );
        let device = self.device.map(|(page, before)| DeviceWhy {
            page,
            before,
            faults: self.device_faults,
            pages: self.device_pages,
            after: guest_state(mm, layout, page),
        });
        let extra = [
            Some(reset).filter(|_| self.expect_reset),
            Some(other).filter(|_| self.deferred.is_some_and(|r| r.planned > 0)),
        ];
        let before = self.deferred.unwrap_or_default();
        let mut number = before.printed.saturating_add(self.printed);
        let mut failed = before.failed.saturating_add(self.failed);
        for (ok, what, why) in base.into_iter().chain(extra.into_iter().flatten()) {
            number = number.saturating_add(1);
            if ok {
                writeln!(out, "ok {number} - {what}")?;
            } else {
                writeln!(out, "not ok {number} - {what}: {why}")?;
                failed += 1;
            }
        }
        if let Some(d) = &device {
            number = number.saturating_add(1);
            let what =
                "vmm: mm mapped the passthrough device on the guest's first access to it, once";
            if d.passed() {
                writeln!(out, "ok {number} - {what}")?;
            } else {
                writeln!(out, "not ok {number} - {what}: {d}")?;
                failed += 1;
            }
        }
        if self.sentinels < self.boots {
            writeln!(out, "# vmm: the guest stopped before its sentinel")?;
        }
        let pass = before.pass && !self.sentinel_failed && self.sentinels >= self.boots;
        let relay = Relay {
            planned: before.planned.saturating_add(self.plans).saturating_add(self.checks()),
            printed: number,
            failed,
            pass,
            probe: 0,
            shared: self.shared(),
        };
        if close {
            if self.deferred.is_some() {
                writeln!(out, "1..{}", relay.planned)?;
            }
            writeln!(out, "{}", if relay.passed() { "TEST_PASS" } else { "TEST_FAIL" })?;
        }
        Ok(relay)
    }
}

impl Relay {
    /// Whether the stream so far passed: every guest's sentinel
    /// `TEST_PASS`, no failure, the plan met.
    #[must_use]
    pub const fn passed(&self) -> bool {
        self.pass && self.failed == 0 && self.printed == self.planned
    }
}

/// What the passthrough device check saw.
struct DeviceWhy {
    page: u64,
    before: Option<PageState>,
    faults: u32,
    pages: u64,
    after: Option<PageInfo>,
}

impl DeviceWhy {
    /// Not mapped before the guest ran, one MapDevice that mapped it,
    /// mapped as device memory at power-off.
    fn passed(&self) -> bool {
        let mapped = self
            .after
            .is_some_and(|i| i.state == PageState::Owned && i.access.contains(Access::DEVICE));
        self.before == Some(PageState::NoPage) && self.faults == 1 && self.pages > 0 && mapped
    }
}

impl fmt::Display for DeviceWhy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "page {:#x}: before the guest ran {:?}; {} of the guest's faults on it mapped by \
             MapDevice, {} pages mapped; at power-off {:?}",
            self.page, self.before, self.faults, self.pages, self.after
        )
    }
}

/// The guest page at `ipa` as mm's Query reports it in the guest's space.
fn guest_state(mm: &mut impl MmClient, layout: &Layout, ipa: u64) -> Option<PageInfo> {
    let addr = FaultAddr::from_raw(ipa).ok()?;
    match mm.call(Request::Query { target: Target::Guest(layout.guest), addr }) {
        Ok(Reply::Page(info)) => Some(info),
        _ => None,
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
        assert_eq!(t.route(b"TEST_PASS\n"), Route::Console, "no plan: no test guest");
        assert_eq!(t.route(b"1..5\n"), Route::Plan(5 + CHECKS));
        assert_eq!(
            t.route(b"ok 1 - print\n"),
            Route::Result { ok: true, number: 1, rest: " - print" }
        );
        assert_eq!(
            t.route(b"not ok 2 - share: no\r\n"),
            Route::Result { ok: false, number: 2, rest: " - share: no" }
        );
        assert_eq!(t.route(b"okay 3\n"), Route::Console);
        assert_eq!(t.route(b"ok x\n"), Route::Console);
        assert_eq!(t.route(b"\xff\n"), Route::Console);
        assert_eq!(t.route(b"TEST_PASS\n"), Route::Withheld);
    }

    #[test]
    fn bench_lines_go_out_as_they_are_and_pause_the_window_checks() {
        let (mut t, mut mm) = (SelfTest::new(), FakeMm::default());
        t.route(b"1..2\n");
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_0000, 1);
        assert_eq!(t.route(b"BENCH guest_reset_to_output 556192\r\n"), Route::Tap);
        let before = mm.requests.len();
        // Timed calls, a refused one among them: mm sees only the calls.
        for _ in 0..3 {
            mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_7000, 1);
            mem(&mut t, &mut mm, Function::MemUnshare, MemOp::Unshare, RAM + 0x10_7000, 1);
        }
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_0000, 1);
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_7000, 1);
        assert_eq!(mm.requests.len(), before + 8, "no Query while benchmarking");
        assert_eq!(t.route(b"BENCH_DONE\n"), Route::BenchDone);
        assert_eq!(
            (t.share, t.unshare, t.refused),
            (Tally { pages: 1, wrong: 0 }, Tally::default(), Tally::default())
        );
        // The pages still shared are known all the same.
        let mut shared: Vec<u64> = t.shared().into_iter().flatten().collect();
        shared.sort_unstable();
        assert_eq!(shared, [RAM + 0x10_0000, RAM + 0x10_7000]);
        // After BENCH_DONE the checks go on.
        mem(&mut t, &mut mm, Function::MemUnshare, MemOp::Unshare, RAM + 0x10_7000, 1);
        assert_eq!(t.unshare, Tally { pages: 1, wrong: 0 });
        assert_eq!(
            t.route(b"ok 1 - bench\n"),
            Route::Result { ok: true, number: 1, rest: " - bench" }
        );
        assert_eq!(t.route(b"BENCHMARK\n"), Route::Console, "not a BENCH line");
    }

    #[test]
    fn the_vmm_adds_its_part_of_the_boot_before_bench_done() {
        let mut t = SelfTest::new();
        let mut out = String::new();
        t.bench_done(&mut out).unwrap();
        assert_eq!(out, "BENCH_DONE\n", "nothing recorded");
        let hz = 62_500_000;
        t.loaded(LoadTimes { init: 5_000_000, begun: 5_000_100, loaded: 5_117_100, frequency: hz });
        t.loaded(LoadTimes { init: 9_000_000, begun: 9_000_000, loaded: 9_200_000, frequency: hz });
        out.clear();
        t.bench_done(&mut out).unwrap();
        assert_eq!(
            out,
            "BENCH guest_reset_to_vmm 80000000\nBENCH guest_vmm_load 1872000\nBENCH_DONE\n"
        );
        assert_eq!(nanoseconds(1, 62_500_000), 16);
        assert_eq!(nanoseconds(1, 0), 0);
    }

    #[test]
    fn a_guest_that_did_everything_passes() {
        let (mut t, mut mm, l) = (SelfTest::new(), FakeMm::default(), virt());
        t.route(b"1..4\n");
        for n in 1..=4 {
            t.route(format!("ok {n} - probe").as_bytes());
        }
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
        assert!(t.finish(&l, &mut mm, read, true, &mut out).unwrap().passed(), "{out}");
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
        assert!(!t.finish(&l, &mut mm, |_| 1, true, &mut out).unwrap().passed());
        assert_eq!(out.matches("not ok").count(), CHECKS as usize, "{out}");
        assert!(out.contains("not ok 1 - vmm: pages the guest shares"), "no result routed: {out}");
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
        assert!(!t.finish(&l, &mut mm, |_| 0, true, &mut out).unwrap().passed());
        assert!(out.contains("not ok 1 - vmm: pages the guest shares"), "{out}");
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
        assert_eq!(t.finish(&l, &mut mm, |_| 0, true, &mut out), Ok(Relay::default()));
        assert!(out.is_empty());
    }

    #[test]
    fn what_a_guest_could_pass_off_as_the_kernels_stays_on_its_console() {
        let mut t = SelfTest::new();
        // No plan: its sentinel is an ordinary line.
        assert_eq!(t.route(b"TEST_PASS\r\n"), Route::Console);
        assert_eq!(t.route(b"TEST_FAIL\n"), Route::Console);
        // Only figures of the documented shape go out as they are.
        for line in [
            &b"BENCH x 1 TEST_PASS\n"[..],
            b"BENCH Evil 1\n",
            b"BENCH x\n",
            b"BENCH x 1\x1b[2J\n",
            b"BENCH  1\n",
        ] {
            assert_eq!(t.route(line), Route::Console, "{line:?}");
        }
        assert_eq!(t.route(b"BENCH guest_x_2 12\n"), Route::Tap);
    }

    /// A guest that did everything the four base checks watch.
    fn everything(t: &mut SelfTest, mm: &mut FakeMm, l: &Layout) {
        mem(t, mm, Function::MemShare, MemOp::Share, RAM + 0x10_0000, 1);
        mem(t, mm, Function::MemShare, MemOp::Share, RAM + 0x10_1000, 1);
        mem(t, mm, Function::MemUnshare, MemOp::Unshare, RAM + 0x10_1000, 1);
        mem(t, mm, Function::MemShare, MemOp::Share, RAM + 0x10_0000, 1);
        t.observe(&call(Function::SystemOff, 0, 0), &outside(), l, mm);
    }

    #[test]
    fn a_reset_numbers_the_second_boot_after_the_first_and_plans_last() {
        let (mut t, mut mm, l) =
            (SelfTest::deferred(Relay::default(), true), FakeMm::default(), virt());
        assert_eq!(t.route(b"1..2\n"), Route::Withheld, "deferred: the plan comes last");
        t.route(b"ok 1 - print");
        t.route(b"ok 2 - secret-write");
        everything(&mut t, &mut mm, &l);
        assert_eq!(t.route(b"TEST_PASS"), Route::Withheld);
        // The VMM tears the guest down: mm takes the shared page back.
        mm.shared.clear();
        t.reset(&l, &mut mm);
        assert_eq!(t.revoked, Tally { pages: 1, wrong: 0 });
        assert_eq!(t.route(b"1..1\n"), Route::Withheld);
        assert_eq!(
            t.route(b"ok 1 - secret-read"),
            Route::Result { ok: true, number: 3, rest: " - secret-read" }
        );
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_0000, 1);
        t.route(b"TEST_PASS");
        let mut out = String::new();
        let relay = t.finish(&l, &mut mm, |_| 1, true, &mut out).unwrap();
        assert!(relay.passed(), "{out}");
        assert_eq!(relay.planned, 3 + CHECKS + 1);
        assert!(out.contains("ok 8 - vmm: SYSTEM_RESET tore the guest down"), "{out}");
        assert!(out.ends_with("1..8\nTEST_PASS\n"), "{out}");
    }

    #[test]
    fn a_reset_that_never_came_or_kept_pages_fails() {
        let (mut t, mut mm, l) =
            (SelfTest::deferred(Relay::default(), true), FakeMm::default(), virt());
        t.route(b"1..1\n");
        t.route(b"ok 1 - print");
        everything(&mut t, &mut mm, &l);
        t.route(b"TEST_PASS");
        let mut out = String::new();
        assert!(!t.finish(&l, &mut mm, |_| 1, true, &mut out).unwrap().passed());
        assert!(out.contains("not ok 6 - vmm: SYSTEM_RESET"), "{out}");
        // A reset that left the shared page in the window.
        let (mut t, mut mm) = (SelfTest::deferred(Relay::default(), true), FakeMm::default());
        t.route(b"1..0\n");
        everything(&mut t, &mut mm, &l);
        t.route(b"TEST_PASS");
        t.reset(&l, &mut mm);
        assert_eq!(t.revoked, Tally { pages: 1, wrong: 1 });
        // A boot that resets before its sentinel fails too.
        t.route(b"1..0\n");
        t.reset(&l, &mut mm);
        assert!(t.sentinel_failed);
    }

    #[test]
    fn a_relay_hands_the_counts_on_and_the_next_vmm_closes_the_stream() {
        let (mut a, mut mm_a, l) =
            (SelfTest::deferred(Relay::default(), false), FakeMm::default(), virt());
        a.route(b"1..1\n");
        a.route(b"ok 1 - print");
        everything(&mut a, &mut mm_a, &l);
        a.route(b"TEST_PASS");
        let mut out = String::new();
        let relay = a.finish(&l, &mut mm_a, |_| 1, false, &mut out).unwrap();
        assert!(!out.contains("TEST_PASS") && !out.contains("1.."), "{out}");
        assert_eq!((relay.planned, relay.printed, relay.failed), (1 + CHECKS, 1 + CHECKS, 0));
        assert_eq!(relay.shared[0], Some(RAM + 0x10_0000));
        let relay = Relay::decode(&relay.encode());
        // The next VMM: its window has none of A's pages.
        let (mut b, mut mm_b) = (SelfTest::deferred(relay, false), FakeMm::default());
        b.foreign(&l, &mut mm_b);
        b.route(b"1..1\n");
        assert_eq!(
            b.route(b"ok 1 - print"),
            Route::Result { ok: true, number: 6, rest: " - print" }
        );
        everything(&mut b, &mut mm_b, &l);
        b.route(b"TEST_PASS");
        let mut out = String::new();
        assert!(b.finish(&l, &mut mm_b, |_| 1, true, &mut out).unwrap().passed(), "{out}");
        assert!(out.contains("ok 11 - vmm: no page the other VMM's guest shares"), "{out}");
        assert!(out.ends_with("1..11\nTEST_PASS\n"), "{out}");
        // Had B's window shown A's page, the check fails.
        let mut b = SelfTest::deferred(relay, false);
        mem(&mut b, &mut mm_b, Function::MemShare, MemOp::Share, RAM + 0x10_0000, 1);
        b.foreign(&l, &mut mm_b);
        assert_eq!(b.foreign, Tally { pages: 1, wrong: 1 });
    }

    /// A guest's load from `ipa` that stage 2 does not map (ISV, a
    /// translation fault at level 3).
    fn load_fault(ipa: u64) -> Event {
        let crate::esr::Class::DataAbort(abort) = crate::esr::Esr(0x9300_0007).class() else {
            panic!("a data abort's syndrome")
        };
        Event::DataAbort { pc: RAM, ipa, va: Some(ipa), abort, il: true }
    }

    /// The guest's access at `ipa`, mapped by mm as the VMM would ask.
    fn device_access(t: &mut SelfTest, mm: &mut FakeMm, l: &Layout, ipa: u64) {
        let (first, pages) = memory::map_device(mm, l, ipa).unwrap();
        let decision = Decision::MappedDevice { ipa: first, pages };
        t.observe(&load_fault(ipa), &decision, l, mm);
    }

    #[test]
    fn a_passthrough_device_must_be_mapped_on_the_guests_first_access_once() {
        let (mut t, mut mm, l) = (SelfTest::new(), FakeMm::default(), virt());
        t.expect_device(&l, &mut mm);
        assert_eq!(t.route(b"1..1\n"), Route::Plan(1 + CHECKS + 1), "one more check");
        t.route(b"ok 1 - gicc-iidr");
        everything(&mut t, &mut mm, &l);
        device_access(&mut t, &mut mm, &l, 0x0801_00fc);
        t.route(b"TEST_PASS");
        let mut out = String::new();
        assert!(t.finish(&l, &mut mm, |_| 1, true, &mut out).unwrap().passed(), "{out}");
        assert!(out.contains("ok 6 - vmm: mm mapped the passthrough device"), "{out}");

        // The guest never touched it.
        let (mut t, mut mm) = (SelfTest::new(), FakeMm::default());
        t.expect_device(&l, &mut mm);
        t.route(b"1..0\n");
        everything(&mut t, &mut mm, &l);
        t.route(b"TEST_PASS");
        let mut out = String::new();
        assert!(!t.finish(&l, &mut mm, |_| 1, true, &mut out).unwrap().passed());
        assert!(out.contains("not ok 5 - vmm: mm mapped the passthrough device"), "{out}");

        // Mapped before the guest ran, or twice.
        let (mut t, mut mm) = (SelfTest::new(), FakeMm::default());
        mm.devices.insert(0x0801_0000);
        t.expect_device(&l, &mut mm);
        assert_eq!(t.device, Some((0x0801_0000, Some(PageState::Owned))));
        let (mut t, mut mm) = (SelfTest::new(), FakeMm::default());
        t.expect_device(&l, &mut mm);
        device_access(&mut t, &mut mm, &l, 0x0801_00fc);
        device_access(&mut t, &mut mm, &l, 0x0801_0000);
        // Another page of the range is not this check's.
        device_access(&mut t, &mut mm, &l, 0x0801_1000);
        assert_eq!((t.device_faults, t.device_pages), (2, 1));

        // Without a passthrough range: no check.
        let mut none = virt();
        none.passthrough = [None; crate::layout::MAX_PASSTHROUGH];
        let mut t = SelfTest::new();
        t.expect_device(&none, &mut mm);
        assert_eq!(t.checks(), CHECKS);
    }

    #[test]
    fn the_page_unshared_last_is_remembered_until_shared_again() {
        let (mut t, mut mm) = (SelfTest::new(), FakeMm::default());
        t.route(b"1..0\n");
        assert_eq!(t.unshared(), None);
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_0000, 1);
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_1000, 1);
        mem(&mut t, &mut mm, Function::MemUnshare, MemOp::Unshare, RAM + 0x10_1000, 1);
        // A refused unshare changes nothing.
        mem(&mut t, &mut mm, Function::MemUnshare, MemOp::Unshare, RAM + 0x10_2000, 1);
        assert_eq!(t.unshared(), Some(RAM + 0x10_1000));
        mem(&mut t, &mut mm, Function::MemShare, MemOp::Share, RAM + 0x10_1000, 1);
        assert_eq!(t.unshared(), None, "shared again: the window reaches it");
        mem(&mut t, &mut mm, Function::MemUnshare, MemOp::Unshare, RAM + 0x10_0000, 1);
        assert_eq!(t.unshared(), Some(RAM + 0x10_0000));
        t.reset(&virt(), &mut mm);
        assert_eq!(t.unshared(), None, "a reset forgets the old boot's pages");
    }

    #[test]
    fn relays_round_trip_and_garbage_is_bounded() {
        assert_eq!(Relay::decode(&[0; Relay::WORDS]), Relay::default());
        let r = Relay {
            planned: 9,
            printed: 3,
            failed: 1,
            pass: false,
            probe: 0x80_0008_0000,
            shared: [None; RELAY_SHARED],
        };
        assert_eq!(Relay::decode(&r.encode()), r);
        let mut w = [u64::MAX; Relay::WORDS];
        w[0] = Relay::MAGIC;
        let g = Relay::decode(&w);
        assert_eq!((g.planned, g.pass), (u32::MAX, false));
        assert!(g.shared.iter().all(Option::is_some));
        assert!(!g.passed());
    }
}
