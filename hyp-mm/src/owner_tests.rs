//! Tests of the ownership state machine: one page through every transition,
//! and the refusals of each transition.

extern crate std;

use crate::addr::{Ipa, IpaRange, PAGE_SIZE, PhysAddr};
use crate::desc::{OwnerId, Prot};
use crate::error::Error;
use crate::geometry::Geometry;
use crate::host::Arena;
use crate::mem::{MemCache, VmId};
use crate::owner::{Ownership, PageState, Transfer};
use crate::table::{Stage2, TableKind};

/// Physical memory the ledger manages: 64 MiB at 1 GiB.
pub(crate) const POOL: u64 = 0x4000_0000;
pub(crate) const POOL_SIZE: u64 = 64 << 20;
pub(crate) const GUEST: OwnerId = OwnerId(1);
pub(crate) const VMM: OwnerId = OwnerId(2);
pub(crate) const OTHER: OwnerId = OwnerId(3);

/// A ledger over the pool and three components, with table memory in an
/// arena outside the pool and a topped-up cache.
pub(crate) struct World {
    pub mem: Arena,
    pub cache: MemCache,
    pub own: Ownership<8>,
}

impl World {
    pub fn new() -> World {
        World::sized(4096, 64)
    }

    /// A world whose arena holds `arena_pages` table pages and whose cache
    /// starts with `cache_pages` of them: small arenas make snapshots cheap.
    pub fn sized(arena_pages: usize, cache_pages: usize) -> World {
        let mut mem = Arena::new(PhysAddr::new(0x1_0000_0000), arena_pages);
        let g = Geometry::IPA_40;
        let root = mem.alloc_contiguous(g.root_pages()).unwrap();
        let ledger = Stage2::new(g, root, VmId(0), TableKind::Ledger).unwrap();
        let managed = IpaRange::new(Ipa::new(POOL), POOL_SIZE).unwrap();
        let mut own = Ownership::new(ledger, managed).unwrap();
        for (i, id) in [GUEST, VMM, OTHER].into_iter().enumerate() {
            let root = mem.alloc_contiguous(g.root_pages()).unwrap();
            let table = Stage2::new(g, root, VmId(i as u16 + 1), TableKind::Component).unwrap();
            own.add_component(id, table).unwrap();
        }
        let mut cache = MemCache::new();
        cache.topup(&mut mem, cache_pages).unwrap();
        World { mem, cache, own }
    }

    pub fn donate(&mut self, pa: u64, to: OwnerId, ipa: u64, pages: u64) -> Result<(), Error> {
        let t =
            Transfer { from: OwnerId::DEFAULT, from_addr: pa, to, to_ipa: Ipa::new(ipa), pages };
        self.own.donate(&mut self.mem, &mut self.cache, t, Prot::RWX)
    }

    pub fn donate_from(
        &mut self,
        from: OwnerId,
        ipa: u64,
        to: OwnerId,
        to_ipa: u64,
        pages: u64,
    ) -> Result<(), Error> {
        let t = World::transfer(from, ipa, to, to_ipa, pages);
        self.own.donate(&mut self.mem, &mut self.cache, t, Prot::RW)
    }

    pub fn transfer(
        from: OwnerId,
        from_ipa: u64,
        to: OwnerId,
        to_ipa: u64,
        pages: u64,
    ) -> Transfer {
        Transfer { from, from_addr: from_ipa, to, to_ipa: Ipa::new(to_ipa), pages }
    }

    pub fn share(&mut self, t: Transfer) -> Result<(), Error> {
        self.own.share(&mut self.mem, &mut self.cache, t, Prot::RW)
    }

    pub fn unshare(&mut self, t: Transfer) -> Result<(), Error> {
        self.own.unshare(&mut self.mem, &mut self.cache, t)
    }

    pub fn lend(&mut self, t: Transfer) -> Result<(), Error> {
        self.own.lend(&mut self.mem, &mut self.cache, t, Prot::RW)
    }

    pub fn relinquish(&mut self, who: OwnerId, ipa: u64, pages: u64) -> Result<(), Error> {
        self.own.relinquish(&mut self.mem, &mut self.cache, who, Ipa::new(ipa), pages)
    }

    pub fn reclaim(&mut self, who: OwnerId, ipa: u64, pages: u64) -> Result<(), Error> {
        let range = IpaRange::pages(Ipa::new(ipa), pages).unwrap();
        self.own.reclaim(&mut self.mem, &mut self.cache, who, range)
    }

