//! What mm needs from the kernel, and how one request's TLB and cache
//! maintenance is gathered into a few kernel calls.
//!
//! hyp-mm reports maintenance as it writes descriptors ([`MmOps::tlb`],
//! [`MmOps::zero_page`]). mm serves each request through [`Batched`],
//! which records that maintenance in a [`Batch`] instead of performing it;
//! the batch goes to the kernel's stage-2 control capability once, before
//! the reply. Deferring the invalidations of break-before-make to the end
//! of the request is sound because no vCPU or PD runs under a VMID whose
//! table mm is changing while mm serves the request (mm runs single
//! threaded on a single core, and the caller is blocked in its call); a
//! batch that fills up is sent early, which is never wrong. Freed table
//! pages go back to the page source during the request but are only taken
//! out again when the cache is refilled, after the batch has been sent.

use crate::config::ClientId;
use hyp_mm::desc::level_size;
use hyp_mm::{Ipa, IpaRange, MmOps, PAGE_SIZE, PhysAddr, Pte, TlbOp, VmId};
use tenure_abi::mm::GuestId;

/// The kernel refused a stage-2 control invocation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Refused;

/// The kernel's stage-2 control capability, as mm uses it. On the target
/// each method is one invocation on the capability; host tests record them.
pub trait Stage2Control {
    /// Makes every vCPU of `guest` translate through the stage-2 table at
    /// `root` (two concatenated level-1 pages, 40-bit IPA) under `vmid`:
    /// VTTBR_EL2 from then on. Refused if the kernel has no such guest or
    /// the VMID is in use.
    fn install(&mut self, guest: GuestId, vmid: VmId, root: PhysAddr) -> Result<(), Refused>;

    /// Stops every vCPU of `guest` from running under its table and
    /// invalidates every TLB entry of `vmid` (TLBI VMALLS12E1IS), so that mm
    /// may take the table apart.
    fn uninstall(&mut self, guest: GuestId, vmid: VmId);

    /// Makes PD `client` (whose VMID is `vmid`) translate `span`, the one
    /// gigabyte of its address space a level-1 entry covers, through the
    /// level-2 table at `table` that mm owns and never frees; done once,
    /// at start.
    fn link_window(
        &mut self,
        client: ClientId,
        vmid: VmId,
        span: IpaRange,
        table: PhysAddr,
    ) -> Result<(), Refused>;

    /// Invalidates the stage-2 and combined stage-1+2 TLB entries of `vmid`
    /// for `range` (DSB ISHST; TLBI IPAS2E1IS per page; DSB ISH;
    /// TLBI VMALLE1IS; DSB ISH; ISB).
    fn invalidate_range(&mut self, vmid: VmId, range: IpaRange);

    /// Invalidates every TLB and walk-cache entry of `vmid` (DSB ISHST;
    /// TLBI VMALLS12E1IS; DSB ISH; ISB): needed once a table page was
    /// unlinked.
    fn invalidate_vmid(&mut self, vmid: VmId);

    /// Cleans and invalidates `bytes` of physical memory from `pa` to the
    /// point of coherency (DC CIVAC per line; DSB), so that a guest that
    /// reads it uncached (its MMU off) sees what mm or the last owner
    /// wrote. Needed without FEAT_S2FWB, as on Cortex-A72.
    fn clean_to_poc(&mut self, pa: PhysAddr, bytes: u64);
}

/// Ranges kept per batch before it is sent early.
const RANGES: usize = 8;
/// VMIDs invalidated whole per batch before it is sent early.
const WHOLE: usize = 4;

/// The maintenance one request needs, merged.
#[derive(Debug, Default)]
pub struct Batch {
    ranges: [Option<(VmId, u64, u64)>; RANGES],
    whole: [Option<VmId>; WHOLE],
    cleans: [Option<(u64, u64)>; RANGES],
    /// Table pages freed during the request.
    pub freed_tables: u64,
}

