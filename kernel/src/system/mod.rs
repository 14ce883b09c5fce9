//! The kernel's objects and their rules: protection domains, capabilities,
//! fixed-priority scheduling and IPC, with Microkit's semantics.
//!
//! This module is pure logic: every effect on the machine (copying message
//! registers, setting a PD's return registers, unmasking an interrupt,
//! reporting a fault) goes through [`Machine`], so the whole state machine
//! runs and is tested on the host.
//!
//! Invariants:
//! - a PD is in at most one queue (the ready queue of its priority, or the
//!   endpoint queue of the PD it calls), linked through `Pd::next`;
//! - the current PD is runnable and in no queue;
//! - a PD receives an event only from a wait (`Recv`, `ReplyRecv`,
//!   `NbSendRecv`), so it never re-enters an entry point;
//! - every syscall argument is checked here; a bad one returns an
//!   [`Error`] to the caller and changes nothing;
//! - every PD runs on a scheduling context (its own, or the one a caller
//!   donated to it, see [`Sc`]), and at most one runnable PD runs on each;
//!   a PD runs only while that context has budget left.

mod queue;
#[cfg(test)]
mod tests;

use queue::ReadyQueues;
use tenure_abi::vcpu::{stage2_method, vcpu_method};
use tenure_abi::{BADGE_FAULT, CapKind, Error, MessageInfo, Slot, Syscall};

/// Index of a protection domain in the system.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PdId(pub u8);

/// A capability as the boot image gives it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Cap {
    /// What it is.
    pub kind: CapKind,
    /// The object: a PD index (notification, endpoint, child TCB) or an
    /// interrupt number (IRQ handler).
    pub target: u32,
    /// The badge delivered with it (notifications and endpoints).
    pub badge: u64,
}

/// Invocation labels on a child TCB capability.
pub mod child_method {
    /// Restart the child at the PC in the second argument.
    pub const RESTART: u64 = 1;
    /// Stop the child.
    pub const STOP: u64 = 2;
}

/// What a PD is doing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    /// Runnable: current, or in its ready queue.
    Ready,
    /// Waiting for an event on its own endpoint and notification.
    Recv,
    /// Waiting for `callee` to accept its call.
    Send {
        /// The PD called.
        callee: PdId,
    },
    /// Waiting for the reply of `callee` (a PPC, or a fault message).
    Reply {
        /// The PD that owes the reply.
        callee: PdId,
    },
    /// Stopped: faulted without a parent, or stopped by its parent.
    Stopped,
    /// Runnable, but the scheduling context it runs on has used its
    /// budget; it runs again when the context is refilled.
    Throttled,
}

/// The kind of a PD fault, as the label of the fault message (seL4's MCS
/// numbering, which Microkit handlers decode).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum FaultKind {
    /// An unknown syscall number.
    UnknownSyscall = 2,
    /// Any other synchronous exception (undefined instruction, alignment).
    UserException = 3,
    /// A stage-2 translation or permission fault.
    VmFault = 6,
    /// A vCPU's list register with a maintenance request was ended.
    VgicMaintenance = 7,
    /// A vCPU trapped: HVC, SMC, WFI/WFE or a system register access.
    VcpuFault = 8,
    /// A vCPU's virtual timer fired.
    VppiEvent = 9,
}

impl FaultKind {
    /// The kind a fault message's label names (the kernel wrote it).
    #[must_use]
    pub fn from_label(label: u64) -> FaultKind {
        match label {
            2 => FaultKind::UnknownSyscall,
            6 => FaultKind::VmFault,
            7 => FaultKind::VgicMaintenance,
            8 => FaultKind::VcpuFault,
            9 => FaultKind::VppiEvent,
            _ => FaultKind::UserException,
        }
    }
}