    pub fn state(&self, who: OwnerId, addr: u64) -> PageState {
        self.own.state(&self.mem, who, addr).unwrap()
    }

    pub fn check(&self) {
        self.own.check_invariants(&self.mem).unwrap();
    }

    /// Table memory and refcounts, for "changed nothing" assertions.
    pub fn snapshot(&self) -> (std::vec::Vec<u64>, std::vec::Vec<u32>) {
        self.mem.snapshot()
    }
}

const PA: u64 = POOL + 0x5000;
const G_IPA: u64 = 0x8000_0000;
const V_IPA: u64 = 0x1000_0000;
const O_IPA: u64 = 0x2000_0000;

/// Asserts the state of the page in every component and the default owner.
fn assert_states(
    w: &World,
    default: PageState,
    guest: PageState,
    vmm: PageState,
    other: PageState,
) {
    assert_eq!(w.state(OwnerId::DEFAULT, PA), default, "default owner");
    assert_eq!(w.state(GUEST, G_IPA), guest, "guest");
    assert_eq!(w.state(VMM, V_IPA), vmm, "vmm");
    assert_eq!(w.state(OTHER, O_IPA), other, "other");
    w.check();
}

#[test]
fn one_page_through_every_transition() {
    use PageState::{NoPage, Owned, SharedBorrowed, SharedOwned};
    let mut w = World::new();
    assert_states(&w, Owned, NoPage, NoPage, NoPage);

    assert_eq!(w.donate(PA, GUEST, G_IPA, 1), Ok(()));
    assert_states(&w, NoPage, Owned, NoPage, NoPage);
    assert_eq!(w.donate(PA, OTHER, O_IPA, 1), Err(Error::Permission), "second donate");
    assert_states(&w, NoPage, Owned, NoPage, NoPage);

    let g_to_v = World::transfer(GUEST, G_IPA, VMM, V_IPA, 1);
    assert_eq!(w.share(g_to_v), Ok(()));
    assert_states(&w, NoPage, SharedOwned, SharedBorrowed, NoPage);
    assert_eq!(w.share(g_to_v), Err(Error::Permission), "share twice to the same place");
    let g_to_o = World::transfer(GUEST, G_IPA, OTHER, O_IPA, 1);
    assert_eq!(w.share(g_to_o), Ok(()), "a second borrower");
    assert_states(&w, NoPage, SharedOwned, SharedBorrowed, SharedBorrowed);
    assert_eq!(w.unshare(g_to_v), Ok(()));
    assert_states(&w, NoPage, SharedOwned, NoPage, SharedBorrowed);
    assert_eq!(w.relinquish(OTHER, O_IPA, 1), Ok(()), "the last borrower lets go");
    assert_states(&w, NoPage, Owned, NoPage, NoPage);
    assert_eq!(w.unshare(g_to_v), Err(Error::Permission), "unshare what is not shared");
    assert_states(&w, NoPage, Owned, NoPage, NoPage);

    assert_eq!(w.lend(g_to_v), Ok(()));
    assert_states(&w, NoPage, NoPage, SharedBorrowed, NoPage);
    assert_eq!(w.share(g_to_o), Err(Error::Permission), "the lender cannot share a lent page");
    assert_eq!(w.relinquish(VMM, V_IPA, 1), Ok(()));
    assert_states(&w, NoPage, Owned, NoPage, NoPage);

    let g_to_o_donate = World::transfer(GUEST, G_IPA, OTHER, O_IPA, 1);
    assert_eq!(w.own.donate(&mut w.mem, &mut w.cache, g_to_o_donate, Prot::RW), Ok(()));
    assert_states(&w, NoPage, NoPage, NoPage, Owned);

    assert_eq!(
        w.reclaim(OTHER, O_IPA, 1),
        Err(Error::InvalidArgument),
        "reclaim of a live component"
    );
    assert_states(&w, NoPage, NoPage, NoPage, Owned);
    assert_eq!(w.relinquish(OTHER, O_IPA, 1), Ok(()), "balloon: back to the default owner");
    assert_states(&w, Owned, NoPage, NoPage, NoPage);
    assert_eq!(w.mem.zeroed.last(), Some(&PhysAddr::new(PA)));

    assert_eq!(w.donate(PA, GUEST, G_IPA, 1), Ok(()));
    w.own.start_teardown(GUEST).unwrap();
    assert_eq!(
        w.donate(POOL, GUEST, G_IPA + PAGE_SIZE, 1),
        Err(Error::Permission),
        "donate to a dying guest"
    );
    assert_eq!(w.reclaim(GUEST, 0, 1 << 28), Ok(()));
    assert_states(&w, Owned, NoPage, NoPage, NoPage);
    assert_eq!(w.mem.zeroed.last(), Some(&PhysAddr::new(PA)));
}