impl Batch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> Self {
        Batch::default()
    }

    /// Whether nothing is waiting to be sent.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ranges.iter().all(Option::is_none)
            && self.cleans.iter().all(Option::is_none)
            && self.whole.iter().all(Option::is_none)
    }

    /// Adds the invalidation of `[start, end)` under `vmid`.
    pub fn invalidate<K: Stage2Control>(&mut self, k: &mut K, vmid: VmId, start: u64, end: u64) {
        if self.whole.contains(&Some(vmid)) {
            return;
        }
        if merge(&mut self.ranges, |&(v, s, e)| {
            (v == vmid && s <= end && start <= e).then_some((v, s.min(start), e.max(end)))
        }) {
            return;
        }
        if !insert(&mut self.ranges, (vmid, start, end)) {
            self.send(k);
            insert(&mut self.ranges, (vmid, start, end));
        }
    }

    /// Adds the invalidation of everything under `vmid`.
    pub fn invalidate_all<K: Stage2Control>(&mut self, k: &mut K, vmid: VmId) {
        if self.whole.contains(&Some(vmid)) {
            return;
        }
        for r in &mut self.ranges {
            if r.is_some_and(|(v, _, _)| v == vmid) {
                *r = None;
            }
        }
        if !insert(&mut self.whole, vmid) {
            self.send(k);
            insert(&mut self.whole, vmid);
        }
    }

    /// Adds the clean of `bytes` from `pa` to the point of coherency.
    pub fn clean<K: Stage2Control>(&mut self, k: &mut K, pa: PhysAddr, bytes: u64) {
        let (start, end) = (pa.raw(), pa.raw() + bytes);
        if merge(&mut self.cleans, |&(s, e)| {
            (s <= end && start <= e).then_some((s.min(start), e.max(end)))
        }) {
            return;
        }
        if !insert(&mut self.cleans, (start, end)) {
            self.send(k);
            insert(&mut self.cleans, (start, end));
        }
    }

    /// Sends everything to the kernel: invalidations first (nothing may
    /// still translate to a page that changed hands), then cleans.
    pub fn send<K: Stage2Control>(&mut self, k: &mut K) {
        for vmid in self.whole.iter_mut().filter_map(Option::take) {
            k.invalidate_vmid(vmid);
        }
        for (vmid, start, end) in self.ranges.iter_mut().filter_map(Option::take) {
            if let Some(range) = IpaRange::new(Ipa::new(start), end - start) {
                k.invalidate_range(vmid, range);
            }
        }
        for (start, end) in self.cleans.iter_mut().filter_map(Option::take) {
            k.clean_to_poc(PhysAddr::new(start), end - start);
        }
    }
}

/// Replaces the first entry `f` merges with by the merged value.
fn merge<T: Copy>(slots: &mut [Option<T>], f: impl Fn(&T) -> Option<T>) -> bool {
    for slot in slots.iter_mut() {
        if let Some(merged) = slot.as_ref().and_then(&f) {
            *slot = Some(merged);
            return true;
        }
    }
    false
}

/// Puts `value` in the first free slot; `false` if there is none.
fn insert<T>(slots: &mut [Option<T>], value: T) -> bool {
    match slots.iter_mut().find(|s| s.is_none()) {
        Some(slot) => {
            *slot = Some(value);
            true
        }
        None => false,
    }
}

/// The [`MmOps`] hyp-mm sees while mm serves a request: memory, refcounts
/// and the page source are the inner `M`'s; TLB maintenance and the clean
/// that follows zeroing go into the batch.
pub struct Batched<'a, M, K> {
    /// Table and data memory.
    pub mem: &'a mut M,
    /// The kernel, for a batch that fills up.
    pub control: &'a mut K,
    /// The maintenance gathered so far.
    pub batch: &'a mut Batch,
}

