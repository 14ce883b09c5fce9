//! Virtual interrupts through the GICv2 list registers: the virtual
//! timer's PPI, which reaches the VMM as a VPPI exit, goes into a free
//! list register with a maintenance request; when the guest ends it (the
//! maintenance exit), the VMM frees the register, unmasks the timer
//! (`ACK_VPPI`) and injects what waited for a register.
//!
//! Acking the VPPI only once the guest has ended the interrupt is what
//! keeps a level-sensitive timer from firing again before the guest has
//! handled it (libvmm acks from the same place).
//!
//! Not yet: the distributor's state (which interrupts the guest enabled,
//! their priorities, SGIs, passthrough SPIs); every interrupt goes in at
//! [`PRIORITY`].

use crate::vcpu::GuestVcpu;
use tenure_abi::Error;

/// List registers the VMM uses: GIC-400 (Cortex-A72 and QEMU's GICv2)
/// has four (GICH_VTR.ListRegs + 1).
pub const LIST_REGISTERS: usize = 4;
/// Interrupts that may wait for a free list register.
pub const QUEUE: usize = 8;
/// The GICv2 list register priority (5 bits) virtual interrupts get:
/// Linux's default, 0xa0, in the list register's scale (bits 7:3).
pub const PRIORITY: u8 = 0xa0 >> 3;
/// INTIDs 16..=31 are PPIs (GICv2, Arm IHI 0048B 2.2.1).
const PPIS: core::ops::RangeInclusive<u64> = 16..=31;

/// What the VMM did with an interrupt exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IrqDecision {
    /// The interrupt went into this list register.
    Injected {
        /// The INTID.
        intid: u16,
        /// The list register.
        list_register: u8,
    },
    /// Every list register is busy; it waits.
    Queued(u16),
    /// Already in a list register or waiting: nothing to add.
    Coalesced(u16),
    /// The queue is full: dropped (the timer fires again once acked).
    Dropped(u16),
    /// The guest ended the interrupt in this list register; its VPPI was
    /// acked, and `next` went into the register.
    Ended {
        /// The list register.
        list_register: u8,
        /// The INTID it held.
        intid: u16,
        /// A waiting interrupt injected in its place.
        next: Option<u16>,
    },
    /// A maintenance exit for a list register the VMM did not fill (or
    /// none): nothing to do.
    Spurious,
    /// A VPPI exit naming an INTID that is no PPI: ignored.
    NotAPpi(u64),
}

/// The list registers as the VMM filled them.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListRegisters {
    lrs: [Option<u16>; LIST_REGISTERS],
    queue: [u16; QUEUE],
    queued: usize,
}

impl ListRegisters {
    /// Empty list registers.
    #[must_use]
    pub const fn new() -> Self {
        ListRegisters { lrs: [None; LIST_REGISTERS], queue: [0; QUEUE], queued: 0 }
    }

    /// A VPPI exit for `intid`: inject it, or queue it.
    pub fn vppi(&mut self, intid: u64, vcpu: &mut impl GuestVcpu) -> Result<IrqDecision, Error> {
        if !PPIS.contains(&intid) {
            return Ok(IrqDecision::NotAPpi(intid));
        }
        let intid = intid as u16;
        if self.lrs.contains(&Some(intid)) || self.queue[..self.queued].contains(&intid) {
            return Ok(IrqDecision::Coalesced(intid));
        }
        let Some(free) = self.lrs.iter().position(Option::is_none) else {
            if self.queued == QUEUE {
                return Ok(IrqDecision::Dropped(intid));
            }
            self.queue[self.queued] = intid;
            self.queued += 1;
            return Ok(IrqDecision::Queued(intid));
        };
        vcpu.inject_irq(intid, PRIORITY, free as u8)?;
        self.lrs[free] = Some(intid);
        Ok(IrqDecision::Injected { intid, list_register: free as u8 })
    }

    /// A maintenance exit for list register `lr` (`u64::MAX`: none).
    pub fn maintenance(
        &mut self,
        lr: u64,
        vcpu: &mut impl GuestVcpu,
    ) -> Result<IrqDecision, Error> {
        let Some(slot) = usize::try_from(lr).ok().filter(|&i| i < LIST_REGISTERS) else {
            return Ok(IrqDecision::Spurious);
        };
        let Some(intid) = self.lrs[slot].take() else {
            return Ok(IrqDecision::Spurious);
        };
        vcpu.ack_vppi(intid)?;
        let next = if self.queued > 0 {
            let next = self.queue[0];
            self.queue.copy_within(1..self.queued, 0);
            self.queued -= 1;
            vcpu.inject_irq(next, PRIORITY, slot as u8)?;
            self.lrs[slot] = Some(next);
            Some(next)
        } else {
            None
        };
        Ok(IrqDecision::Ended { list_register: slot as u8, intid, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::fake::FakeVcpu;

    #[test]
    fn the_timer_is_injected_and_acked_when_the_guest_ends_it() {
        let (mut lrs, mut v) = (ListRegisters::new(), FakeVcpu::default());
        assert_eq!(lrs.vppi(27, &mut v), Ok(IrqDecision::Injected { intid: 27, list_register: 0 }));
        assert_eq!(v.injected, [(27, PRIORITY, 0)]);
        assert!(v.acked.is_empty(), "not acked before the guest ends it");
        assert_eq!(lrs.vppi(27, &mut v), Ok(IrqDecision::Coalesced(27)));
        assert_eq!(
            lrs.maintenance(0, &mut v),
            Ok(IrqDecision::Ended { list_register: 0, intid: 27, next: None })
        );
        assert_eq!(v.acked, [27]);
        assert_eq!(lrs.maintenance(0, &mut v), Ok(IrqDecision::Spurious));
    }

    #[test]
    fn interrupts_wait_for_a_free_list_register() {
        let (mut lrs, mut v) = (ListRegisters::new(), FakeVcpu::default());
        for intid in 16..20 {
            assert!(matches!(lrs.vppi(intid, &mut v), Ok(IrqDecision::Injected { .. })));
        }
        assert_eq!(lrs.vppi(20, &mut v), Ok(IrqDecision::Queued(20)));
        assert_eq!(
            lrs.maintenance(2, &mut v),
            Ok(IrqDecision::Ended { list_register: 2, intid: 18, next: Some(20) })
        );
        assert_eq!(v.injected.last(), Some(&(20, PRIORITY, 2)));
        for intid in 21..29 {
            assert_eq!(lrs.vppi(intid, &mut v), Ok(IrqDecision::Queued(intid as u16)));
        }
        assert_eq!(lrs.vppi(29, &mut v), Ok(IrqDecision::Dropped(29)));
    }

    #[test]
    fn hostile_exits_change_nothing() {
        let (mut lrs, mut v) = (ListRegisters::new(), FakeVcpu::default());
        for intid in [0, 15, 32, 1023, u64::MAX] {
            assert_eq!(lrs.vppi(intid, &mut v), Ok(IrqDecision::NotAPpi(intid)));
        }
        for lr in [0, 3, 4, u64::MAX] {
            assert_eq!(lrs.maintenance(lr, &mut v), Ok(IrqDecision::Spurious));
        }
        assert!(v.injected.is_empty() && v.acked.is_empty());
    }
}