/// Runs `op`, expects `err`, and checks that table memory, refcounts and
/// the cache are exactly as before.
fn refused(w: &mut World, err: Error, op: impl FnOnce(&mut World) -> Result<(), Error>) {
    let before = (w.snapshot(), w.cache.len(), w.mem.zeroed.len());
    assert_eq!(op(w), Err(err));
    assert!(
        before == (w.snapshot(), w.cache.len(), w.mem.zeroed.len()),
        "a refused request changed state"
    );
    w.check();
}

#[test]
fn hostile_requests_are_refused_and_change_nothing() {
    let mut w = World::new();
    w.donate(POOL, GUEST, G_IPA, 4).unwrap();
    let t = |from_ipa, to_ipa, pages| World::transfer(GUEST, from_ipa, VMM, to_ipa, pages);
    // Share a page not owned (nothing there), and a range running past it.
    refused(&mut w, Error::NotFound, |w| w.share(t(G_IPA + 0x10_0000, V_IPA, 1)));
    refused(&mut w, Error::NotFound, |w| w.share(t(G_IPA, V_IPA, 5)));
    // Share twice.
    w.share(t(G_IPA, V_IPA, 1)).unwrap();
    refused(&mut w, Error::Permission, |w| w.share(t(G_IPA, V_IPA, 1)));
    // Unshare what is not shared.
    refused(&mut w, Error::Permission, |w| w.unshare(t(G_IPA + PAGE_SIZE, V_IPA + PAGE_SIZE, 1)));
    // Misaligned, overflowing, past the IPA space, zero pages.
    refused(&mut w, Error::InvalidArgument, |w| w.share(t(G_IPA + 1, V_IPA, 1)));
    refused(&mut w, Error::InvalidArgument, |w| w.share(t(G_IPA, V_IPA, u64::MAX / 2)));
    refused(&mut w, Error::InvalidArgument, |w| w.share(t(1 << 40, V_IPA, 1)));
    refused(&mut w, Error::InvalidArgument, |w| w.share(t(G_IPA, V_IPA, 0)));
    // Donate outside managed memory, and a page already given away.
    refused(&mut w, Error::Permission, |w| w.donate(0x900_0000, OTHER, O_IPA, 1));
    refused(&mut w, Error::InvalidArgument, |w| {
        w.donate(POOL_SIZE + POOL - PAGE_SIZE, OTHER, O_IPA, 2)
    });
    refused(&mut w, Error::Permission, |w| w.donate(POOL + PAGE_SIZE, OTHER, O_IPA, 1));
    // Transitions to oneself, to the default owner, to an unknown id.
    refused(&mut w, Error::InvalidArgument, |w| {
        w.share(World::transfer(GUEST, G_IPA, GUEST, V_IPA, 1))
    });
    refused(&mut w, Error::InvalidArgument, |w| {
        w.share(World::transfer(GUEST, G_IPA, OwnerId::DEFAULT, 0, 1))
    });
    refused(&mut w, Error::NotFound, |w| w.share(World::transfer(GUEST, G_IPA, OwnerId(5), 0, 1)));
    // A multi-page request with one bad page changes no page.
    w.share(t(G_IPA + 2 * PAGE_SIZE, V_IPA + 2 * PAGE_SIZE, 1)).unwrap();
    refused(&mut w, Error::Permission, |w| w.lend(t(G_IPA + PAGE_SIZE, V_IPA + 0x10_0000, 3)));
    refused(&mut w, Error::NotFound, |w| {
        w.donate_from(GUEST, G_IPA + 3 * PAGE_SIZE, OTHER, O_IPA, 2)
    });
}

#[test]
fn device_memory_cannot_change_hands() {
    let mut w = World::new();
    let dev = IpaRange::new(Ipa::new(0x900_0000), PAGE_SIZE).unwrap();
    // MMIO passthrough: device pages map only outside managed memory.
    let pool = IpaRange::new(Ipa::new(0x10_0000), PAGE_SIZE).unwrap();
    refused(&mut w, Error::Permission, |w| {
        w.own.map_device(&mut w.mem, &mut w.cache, GUEST, pool, PhysAddr::new(POOL))
    });
    w.own.map_device(&mut w.mem, &mut w.cache, GUEST, dev, PhysAddr::new(0x900_0000)).unwrap();
    w.check();
    assert_eq!(w.own.view(&w.mem, GUEST, Ipa::new(0x900_0000)).unwrap().state(), PageState::Owned);
    refused(&mut w, Error::Permission, |w| {
        w.share(World::transfer(GUEST, 0x900_0000, VMM, V_IPA, 1))
    });
    refused(&mut w, Error::Permission, |w| {
        w.lend(World::transfer(GUEST, 0x900_0000, VMM, V_IPA, 1))
    });
}

