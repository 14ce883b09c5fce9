//! The kernel's IPC and scheduling rules, checked on the host against
//! Microkit's semantics.

extern crate std;

use super::*;
use std::vec::Vec;
use tenure_abi::BADGE_PPC;
use tenure_abi::vcpu::{stage2_method, vcpu_method};

/// Everything the state machine asked of the machine, in order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Effect {
    Transfer(PdId, PdId, usize),
    Return(PdId, u64, u64),
    RecordFault(PdId),
    FaultMessage(PdId, PdId, FaultKind),
    Unmask(u32),
    SetPc(PdId, u64),
    Report(PdId, FaultKind),
    Putc(u8),
    Vcpu(PdId, PdId, u64, u64),
    Stage2(PdId, u64, u64),
}

/// The machine of the tests: a log of effects, a clock the test moves,
/// and the deadline the system last asked for.
#[derive(Default)]
struct Log(Vec<Effect>, u64, Option<u64>);

impl Log {
    /// The last return values set for `pd`.
    fn ret(&self, pd: PdId) -> Option<(u64, u64)> {
        self.0.iter().rev().find_map(|e| match *e {
            Effect::Return(p, x0, x1) if p == pd => Some((x0, x1)),
            _ => None,
        })
    }
}

impl Machine for Log {
    fn transfer(&mut self, from: PdId, to: PdId, info: MessageInfo) {
        self.0.push(Effect::Transfer(from, to, info.count()));
    }
    fn set_return(&mut self, pd: PdId, x0: u64, x1: u64) {
        self.0.push(Effect::Return(pd, x0, x1));
    }
    fn record_fault(&mut self, pd: PdId, _kind: FaultKind) {
        self.0.push(Effect::RecordFault(pd));
    }
    fn fault_message(&mut self, child: PdId, parent: PdId, kind: FaultKind) {
        self.0.push(Effect::FaultMessage(child, parent, kind));
    }
    fn unmask_irq(&mut self, irq: u32) {
        self.0.push(Effect::Unmask(irq));
    }
    fn set_pc(&mut self, pd: PdId, pc: u64) {
        self.0.push(Effect::SetPc(pd, pc));
    }
    fn report_fault(&mut self, pd: PdId, kind: FaultKind) {
        self.0.push(Effect::Report(pd, kind));
    }
    fn debug_putc(&mut self, byte: u8) {
        self.0.push(Effect::Putc(byte));
    }
    fn now(&mut self) -> u64 {
        self.1
    }
    fn set_deadline(&mut self, at: u64) {
        self.2 = Some(at);
    }
    fn vcpu(&mut self, caller: PdId, vcpu: PdId, method: u64, arg: u64) -> Result<u64, Error> {
        self.0.push(Effect::Vcpu(caller, vcpu, method, arg));
        // vCPU 3 has no stage 2 installed: it cannot run.
        match (vcpu, method) {
            (PdId(3), vcpu_method::RESTART) => Err(Error::IllegalOperation),
            (_, vcpu_method::READ_REG) => Ok(arg + 100),
            _ => Ok(0),
        }
    }
    fn stage2(&mut self, caller: PdId, method: u64, arg: u64) -> Result<u64, Error> {
        self.0.push(Effect::Stage2(caller, method, arg));
        match (method, arg) {
            (stage2_method::UNINSTALL, 0) => Ok(1 << 2),
            (_, 9) => Err(Error::InvalidArgument),
            _ => Ok(0),
        }
    }
}

/// Moves the clock on by `ticks` and calls the timer, as the deadline
/// interrupt would.
fn advance<const N: usize>(s: &mut System<'_, N>, m: &mut Log, ticks: u64) {
    m.1 += ticks;
    s.timer(m);
}

const A: PdId = PdId(0);
const B: PdId = PdId(1);
const C: PdId = PdId(2);

fn notification(target: PdId, their_channel: u8) -> Cap {
    Cap { kind: CapKind::Notification, target: target.0.into(), badge: 1 << their_channel }
}

