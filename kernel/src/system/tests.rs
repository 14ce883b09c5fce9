//! The kernel's IPC and scheduling rules, checked on the host against
//! Microkit's semantics.

extern crate std;

use super::*;
use std::vec::Vec;
use tenure_abi::BADGE_PPC;

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
}

#[derive(Default)]
struct Log(Vec<Effect>);

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
    fn record_fault(&mut self, pd: PdId) {
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
    s.tick();
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
fn equal_priorities_share_the_cpu_round_robin_on_ticks() {
    let m = &mut Log::default();
    let mut s: System<'_, 3> =
        System::new([Pd::new(7, None, &[]), Pd::new(7, None, &[]), Pd::new(7, None, &[])]);
    let mut order = Vec::new();
    for _ in 0..6 {
        order.push(s.current().unwrap());
        s.tick();
    }
    assert_eq!(order, [A, B, C, A, B, C]);
    let _ = m;
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