impl<M: MmOps, K: Stage2Control> MmOps for Batched<'_, M, K> {
    fn read(&self, table: PhysAddr, index: usize) -> Pte {
        self.mem.read(table, index)
    }

    fn write(&mut self, table: PhysAddr, index: usize, pte: Pte) {
        self.mem.write(table, index, pte);
    }

    fn page_count(&self, page: PhysAddr) -> u32 {
        self.mem.page_count(page)
    }

    fn set_page_count(&mut self, page: PhysAddr, count: u32) {
        self.mem.set_page_count(page, count);
    }

    fn alloc_page(&mut self) -> Option<PhysAddr> {
        self.mem.alloc_page()
    }

    fn free_page(&mut self, page: PhysAddr) {
        self.batch.freed_tables += 1;
        self.mem.free_page(page);
    }

    fn tlb(&mut self, op: TlbOp) {
        match op {
            TlbOp::InvalidateIpa { vmid, ipa, level }
            | TlbOp::InvalidateIpaLocal { vmid, ipa, level } => {
                let end = ipa.raw() + level_size(level);
                self.batch.invalidate(self.control, vmid, ipa.raw(), end);
            }
            TlbOp::InvalidateVmid { vmid } => self.batch.invalidate_all(self.control, vmid),
            // The kernel's invalidation includes the stage-1 step and the
            // barriers around it.
            TlbOp::InvalidateStage1 { .. } | TlbOp::DsbIshst | TlbOp::DsbIsh => {}
            TlbOp::DsbNsh | TlbOp::Isb => {}
        }
    }

    fn zero_page(&mut self, page: PhysAddr) {
        self.mem.zero_page(page);
        self.batch.clean(self.control, page, PAGE_SIZE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    #[derive(Default)]
    struct Log(Vec<(char, u16, u64, u64)>);

    impl Stage2Control for Log {
        fn install(&mut self, _: GuestId, _: VmId, _: PhysAddr) -> Result<(), Refused> {
            Ok(())
        }
        fn uninstall(&mut self, _: GuestId, _: VmId) {}
        fn link_window(
            &mut self,
            _: ClientId,
            _: VmId,
            _: IpaRange,
            _: PhysAddr,
        ) -> Result<(), Refused> {
            Ok(())
        }
        fn invalidate_range(&mut self, vmid: VmId, range: IpaRange) {
            self.0.push(('r', vmid.0, range.start().raw(), range.end().raw()));
        }
        fn invalidate_vmid(&mut self, vmid: VmId) {
            self.0.push(('v', vmid.0, 0, 0));
        }
        fn clean_to_poc(&mut self, pa: PhysAddr, bytes: u64) {
            self.0.push(('c', 0, pa.raw(), bytes));
        }
    }

    #[test]
    fn adjacent_ranges_merge_and_a_whole_vmid_absorbs_its_ranges() {
        let (mut b, mut k) = (Batch::new(), Log::default());
        b.invalidate(&mut k, VmId(1), 0x1000, 0x2000);
        b.invalidate(&mut k, VmId(1), 0x2000, 0x3000);
        b.invalidate(&mut k, VmId(2), 0x2000, 0x3000);
        b.invalidate_all(&mut k, VmId(2));
        b.invalidate(&mut k, VmId(2), 0x9000, 0xa000);
        b.clean(&mut k, PhysAddr::new(0x5000), 0x1000);
        b.clean(&mut k, PhysAddr::new(0x4000), 0x1000);
        assert!(k.0.is_empty(), "nothing is sent before the end");
        b.send(&mut k);
        assert_eq!(k.0, [('v', 2, 0, 0), ('r', 1, 0x1000, 0x3000), ('c', 0, 0x4000, 0x2000)]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_full_batch_is_sent_early_and_nothing_is_lost() {
        let (mut b, mut k) = (Batch::new(), Log::default());
        for i in 0..20u64 {
            b.invalidate(&mut k, VmId(1), i * 0x10000, i * 0x10000 + 0x1000);
            b.clean(&mut k, PhysAddr::new(i * 0x10000), 0x1000);
        }
        b.send(&mut k);
        assert_eq!(k.0.iter().filter(|e| e.0 == 'r').count(), 20);
        assert_eq!(k.0.iter().filter(|e| e.0 == 'c').count(), 20);
    }
}