fn endpoint(target: PdId, their_channel: u8) -> Cap {
    Cap {
        kind: CapKind::Endpoint,
        target: target.0.into(),
        badge: BADGE_PPC | u64::from(their_channel),
    }
}

fn raw(slot: Slot) -> u64 {
    slot.0.into()
}

fn info(label: u64, count: usize) -> u64 {
    MessageInfo::new(label, count).unwrap().raw()
}

/// Runs the current PD's syscall and returns the log.
fn sys<const N: usize>(
    s: &mut System<'_, N>,
    m: &mut Log,
    call: Syscall,
    x0: u64,
    x1: u64,
    x6: u64,
) {
    s.syscall(m, call as u64, x0, x1, x6);
}

/// Lets every PD finish `init` and wait, highest priority first; returns
/// the order in which they ran.
fn boot<const N: usize>(s: &mut System<'_, N>, m: &mut Log) -> Vec<PdId> {
    let mut order = Vec::new();
    while let Some(pd) = s.current() {
        order.push(pd);
        sys(s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    }
    order
}

#[test]
fn init_runs_in_priority_order_and_everyone_ends_waiting() {
    let (none, m) = (&[][..], &mut Log::default());
    let mut s: System<'_, 4> =
        System::new([Pd::new(10, None, none), Pd::new(200, None, none), Pd::new(50, None, none)]);
    assert_eq!(boot(&mut s, m), [B, C, A]);
    assert!([A, B, C].iter().all(|&p| s.pd(p).unwrap().state() == State::Recv));
    assert_eq!(s.current(), None, "the CPU idles");
}

#[test]
fn the_receiver_sees_its_own_channel_id_and_signals_coalesce() {
    let a_caps = [(Slot::notification(3), notification(B, 7))];
    let m = &mut Log::default();
    let mut s: System<'_, 2> = System::new([Pd::new(100, None, &a_caps), Pd::new(50, None, &[])]);
    sys(&mut s, m, Syscall::Signal, raw(Slot::notification(3)), 0, 0);
    sys(&mut s, m, Syscall::Signal, raw(Slot::notification(3)), 0, 0);
    assert_eq!(m.ret(A), Some((0, 0)));
    assert_eq!(s.current(), Some(A), "a lower-priority receiver does not preempt");
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!(s.current(), Some(B));
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!(m.ret(B), Some((1 << 7, 0)), "one wakeup for two signals, badge = B's channel 7");
    assert_eq!(s.current(), Some(B), "the pending signal was taken without blocking");
}

#[test]
fn several_channels_arrive_in_one_wakeup() {
    let a_caps =
        [(Slot::notification(0), notification(B, 1)), (Slot::notification(1), notification(B, 4))];
    let m = &mut Log::default();
    let mut s: System<'_, 2> = System::new([Pd::new(100, None, &a_caps), Pd::new(50, None, &[])]);
    sys(&mut s, m, Syscall::Signal, raw(Slot::notification(0)), 0, 0);
    sys(&mut s, m, Syscall::Signal, raw(Slot::notification(1)), 0, 0);
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!(m.ret(B), Some((0b10010, 0)));
}

#[test]
fn a_higher_priority_receiver_preempts_at_once_an_equal_one_does_not() {
    let caps =
        [(Slot::notification(0), notification(B, 0)), (Slot::notification(1), notification(C, 0))];
    let m = &mut Log::default();
    let mut s: System<'_, 3> =
        System::new([Pd::new(100, None, &caps), Pd::new(150, None, &[]), Pd::new(100, None, &[])]);
    boot(&mut s, m);
    // Wake A alone: an IRQ-like signal to the lowest of the three.
    s.signal(m, A, 1);
    s.timer(m);
    assert_eq!(s.current(), Some(A));
    sys(&mut s, m, Syscall::Signal, raw(Slot::notification(1)), 0, 0);
    assert_eq!(s.current(), Some(A), "equal priority: the notifier keeps running");
    sys(&mut s, m, Syscall::Signal, raw(Slot::notification(0)), 0, 0);
    assert_eq!(s.current(), Some(B), "higher priority: switch at once");
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!(s.current(), Some(A), "the preempted notifier resumes before its peer");
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!(s.current(), Some(C));
}

#[test]
fn a_ppc_runs_the_server_and_the_reply_returns_to_the_caller() {
    let a_caps = [(Slot::endpoint(2), endpoint(B, 5))];
    let m = &mut Log::default();
    let mut s: System<'_, 2> = System::new([Pd::new(10, None, &a_caps), Pd::new(20, None, &[])]);
    boot(&mut s, m);
    s.signal(m, A, 1);
    assert_eq!(s.current(), Some(A));
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(2)), info(0x42, 5), 0);
    assert_eq!(s.current(), Some(B));
    assert!(m.0.contains(&Effect::Transfer(A, B, 5)));
    assert_eq!(m.ret(B), Some((BADGE_PPC | 5, info(0x42, 5))), "B sees its own channel 5");
    sys(&mut s, m, Syscall::ReplyRecv, raw(Slot::INPUT), info(7, 64), 0);
    assert!(m.0.contains(&Effect::Transfer(B, A, 64)));
    assert_eq!(m.ret(A), Some((0, info(7, 64))));
    assert_eq!(s.current(), Some(A));
    assert_eq!(s.pd(B).unwrap().state(), State::Recv);
}

