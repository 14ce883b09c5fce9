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
//!   [`Error`] to the caller and changes nothing.

mod queue;
#[cfg(test)]
mod tests;

use queue::ReadyQueues;
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
}

impl FaultKind {
    /// The kind a fault message's label names (the kernel wrote it).
    #[must_use]
    pub fn from_label(label: u64) -> FaultKind {
        match label {
            2 => FaultKind::UnknownSyscall,
            6 => FaultKind::VmFault,
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
    /// Records what `pd`'s fault was (its PC, the faulting address, the
    /// syndrome), at the moment it faults.
    fn record_fault(&mut self, pd: PdId);
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
        }
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
}

impl<'a, const N: usize> System<'a, N> {
    /// A system of `pds`, all ready; the highest priority runs first, and
    /// PDs of equal priority in index order.
    pub fn new(pds: impl IntoIterator<Item = Pd<'a>>) -> Self {
        let mut system =
            System { pds: [const { None }; N], ready: ReadyQueues::new(), current: None };
        for (i, pd) in pds.into_iter().take(N).enumerate() {
            system.pds[i] = Some(pd);
            let id = PdId(i as u8);
            system.append(id);
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
    pub fn pd(&self, id: PdId) -> Option<&Pd<'a>> {
        self.pds.get(usize::from(id.0))?.as_ref()
    }

    fn pd_mut(&mut self, id: PdId) -> &mut Pd<'a> {
        self.pds[usize::from(id.0)].as_mut().expect("ids in the system name PDs")
    }

    fn prio(&self, id: PdId) -> u8 {
        self.pd(id).map_or(0, |p| p.priority)
    }

    /// Handles a syscall of the current PD: `call` is `x7`, then `x0`,
    /// `x1` and `x6`. Afterwards [`System::current`] says who runs.
    pub fn syscall<M: Machine>(&mut self, m: &mut M, call: u64, x0: u64, x1: u64, x6: u64) {
        let Some(cur) = self.current else { return };
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
        self.reschedule();
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
        let pd = self.pd_mut(callee);
        pd.caller = Some(caller);
        pd.state = State::Ready;
        self.pd_mut(caller).state = State::Reply { callee };
    }

    fn sys_reply_recv<M: Machine>(&mut self, m: &mut M, cur: PdId, info: u64) -> Result<(), Error> {
        let info = MessageInfo::from_raw(info).ok_or(Error::InvalidArgument)?;
        if let Some(caller) = self.pd_mut(cur).caller.take() {
            m.transfer(cur, caller, info);
            m.set_return(caller, 0, info.raw());
            self.pd_mut(caller).state = State::Ready;
            self.append(caller);
        }
        self.recv(m, cur);
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
    fn recv<M: Machine>(&mut self, m: &mut M, cur: PdId) {
        let pd = self.pd_mut(cur);
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
            _ => Err(Error::IllegalOperation),
        }
    }

    /// An interrupt fired: signal the PD it is bound to. The caller (the
    /// interrupt path) has masked it; it stays masked until acked.
    pub fn irq<M: Machine>(&mut self, m: &mut M, pd: PdId, badge: u64) {
        self.signal(m, pd, badge);
        self.reschedule();
    }

    /// The current PD faulted: its parent hears of it through its endpoint
    /// (badge `BADGE_FAULT | child id`), and the PD waits for the parent's
    /// reply; without a parent it is reported and stopped.
    pub fn fault<M: Machine>(&mut self, m: &mut M, pd: PdId, kind: FaultKind) {
        match self.pd(pd).and_then(|p| p.parent) {
            Some((parent, id)) => {
                m.record_fault(pd);
                let info = MessageInfo::new(kind as u64, 0).unwrap_or_default();
                self.pd_mut(pd).call = (BADGE_FAULT | u64::from(id), info);
                self.send(m, pd, parent);
            }
            None => {
                m.report_fault(pd, kind);
                self.stop(pd);
            }
        }
        self.reschedule();
    }

    /// A timer tick: the current PD goes behind the others of its
    /// priority (round robin).
    pub fn tick(&mut self) {
        if let Some(cur) = self.current
            && self.ready.highest().is_some_and(|p| p >= self.prio(cur))
        {
            self.append(cur);
            self.current = None;
        }
        self.reschedule();
    }

    fn restart<M: Machine>(&mut self, m: &mut M, child: PdId, pc: u64) {
        self.detach(child);
        self.pd_mut(child).state = State::Ready;
        m.set_pc(child, pc);
        self.wake(child);
    }

    fn stop(&mut self, pd: PdId) {
        self.detach(pd);
        self.pd_mut(pd).state = State::Stopped;
        if self.current == Some(pd) {
            self.current = None;
        }
    }

    /// Takes `pd` out of whatever queue holds it, and cancels the reply it
    /// waits for (a restarted or stopped PD must not be woken by a reply
    /// meant for what it was doing).
    fn detach(&mut self, pd: PdId) {
        match self.pd(pd).map(|p| p.state) {
            Some(State::Reply { callee }) => {
                let owes = self.pd_mut(callee);
                if owes.caller == Some(pd) {
                    owes.caller = None;
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

    // ---- scheduling ----

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