/// The machine side of the kernel: what the state machine asks the
/// architecture layer to do.
pub trait Machine {
    /// Copies the first `info.count()` message registers of `from` to `to`.
    fn transfer(&mut self, from: PdId, to: PdId, info: MessageInfo);
    /// Sets what `pd`'s pending syscall returns: `x0` and `x1`.
    fn set_return(&mut self, pd: PdId, x0: u64, x1: u64);
    /// Records what `pd`'s fault of kind `kind` was (its PC, the faulting
    /// address, the syndrome), at the moment it faults.
    fn record_fault(&mut self, pd: PdId, kind: FaultKind);
    /// Writes the recorded fault message of `child` into `parent`'s
    /// message registers, when the parent receives it.
    fn fault_message(&mut self, child: PdId, parent: PdId, kind: FaultKind);
    /// Unmasks interrupt `irq`.
    fn unmask_irq(&mut self, irq: u32);
    /// Sets `pd`'s program counter.
    fn set_pc(&mut self, pd: PdId, pc: u64);
    /// Reports the fault of a PD with no parent, which is then stopped.
    fn report_fault(&mut self, pd: PdId, kind: FaultKind);
    /// Writes a byte to the debug console.
    fn debug_putc(&mut self, byte: u8);
    /// The time now, in ticks of the clock budgets are counted in.
    fn now(&mut self) -> u64;
    /// Asks for a call of [`System::timer`] at time `at` (replacing any
    /// earlier request); `u64::MAX` asks for none.
    fn set_deadline(&mut self, at: u64);
    /// Performs vCPU method `method` (see [`tenure_abi::vcpu`]) for
    /// `caller` on `vcpu`, with argument `arg` and further arguments in
    /// the caller's message registers; returns the value for the caller's
    /// `x1`. For [`vcpu_method::RESTART`] it only checks that the vCPU can
    /// run; the system restarts it.
    fn vcpu(&mut self, caller: PdId, vcpu: PdId, method: u64, arg: u64) -> Result<u64, Error>;
    /// Performs stage-2 control method `method` for `caller`, with `arg`
    /// and further arguments in the caller's message registers; returns
    /// the vCPUs to stop, one bit per PD id.
    fn stage2(&mut self, caller: PdId, method: u64, arg: u64) -> Result<u64, Error>;
}

/// A scheduling context (seL4 MCS): the CPU time a PD may use, `budget`
/// ticks in a window of `period` ticks.
///
/// A window opens when the context first runs after the previous one
/// closed, with the full budget; a context whose budget is used waits for
/// its window to close (it is *throttled*). A context whose budget equals
/// its period is never throttled: using its budget only sends its PD
/// behind the others of its priority (round robin, timeslice = budget).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Sc {
    budget: u64,
    period: u64,
    /// Budget left in the current window.
    remaining: u64,
    /// When the current window opened.
    refilled_at: u64,
    /// The PD waiting for this context's refill.
    throttled: Option<PdId>,
}

impl Sc {
    /// A context of `budget` ticks per `period` ticks; `budget` is at least
    /// 1 and at most `period`.
    #[must_use]
    pub fn new(budget: u64, period: u64) -> Self {
        let budget = budget.max(1);
        Sc {
            budget,
            period: period.max(budget),
            remaining: budget,
            refilled_at: 0,
            throttled: None,
        }
    }

    /// A context that never runs out (all a PD's time is its own).
    #[must_use]
    pub const fn unlimited() -> Self {
        Sc {
            budget: u64::MAX,
            period: u64::MAX,
            remaining: u64::MAX,
            refilled_at: 0,
            throttled: None,
        }
    }

    /// When the current window closes.
    fn window_end(&self) -> u64 {
        self.refilled_at.saturating_add(self.period)
    }

    /// Opens a new window if the current one has closed.
    fn refill_if_due(&mut self, now: u64) {
        if now >= self.window_end() {
            self.remaining = self.budget;
            self.refilled_at = now;
        }
    }

    /// Whether using the budget only means round robin.
    fn is_round_robin(&self) -> bool {
        self.budget == self.period
    }
}

/// One protection domain.
#[derive(Clone, Debug)]
pub struct Pd<'a> {
    priority: u8,
    parent: Option<(PdId, u8)>,
    caps: &'a [(Slot, Cap)],
    state: State,
    /// The notification word: badge bits signalled and not yet received.
    pending: u64,
    /// The caller owed a reply, if any.
    caller: Option<PdId>,
    /// A call waiting to be accepted: its badge and message info.
    call: (u64, MessageInfo),
    next: Option<PdId>,
    /// First caller waiting on this PD's endpoint.
    waiting: Option<PdId>,
    /// Passive: it runs calls on its callers' scheduling contexts, and
    /// only notifications on its own.
    passive: bool,
    /// The PD whose scheduling context it runs on: `None` for its own, or
    /// the caller (or faulting child) that donated one.
    donated: Option<PdId>,
    /// The scheduling context it starts with; [`System`] keeps it from
    /// then on.
    initial_sc: Sc,
}

impl<'a> Pd<'a> {
    /// A PD at `priority`, with the capabilities `caps` (sorted by slot)
    /// and, for a child, its parent and the id the parent knows it by.
    #[must_use]
    pub fn new(priority: u8, parent: Option<(PdId, u8)>, caps: &'a [(Slot, Cap)]) -> Self {
        Pd {
            priority,
            parent,
            caps,
            state: State::Ready,
            pending: 0,
            caller: None,
            call: (0, MessageInfo::default()),
            next: None,
            waiting: None,
            passive: false,
            donated: None,
            initial_sc: Sc::unlimited(),
        }
    }