#[test]
fn nested_ppcs_unwind_in_order() {
    let a_caps = [(Slot::endpoint(0), endpoint(B, 0))];
    let b_caps = [(Slot::endpoint(1), endpoint(C, 3))];
    let m = &mut Log::default();
    let mut s: System<'_, 3> =
        System::new([Pd::new(1, None, &a_caps), Pd::new(2, None, &b_caps), Pd::new(3, None, &[])]);
    boot(&mut s, m);
    s.signal(m, A, 1);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(0)), info(1, 0), 0);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(1)), info(2, 0), 0);
    assert_eq!(s.current(), Some(C));
    assert_eq!(m.ret(C), Some((BADGE_PPC | 3, info(2, 0))));
    sys(&mut s, m, Syscall::ReplyRecv, raw(Slot::INPUT), info(20, 0), 0);
    assert_eq!((s.current(), m.ret(B)), (Some(B), Some((0, info(20, 0)))));
    sys(&mut s, m, Syscall::ReplyRecv, raw(Slot::INPUT), info(10, 0), 0);
    assert_eq!((s.current(), m.ret(A)), (Some(A), Some((0, info(10, 0)))));
}

#[test]
fn callers_queue_on_a_busy_server_by_priority_and_are_served_in_that_order() {
    const D: PdId = PdId(3);
    let a_caps = [(Slot::endpoint(0), endpoint(C, 1))];
    let b_caps = [(Slot::endpoint(0), endpoint(C, 2))];
    let c_caps = [(Slot::endpoint(0), endpoint(D, 0))];
    let m = &mut Log::default();
    let mut s: System<'_, 4> = System::new([
        Pd::new(5, None, &a_caps),
        Pd::new(6, None, &b_caps),
        Pd::new(9, None, &c_caps),
        Pd::new(12, None, &[]),
    ]);
    boot(&mut s, m);
    // C calls D, and D waits again without replying yet: C is busy.
    s.signal(m, C, 1);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(0)), info(0, 0), 0);
    assert_eq!(s.current(), Some(D));
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    // A calls C first, then B: both wait on C's endpoint, B ahead by priority.
    s.signal(m, A, 1);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(0)), info(1, 0), 0);
    assert_eq!(s.pd(A).unwrap().state(), State::Send { callee: C });
    s.signal(m, B, 1);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(0)), info(2, 0), 0);
    assert_eq!(s.current(), None);
    // D replies to C; C waits and takes B's call, then A's.
    s.signal(m, D, 1);
    sys(&mut s, m, Syscall::ReplyRecv, raw(Slot::INPUT), info(0, 0), 0);
    assert_eq!(s.current(), Some(C));
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!(m.ret(C), Some((BADGE_PPC | 2, info(2, 0))), "B first: higher priority");
    sys(&mut s, m, Syscall::ReplyRecv, raw(Slot::INPUT), info(0, 0), 0);
    assert_eq!(m.ret(C), Some((BADGE_PPC | 1, info(1, 0))), "then A");
    assert_eq!(s.current(), Some(C));
    sys(&mut s, m, Syscall::ReplyRecv, raw(Slot::INPUT), info(0, 0), 0);
    assert_eq!(s.current(), Some(B), "both callers are ready again, B first");
}

