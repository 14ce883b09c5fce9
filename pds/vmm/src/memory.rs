//! The guest's memory calls, forwarded to mm, and the faults mm resolves:
//! what the VMM asks over its PPC channel to the mm PD
//! ([`tenure_abi::mm`]).
//!
//! A guest's MEM_SHARE, MEM_UNSHARE and MEM_RELINQUISH become `Share`,
//! `Unshare` and `Relinquish` requests with direction 1 (the guest owns
//! the pages): shared pages appear in the VMM's window at
//! [`Layout::window_of`] their IPA. A range that is not all guest RAM is
//! DENIED here without asking mm (mm would refuse it too, with
//! `NotDeclared`). A malformed request never reaches mm
//! ([`tenure_abi::hvc::MemRange::decode`] answers INVALID_PARAMETER), so
//! every refusal of mm's is DENIED, the code Linux's guest driver treats
//! as any other failure.
//!
//! All or nothing: mm does a request whole or not at all, but refuses a
//! range whose pages are not physically contiguous (`NotContiguous`),
//! which lazily populated RAM often is. The VMM then asks page by page,
//! and if a page is refused it undoes the pages already done (unshare
//! what it shared, share again what it unshared), so the guest still sees
//! all or nothing. An undo that fails leaves pages in the other state; the
//! [`MemOutcome`] says so, for the VMM to report.

use crate::layout::Layout;
use crate::smccc::MemOp;
use tenure_abi::hvc::{GRANULE, MemRange, Ret};
use tenure_abi::mm::{
    Access, Direction, FaultAddr, MmError, Outcome, PageRange, Reply, Request, Target, Transfer,
    WalkFlags,
};

/// The mm PD, as the VMM calls it. On the target one protected procedure
/// call on the VMM's channel to mm; host tests use a model.
pub trait MmClient {
    /// Sends `request` and returns mm's decoded reply.
    fn call(&mut self, request: Request) -> Outcome;
}

/// What a memory call came to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MemOutcome {
    /// The code for `x0`.
    pub ret: Ret,
    /// Granules done, for `x1`: all of them or none.
    pub done: u64,
    /// mm's refusal, if mm refused.
    pub refused: Option<MmError>,
    /// An undo after a partial page-by-page request failed: this many
    /// granules were left changed (0 when the undo worked).
    pub left_changed: u64,
}

impl MemOutcome {
    const fn denied(refused: Option<MmError>) -> MemOutcome {
        MemOutcome { ret: Ret::Denied, done: 0, refused, left_changed: 0 }
    }
}

/// The ABI code for a refusal of mm's. The VMM forwards only ranges
/// that decoded ([`tenure_abi::hvc::MemRange::decode`]: a malformed one is
/// INVALID_PARAMETER before mm hears of it) and lie in guest RAM, so
/// whatever mm refuses is a page state the guest may not change: DENIED,
/// as the ABI's table says, whichever code mm gave.
#[must_use]
pub const fn ret_of(_: MmError) -> Ret {
    Ret::Denied
}

/// The request for `op` on `pages` pages from guest IPA `ipa`; `None` if
/// a range is malformed (which a range inside RAM never is).
fn request(layout: &Layout, op: MemOp, ipa: u64, pages: u64) -> Option<Request> {
    let from = PageRange::new(ipa, pages).ok()?;
    let to = PageRange::new(layout.window_of(ipa)?, pages).ok()?;
    let transfer = Transfer { guest: layout.guest, direction: Direction::FromGuest, from, to };
    Some(match op {
        MemOp::Share => Request::Share { transfer, access: Access::RW },
        MemOp::Unshare => Request::Unshare(transfer),
        MemOp::Relinquish => {
            Request::Relinquish { target: Target::Guest(layout.guest), range: from }
        }
    })
}

fn send(
    mm: &mut impl MmClient,
    layout: &Layout,
    op: MemOp,
    ipa: u64,
    pages: u64,
) -> Result<(), MmError> {
    let request = request(layout, op, ipa, pages).ok_or(MmError::BadArgument)?;
    match mm.call(request)? {
        Reply::Done => Ok(()),
        _ => Err(MmError::MalformedReply),
    }
}