#[test]
fn unshare_of_a_pinned_page_is_busy_until_unpinned() {
    let mut w = World::new();
    w.donate(PA, GUEST, G_IPA, 1).unwrap();
    let t = World::transfer(GUEST, G_IPA, VMM, V_IPA, 1);
    w.share(t).unwrap();
    w.own.pin(&mut w.mem, VMM, Ipa::new(V_IPA), 1).unwrap();
    refused(&mut w, Error::Busy, |w| w.unshare(t));
    refused(&mut w, Error::Busy, |w| w.relinquish(VMM, V_IPA, 1));
    refused(&mut w, Error::Permission, |w| w.own.pin(&mut w.mem, GUEST, Ipa::new(G_IPA), 1));
    w.own.unpin(&mut w.mem, VMM, Ipa::new(V_IPA), 1).unwrap();
    refused(&mut w, Error::Busy, |w| w.own.unpin(&mut w.mem, VMM, Ipa::new(V_IPA), 1));
    assert_eq!(w.unshare(t), Ok(()));
    w.check();
}

#[test]
fn pins_saturate_with_busy() {
    let mut w = World::new();
    w.donate(PA, GUEST, G_IPA, 1).unwrap();
    w.share(World::transfer(GUEST, G_IPA, VMM, V_IPA, 1)).unwrap();
    for _ in 0..crate::owner::MAX_PINS {
        w.own.pin(&mut w.mem, VMM, Ipa::new(V_IPA), 1).unwrap();
    }
    refused(&mut w, Error::Busy, |w| w.own.pin(&mut w.mem, VMM, Ipa::new(V_IPA), 1));
}

#[test]
fn owner_is_owned_again_only_after_every_borrower_unshares() {
    let mut w = World::new();
    w.donate(PA, GUEST, G_IPA, 1).unwrap();
    let to_vmm = World::transfer(GUEST, G_IPA, VMM, V_IPA, 1);
    let to_other = World::transfer(GUEST, G_IPA, OTHER, O_IPA, 1);
    w.share(to_vmm).unwrap();
    w.share(to_other).unwrap();
    assert_eq!(w.own.record(&w.mem, PhysAddr::new(PA)).unwrap().unwrap().borrowers, 2);
    w.unshare(to_other).unwrap();
    assert_eq!(w.state(GUEST, G_IPA), PageState::SharedOwned);
    w.unshare(to_vmm).unwrap();
    assert_eq!(w.state(GUEST, G_IPA), PageState::Owned);
    assert_eq!(w.own.record(&w.mem, PhysAddr::new(PA)).unwrap().unwrap().borrowers, 0);
    w.check();
}

#[test]
fn guest_share_in_place_changes_only_the_software_bits_of_its_leaf() {
    let mut w = World::new();
    w.donate(PA, GUEST, G_IPA, 1).unwrap();
    let leaf = |w: &World| w.own.component(GUEST).unwrap().page(&w.mem, Ipa::new(G_IPA)).unwrap();
    let before = leaf(&w);
    let t = World::transfer(GUEST, G_IPA, VMM, V_IPA, 1);
    w.share(t).unwrap();
    let shared = leaf(&w);
    assert_eq!(shared.addr(), before.addr(), "same PA");
    assert_eq!(shared.0 & !(0xf << 55), before.0 & !(0xf << 55), "only bits 58:55 differ");
    assert_ne!(shared, before);
    let vmm = w.own.component(VMM).unwrap().page(&w.mem, Ipa::new(V_IPA)).unwrap();
    assert_eq!(vmm.addr(), PhysAddr::new(PA), "the borrower sees the same page");
    w.unshare(t).unwrap();
    assert_eq!(leaf(&w), before, "unshare restores the exact leaf");
    assert!(w.own.component(VMM).unwrap().page(&w.mem, Ipa::new(V_IPA)).unwrap().is_zero());
}