#[test]
fn invoking_an_empty_or_wrong_slot_returns_an_error_and_changes_nothing() {
    let caps = [(Slot::notification(0), notification(B, 0))];
    let m = &mut Log::default();
    let mut s: System<'_, 2> = System::new([Pd::new(9, None, &caps), Pd::new(5, None, &[])]);
    sys(&mut s, m, Syscall::Signal, raw(Slot::notification(1)), 0, 0);
    assert_eq!(m.ret(A), Some((Error::InvalidCapability as u64, 0)));
    sys(&mut s, m, Syscall::Signal, 100_000, 0, 0);
    assert_eq!(m.ret(A), Some((Error::InvalidCapability as u64, 0)));
    sys(&mut s, m, Syscall::Call, raw(Slot::notification(0)), info(0, 0), 0);
    assert_eq!(m.ret(A), Some((Error::WrongKind as u64, 0)));
    sys(&mut s, m, Syscall::Invoke, raw(Slot::notification(0)), 0, 0);
    assert_eq!(m.ret(A), Some((Error::IllegalOperation as u64, 0)));
    assert_eq!(s.current(), Some(A));
    assert_eq!(s.pd(B).unwrap().state(), State::Ready, "B was not signalled");
    assert!(!m.0.iter().any(|e| matches!(e, Effect::Transfer(..))));
}

#[test]
fn a_call_with_a_malformed_message_info_is_refused() {
    let caps = [(Slot::endpoint(0), endpoint(B, 0))];
    let m = &mut Log::default();
    let mut s: System<'_, 2> = System::new([Pd::new(9, None, &caps), Pd::new(20, None, &[])]);
    boot(&mut s, m);
    s.signal(m, A, 1);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(0)), 65, 0);
    assert_eq!(m.ret(A), Some((Error::InvalidArgument as u64, 0)));
    assert_eq!(s.current(), Some(A));
}

#[test]
fn a_child_fault_reaches_the_parent_with_the_child_id_and_restart_resumes_it() {
    let parent_caps = [(Slot::child(4), Cap { kind: CapKind::ChildTcb, target: 1, badge: 0 })];
    let m = &mut Log::default();
    let mut s: System<'_, 2> =
        System::new([Pd::new(10, None, &parent_caps), Pd::new(20, Some((A, 4)), &[])]);
    assert_eq!(s.current(), Some(B));
    s.fault(m, B, FaultKind::VmFault);
    assert!(m.0.contains(&Effect::RecordFault(B)));
    assert!(
        !m.0.contains(&Effect::FaultMessage(B, A, FaultKind::VmFault)),
        "the busy parent's registers are left alone until it receives the fault"
    );
    assert_eq!(s.current(), Some(A), "A was still in init; the fault waits for its Recv");
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert!(m.0.contains(&Effect::FaultMessage(B, A, FaultKind::VmFault)));
    assert_eq!(m.ret(A), Some((BADGE_FAULT | 4, info(FaultKind::VmFault as u64, 0))));
    assert_eq!(s.pd(B).unwrap().state(), State::Reply { callee: A });
    let restart = info(child_method::RESTART, 0);
    sys(&mut s, m, Syscall::Invoke, raw(Slot::child(4)), restart, 0x1000);
    assert!(m.0.contains(&Effect::SetPc(B, 0x1000)));
    assert_eq!(s.current(), Some(B), "the restarted child has the higher priority");
}