/// Serves a guest's memory call on a well-formed `range`.
pub fn forward(mm: &mut impl MmClient, layout: &Layout, op: MemOp, range: MemRange) -> MemOutcome {
    let in_ram = range
        .granules
        .checked_mul(GRANULE)
        .is_some_and(|bytes| layout.ram.contains_span(range.start, bytes));
    if !in_ram {
        return MemOutcome::denied(None);
    }
    let done =
        MemOutcome { ret: Ret::Success, done: range.granules, refused: None, left_changed: 0 };
    match send(mm, layout, op, range.start, range.granules) {
        Ok(()) => done,
        Err(MmError::NotContiguous) if range.granules > 1 && op != MemOp::Relinquish => {
            match page_by_page(mm, layout, op, range) {
                Ok(()) => done,
                Err(refused) => refused,
            }
        }
        Err(e) => MemOutcome { ret: ret_of(e), ..MemOutcome::denied(Some(e)) },
    }
}

/// Does `range` one page at a time; on a refusal, undoes what was done and
/// returns the refusal.
fn page_by_page(
    mm: &mut impl MmClient,
    layout: &Layout,
    op: MemOp,
    range: MemRange,
) -> Result<(), MemOutcome> {
    let undo = match op {
        MemOp::Share => MemOp::Unshare,
        _ => MemOp::Share,
    };
    for i in 0..range.granules {
        if let Err(e) = send(mm, layout, op, range.start + i * GRANULE, 1) {
            let left_changed = (0..i)
                .filter(|j| send(mm, layout, undo, range.start + j * GRANULE, 1).is_err())
                .count() as u64;
            return Err(MemOutcome { ret: ret_of(e), done: 0, refused: Some(e), left_changed });
        }
    }
    Ok(())
}

/// Asks mm for a fresh page at a faulting guest RAM address. A page that
/// is there already (another fault resolved it, or the TLB was stale) is
/// success with zero pages mapped.
pub fn populate(mm: &mut impl MmClient, layout: &Layout, ipa: u64) -> Result<(u64, u64), MmError> {
    let request = Request::Populate {
        target: Target::Guest(layout.guest),
        addr: FaultAddr::from_raw(ipa)?,
        flags: WalkFlags::IGNORE_RETRY,
    };
    mapped(mm.call(request)?)
}

/// Asks mm to map the passthrough device memory around a faulting address.
pub fn map_device(
    mm: &mut impl MmClient,
    layout: &Layout,
    ipa: u64,
) -> Result<(u64, u64), MmError> {
    let request = Request::MapDevice {
        guest: layout.guest,
        addr: FaultAddr::from_raw(ipa)?,
        flags: WalkFlags::IGNORE_RETRY,
    };
    mapped(mm.call(request)?)
}

fn mapped(reply: Reply) -> Result<(u64, u64), MmError> {
    match reply {
        Reply::Mapped { ipa, pages } => Ok((ipa, pages)),
        _ => Err(MmError::MalformedReply),
    }
}