#[test]
fn lent_pages_cannot_be_reclaimed_until_the_borrower_relinquishes() {
    let mut w = World::new();
    w.donate(PA, GUEST, G_IPA, 1).unwrap();
    w.lend(World::transfer(GUEST, G_IPA, VMM, V_IPA, 1)).unwrap();
    w.own.start_teardown(GUEST).unwrap();
    refused(&mut w, Error::Busy, |w| w.reclaim(GUEST, G_IPA, 1));
    w.relinquish(VMM, V_IPA, 1).unwrap();
    assert_eq!(w.state(GUEST, G_IPA), PageState::Owned, "the lender has its page back");
    assert_eq!(w.reclaim(GUEST, G_IPA, 1), Ok(()));
    assert_eq!(w.state(OwnerId::DEFAULT, PA), PageState::Owned);
    w.check();
}

#[test]
fn reclaim_of_a_dying_borrower_returns_borrowed_pages_to_their_owner() {
    let mut w = World::new();
    w.donate(PA, GUEST, G_IPA, 2).unwrap();
    w.share(World::transfer(GUEST, G_IPA, VMM, V_IPA, 1)).unwrap();
    w.lend(World::transfer(GUEST, G_IPA + PAGE_SIZE, VMM, V_IPA + PAGE_SIZE, 1)).unwrap();
    w.own.start_teardown(VMM).unwrap();
    let zeroed = w.mem.zeroed.len();
    assert_eq!(w.reclaim(VMM, 0, 1 << 28), Ok(()));
    assert_eq!(w.mem.zeroed.len(), zeroed, "borrowed pages are not the borrower's to zero");
    assert_eq!(w.state(GUEST, G_IPA), PageState::Owned);
    assert_eq!(w.state(GUEST, G_IPA + PAGE_SIZE), PageState::Owned);
    w.check();
}

#[test]
fn teardown_returns_every_table_page_and_every_donated_page() {
    let mut w = World::new();
    let baseline = (w.mem.free_pages(), w.cache.len());
    // 2 MiB as a block, 64 scattered pages, and a shared page.
    w.donate(POOL + (2 << 20), GUEST, 0x4000_0000, 512).unwrap();
    for i in 0..64 {
        w.donate(POOL + i * PAGE_SIZE, GUEST, 0x8000_0000 + i * 0x10_0000, 1).unwrap();
    }
    w.share(World::transfer(GUEST, 0x8000_0000, VMM, V_IPA, 1)).unwrap();
    w.check();
    w.own.start_teardown(GUEST).unwrap();
    refused(&mut w, Error::Busy, |w| w.reclaim(GUEST, 0, 1 << 28));
    w.relinquish(VMM, V_IPA, 1).unwrap();
    let zeroed = w.mem.zeroed.len();
    assert_eq!(w.reclaim(GUEST, 0, 1 << 28), Ok(()));
    assert_eq!(w.mem.zeroed.len() - zeroed, 512 + 64, "every donated page zeroed once");
    for i in 0..(POOL_SIZE / PAGE_SIZE) {
        assert_eq!(w.state(OwnerId::DEFAULT, POOL + i * PAGE_SIZE), PageState::Owned);
    }
    w.check();
    let guest = w.own.remove_component(&mut w.mem, GUEST).unwrap();
    let root_pages = guest.geometry().root_pages();
    guest.destroy(&mut w.mem);
    let used_by_cache = baseline.1 - w.cache.len();
    assert_eq!(
        w.mem.free_pages(),
        baseline.0 + root_pages + used_by_cache,
        "every table page is back in the page source"
    );
}

#[test]
fn remove_component_refuses_a_live_or_non_empty_component() {
    let mut w = World::new();
    w.donate(PA, GUEST, G_IPA, 1).unwrap();
    assert!(matches!(w.own.remove_component(&mut w.mem, GUEST), Err(Error::InvalidArgument)));
    w.own.start_teardown(GUEST).unwrap();
    assert!(matches!(w.own.remove_component(&mut w.mem, GUEST), Err(Error::Busy)));
}

#[test]
fn out_of_memory_is_reported_before_anything_changes() {
    let mut w = World::new();
    w.cache.drain(&mut w.mem);
    refused(&mut w, Error::OutOfMemory, |w| w.donate(PA, GUEST, G_IPA, 1));
    w.cache.topup(&mut w.mem, 1).unwrap();
    refused(&mut w, Error::OutOfMemory, |w| w.donate(PA, GUEST, G_IPA, 1));
    // Two tables in the guest (L2, L3) and two in the ledger.
    w.cache.topup(&mut w.mem, 4).unwrap();
    assert_eq!(w.donate(PA, GUEST, G_IPA, 1), Ok(()));
    assert_eq!(w.cache.len(), 0);
    w.check();
}