    /// The same PD with the scheduling context `sc`.
    #[must_use]
    pub fn with_sc(mut self, sc: Sc) -> Self {
        self.initial_sc = sc;
        self
    }

    /// The same PD, stopped until its parent restarts it (a vCPU).
    #[must_use]
    pub fn stopped(mut self) -> Self {
        self.state = State::Stopped;
        self
    }

    /// The same PD, passive: once it waits, calls run on the caller's
    /// scheduling context (Microkit's `passive="true"`).
    #[must_use]
    pub fn passive(mut self) -> Self {
        self.passive = true;
        self
    }

    /// What the PD is doing.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// Its priority.
    #[must_use]
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The PD whose scheduling context it runs on now.
    #[must_use]
    pub fn runs_on(&self, me: PdId) -> PdId {
        self.donated.unwrap_or(me)
    }

    fn cap(&self, slot: Slot) -> Option<Cap> {
        let i = self.caps.binary_search_by_key(&slot, |(s, _)| *s).ok()?;
        Some(self.caps[i].1)
    }
}

/// The whole system: every PD, the ready queues and the current PD.
pub struct System<'a, const N: usize> {
    pds: [Option<Pd<'a>>; N],
    ready: ReadyQueues,
    current: Option<PdId>,
    /// The scheduling context being charged (its owner), if any.
    charging: Option<PdId>,
    /// When the charged context started running.
    slice_start: u64,
    /// Owners of the contexts with a throttled PD waiting, one bit each.
    throttled: u64,
    /// Each PD's own scheduling context, by PD index.
    scs: [Sc; N],
}

impl<'a, const N: usize> System<'a, N> {
    /// A system of `pds`, all ready; the highest priority runs first, and
    /// PDs of equal priority in index order.
    pub fn new(pds: impl IntoIterator<Item = Pd<'a>>) -> Self {
        let mut system = System {
            pds: [const { None }; N],
            ready: ReadyQueues::new(),
            current: None,
            charging: None,
            slice_start: 0,
            throttled: 0,
            scs: [Sc::unlimited(); N],
        };
        const { assert!(N <= 64, "one bit per PD in `throttled`") };
        for (i, pd) in pds.into_iter().take(N).enumerate() {
            system.scs[i] = pd.initial_sc;
            let ready = pd.state == State::Ready;
            system.pds[i] = Some(pd);
            if ready {
                system.append(PdId(i as u8));
            }
        }
        system.current = system.dequeue_highest();
        system
    }

    /// The PD running now, or `None` when all wait (the CPU idles).
    #[must_use]
    pub fn current(&self) -> Option<PdId> {
        self.current
    }

