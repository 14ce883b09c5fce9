//! The intrusive queues PDs wait in: one ready queue per priority, and
//! each PD's endpoint queue of callers. A PD is in at most one queue at a
//! time, linked through `Pd::next`, so the queues need no memory.

use super::{Pd, PdId};

type Pds<'a> = [Option<Pd<'a>>];

fn next(pds: &Pds<'_>, pd: PdId) -> Option<PdId> {
    pds[usize::from(pd.0)].as_ref().and_then(|p| p.next)
}

fn set_next(pds: &mut Pds<'_>, pd: PdId, to: Option<PdId>) {
    if let Some(p) = pds[usize::from(pd.0)].as_mut() {
        p.next = to;
    }
}

fn priority(pds: &Pds<'_>, pd: PdId) -> u8 {
    pds[usize::from(pd.0)].as_ref().map_or(0, |p| p.priority)
}

/// One FIFO per priority and a two-level bitmap of the non-empty ones
/// (a bit per priority, and a bit per non-zero word), so the highest ready
/// priority is two leading-zero counts away.
pub(super) struct ReadyQueues {
    head: [Option<PdId>; 256],
    tail: [Option<PdId>; 256],
    bitmap: [u64; 4],
    /// Bit `w` set when `bitmap[w]` is non-zero.
    words: u64,
}

impl ReadyQueues {
    pub(super) const fn new() -> Self {
        ReadyQueues { head: [None; 256], tail: [None; 256], bitmap: [0; 4], words: 0 }
    }

    /// The highest priority with a ready PD.
    pub(super) fn highest(&self) -> Option<u8> {
        if self.words == 0 {
            return None;
        }
        let w = 63 - self.words.leading_zeros();
        let bits = self.bitmap[w as usize & 3];
        Some((w * 64 + 63 - bits.leading_zeros()) as u8)
    }

    fn mark(&mut self, prio: u8, nonempty: bool) {
        let (w, b) = (usize::from(prio / 64), prio % 64);
        if nonempty {
            self.bitmap[w] |= 1 << b;
            self.words |= 1 << w;
        } else {
            self.bitmap[w] &= !(1 << b);
            if self.bitmap[w] == 0 {
                self.words &= !(1 << w);
            }
        }
    }

    pub(super) fn push_back(&mut self, pds: &mut Pds<'_>, pd: PdId, prio: u8) {
        set_next(pds, pd, None);
        match self.tail[usize::from(prio)] {
            Some(tail) => set_next(pds, tail, Some(pd)),
            None => self.head[usize::from(prio)] = Some(pd),
        }
        self.tail[usize::from(prio)] = Some(pd);
        self.mark(prio, true);
    }

    pub(super) fn push_front(&mut self, pds: &mut Pds<'_>, pd: PdId, prio: u8) {
        set_next(pds, pd, self.head[usize::from(prio)]);
        if self.head[usize::from(prio)].is_none() {
            self.tail[usize::from(prio)] = Some(pd);
        }
        self.head[usize::from(prio)] = Some(pd);
        self.mark(prio, true);
    }

    pub(super) fn pop_front(&mut self, pds: &mut Pds<'_>, prio: u8) -> Option<PdId> {
        let pd = self.head[usize::from(prio)]?;
        let rest = next(pds, pd);
        self.head[usize::from(prio)] = rest;
        if rest.is_none() {
            self.tail[usize::from(prio)] = None;
            self.mark(prio, false);
        }
        set_next(pds, pd, None);
        Some(pd)
    }

    pub(super) fn remove(&mut self, pds: &mut Pds<'_>, pd: PdId, prio: u8) {
        let mut prev = None;
        let mut at = self.head[usize::from(prio)];
        while let Some(cur) = at {
            if cur == pd {
                let after = next(pds, cur);
                match prev {
                    Some(p) => set_next(pds, p, after),
                    None => self.head[usize::from(prio)] = after,
                }
                if self.tail[usize::from(prio)] == Some(pd) {
                    self.tail[usize::from(prio)] = prev;
                }
                if self.head[usize::from(prio)].is_none() {
                    self.mark(prio, false);
                }
                set_next(pds, pd, None);
                return;
            }
            prev = at;
            at = next(pds, cur);
        }
    }
}

/// Queues `caller` on `callee`'s endpoint: by priority, FIFO within one
/// (seL4 MCS endpoint order).
pub(super) fn enqueue_caller(pds: &mut Pds<'_>, callee: PdId, caller: PdId) {
    let prio = priority(pds, caller);
    let mut prev = None;
    let mut at = pds[usize::from(callee.0)].as_ref().and_then(|p| p.waiting);
    while let Some(cur) = at {
        if priority(pds, cur) < prio {
            break;
        }
        prev = at;
        at = next(pds, cur);
    }
    set_next(pds, caller, at);
    match prev {
        Some(p) => set_next(pds, p, Some(caller)),
        None => {
            if let Some(c) = pds[usize::from(callee.0)].as_mut() {
                c.waiting = Some(caller);
            }
        }
    }
}

/// Takes the first caller off `callee`'s endpoint.
pub(super) fn dequeue_caller(pds: &mut Pds<'_>, callee: PdId) -> Option<PdId> {
    let first = pds[usize::from(callee.0)].as_ref()?.waiting?;
    let rest = next(pds, first);
    if let Some(c) = pds[usize::from(callee.0)].as_mut() {
        c.waiting = rest;
    }
    set_next(pds, first, None);
    Some(first)
}

/// Takes `caller` off `callee`'s endpoint wherever it is.
pub(super) fn remove_caller(pds: &mut Pds<'_>, callee: PdId, caller: PdId) {
    let mut prev = None;
    let mut at = pds[usize::from(callee.0)].as_ref().and_then(|p| p.waiting);
    while let Some(cur) = at {
        let after = next(pds, cur);
        if cur == caller {
            match prev {
                Some(p) => set_next(pds, p, after),
                None => {
                    if let Some(c) = pds[usize::from(callee.0)].as_mut() {
                        c.waiting = after;
                    }
                }
            }
            set_next(pds, caller, None);
            return;
        }
        prev = at;
        at = after;
    }
}