#[test]
fn a_parentless_fault_is_reported_and_the_rest_runs_on() {
    let m = &mut Log::default();
    let mut s: System<'_, 2> = System::new([Pd::new(10, None, &[]), Pd::new(20, None, &[])]);
    s.syscall(m, 99, 0, 0, 0);
    assert!(m.0.contains(&Effect::Report(B, FaultKind::UnknownSyscall)));
    assert_eq!(s.pd(B).unwrap().state(), State::Stopped);
    assert_eq!(s.current(), Some(A));
    s.signal(m, B, 1);
    assert_eq!(s.pd(B).unwrap().state(), State::Stopped, "a stopped PD is not woken");
}

#[test]
fn an_irq_is_a_notification_and_stays_masked_until_acked() {
    let caps = [(Slot::irq(2), Cap { kind: CapKind::IrqHandler, target: 33, badge: 0 })];
    let m = &mut Log::default();
    let mut s: System<'_, 1> = System::new([Pd::new(10, None, &caps)]);
    boot(&mut s, m);
    s.irq(m, A, 1 << 2);
    assert_eq!((s.current(), m.ret(A)), (Some(A), Some((1 << 2, 0))));
    assert!(!m.0.contains(&Effect::Unmask(33)));
    sys(&mut s, m, Syscall::Invoke, raw(Slot::irq(2)), 0, 0);
    assert!(m.0.contains(&Effect::Unmask(33)));
}

#[test]
fn a_deferred_notify_and_the_next_wait_are_one_trap() {
    let caps = [(Slot::notification(0), notification(B, 3))];
    let m = &mut Log::default();
    let mut s: System<'_, 2> = System::new([Pd::new(10, None, &caps), Pd::new(10, None, &[])]);
    boot(&mut s, m);
    s.signal(m, A, 1);
    sys(&mut s, m, Syscall::NbSendRecv, raw(Slot::INPUT), 0, raw(Slot::notification(0)));
    assert_eq!(s.pd(A).unwrap().state(), State::Recv);
    assert_eq!((s.current(), m.ret(B)), (Some(B), Some((1 << 3, 0))));
}

#[test]
fn equal_priorities_share_the_cpu_round_robin_timeslice_budget() {
    let m = &mut Log::default();
    let pd = || Pd::new(7, None, &[]).with_sc(Sc::new(10, 10));
    let mut s: System<'_, 3> = System::new([pd(), pd(), pd()]);
    s.start(m);
    assert_eq!(m.2, Some(10), "the first slice ends when its budget is used");
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(s.current().unwrap());
        advance(&mut s, m, 4);
        assert_eq!(s.current(), order.last().copied(), "no switch before the budget is used");
        advance(&mut s, m, 6);
    }
    assert_eq!(order, [A, B, C, A, B, C]);
}

#[test]
fn a_child_restarted_while_its_fault_is_pending_is_not_woken_by_the_reply() {
    let parent_caps = [(Slot::child(1), Cap { kind: CapKind::ChildTcb, target: 1, badge: 0 })];
    let m = &mut Log::default();
    let mut s: System<'_, 2> =
        System::new([Pd::new(20, None, &parent_caps), Pd::new(10, Some((A, 1)), &[])]);
    boot(&mut s, m);
    s.signal(m, B, 1);
    s.fault(m, B, FaultKind::UserException);
    assert_eq!(s.current(), Some(A));
    let restart = info(child_method::RESTART, 0);
    sys(&mut s, m, Syscall::Invoke, raw(Slot::child(1)), restart, 0x20_0000);
    assert_eq!(s.pd(B).unwrap().state(), State::Ready);
    // The parent's fault handler also replies: that reply is now void.
    sys(&mut s, m, Syscall::ReplyRecv, raw(Slot::INPUT), info(0, 0), 0);
    assert_eq!(s.current(), Some(B));
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!(s.pd(B).unwrap().state(), State::Recv, "no spurious wakeup from the void reply");
    assert_eq!(s.current(), None);
}

// ---- scheduling contexts ----

const D: PdId = PdId(3);

fn remaining<const N: usize>(s: &System<'_, N>, owner: PdId) -> u64 {
    s.sc(owner).unwrap().remaining
}