    /// PD `id`.
    #[must_use]
    #[inline]
    pub fn pd(&self, id: PdId) -> Option<&Pd<'a>> {
        self.pds.get(usize::from(id.0))?.as_ref()
    }

    #[inline]
    fn pd_mut(&mut self, id: PdId) -> &mut Pd<'a> {
        self.pds[usize::from(id.0)].as_mut().expect("ids in the system name PDs")
    }

    #[inline]
    fn prio(&self, id: PdId) -> u8 {
        self.pd(id).map_or(0, |p| p.priority)
    }

    /// The owner of the scheduling context `pd` runs on.
    #[inline]
    fn sc_of(&self, pd: PdId) -> PdId {
        self.pd(pd).map_or(pd, |p| p.runs_on(pd))
    }

    #[inline]
    fn sc_mut(&mut self, owner: PdId) -> &mut Sc {
        &mut self.scs[usize::from(owner.0)]
    }

    /// The scheduling context of PD `owner`.
    #[must_use]
    pub fn sc(&self, owner: PdId) -> Option<&Sc> {
        self.scs.get(usize::from(owner.0))
    }

    /// Starts the system: the first PD's time is counted from now.
    pub fn start<M: Machine>(&mut self, m: &mut M) {
        let now = m.now();
        self.switch_sc(m, now);
    }

    /// Handles a syscall of the current PD: `call` is `x7`, then `x0`,
    /// `x1` and `x6`. Afterwards [`System::current`] says who runs.
    pub fn syscall<M: Machine>(&mut self, m: &mut M, call: u64, x0: u64, x1: u64, x6: u64) {
        let Some(cur) = self.current else { return };
        if call == Syscall::Call as u64 && self.fast_call(m, cur, x0, x1) {
            return;
        }
        if call == Syscall::ReplyRecv as u64 && self.fast_reply_recv(m, cur, x1) {
            return;
        }
        let result = match Syscall::from_raw(call) {
            None => return self.fault(m, cur, FaultKind::UnknownSyscall),
            Some(Syscall::Signal) => self.sys_signal(m, cur, x0),
            Some(Syscall::Call) => self.sys_call(m, cur, x0, x1),
            Some(Syscall::Recv) => {
                self.recv(m, cur);
                Ok(())
            }
            Some(Syscall::ReplyRecv) => self.sys_reply_recv(m, cur, x1),
            Some(Syscall::NbSendRecv) => self.sys_nb_send_recv(m, cur, x6),
            Some(Syscall::Invoke) => self.sys_invoke(m, cur, x0, x1, x6),
            Some(Syscall::Yield) => {
                m.set_return(cur, 0, 0);
                self.append(cur);
                self.current = None;
                Ok(())
            }
            Some(Syscall::DebugPutChar) => {
                m.debug_putc(x0 as u8);
                m.set_return(cur, 0, 0);
                Ok(())
            }
        };
        if let Err(e) = result {
            m.set_return(cur, e as u64, 0);
        }
        self.schedule(m);
    }

    /// The fast path of a call: the callee waits and will be the highest
    /// ready PD, so the call goes straight to it. Returns false, having
    /// changed nothing, when the general path must handle the call (it
    /// gives the same result, more slowly, or the error).
    fn fast_call<M: Machine>(&mut self, m: &mut M, cur: PdId, slot: u64, info: u64) -> bool {
        let Ok(cap) = self.cap(cur, slot, CapKind::Endpoint) else { return false };
        let (Some(info), Ok(callee)) = (MessageInfo::from_raw(info), self.target(cap)) else {
            return false;
        };
        let Some(server) = self.pd(callee) else { return false };
        let prio = server.priority;
        if callee == cur
            || server.state != State::Recv
            || self.ready.highest().is_some_and(|p| p > prio)
        {
            return false;
        }
        m.transfer(cur, callee, info);
        m.set_return(callee, cap.badge, info.raw());
        self.start_serving(callee, cur);
        self.current = Some(callee);
        self.follow_sc(m, callee);
        true
    }

    /// The fast path of a reply and wait: the server has no pending
    /// notification or queued caller, so it blocks, and its caller
    /// outranks every ready PD, so the caller runs next. Returns false,
    /// having changed nothing, when the general path must handle it.
    fn fast_reply_recv<M: Machine>(&mut self, m: &mut M, cur: PdId, info: u64) -> bool {
        let (Some(info), Some(server)) = (MessageInfo::from_raw(info), self.pd(cur)) else {
            return false;
        };
        let Some(caller) = server.caller else { return false };
        if server.pending != 0
            || server.waiting.is_some()
            || self.ready.highest().is_some_and(|p| p >= self.prio(caller))
        {
            return false;
        }
        self.deliver_reply(m, cur, caller, info);
        let server = self.pd_mut(cur);
        server.caller = None;
        server.state = State::Recv;
        server.donated = None;
        self.pd_mut(caller).state = State::Ready;
        self.current = Some(caller);
        self.follow_sc(m, caller);
        true
    }

    /// Hands `caller` the reply of `server`: the message, and `x0`/`x1`.
    /// A reply to a fault message only resumes the faulted PD or vCPU:
    /// its registers are what it was doing, not a message.
    #[inline]
    fn deliver_reply<M: Machine>(
        &mut self,
        m: &mut M,
        server: PdId,
        caller: PdId,
        info: MessageInfo,
    ) {
        if self.pd(caller).is_some_and(|p| p.call.0 & BADGE_FAULT == 0) {
            m.transfer(server, caller, info);
            m.set_return(caller, 0, info.raw());
        }
    }

    /// `next` runs now: when it runs on another scheduling context than
    /// the one being charged, switch contexts.
    #[inline(always)]
    fn follow_sc<M: Machine>(&mut self, m: &mut M, next: PdId) {
        let owner = self.sc_of(next);
        if self.charging != Some(owner) {
            self.switch_to_sc(m, owner);
        }
    }

    /// [`System::follow_sc`]'s switch: charge the old context, start
    /// `owner`'s.
    #[inline(never)]
    fn switch_to_sc<M: Machine>(&mut self, m: &mut M, owner: PdId) {
        let now = m.now();
        self.charge(now);
        if !self.start_sc(m, now, owner) {
            self.throttle_and_pick(m, now);
        }
    }

    /// The common case of a context switch: starts charging `owner`'s
    /// context, which has budget left, with nothing throttled (so the
    /// deadline is the end of this budget). False, having changed nothing
    /// but a due refill, otherwise.
    fn start_sc<M: Machine>(&mut self, m: &mut M, now: u64, owner: PdId) -> bool {
        if self.throttled != 0 {
            return false;
        }
        let sc = self.sc_mut(owner);
        sc.refill_if_due(now);
        if sc.remaining == 0 {
            return false;
        }
        let deadline = now.saturating_add(sc.remaining);
        self.charging = Some(owner);
        m.set_deadline(deadline);
        true
    }

    /// The capability of `pd` in the raw slot `raw`, of any kind.
    fn any_cap(&self, pd: PdId, raw: u64) -> Result<Cap, Error> {
        let slot = Slot::from_raw(raw).ok_or(Error::InvalidCapability)?;
        self.pd(pd).and_then(|p| p.cap(slot)).ok_or(Error::InvalidCapability)
    }

    /// A capability of `pd` of the kind `kind`, from the raw slot `raw`.
    fn cap(&self, pd: PdId, raw: u64, kind: CapKind) -> Result<Cap, Error> {
        let cap = self.any_cap(pd, raw)?;
        if cap.kind != kind {
            return Err(Error::WrongKind);
        }
        Ok(cap)
    }

    /// The PD a capability's target names, checked.
    fn target(&self, cap: Cap) -> Result<PdId, Error> {
        let id = u8::try_from(cap.target).map_err(|_| Error::InvalidCapability)?;
        self.pd(PdId(id)).map(|_| PdId(id)).ok_or(Error::InvalidCapability)
    }

    fn sys_signal<M: Machine>(&mut self, m: &mut M, cur: PdId, slot: u64) -> Result<(), Error> {
        let cap = self.cap(cur, slot, CapKind::Notification)?;
        self.signal_cap(m, cur, cap)
    }

    /// Signals through a notification capability of `cur`.
    fn signal_cap<M: Machine>(&mut self, m: &mut M, cur: PdId, cap: Cap) -> Result<(), Error> {
        let target = self.target(cap)?;
        m.set_return(cur, 0, 0);
        self.signal(m, target, cap.badge);
        Ok(())
    }

    /// ORs `badge` into `target`'s notification word and wakes it if it
    /// waits; a higher-priority receiver preempts the current PD at once.
    pub fn signal<M: Machine>(&mut self, m: &mut M, target: PdId, badge: u64) {
        let pd = self.pd_mut(target);
        pd.pending |= badge;
        if pd.state == State::Recv {
            let pending = core::mem::take(&mut pd.pending);
            pd.state = State::Ready;
            m.set_return(target, pending, 0);
            self.wake(target);
        }
    }

    fn sys_call<M: Machine>(
        &mut self,
        m: &mut M,
        cur: PdId,
        slot: u64,
        info: u64,
    ) -> Result<(), Error> {
        let cap = self.cap(cur, slot, CapKind::Endpoint)?;
        let info = MessageInfo::from_raw(info).ok_or(Error::InvalidArgument)?;
        let callee = self.target(cap)?;
        if callee == cur {
            return Err(Error::InvalidArgument);
        }
        self.pd_mut(cur).call = (cap.badge, info);
        self.send(m, cur, callee);
        Ok(())
    }

    /// Delivers `caller`'s pending call (or fault message) to `callee` if
    /// it waits, else queues the caller on its endpoint. The caller blocks.
    fn send<M: Machine>(&mut self, m: &mut M, caller: PdId, callee: PdId) {
        self.current = None;
        if self.pd(callee).is_some_and(|p| p.state == State::Recv) {
            self.accept(m, callee, caller);
            self.wake(callee);
        } else {
            self.pd_mut(caller).state = State::Send { callee };
            queue::enqueue_caller(&mut self.pds, callee, caller);
        }
    }

    /// `callee` takes `caller`'s call: message, badge, and the reply owed.
    fn accept<M: Machine>(&mut self, m: &mut M, callee: PdId, caller: PdId) {
        let (badge, info) = self.pd(caller).map(|p| p.call).unwrap_or_default();
        if badge & BADGE_FAULT == 0 {
            m.transfer(caller, callee, info);
        } else {
            m.fault_message(caller, callee, FaultKind::from_label(info.label()));
        }
        m.set_return(callee, badge, info.raw());
        self.start_serving(callee, caller);
    }

    /// `callee` now serves `caller`, who waits for the reply; a passive
    /// callee runs on the caller's scheduling context.
    #[inline(always)]
    fn start_serving(&mut self, callee: PdId, caller: PdId) {
        let sc = self.sc_of(caller);
        let pd = self.pd_mut(callee);
        pd.caller = Some(caller);
        pd.state = State::Ready;
        if pd.passive {
            pd.donated = Some(sc);
        }
        self.pd_mut(caller).state = State::Reply { callee };
    }

    /// Replies, then waits. When the server blocks and the caller outranks
    /// every ready PD (the usual end of a PPC), the caller runs next
    /// without a trip through its ready queue.
    fn sys_reply_recv<M: Machine>(&mut self, m: &mut M, cur: PdId, info: u64) -> Result<(), Error> {
        let info = MessageInfo::from_raw(info).ok_or(Error::InvalidArgument)?;
        let caller = self.pd_mut(cur).caller.take();
        if let Some(caller) = caller {
            self.deliver_reply(m, cur, caller, info);
            self.pd_mut(caller).state = State::Ready;
        }
        self.recv(m, cur);
        if let Some(caller) = caller {
            let prio = self.prio(caller);
            if self.current.is_none() && self.ready.highest().is_none_or(|p| p < prio) {
                self.current = Some(caller);
            } else {
                self.append(caller);
            }
        }
        Ok(())
    }

    fn sys_nb_send_recv<M: Machine>(
        &mut self,
        m: &mut M,
        cur: PdId,
        slot: u64,
    ) -> Result<(), Error> {
        let cap = self.any_cap(cur, slot)?;
        match cap.kind {
            CapKind::Notification => self.signal_cap(m, cur, cap)?,
            CapKind::IrqHandler => Self::irq_ack(m, cur, cap),
            _ => return Err(Error::WrongKind),
        }
        self.recv(m, cur);
        Ok(())
    }

    /// The current PD waits: it takes pending notifications, else the
    /// first queued caller, else blocks.
    /// A passive PD that waits gives back the context it was lent: what
    /// it receives next runs on its own (a notification) or on the
    /// caller's (a call, see [`System::accept`]).
    fn recv<M: Machine>(&mut self, m: &mut M, cur: PdId) {
        let pd = self.pd_mut(cur);
        pd.donated = None;
        if pd.pending != 0 {
            let pending = core::mem::take(&mut pd.pending);
            m.set_return(cur, pending, 0);
            return;
        }
        if let Some(caller) = queue::dequeue_caller(&mut self.pds, cur) {
            self.accept(m, cur, caller);
            return;
        }
        self.pd_mut(cur).state = State::Recv;
        self.current = None;
    }

    /// Acknowledges the interrupt of an IRQ handler capability of `cur`.
    fn irq_ack<M: Machine>(m: &mut M, cur: PdId, cap: Cap) {
        m.unmask_irq(cap.target);
        m.set_return(cur, 0, 0);
    }

    fn sys_invoke<M: Machine>(
        &mut self,
        m: &mut M,
        cur: PdId,
        slot: u64,
        info: u64,
        arg: u64,
    ) -> Result<(), Error> {
        let cap = self.any_cap(cur, slot)?;
        match cap.kind {
            CapKind::IrqHandler => {
                Self::irq_ack(m, cur, cap);
                Ok(())
            }
            CapKind::ChildTcb => {
                let child = self.target(cap)?;
                let label = MessageInfo::from_raw(info).ok_or(Error::InvalidArgument)?.label();
                match label {
                    child_method::RESTART => self.restart(m, child, arg),
                    child_method::STOP => self.stop(child),
                    _ => return Err(Error::IllegalOperation),
                }
                m.set_return(cur, 0, 0);
                Ok(())
            }
            CapKind::Vcpu => {
                let vcpu = self.target(cap)?;
                let label = MessageInfo::from_raw(info).ok_or(Error::InvalidArgument)?.label();
                let value = m.vcpu(cur, vcpu, label, arg)?;
                match label {
                    vcpu_method::RESTART => self.restart(m, vcpu, arg),
                    vcpu_method::STOP => self.stop(vcpu),
                    _ => {}
                }
                m.set_return(cur, 0, value);
                Ok(())
            }
            CapKind::Stage2Control => {
                let label = MessageInfo::from_raw(info).ok_or(Error::InvalidArgument)?.label();
                let stop = m.stage2(cur, label, arg)?;
                if label == stage2_method::UNINSTALL {
                    self.stop_all(stop);
                }
                m.set_return(cur, 0, 0);
                Ok(())
            }
            _ => Err(Error::IllegalOperation),
        }
    }

    /// An interrupt fired: signal the PD it is bound to. The caller (the
    /// interrupt path) has masked it; it stays masked until acked.
    pub fn irq<M: Machine>(&mut self, m: &mut M, pd: PdId, badge: u64) {
        self.signal(m, pd, badge);
        self.schedule(m);
    }

    /// The current PD faulted: its parent hears of it through its endpoint
    /// (badge `BADGE_FAULT | child id`), and the PD waits for the parent's
    /// reply; without a parent it is reported and stopped.
    pub fn fault<M: Machine>(&mut self, m: &mut M, pd: PdId, kind: FaultKind) {
        match self.pd(pd).and_then(|p| p.parent) {
            Some((parent, id)) => {
                m.record_fault(pd, kind);
                let info = MessageInfo::new(kind as u64, 0).unwrap_or_default();
                self.pd_mut(pd).call = (BADGE_FAULT | u64::from(id), info);
                self.send(m, pd, parent);
            }
            None => {
                m.report_fault(pd, kind);
                self.stop(pd);
            }
        }
        self.schedule(m);
    }

    /// The deadline [`Machine::set_deadline`] asked for has passed (or an
    /// early timer interrupt came): the running context is charged;
    /// throttled contexts whose window closed are refilled and their PDs
    /// run again; a current PD whose budget is used goes behind the others
    /// of its priority (round robin) or, if its context is throttled,
    /// waits for the refill.
    pub fn timer<M: Machine>(&mut self, m: &mut M) {
        let now = m.now();
        self.charge(now);
        let mut bits = self.throttled;
        while bits != 0 {
            let owner = PdId(bits.trailing_zeros() as u8);
            bits &= bits - 1;
            let sc = self.sc_mut(owner);
            if now < sc.window_end() {
                continue;
            }
            sc.refill_if_due(now);
            if let Some(waiter) = sc.throttled.take() {
                self.throttled &= !(1 << owner.0);
                self.pd_mut(waiter).state = State::Ready;
                self.wake(waiter);
            }
        }
        if let Some(cur) = self.current {
            let owner = self.sc_of(cur);
            let sc = self.sc_mut(owner);
            if sc.remaining == 0 {
                if sc.is_round_robin() {
                    sc.remaining = sc.budget;
                    sc.refilled_at = now;
                    if self.ready.highest().is_some_and(|p| p >= self.prio(cur)) {
                        self.append(cur);
                        self.current = None;
                    }
                } else {
                    sc.refill_if_due(now);
                }
            }
        }
        self.reschedule();
        self.switch_sc(m, now);
    }

    fn restart<M: Machine>(&mut self, m: &mut M, child: PdId, pc: u64) {
        self.detach(child);
        let pd = self.pd_mut(child);
        pd.state = State::Ready;
        pd.donated = None;
        m.set_pc(child, pc);
        self.wake(child);
    }

    /// Stops every PD whose bit is set in `pds`.
    fn stop_all(&mut self, pds: u64) {
        for i in 0..N.min(64) {
            if pds & (1 << i) != 0 && self.pd(PdId(i as u8)).is_some() {
                self.stop(PdId(i as u8));
            }
        }
    }

    fn stop(&mut self, pd: PdId) {
        self.detach(pd);
        let p = self.pd_mut(pd);
        p.state = State::Stopped;
        p.donated = None;
        if self.current == Some(pd) {
            self.current = None;
        }
    }

    /// Takes `pd` out of whatever queue holds it, and cancels the reply it
    /// waits for (a restarted or stopped PD must not be woken by a reply
    /// meant for what it was doing); passive PDs serving that call on its
    /// scheduling context go on with their own.
    fn detach(&mut self, pd: PdId) {
        match self.pd(pd).map(|p| p.state) {
            Some(State::Reply { callee }) => {
                let owes = self.pd_mut(callee);
                if owes.caller == Some(pd) {
                    owes.caller = None;
                }
                self.return_sc(pd, callee);
            }
            Some(State::Throttled) => {
                let owner = self.sc_of(pd);
                let sc = self.sc_mut(owner);
                if sc.throttled == Some(pd) {
                    sc.throttled = None;
                    self.throttled &= !(1 << owner.0);
                }
            }
            Some(State::Ready) if self.current != Some(pd) => {
                let prio = self.prio(pd);
                self.ready.remove(&mut self.pds, pd, prio);
            }
            Some(State::Send { callee }) => queue::remove_caller(&mut self.pds, callee, pd),
            _ => {}
        }
    }

    /// `pd` no longer waits for the reply of `callee`: every PD of the
    /// call chain from `callee` on that runs on `pd`'s context goes back
    /// to its own, so no two runnable PDs share a context.
    fn return_sc(&mut self, pd: PdId, callee: PdId) {
        let lent = self.sc_of(pd);
        let mut next = Some(callee);
        for _ in 0..N {
            let Some(id) = next else { break };
            let Some(p) = self.pd(id) else { break };
            if p.donated != Some(lent) {
                break;
            }
            next = match p.state {
                State::Reply { callee } => Some(callee),
                _ => None,
            };
            if p.state == State::Throttled {
                self.sc_mut(lent).throttled = None;
                self.throttled &= !(1 << lent.0);
                self.pd_mut(id).state = State::Ready;
                self.pd_mut(id).donated = None;
                self.wake(id);
            } else {
                self.pd_mut(id).donated = None;
            }
        }
    }

    // ---- scheduling ----

    /// Decides who runs after an event and, when the scheduling context
    /// changes, charges the old one and programs the next deadline. A
    /// call to a passive server keeps the context: nothing to count.
    fn schedule<M: Machine>(&mut self, m: &mut M) {
        self.reschedule();
        let next = self.current.map(|c| self.sc_of(c));
        if next != self.charging {
            let now = m.now();
            self.switch_sc(m, now);
        }
    }

    /// Charges the running context for the time since its slice started.
    fn charge(&mut self, now: u64) {
        if let Some(owner) = self.charging.take() {
            // The counter only moves forward.
            let used = now.wrapping_sub(self.slice_start);
            let sc = self.sc_mut(owner);
            sc.remaining = sc.remaining.saturating_sub(used);
        }
        self.slice_start = now;
    }

    /// Charges the old context and starts counting the current PD's; a
    /// PD whose context has no budget left is throttled and the next
    /// runs. Then asks for a timer call when the budget runs out or the
    /// first throttled context is due a refill.
    fn switch_sc<M: Machine>(&mut self, m: &mut M, now: u64) {
        self.charge(now);
        if let Some(cur) = self.current
            && self.start_sc(m, now, self.sc_of(cur))
        {
            return;
        }
        self.throttle_and_pick(m, now);
    }

    /// The rest of [`System::switch_sc`], with the old context charged:
    /// throttles current PDs out of budget until one can run (or none),
    /// then asks for the earliest of its budget's end and the refills due.
    fn throttle_and_pick<M: Machine>(&mut self, m: &mut M, now: u64) {
        while let Some(cur) = self.current {
            let owner = self.sc_of(cur);
            let sc = self.sc_mut(owner);
            sc.refill_if_due(now);
            if sc.remaining > 0 {
                self.charging = Some(owner);
                break;
            }
            sc.throttled = Some(cur);
            self.throttled |= 1 << owner.0;
            self.pd_mut(cur).state = State::Throttled;
            self.current = self.dequeue_highest();
        }
        let mut deadline = match self.charging {
            Some(owner) => now.saturating_add(self.sc_mut(owner).remaining),
            None => u64::MAX,
        };
        let mut bits = self.throttled;
        while bits != 0 {
            let owner = PdId(bits.trailing_zeros() as u8);
            bits &= bits - 1;
            deadline = deadline.min(self.sc_mut(owner).window_end());
        }
        m.set_deadline(deadline);
    }

    /// `pd` became ready: it runs if nothing runs, else it joins the tail
    /// of its queue; [`System::reschedule`] then lets it preempt a
    /// lower-priority current PD.
    fn wake(&mut self, pd: PdId) {
        if self.current.is_none() {
            self.current = Some(pd);
        } else {
            self.append(pd);
        }
    }

    /// Runs the highest-priority ready PD: a current PD of lower priority
    /// is preempted and goes back to the head of its queue, so it resumes
    /// first among its peers; one of equal priority keeps running.
    fn reschedule(&mut self) {
        match self.current {
            Some(cur) => {
                if self.ready.highest().is_some_and(|p| p > self.prio(cur)) {
                    let prio = self.prio(cur);
                    self.ready.push_front(&mut self.pds, cur, prio);
                    self.current = self.dequeue_highest();
                }
            }
            None => self.current = self.dequeue_highest(),
        }
    }

    fn append(&mut self, pd: PdId) {
        let prio = self.prio(pd);
        self.ready.push_back(&mut self.pds, pd, prio);
    }

    fn dequeue_highest(&mut self) -> Option<PdId> {
        let prio = self.ready.highest()?;
        self.ready.pop_front(&mut self.pds, prio)
    }
}