#[cfg(target_os = "none")]
impl MmClient for microkit::Channel {
    fn call(&mut self, request: Request) -> Outcome {
        use microkit::{MessageInfo, with_msg_regs, with_msg_regs_mut};
        let m = request.encode();
        let info = MessageInfo::new(m.label, m.len).ok_or(MmError::BadLength)?;
        with_msg_regs_mut(|mrs| mrs[..m.len].copy_from_slice(m.words()));
        let reply = self.pp_call(info);
        with_msg_regs(|mrs| {
            tenure_abi::mm::decode_reply(request.label(), reply.label(), &mrs[..reply.count()])
        })
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A small model of mm for host tests: which guest pages are shared,
    //! which are populated, what the VMM's window holds, and which
    //! requests it saw.

    use super::{Access, MmClient, MmError, Outcome, Reply, Request, Target};
    use std::collections::BTreeSet;
    use tenure_abi::mm::{PAGE_SIZE, PageInfo, PageState};
    use tenure_abi::vcpu::WINDOW_IPA;

    /// Guest RAM's base in the test layout (`layout::tests::virt`).
    const RAM_BASE: u64 = 0x4000_0000;

    /// A model of mm for one guest.
    #[derive(Default, Debug)]
    pub struct FakeMm {
        /// Every request, in order.
        pub requests: Vec<Request>,
        /// Guest pages shared with the VMM.
        pub shared: BTreeSet<u64>,
        /// Guest pages populated.
        pub populated: BTreeSet<u64>,
        /// Guest device pages mapped (MapDevice).
        pub devices: BTreeSet<u64>,
        /// Refuse multi-page requests as not contiguous.
        pub fragmented: bool,
        /// Refuse requests that touch this page, with this error.
        pub poison: Option<(u64, MmError)>,
        /// Refuse everything with this error.
        pub refuse_all: Option<MmError>,
    }

    impl MmClient for FakeMm {
        fn call(&mut self, request: Request) -> Outcome {
            self.requests.push(request);
            if let Some(e) = self.refuse_all {
                return Err(e);
            }
            let pages = |start: u64, n: u64| (0..n).map(move |i| start + i * PAGE_SIZE);
            match request {
                Request::Share { transfer: t, .. } | Request::Unshare(t) => {
                    let share = matches!(request, Request::Share { .. });
                    let range: Vec<u64> = pages(t.from.start(), t.from.pages()).collect();
                    if self.fragmented && range.len() > 1 {
                        return Err(MmError::NotContiguous);
                    }
                    if let Some((p, e)) = self.poison
                        && range.contains(&p)
                    {
                        return Err(e);
                    }
                    if range.iter().any(|p| self.shared.contains(p) == share) {
                        return Err(if share {
                            MmError::AlreadyShared
                        } else {
                            MmError::NotShared
                        });
                    }
                    for p in range {
                        if share {
                            self.shared.insert(p);
                        } else {
                            self.shared.remove(&p);
                        }
                    }
                    Ok(Reply::Done)
                }
                Request::Relinquish { range, .. } => {
                    for p in pages(range.start(), range.pages()) {
                        self.shared.remove(&p);
                        self.populated.remove(&p);
                    }
                    Ok(Reply::Done)
                }
                Request::Populate { addr, .. } => {
                    let fresh = self.populated.insert(addr.page());
                    Ok(Reply::Mapped { ipa: addr.page(), pages: u64::from(fresh) })
                }
                Request::MapDevice { addr, .. } => {
                    let fresh = self.devices.insert(addr.page());
                    Ok(Reply::Mapped { ipa: addr.page(), pages: u64::from(fresh) })
                }
                // The guest's space: its populated pages and mapped devices.
                Request::Query { target: Target::Guest(_), addr } => {
                    let (state, access) = if self.devices.contains(&addr.page()) {
                        (PageState::Owned, Access::DEVICE)
                    } else if self.populated.contains(&addr.page()) {
                        (PageState::Owned, Access::RW)
                    } else {
                        (PageState::NoPage, Access::from_bits_truncate(0))
                    };
                    Ok(Reply::Page(PageInfo { state, access, borrowers: 0 }))
                }
                // The VMM's window as the test layout maps it: guest RAM
                // from WINDOW_IPA; a page is there while it is shared.
                Request::Query { target: Target::Caller, addr } => {
                    let guest = addr.page().wrapping_sub(WINDOW_IPA).wrapping_add(RAM_BASE);
                    let shared = self.shared.contains(&guest);
                    Ok(Reply::Page(PageInfo {
                        state: if shared { PageState::SharedBorrowed } else { PageState::NoPage },
                        access: if shared { Access::RW } else { Access::from_bits_truncate(0) },
                        borrowers: 0,
                    }))
                }
                _ => Err(MmError::UnknownRequest),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMm;
    use super::*;
    use crate::layout::tests::virt;
    use tenure_abi::vcpu::WINDOW_IPA;

    const RAM: u64 = 0x4000_0000;

    fn range(start: u64, granules: u64) -> MemRange {
        MemRange { start, granules }
    }

    #[test]
    fn a_share_is_a_share_from_the_guest_into_the_vmms_window() {
        let (l, mut mm) = (virt(), FakeMm::default());
        let out = forward(&mut mm, &l, MemOp::Share, range(RAM + 0x3000, 2));
        assert_eq!(out, MemOutcome { ret: Ret::Success, done: 2, refused: None, left_changed: 0 });
        let Request::Share { transfer, access } = mm.requests[0] else { panic!() };
        assert_eq!(transfer.direction, Direction::FromGuest);
        assert_eq!(transfer.guest, l.guest);
        assert_eq!((transfer.from.start(), transfer.from.pages()), (RAM + 0x3000, 2));
        assert_eq!(transfer.to.start(), WINDOW_IPA + 0x3000);
        assert_eq!(access, Access::RW);
    }

    #[test]
    fn unshare_and_relinquish_are_forwarded() {
        let (l, mut mm) = (virt(), FakeMm::default());
        forward(&mut mm, &l, MemOp::Share, range(RAM, 1));
        assert_eq!(forward(&mut mm, &l, MemOp::Unshare, range(RAM, 1)).ret, Ret::Success);
        assert!(
            matches!(mm.requests[1], Request::Unshare(t) if t.direction == Direction::FromGuest)
        );
        assert_eq!(forward(&mut mm, &l, MemOp::Relinquish, range(RAM, 1)).ret, Ret::Success);
        assert!(matches!(
            mm.requests[2],
            Request::Relinquish { target: Target::Guest(g), range } if g == l.guest && range.start() == RAM
        ));
    }

    #[test]
    fn ranges_outside_ram_are_denied_without_asking_mm() {
        let (l, mut mm) = (virt(), FakeMm::default());
        let end = l.ram.end();
        for r in
            [range(RAM - GRANULE, 1), range(end - GRANULE, 2), range(0x0900_0000, 1), range(end, 1)]
        {
            assert_eq!(forward(&mut mm, &l, MemOp::Share, r), MemOutcome::denied(None), "{r:?}");
        }
        let huge = range(RAM, u64::MAX / GRANULE + 1);
        assert_eq!(forward(&mut mm, &l, MemOp::Share, huge).ret, Ret::Denied);
        assert!(mm.requests.is_empty());
    }

    #[test]
    fn refusals_map_to_the_abis_codes() {
        let (l, mut mm) = (virt(), FakeMm::default());
        forward(&mut mm, &l, MemOp::Share, range(RAM, 1));
        let twice = forward(&mut mm, &l, MemOp::Share, range(RAM, 1));
        assert_eq!(
            (twice.ret, twice.done, twice.refused),
            (Ret::Denied, 0, Some(MmError::AlreadyShared))
        );
        // A well-formed range in RAM that mm refuses, for whatever
        // reason, is DENIED: for each operation, relinquish included.
        for e in MmError::ALL {
            assert_eq!(ret_of(e), Ret::Denied, "{e:?}");
            for op in [MemOp::Share, MemOp::Unshare, MemOp::Relinquish] {
                let mut mm = FakeMm { refuse_all: Some(e), ..FakeMm::default() };
                assert_eq!(
                    forward(&mut mm, &l, op, range(RAM, 1)).ret,
                    Ret::Denied,
                    "{op:?} {e:?}"
                );
            }
        }
    }

    #[test]
    fn fragmented_ranges_go_page_by_page() {
        let (l, mut mm) = (virt(), FakeMm { fragmented: true, ..FakeMm::default() });
        let out = forward(&mut mm, &l, MemOp::Share, range(RAM, 3));
        assert_eq!((out.ret, out.done), (Ret::Success, 3));
        assert_eq!(mm.shared.len(), 3);
        assert_eq!(mm.requests.len(), 4, "the whole range, then each page");
    }

    #[test]
    fn a_page_refused_midway_undoes_the_pages_done() {
        let mut mm = FakeMm {
            fragmented: true,
            poison: Some((RAM + 2 * GRANULE, MmError::DeviceMemory)),
            ..FakeMm::default()
        };
        let l = virt();
        let out = forward(&mut mm, &l, MemOp::Share, range(RAM, 4));
        assert_eq!(
            out,
            MemOutcome {
                ret: Ret::Denied,
                done: 0,
                refused: Some(MmError::DeviceMemory),
                left_changed: 0
            }
        );
        assert!(mm.shared.is_empty(), "all or nothing");
        // Unsharing undoes by sharing again.
        let mut mm = FakeMm { fragmented: true, ..FakeMm::default() };
        forward(&mut mm, &l, MemOp::Share, range(RAM, 2));
        mm.poison = Some((RAM + GRANULE, MmError::Busy));
        let out = forward(&mut mm, &l, MemOp::Unshare, range(RAM, 2));
        assert_eq!((out.ret, out.left_changed), (Ret::Denied, 0));
        assert_eq!(mm.shared.len(), 2);
    }

    #[test]
    fn faults_ask_mm_to_populate_or_map_devices() {
        let (l, mut mm) = (virt(), FakeMm::default());
        assert_eq!(populate(&mut mm, &l, RAM + 0x1234), Ok((RAM + 0x1000, 1)));
        assert_eq!(populate(&mut mm, &l, RAM + 0x1238), Ok((RAM + 0x1000, 0)));
        assert!(matches!(
            mm.requests[0],
            Request::Populate { target: Target::Guest(_), flags: WalkFlags::IGNORE_RETRY, .. }
        ));
        assert_eq!(map_device(&mut mm, &l, 0x0801_0000), Ok((0x0801_0000, 1)));
        assert_eq!(populate(&mut mm, &l, 1 << 40), Err(MmError::PastEnd));
        let mut mm = FakeMm { refuse_all: Some(MmError::PoolExhausted), ..FakeMm::default() };
        assert_eq!(populate(&mut mm, &l, RAM), Err(MmError::PoolExhausted));
    }
}