#[test]
fn a_pd_out_of_budget_waits_for_its_refill_and_lower_priorities_run() {
    let m = &mut Log::default();
    let mut s: System<'_, 2> = System::new([
        Pd::new(10, None, &[]).with_sc(Sc::new(2, 10)),
        Pd::new(1, None, &[]).with_sc(Sc::new(5, 5)),
    ]);
    s.start(m);
    assert_eq!((s.current(), m.2), (Some(A), Some(2)));
    advance(&mut s, m, 2);
    assert_eq!(s.pd(A).unwrap().state(), State::Throttled);
    assert_eq!(s.current(), Some(B), "the lower priority runs while A is throttled");
    assert_eq!(m.2, Some(7), "B's slice ends before A's refill at 10");
    advance(&mut s, m, 5);
    assert_eq!(s.current(), Some(B), "B alone at its priority: round robin keeps it");
    assert_eq!(m.2, Some(10), "A's refill is the next deadline");
    advance(&mut s, m, 3);
    assert_eq!((s.current(), remaining(&s, A)), (Some(A), 2), "refilled at 10, preempts B");
    // Signals to a throttled PD are latched, not lost.
    advance(&mut s, m, 2);
    s.signal(m, A, 1 << 4);
    advance(&mut s, m, 8);
    assert_eq!(s.current(), Some(A));
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!((s.current(), m.ret(A)), (Some(A), Some((1 << 4, 0))));
}

#[test]
fn a_passive_server_runs_calls_on_the_callers_budget() {
    // A calls passive B; C is a low-priority spinner.
    let a_caps = [(Slot::endpoint(0), endpoint(B, 0))];
    let m = &mut Log::default();
    let mut s: System<'_, 3> = System::new([
        Pd::new(5, None, &a_caps).with_sc(Sc::new(3, 100)),
        Pd::new(10, None, &[]).with_sc(Sc::new(50, 50)).passive(),
        Pd::new(1, None, &[]).with_sc(Sc::new(1000, 1000)),
    ]);
    s.start(m);
    assert_eq!(s.current(), Some(B), "a passive PD runs its init on its own context");
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!(s.current(), Some(A));
    advance(&mut s, m, 1);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(0)), info(1, 0), 0);
    assert_eq!(s.current(), Some(B));
    assert_eq!(s.pd(B).unwrap().runs_on(B), A, "the call lent B the caller's context");
    advance(&mut s, m, 2);
    assert_eq!(s.pd(B).unwrap().state(), State::Throttled, "A's budget is used up");
    assert_eq!(s.current(), Some(C));
    assert_eq!(remaining(&s, B), 50, "B's own context was not charged");
    advance(&mut s, m, 97);
    assert_eq!(s.current(), Some(B), "A's refill lets B finish the call");
    sys(&mut s, m, Syscall::ReplyRecv, raw(Slot::INPUT), info(0, 0), 0);
    assert_eq!((s.current(), s.pd(B).unwrap().runs_on(B)), (Some(A), B));
    // A notification runs B on its own context.
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    s.signal(m, B, 1);
    s.timer(m);
    assert_eq!((s.current(), s.pd(B).unwrap().runs_on(B)), (Some(B), B));
}

#[test]
fn an_active_server_runs_calls_on_its_own_budget() {
    let a_caps = [(Slot::endpoint(0), endpoint(B, 0))];
    let m = &mut Log::default();
    let mut s: System<'_, 2> = System::new([
        Pd::new(5, None, &a_caps).with_sc(Sc::new(3, 100)),
        Pd::new(10, None, &[]).with_sc(Sc::new(50, 50)),
    ]);
    s.start(m);
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(0)), info(1, 0), 0);
    assert_eq!(s.pd(B).unwrap().runs_on(B), B);
    advance(&mut s, m, 10);
    assert_eq!(s.current(), Some(B), "B is charged, not A");
    assert_eq!((remaining(&s, A), remaining(&s, B)), (3, 40));
}

#[test]
fn nested_calls_to_passive_servers_all_run_on_the_first_callers_context() {
    let a_caps = [(Slot::endpoint(0), endpoint(B, 0))];
    let b_caps = [(Slot::endpoint(1), endpoint(C, 0))];
    let m = &mut Log::default();
    let mut s: System<'_, 4> = System::new([
        Pd::new(5, None, &a_caps).with_sc(Sc::new(4, 100)),
        Pd::new(10, None, &b_caps).passive(),
        Pd::new(20, None, &[]).passive(),
        Pd::new(1, None, &[]),
    ]);
    s.start(m);
    boot_until(&mut s, m, A);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(0)), info(1, 0), 0);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(1)), info(2, 0), 0);
    assert_eq!(s.current(), Some(C));
    assert_eq!((s.pd(B).unwrap().runs_on(B), s.pd(C).unwrap().runs_on(C)), (A, A));
    advance(&mut s, m, 4);
    assert_eq!((s.pd(C).unwrap().state(), s.current()), (State::Throttled, Some(D)));
}

#[test]
fn restarting_a_caller_gives_its_passive_servers_their_own_context_back() {
    // D (the parent) restarts its child A while passive B serves A's call
    // throttled on A's context: B must run on, on its own.
    let a_caps = [(Slot::endpoint(0), endpoint(B, 0))];
    let d_caps = [(Slot::child(0), Cap { kind: CapKind::ChildTcb, target: 0, badge: 0 })];
    let m = &mut Log::default();
    let mut s: System<'_, 4> = System::new([
        Pd::new(5, Some((D, 0)), &a_caps).with_sc(Sc::new(2, 100)),
        Pd::new(10, None, &[]).with_sc(Sc::new(50, 50)).passive(),
        Pd::new(1, None, &[]),
        Pd::new(30, None, &d_caps),
    ]);
    s.start(m);
    boot_until(&mut s, m, A);
    sys(&mut s, m, Syscall::Call, raw(Slot::endpoint(0)), info(1, 0), 0);
    advance(&mut s, m, 2);
    assert_eq!(s.pd(B).unwrap().state(), State::Throttled);
    s.signal(m, D, 1);
    s.timer(m);
    assert_eq!(s.current(), Some(D));
    let restart = info(child_method::RESTART, 0);
    sys(&mut s, m, Syscall::Invoke, raw(Slot::child(0)), restart, 0x20_0000);
    assert_eq!((s.pd(B).unwrap().state(), s.pd(B).unwrap().runs_on(B)), (State::Ready, B));
    assert_eq!(s.sc(A).unwrap().throttled, None);
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!(s.current(), Some(B), "B finishes on its own budget before A runs again");
    sys(&mut s, m, Syscall::ReplyRecv, raw(Slot::INPUT), info(0, 0), 0);
    assert_eq!(s.pd(A).unwrap().state(), State::Throttled, "A's context is still used up");
}

#[test]
fn a_faulting_child_lends_its_context_to_a_passive_parent() {
    let m = &mut Log::default();
    let mut s: System<'_, 2> = System::new([
        Pd::new(20, None, &[]).passive(),
        Pd::new(10, Some((A, 1)), &[]).with_sc(Sc::new(5, 100)),
    ]);
    s.start(m);
    boot_until(&mut s, m, B);
    s.fault(m, B, FaultKind::VmFault);
    assert_eq!((s.current(), s.pd(A).unwrap().runs_on(A)), (Some(A), B));
}

/// Lets PDs run `init` and wait, highest priority first, until `pd` is
/// current.
fn boot_until<const N: usize>(s: &mut System<'_, N>, m: &mut Log, pd: PdId) {
    while s.current() != Some(pd) {
        assert!(s.current().is_some(), "{pd:?} never runs");
        sys(s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    }
}

// ---- vCPUs and stage-2 control ----

#[test]
fn a_vcpu_starts_stopped_and_its_vmm_restarts_it_and_hears_its_exits() {
    // A is the VMM; C is its vCPU 2 (stopped until restarted).
    let a_caps = [
        (Slot::vcpu(2), Cap { kind: CapKind::Vcpu, target: 2, badge: 0 }),
        (Slot::vcpu(3), Cap { kind: CapKind::Vcpu, target: 3, badge: 0 }),
    ];
    let m = &mut Log::default();
    let mut s: System<'_, 4> = System::new([
        Pd::new(50, None, &a_caps),
        Pd::new(1, None, &[]),
        Pd::new(10, Some((A, 2)), &[]).stopped(),
        Pd::new(10, Some((A, 3)), &[]).stopped(),
    ]);
    assert_eq!(boot(&mut s, m), [A, B], "vCPUs do not run before their VMM starts them");
    s.signal(m, A, 1);
    s.timer(m);
    let read = info(vcpu_method::READ_REG, 0);
    sys(&mut s, m, Syscall::Invoke, raw(Slot::vcpu(2)), read, 7);
    assert_eq!(m.ret(A), Some((0, 107)), "the machine's value comes back in x1");
    let restart = info(vcpu_method::RESTART, 0);
    sys(&mut s, m, Syscall::Invoke, raw(Slot::vcpu(3)), restart, 0x4008_0000);
    assert_eq!(m.ret(A), Some((Error::IllegalOperation as u64, 0)));
    assert_eq!(s.pd(D).unwrap().state(), State::Stopped, "a refused restart changes nothing");
    sys(&mut s, m, Syscall::Invoke, raw(Slot::vcpu(2)), restart, 0x4008_0000);
    assert!(m.0.contains(&Effect::SetPc(C, 0x4008_0000)));
    sys(&mut s, m, Syscall::Recv, raw(Slot::INPUT), 0, 0);
    assert_eq!(s.current(), Some(C));
    s.fault(m, C, FaultKind::VcpuFault);
    assert_eq!(s.current(), Some(A));
    assert_eq!(m.ret(A), Some((BADGE_FAULT | 2, info(FaultKind::VcpuFault as u64, 0))));
    // Replying resumes the vCPU, its registers untouched.
    let before = m.0.len();
    sys(&mut s, m, Syscall::ReplyRecv, raw(Slot::INPUT), info(0, 4), 0);
    assert_eq!(s.current(), Some(C));
    assert!(
        !m.0[before..]
            .iter()
            .any(|e| matches!(e, Effect::Transfer(_, C, _) | Effect::Return(C, ..))),
        "a fault reply writes no registers"
    );
}

#[test]
fn uninstalling_a_guest_table_stops_its_vcpus() {
    let b_caps =
        [(Slot::STAGE2_CONTROL, Cap { kind: CapKind::Stage2Control, target: 0, badge: 0 })];
    let m = &mut Log::default();
    let mut s: System<'_, 3> = System::new([
        Pd::new(5, None, &[]),
        Pd::new(50, None, &b_caps),
        Pd::new(10, Some((A, 0)), &[]),
    ]);
    boot_until(&mut s, m, B);
    let uninstall = info(stage2_method::UNINSTALL, 0);
    sys(&mut s, m, Syscall::Invoke, raw(Slot::STAGE2_CONTROL), uninstall, 0);
    assert_eq!(m.ret(B), Some((0, 0)));
    assert_eq!(s.pd(C).unwrap().state(), State::Stopped);
    let refused = info(stage2_method::INVALIDATE_VMID, 0);
    sys(&mut s, m, Syscall::Invoke, raw(Slot::STAGE2_CONTROL), refused, 9);
    assert_eq!(m.ret(B), Some((Error::InvalidArgument as u64, 0)));
    // Without the capability: refused before the machine hears of it.
    let before = m.0.len();
    boot_until(&mut s, m, A);
    sys(&mut s, m, Syscall::Invoke, raw(Slot::STAGE2_CONTROL), uninstall, 0);
    assert_eq!(m.ret(A), Some((Error::InvalidCapability as u64, 0)));
    assert!(!m.0[before..].iter().any(|e| matches!(e, Effect::Stage2(..))));
}
