//! Host tests of the manager: every request kind through the protocol's
//! encoding, every refusal with a byte-for-byte "nothing changed" check,
//! teardown, isolation between guests, and garbage messages.

extern crate std;

use crate::config::{
    ClientConfig, ClientId, Config, DeviceRange, GuestConfig, PoolLayout, ROOT_AREA_PAGES, Window,
};
use crate::control::{Refused, Stage2Control};
use crate::manager::{CACHE_PAGES, Manager};
use hyp_mm::host::Arena;
use hyp_mm::{Ipa, IpaRange, MmOps, OwnerId, PAGE_SIZE, PhysAddr, Prot, Pte, TlbOp, VmId};
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;
use tenure_abi::mm::{
    Access, Direction, FaultAddr, GuestId, IPA_LIMIT, Label, MmError, Outcome, PageInfo, PageRange,
    PageState, Reply, Request, Target, Transfer, WalkFlags, decode_reply,
};

const BASE: u64 = 0x4000_0000;
const TABLE_PAGES: u64 = 128;
const POOL_PAGES: u64 = 64;

const VMM: u8 = 0;
const OTHER_VMM: u8 = 1;
const NO_WINDOW: u8 = 2;
const WINDOW: u64 = 0x1000_0000;
const RAM: u64 = 0x4000_0000;
const UART: u64 = 0x0900_0000;
const UART_PA: u64 = 0x0900_0000;
const BIG_DEVICE: u64 = 0x0a00_0000;
const BIG_DEVICE_PA: u64 = 0x2000_0000;

/// Table memory in an arena (roots and table pages) and the managed pages
/// as plain words, so tests can write guest data and read it back.
struct TestMem {
    arena: Arena,
    data_base: u64,
    data: Vec<u64>,
    zeroed: Vec<PhysAddr>,
}

impl TestMem {
    fn data_index(&self, pa: PhysAddr, index: usize) -> usize {
        let offset = pa.raw().checked_sub(self.data_base).expect("address in the pool");
        (offset / 8) as usize + index
    }

    fn page(&self, pa: PhysAddr) -> &[u64] {
        let i = self.data_index(pa, 0);
        &self.data[i..i + 512]
    }
}

impl MmOps for TestMem {
    fn read(&self, table: PhysAddr, index: usize) -> Pte {
        if self.arena.contains(table) {
            self.arena.read(table, index)
        } else {
            Pte(self.data[self.data_index(table, index)])
        }
    }
    fn write(&mut self, table: PhysAddr, index: usize, pte: Pte) {
        if self.arena.contains(table) {
            self.arena.write(table, index, pte);
        } else {
            let i = self.data_index(table, index);
            self.data[i] = pte.0;
        }
    }
    fn page_count(&self, page: PhysAddr) -> u32 {
        self.arena.page_count(page)
    }
    fn set_page_count(&mut self, page: PhysAddr, count: u32) {
        self.arena.set_page_count(page, count);
    }
    fn alloc_page(&mut self) -> Option<PhysAddr> {
        self.arena.alloc_page()
    }
    fn free_page(&mut self, page: PhysAddr) {
        self.arena.free_page(page);
    }
    fn tlb(&mut self, op: TlbOp) {
        panic!("TLB maintenance must reach the kernel through the batch, not {op:?}");
    }
    fn zero_page(&mut self, page: PhysAddr) {
        let i = self.data_index(page, 0);
        self.data[i..i + 512].fill(0);
        self.zeroed.push(page);
    }
}

/// What the kernel was asked to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Install(u16, VmId, PhysAddr),
    Uninstall(u16, VmId),
    Link(u8, VmId, PhysAddr),
    Range(VmId, u64, u64),
    Vmid(VmId),
    Clean(u64, u64),
}

#[derive(Default)]
struct Kernel {
    log: Vec<Op>,
    refuse_install: bool,
}

impl Stage2Control for Kernel {
    fn install(&mut self, guest: GuestId, vmid: VmId, root: PhysAddr) -> Result<(), Refused> {
        if self.refuse_install {
            return Err(Refused);
        }
        self.log.push(Op::Install(guest.get(), vmid, root));
        Ok(())
    }
    fn uninstall(&mut self, guest: GuestId, vmid: VmId) {
        self.log.push(Op::Uninstall(guest.get(), vmid));
    }
    fn link_window(
        &mut self,
        client: ClientId,
        vmid: VmId,
        span: IpaRange,
        table: PhysAddr,
    ) -> Result<(), Refused> {
        assert_eq!(span.size(), 1 << 30, "a window is linked as one level-1 entry");
        self.log.push(Op::Link(client.0, vmid, table));
        Ok(())
    }
    fn invalidate_range(&mut self, vmid: VmId, range: IpaRange) {
        self.log.push(Op::Range(vmid, range.start().raw(), range.end().raw()));
    }
    fn invalidate_vmid(&mut self, vmid: VmId) {
        self.log.push(Op::Vmid(vmid));
    }
    fn clean_to_poc(&mut self, pa: PhysAddr, bytes: u64) {
        self.log.push(Op::Clean(pa.raw(), bytes));
    }
}

fn range(start: u64, bytes: u64) -> IpaRange {
    IpaRange::new(Ipa::new(start), bytes).unwrap()
}

fn config() -> Config {
    let mut c = Config::default();
    let window = |vmid| ClientConfig {
        window: Some(Window { vmid: VmId(vmid), range: range(WINDOW, 16 << 20) }),
    };
    c.clients[usize::from(VMM)] = Some(window(20));
    c.clients[usize::from(OTHER_VMM)] = Some(window(21));
    c.clients[usize::from(NO_WINDOW)] = Some(ClientConfig::default());
    let guest = |vmid, controller| {
        GuestConfig::new(VmId(vmid), ClientId(controller))
            .with_ram(range(RAM, 64 << 20))
            .unwrap()
            .with_device(DeviceRange { ipa: range(UART, PAGE_SIZE), pa: PhysAddr::new(UART_PA) })
            .unwrap()
            .with_device(DeviceRange {
                ipa: range(BIG_DEVICE, 4 << 20),
                pa: PhysAddr::new(BIG_DEVICE_PA),
            })
            .unwrap()
    };
    c.guests[0] = Some(guest(1, VMM));
    c.guests[1] = Some(guest(2, OTHER_VMM));
    c.guests[2] = Some(guest(3, VMM));
    c.guests[3] = Some(guest(4, NO_WINDOW));
    c
}

fn g(id: u16) -> GuestId {
    GuestId::new(id).unwrap()
}

fn pages(start: u64, n: u64) -> PageRange {
    PageRange::new(start, n).unwrap()
}

fn transfer(guest: u16, direction: Direction, from: u64, to: u64, n: u64) -> Transfer {
    Transfer { guest: g(guest), direction, from: pages(from, n), to: pages(to, n) }
}

fn populate(target: Target, ipa: u64) -> Request {
    Request::Populate { target, addr: FaultAddr::from_raw(ipa).unwrap(), flags: WalkFlags::NONE }
}

fn query(target: Target, ipa: u64) -> Request {
    Request::Query { target, addr: FaultAddr::from_raw(ipa).unwrap() }
}

type Snapshot = ((Vec<u64>, Vec<u32>), Vec<u64>, usize, usize, usize);

struct World {
    m: Manager<TestMem, Kernel>,
}

impl World {
    fn new() -> World {
        World::sized(TABLE_PAGES, POOL_PAGES)
    }

    fn sized(table_pages: u64, pool_pages: u64) -> World {
        let pool_bytes = (ROOT_AREA_PAGES as u64 + table_pages + pool_pages) * PAGE_SIZE;
        let layout = PoolLayout::new(PhysAddr::new(BASE), pool_bytes, table_pages).unwrap();
        World::over(layout, config())
    }

    /// A manager over `layout` (at `BASE`) serving `config`.
    fn over(layout: PoolLayout, config: Config) -> World {
        let table_pages = layout.table_pages();
        let pool_pages = layout.managed().page_count();
        let mut arena = Arena::new(PhysAddr::new(BASE), ROOT_AREA_PAGES + table_pages as usize);
        assert_eq!(arena.alloc_contiguous(ROOT_AREA_PAGES), Some(layout.roots()));
        let data = vec![0x5a5a_5a5a_5a5a_5a5a; pool_pages as usize * 512];
        let data_base = layout.managed().start().raw();
        let mem = TestMem { arena, data_base, data, zeroed: Vec::new() };
        let m = Manager::new(mem, Kernel::default(), &layout, config).unwrap();
        World { m }
    }

    /// A request through the protocol: encoded, dispatched, reply decoded.
    fn call(&mut self, caller: u8, request: Request) -> Outcome {
        let message = request.encode();
        let reply = self.m.dispatch(ClientId(caller), message.label, message.words());
        decode_reply(request.label(), reply.label, reply.words())
    }

    /// A raw PPC; the reply label.
    fn raw(&mut self, caller: u8, label: u64, words: &[u64]) -> u64 {
        self.m.dispatch(ClientId(caller), label, words).label
    }

    fn ok(&mut self, caller: u8, request: Request) -> Reply {
        self.call(caller, request).unwrap_or_else(|e| panic!("{request:?} refused: {e:?}"))
    }

    fn info(&mut self, caller: u8, target: Target, ipa: u64) -> PageInfo {
        match self.ok(caller, query(target, ipa)) {
            Reply::Page(info) => info,
            other => panic!("query replied {other:?}"),
        }
    }

    fn state(&mut self, caller: u8, target: Target, ipa: u64) -> PageState {
        self.info(caller, target, ipa).state
    }

    /// The physical page behind `ipa` of guest `id` or client `c`'s window.
    fn pa(&self, owner: OwnerId, ipa: u64) -> PhysAddr {
        match self.m.ownership().view(self.m.mem(), owner, Ipa::new(ipa)).unwrap() {
            hyp_mm::owner::PageView::Mapped { pa, .. } => pa,
            hyp_mm::owner::PageView::Lent(mark) => mark.pa,
            other => panic!("{ipa:#x} is {other:?}"),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mem = self.m.mem();
        (
            mem.arena.snapshot(),
            mem.data.clone(),
            mem.zeroed.len(),
            self.m.control().log.len(),
            self.m.cache_len(),
        )
    }

    /// Every page of every table reachable from the ledger and the
    /// components, with its refcount: what "no table changed" compares.
    fn tables(&self) -> BTreeMap<u64, (Vec<u64>, u32)> {
        let mem = self.m.mem();
        let mut out = BTreeMap::new();
        fn walk(
            mem: &TestMem,
            t: PhysAddr,
            level: u8,
            n: usize,
            out: &mut BTreeMap<u64, (Vec<u64>, u32)>,
        ) {
            let words: Vec<u64> = (0..n).map(|i| mem.read(t, i).0).collect();
            for &w in &words {
                if level < 3 && Pte(w).is_table(level) {
                    walk(mem, Pte(w).addr(), level + 1, 512, out);
                }
            }
            out.insert(t.raw(), (words, mem.page_count(t)));
        }
        let own = self.m.ownership();
        let tables = core::iter::once(own.ledger()).chain(own.components().map(|(_, t)| t));
        for t in tables {
            walk(mem, t.root(), t.geometry().start_level(), t.geometry().root_entries(), &mut out);
        }
        out
    }

    /// Non-root table pages in use.
    fn tables_in_use(&self) -> usize {
        let roots = self.m.ownership().components().count() + 1;
        self.tables().len() - roots
    }

    /// Runs `request`, expects `err`, and checks that nothing changed: not
    /// a word of table or data memory, no refcount, no cache page, no
    /// kernel call.
    fn refused(&mut self, caller: u8, request: Request, err: MmError) {
        let before = self.snapshot();
        assert_eq!(self.call(caller, request), Err(err), "{request:?}");
        assert!(self.snapshot() == before, "refused {request:?} changed something");
    }

    fn refused_raw(&mut self, caller: u8, label: u64, words: &[u64], err: MmError) {
        let before = self.snapshot();
        assert_eq!(self.raw(caller, label, words), err.raw(), "label {label} {words:x?}");
        assert!(self.snapshot() == before, "refused label {label} changed something");
    }
}

const G1: Target = Target::Guest(GuestId::new(1).unwrap());

#[test]
fn create_installs_an_empty_root_once() {
    let mut w = World::new();
    assert_eq!(w.m.control().log.iter().filter(|o| matches!(o, Op::Link(..))).count(), 2);
    assert_eq!(w.ok(VMM, Request::CreateGuest { guest: g(1) }), Reply::Done);
    let root = w.m.guest_root(g(1)).unwrap();
    assert_eq!(w.m.control().log.last(), Some(&Op::Install(1, VmId(1), root)));
    w.refused(VMM, Request::CreateGuest { guest: g(1) }, MmError::GuestExists);
    w.refused(OTHER_VMM, Request::CreateGuest { guest: g(1) }, MmError::NoSuchGuest);
    w.refused(VMM, Request::CreateGuest { guest: g(7) }, MmError::NoSuchGuest);
    w.refused(VMM, populate(Target::Guest(g(3)), RAM), MmError::NoSuchGuest);
}

#[test]
fn a_guest_the_kernel_refuses_is_not_created() {
    let mut w = World::new();
    w.m.control_mut().refuse_install = true;
    w.refused(VMM, Request::CreateGuest { guest: g(1) }, MmError::KernelRefused);
    w.refused(VMM, populate(G1, RAM), MmError::NoSuchGuest);
    w.m.control_mut().refuse_install = false;
    assert_eq!(w.ok(VMM, Request::CreateGuest { guest: g(1) }), Reply::Done);
}

#[test]
fn populate_maps_a_zeroed_page_once() {
    let mut w = World::new();
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    let reply = w.ok(VMM, populate(G1, RAM + 0x1234));
    assert_eq!(reply, Reply::Mapped { ipa: RAM + 0x1000, pages: 1 });
    let pa = w.pa(OwnerId(1), RAM + 0x1000);
    assert!(w.m.mem().page(pa).iter().all(|&x| x == 0), "zeroed");
    assert!(w.m.control().log.contains(&Op::Clean(pa.raw(), PAGE_SIZE)), "cleaned to PoC");
    let info = w.info(VMM, G1, RAM + 0x1000);
    assert_eq!(info, PageInfo { state: PageState::Owned, access: Access::RWX, borrowers: 0 });
    w.refused(VMM, populate(G1, RAM + 0x1000), MmError::AlreadyMapped);
    let again = Request::Populate {
        target: G1,
        addr: FaultAddr::from_raw(RAM + 0x1008).unwrap(),
        flags: WalkFlags::IGNORE_RETRY,
    };
    assert_eq!(w.ok(VMM, again), Reply::Mapped { ipa: RAM + 0x1000, pages: 0 });
    // The caller's own window is populated read-write, never executable.
    w.ok(VMM, populate(Target::Caller, WINDOW));
    let info = w.info(VMM, Target::Caller, WINDOW);
    assert_eq!((info.state, info.access), (PageState::Owned, Access::RW));
}

#[test]
fn the_pool_runs_out_cleanly() {
    let mut w = World::new();
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..POOL_PAGES {
        w.ok(VMM, populate(G1, RAM + i * PAGE_SIZE));
        assert!(seen.insert(w.pa(OwnerId(1), RAM + i * PAGE_SIZE)), "a page is handed out once");
    }
    w.refused(VMM, populate(G1, RAM + POOL_PAGES * PAGE_SIZE), MmError::PoolExhausted);
    w.ok(VMM, Request::Relinquish { target: G1, range: pages(RAM + 5 * PAGE_SIZE, 1) });
    w.ok(VMM, populate(G1, RAM + 0x10_0000));
}

#[test]
fn a_guest_at_its_limit_is_refused_and_no_other_guest_notices() {
    const LIMIT: u64 = 8;
    let mut c = config();
    c.guests[0] = c.guests[0].map(|g| g.with_limit(LIMIT));
    let mut w = World::over(
        PoolLayout::new(
            PhysAddr::new(BASE),
            (ROOT_AREA_PAGES as u64 + TABLE_PAGES + POOL_PAGES) * PAGE_SIZE,
            TABLE_PAGES,
        )
        .unwrap(),
        c,
    );
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    w.ok(OTHER_VMM, Request::CreateGuest { guest: g(2) });
    // Guest 1 populates up to its limit, then is refused, changing nothing.
    for i in 0..LIMIT {
        w.ok(VMM, populate(G1, RAM + i * PAGE_SIZE));
    }
    assert_eq!(w.m.held(g(1)), LIMIT);
    let before = w.snapshot();
    w.refused(VMM, populate(G1, RAM + LIMIT * PAGE_SIZE), MmError::OverLimit);
    assert!(w.snapshot() == before, "a refusal at the limit changes nothing");
    // A donation past the limit is refused too.
    w.ok(VMM, populate(Target::Caller, WINDOW));
    let donate = Request::Donate {
        transfer: transfer(1, Direction::ToGuest, WINDOW, RAM + 0x10_0000, 1),
        access: Access::RWX,
    };
    w.refused(VMM, donate, MmError::OverLimit);
    // The other guest, with no limit of its own, takes what is left.
    let g2 = Target::Guest(g(2));
    for i in 0..POOL_PAGES - LIMIT - 1 {
        w.ok(OTHER_VMM, populate(g2, RAM + i * PAGE_SIZE));
    }
    // Giving a page back makes room for one more; a teardown for all.
    w.ok(VMM, Request::Relinquish { target: G1, range: pages(RAM, 1) });
    assert_eq!(w.m.held(g(1)), LIMIT - 1);
    w.ok(VMM, Request::Teardown { guest: g(1) });
    assert_eq!(w.m.held(g(1)), 0);
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    w.ok(VMM, donate);
    assert_eq!(w.m.held(g(1)), 1);
}

#[test]
fn table_memory_runs_out_cleanly() {
    // Just enough table pages for the first cache: each populate far from
    // the last needs new tables in the guest and the ledger.
    let mut w = World::sized(CACHE_PAGES as u64 + 2, POOL_PAGES);
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    let mut refused = None;
    for i in 0..64 {
        let before = w.tables();
        match w.call(VMM, populate(G1, RAM + i * (2 << 20))) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(w.tables(), before, "refused populate changed a table");
                refused = Some(e);
                break;
            }
        }
    }
    assert_eq!(refused, Some(MmError::OutOfTableMemory));
}

#[test]
fn donate_moves_window_pages_to_the_guest() {
    let mut w = World::new();
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    // Five pages, so that the window's table stays when four leave.
    for i in 0..5 {
        w.ok(VMM, populate(Target::Caller, WINDOW + i * PAGE_SIZE));
    }
    let pa = w.pa(OwnerId(9), WINDOW);
    w.m.mem_mut().write(pa, 0, Pte(0x1234_5678)); // the loaded image
    let donate = Request::Donate {
        transfer: transfer(1, Direction::ToGuest, WINDOW, RAM, 4),
        access: Access::RWX,
    };
    w.m.control_mut().log.clear();
    assert_eq!(w.ok(VMM, donate), Reply::Done);
    assert_eq!(w.state(VMM, Target::Caller, WINDOW), PageState::NoPage);
    assert_eq!(w.state(VMM, G1, RAM + 3 * PAGE_SIZE), PageState::Owned);
    assert_eq!(w.pa(OwnerId(1), RAM), pa, "same physical pages");
    assert_eq!(w.m.mem().page(pa)[0], 0x1234_5678, "donation keeps the contents");
    let log = &w.m.control().log;
    assert!(log.contains(&Op::Range(VmId(20), WINDOW, WINDOW + 4 * PAGE_SIZE)), "{log:x?}");
    assert!(log.contains(&Op::Clean(pa.raw(), 4 * PAGE_SIZE)), "{log:x?}");
    w.refused(VMM, donate, MmError::NotMapped);
}

#[test]
fn share_and_unshare_both_ways() {
    let mut w = World::new();
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    w.ok(VMM, populate(Target::Caller, WINDOW));
    w.ok(VMM, populate(G1, RAM));
    // The VMM shares a ring with the guest.
    let to_guest = transfer(1, Direction::ToGuest, WINDOW, RAM + 0x10_0000, 1);
    w.ok(VMM, Request::Share { transfer: to_guest, access: Access::RW });
    assert_eq!(w.info(VMM, Target::Caller, WINDOW).borrowers, 1);
    assert_eq!(w.state(VMM, Target::Caller, WINDOW), PageState::SharedOwned);
    assert_eq!(w.state(VMM, G1, RAM + 0x10_0000), PageState::SharedBorrowed);
    // The guest shares a buffer back, in place (its MEM_SHARE).
    let from_guest = transfer(1, Direction::FromGuest, RAM, WINDOW + 0x1000, 1);
    w.ok(VMM, Request::Share { transfer: from_guest, access: Access::R });
    assert_eq!(w.state(VMM, G1, RAM), PageState::SharedOwned);
    let info = w.info(VMM, Target::Caller, WINDOW + 0x1000);
    assert_eq!((info.state, info.access), (PageState::SharedBorrowed, Access::R));
    w.ok(VMM, Request::Unshare(to_guest));
    w.ok(VMM, Request::Unshare(from_guest));
    assert_eq!(w.state(VMM, Target::Caller, WINDOW), PageState::Owned);
    assert_eq!(w.state(VMM, G1, RAM + 0x10_0000), PageState::NoPage);
    assert_eq!(w.state(VMM, G1, RAM), PageState::Owned);
    assert_eq!(w.state(VMM, Target::Caller, WINDOW + 0x1000), PageState::NoPage);
    w.refused(VMM, Request::Unshare(to_guest), MmError::NotShared);
}

#[test]
fn lend_then_reclaim_returns_the_page_to_its_owner() {
    let mut w = World::new();
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    w.ok(VMM, populate(Target::Caller, WINDOW));
    let lend = transfer(1, Direction::ToGuest, WINDOW, RAM, 1);
    w.ok(VMM, Request::Lend { transfer: lend, access: Access::RW });
    let info = w.info(VMM, Target::Caller, WINDOW);
    assert_eq!((info.state, info.access), (PageState::LentOut, Access::RW));
    assert_eq!(w.state(VMM, G1, RAM), PageState::Lent);
    w.refused(VMM, Request::Share { transfer: lend, access: Access::R }, MmError::AlreadyShared);
    w.refused(VMM, Request::Unshare(lend), MmError::NotShared);
    w.ok(VMM, Request::Reclaim(lend));
    assert_eq!(w.state(VMM, Target::Caller, WINDOW), PageState::Owned);
    assert_eq!(w.state(VMM, G1, RAM), PageState::NoPage);
    w.refused(VMM, Request::Reclaim(lend), MmError::NotShared);
    // A guest's lend ends when the guest relinquishes it.
    w.ok(VMM, populate(G1, RAM + PAGE_SIZE));
    let back = transfer(1, Direction::FromGuest, RAM + PAGE_SIZE, WINDOW + PAGE_SIZE, 1);
    w.ok(VMM, Request::Lend { transfer: back, access: Access::RW });
    assert_eq!(w.state(VMM, G1, RAM + PAGE_SIZE), PageState::LentOut);
    w.ok(VMM, Request::Relinquish { target: Target::Caller, range: pages(WINDOW + PAGE_SIZE, 1) });
    assert_eq!(w.state(VMM, G1, RAM + PAGE_SIZE), PageState::Owned);
}

#[test]
fn relinquished_pages_go_back_zeroed() {
    let mut w = World::new();
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    w.ok(VMM, populate(G1, RAM));
    let pa = w.pa(OwnerId(1), RAM);
    w.m.mem_mut().write(pa, 7, Pte(0x5ec2e7));
    w.ok(VMM, Request::Relinquish { target: G1, range: pages(RAM, 1) });
    assert_eq!(w.state(VMM, G1, RAM), PageState::NoPage);
    assert!(w.m.mem().page(pa).iter().all(|&x| x == 0));
    assert_eq!(w.m.ownership().record(w.m.mem(), pa), Ok(None), "free again");
    w.refused(VMM, Request::Relinquish { target: G1, range: pages(RAM, 1) }, MmError::NotMapped);
}

#[test]
fn device_memory_is_mapped_lazily_in_the_largest_block() {
    let mut w = World::new();
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    assert_eq!(w.state(VMM, G1, UART), PageState::NoPage, "nothing before the fault");
    let map = |ipa, flags| Request::MapDevice {
        guest: g(1),
        addr: FaultAddr::from_raw(ipa).unwrap(),
        flags,
    };
    assert_eq!(w.ok(VMM, map(UART + 0x18, WalkFlags::NONE)), Reply::Mapped { ipa: UART, pages: 1 });
    let info = w.info(VMM, G1, UART);
    assert_eq!((info.state, info.access), (PageState::Owned, Access::from_bits_truncate(0b1011)));
    let got = w.ok(VMM, map(BIG_DEVICE + 0x20_1000, WalkFlags::NONE));
    assert_eq!(got, Reply::Mapped { ipa: BIG_DEVICE + 0x20_0000, pages: 512 }, "one 2 MiB block");
    let (pte, level) = {
        let t = w.m.ownership().component(OwnerId(1)).unwrap();
        t.get_leaf(w.m.mem(), Ipa::new(BIG_DEVICE + 0x20_0000)).unwrap()
    };
    assert_eq!((level, pte.prot()), (2, Prot::DEVICE_RW));
    w.refused(VMM, map(UART, WalkFlags::NONE), MmError::AlreadyMapped);
    assert_eq!(
        w.ok(VMM, map(UART, WalkFlags::IGNORE_RETRY)),
        Reply::Mapped { ipa: UART, pages: 0 }
    );
    w.refused(VMM, map(RAM, WalkFlags::NONE), MmError::NotDeclared);
    w.refused(VMM, populate(G1, UART), MmError::DeviceMemory);
}

/// A guest with a bit of everything, for the refusal and teardown tests:
/// own pages, donated, shared and lent window pages, pages it shares and
/// lends back, and a device mapping.
fn busy_world() -> World {
    let mut w = World::new();
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    for i in 0..8 {
        w.ok(VMM, populate(Target::Caller, WINDOW + i * PAGE_SIZE));
    }
    for i in 0..4 {
        w.ok(VMM, populate(G1, RAM + i * PAGE_SIZE));
    }
    let t = |dir, from, to, n| transfer(1, dir, from, to, n);
    w.ok(
        VMM,
        Request::Donate {
            transfer: t(Direction::ToGuest, WINDOW, RAM + 0x10_0000, 2),
            access: Access::RWX,
        },
    );
    w.ok(
        VMM,
        Request::Share {
            transfer: t(Direction::ToGuest, WINDOW + 0x2000, RAM + 0x20_0000, 2),
            access: Access::RW,
        },
    );
    w.ok(
        VMM,
        Request::Lend {
            transfer: t(Direction::ToGuest, WINDOW + 0x4000, RAM + 0x30_0000, 1),
            access: Access::RW,
        },
    );
    w.ok(
        VMM,
        Request::Share {
            transfer: t(Direction::FromGuest, RAM, WINDOW + 0x10_0000, 1),
            access: Access::R,
        },
    );
    w.ok(
        VMM,
        Request::Lend {
            transfer: t(Direction::FromGuest, RAM + 0x1000, WINDOW + 0x11_0000, 1),
            access: Access::RW,
        },
    );
    w.ok(
        VMM,
        Request::MapDevice {
            guest: g(1),
            addr: FaultAddr::from_raw(UART).unwrap(),
            flags: WalkFlags::NONE,
        },
    );
    w
}

#[test]
fn every_refusal_says_why_and_changes_nothing() {
    use Direction::{FromGuest, ToGuest};
    let mut w = busy_world();
    let t = |dir, from, to, n| transfer(1, dir, from, to, n);
    let donate =
        |from, to, n| Request::Donate { transfer: t(ToGuest, from, to, n), access: Access::RW };
    let share = |tr| Request::Share { transfer: tr, access: Access::RW };
    let lend = |tr| Request::Lend { transfer: tr, access: Access::RW };
    let free_ram = RAM + 0x40_0000;
    // Not owned: a page the window borrows from the guest.
    w.refused(VMM, donate(WINDOW + 0x10_0000, free_ram, 1), MmError::NotOwned);
    w.refused(VMM, share(t(ToGuest, WINDOW + 0x11_0000, free_ram, 1)), MmError::NotOwned);
    // More access than the owner has.
    let wider =
        Request::Share { transfer: t(ToGuest, WINDOW + 0x6000, free_ram, 1), access: Access::RWX };
    w.refused(VMM, wider, MmError::NotOwned);
    // Nothing there.
    w.refused(VMM, donate(WINDOW + 0x8000, free_ram, 1), MmError::NotMapped);
    w.refused(VMM, donate(WINDOW, free_ram, 1), MmError::NotMapped);
    // Already shared or lent.
    w.refused(VMM, donate(WINDOW + 0x2000, free_ram, 1), MmError::AlreadyShared);
    w.refused(VMM, lend(t(ToGuest, WINDOW + 0x2000, free_ram, 1)), MmError::AlreadyShared);
    w.refused(VMM, share(t(ToGuest, WINDOW + 0x4000, free_ram, 1)), MmError::AlreadyShared);
    w.refused(VMM, lend(t(FromGuest, RAM, WINDOW + 0x20_0000, 1)), MmError::AlreadyShared);
    // Not shared.
    w.refused(VMM, Request::Unshare(t(ToGuest, WINDOW + 0x6000, free_ram, 1)), MmError::NotShared);
    w.refused(
        VMM,
        Request::Unshare(t(FromGuest, RAM + 0x2000, WINDOW + 0x10_0000, 1)),
        MmError::NotShared,
    );
    w.refused(
        VMM,
        Request::Reclaim(t(ToGuest, WINDOW + 0x6000, RAM + 0x2000, 1)),
        MmError::NotShared,
    );
    w.refused(VMM, Request::Reclaim(t(ToGuest, WINDOW + 0x6000, free_ram, 1)), MmError::NotShared);
    // Already mapped at the destination.
    w.refused(VMM, share(t(ToGuest, WINDOW + 0x6000, RAM + 0x2000, 1)), MmError::AlreadyMapped);
    w.refused(VMM, share(t(FromGuest, RAM + 0x2000, WINDOW + 0x6000, 1)), MmError::AlreadyMapped);
    // Device memory never changes hands, and RAM is never put there.
    w.refused(VMM, share(t(FromGuest, UART, WINDOW + 0x20_0000, 1)), MmError::DeviceMemory);
    w.refused(VMM, donate(WINDOW + 0x6000, UART, 1), MmError::DeviceMemory);
    // Not physically contiguous: populate W+9 before W+8... pages 0x7000
    // and its neighbours come from different places.
    w.ok(VMM, populate(Target::Caller, WINDOW + 0xa000));
    w.ok(VMM, populate(Target::Caller, WINDOW + 0x9000));
    w.refused(VMM, donate(WINDOW + 0x9000, free_ram, 2), MmError::NotContiguous);
    // Outside what is declared.
    w.refused(VMM, donate(WINDOW + (16 << 20), free_ram, 1), MmError::NotDeclared);
    w.refused(VMM, donate(WINDOW + (16 << 20) - PAGE_SIZE, free_ram, 2), MmError::NotDeclared);
    w.refused(VMM, donate(WINDOW + 0x6000, RAM + (64 << 20), 1), MmError::NotDeclared);
    w.refused(NO_WINDOW, populate(Target::Caller, WINDOW), MmError::NotDeclared);
    // Someone else's guest.
    w.refused(OTHER_VMM, donate(WINDOW + 0x6000, free_ram, 1), MmError::NoSuchGuest);
    // Malformed words.
    let donate_raw = |from: u64, to: u64, n: u64| [1, from, to, n, 3];
    let l = Label::Donate as u64;
    w.refused_raw(VMM, l, &donate_raw(WINDOW + 0x6800, free_ram, 1), MmError::Misaligned);
    w.refused_raw(VMM, l, &donate_raw(WINDOW, free_ram + 1, 1), MmError::Misaligned);
    w.refused_raw(
        VMM,
        l,
        &donate_raw(WINDOW, free_ram, u64::MAX / PAGE_SIZE + 1),
        MmError::Overflow,
    );
    w.refused_raw(VMM, l, &donate_raw(!0xfff, free_ram, 2), MmError::Overflow);
    w.refused_raw(VMM, l, &donate_raw(WINDOW, IPA_LIMIT - PAGE_SIZE, 2), MmError::PastEnd);
    w.refused_raw(VMM, Label::Populate as u64, &[1, IPA_LIMIT, 0], MmError::PastEnd);
    w.refused_raw(VMM, l, &donate_raw(WINDOW, free_ram, 0), MmError::BadArgument);
    w.refused_raw(VMM, l, &[1, WINDOW, free_ram, 1, 8], MmError::BadArgument);
    w.refused_raw(VMM, Label::Share as u64, &[1, 2, WINDOW, free_ram, 1, 3], MmError::BadArgument);
    w.refused_raw(VMM, Label::Populate as u64, &[1, RAM, 1], MmError::BadArgument);
    w.refused_raw(VMM, l, &[1, WINDOW, free_ram, 1], MmError::BadLength);
    w.refused_raw(VMM, 0, &[], MmError::UnknownRequest);
    w.refused_raw(VMM, 99, &[1], MmError::UnknownRequest);
}

#[test]
fn teardown_returns_every_page_and_table() {
    let mut w = busy_world();
    let guest_pages: Vec<PhysAddr> = (0..4)
        .map(|i| RAM + i * PAGE_SIZE)
        .chain([RAM + 0x10_0000, RAM + 0x10_1000])
        .map(|ipa| w.pa(OwnerId(1), ipa))
        .collect();
    for &pa in &guest_pages {
        w.m.mem_mut().write(pa, 0, Pte(0x5ec2e7));
    }
    let reply = w.ok(VMM, Request::Teardown { guest: g(1) });
    let Reply::TornDown { pages, tables } = reply else { panic!("{reply:?}") };
    assert_eq!(pages, 6, "four populated, two donated");
    assert!(tables >= 2, "at least the guest's level-2 and level-3 tables: {tables}");
    assert!(w.m.control().log.contains(&Op::Uninstall(1, VmId(1))));
    for &pa in &guest_pages {
        assert!(w.m.mem().page(pa).iter().all(|&x| x == 0), "{pa} zeroed");
        assert_eq!(w.m.ownership().record(w.m.mem(), pa), Ok(None), "{pa} free");
    }
    // The window gets back what it shared and lent, and loses what it
    // borrowed from the guest.
    for ipa in [WINDOW + 0x2000, WINDOW + 0x3000, WINDOW + 0x4000] {
        assert_eq!(w.state(VMM, Target::Caller, ipa), PageState::Owned, "{ipa:#x}");
    }
    for ipa in [WINDOW + 0x10_0000, WINDOW + 0x11_0000] {
        assert_eq!(w.state(VMM, Target::Caller, ipa), PageState::NoPage, "{ipa:#x}");
    }
    // Every table page is in use by a live table, in the cache, or free.
    let root = w.m.guest_root(g(1)).unwrap();
    assert!((0..1024).all(|i| w.m.mem().read(root, i).is_zero()), "the root is clean");
    let free = w.m.mem().arena.free_pages();
    assert_eq!(free + w.m.cache_len() + w.tables_in_use(), TABLE_PAGES as usize);
    // The ledger holds only the window's own pages.
    let mut records = 0;
    let ledger = w.m.ownership().ledger();
    ledger
        .leaves(w.m.mem(), ledger.span(), &mut |_, _, pte| {
            if !pte.is_zero() {
                assert_eq!(pte.annotation().unwrap().owner(), OwnerId(9));
                records += 1;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(records, 6, "window pages 2..8");
    w.refused(VMM, populate(G1, RAM), MmError::NoSuchGuest);
    w.refused(VMM, Request::Teardown { guest: g(1) }, MmError::NoSuchGuest);
    // The slot can be used again.
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    w.ok(VMM, populate(G1, RAM));
}

#[test]
fn a_new_guest_reads_zeros_where_the_old_one_wrote_a_secret() {
    let mut w = World::new();
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    for i in 0..POOL_PAGES {
        w.ok(VMM, populate(G1, RAM + i * PAGE_SIZE));
        let pa = w.pa(OwnerId(1), RAM + i * PAGE_SIZE);
        for word in 0..512 {
            w.m.mem_mut().write(pa, word, Pte(0xdead_beef_0000_0000 | word as u64));
        }
    }
    w.ok(VMM, Request::Teardown { guest: g(1) });
    let g3 = Target::Guest(g(3));
    w.ok(VMM, Request::CreateGuest { guest: g(3) });
    for i in 0..POOL_PAGES {
        w.ok(VMM, populate(g3, RAM + 0x80_0000 + i * PAGE_SIZE));
        let pa = w.pa(OwnerId(3), RAM + 0x80_0000 + i * PAGE_SIZE);
        assert!(w.m.mem().page(pa).iter().all(|&x| x == 0), "{pa} leaks the old guest's data");
    }
}

#[test]
fn two_guests_cannot_reach_each_others_pages() {
    let mut w = World::new();
    w.ok(VMM, Request::CreateGuest { guest: g(1) });
    w.ok(OTHER_VMM, Request::CreateGuest { guest: g(2) });
    w.ok(VMM, Request::CreateGuest { guest: g(3) });
    for i in 0..8 {
        w.ok(VMM, populate(G1, RAM + i * PAGE_SIZE));
        w.ok(OTHER_VMM, populate(Target::Guest(g(2)), RAM + i * PAGE_SIZE));
    }
    for i in 0..8 {
        for j in 0..8 {
            let (a, b) =
                (w.pa(OwnerId(1), RAM + i * PAGE_SIZE), w.pa(OwnerId(2), RAM + j * PAGE_SIZE));
            assert_ne!(a, b);
        }
    }
    // Guest 2's VMM cannot name guest 1.
    let t = transfer(1, Direction::FromGuest, RAM, WINDOW, 1);
    for request in [
        Request::Share { transfer: t, access: Access::R },
        Request::Lend { transfer: t, access: Access::R },
        Request::Reclaim(t),
        Request::Unshare(t),
        query(G1, RAM),
        Request::Relinquish { target: G1, range: pages(RAM, 1) },
        Request::Teardown { guest: g(1) },
        Request::MapDevice {
            guest: g(1),
            addr: FaultAddr::from_raw(UART).unwrap(),
            flags: WalkFlags::NONE,
        },
    ] {
        w.refused(OTHER_VMM, request, MmError::NoSuchGuest);
    }
    // A page guest 1 shares with its VMM cannot travel on to guest 3.
    w.ok(VMM, Request::Share { transfer: t, access: Access::RW });
    let on = transfer(3, Direction::ToGuest, WINDOW, RAM, 1);
    w.refused(VMM, Request::Share { transfer: on, access: Access::R }, MmError::NotOwned);
    w.refused(VMM, Request::Lend { transfer: on, access: Access::R }, MmError::NotOwned);
    w.refused(VMM, Request::Donate { transfer: on, access: Access::R }, MmError::NotOwned);
}

mod garbage {
    use super::*;
    use proptest::prelude::*;

    fn word() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(3),
            Just(8),
            0u64..16,
            Just(RAM),
            Just(WINDOW),
            Just(UART),
            (0u64..32).prop_map(|i| RAM + i * PAGE_SIZE),
            (0u64..32).prop_map(|i| WINDOW + i * PAGE_SIZE),
            Just(IPA_LIMIT),
            Just(IPA_LIMIT - PAGE_SIZE),
            Just(u64::MAX),
            any::<u64>(),
        ]
    }

    fn message() -> impl Strategy<Value = (u8, u64, Vec<u64>)> {
        (0u8..4, 0u64..14, proptest::collection::vec(word(), 0..8))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Garbage never panics (the manager checks its invariants after
        /// every request in this debug build), replies with a known code,
        /// and a refused request changes no table.
        #[test]
        fn garbage_never_panics_and_refusals_change_no_table(
            messages in proptest::collection::vec(message(), 1..40)
        ) {
            let mut w = busy_world();
            w.ok(OTHER_VMM, Request::CreateGuest { guest: g(2) });
            for (caller, label, words) in messages {
                let before = w.tables();
                let reply = w.m.dispatch(ClientId(caller), label, &words);
                if reply.label != 0 {
                    prop_assert!(MmError::from_raw(reply.label).is_some());
                    prop_assert_eq!(reply.len, 0);
                    prop_assert!(w.tables() == before, "refused {} {:x?} changed a table", label, words);
                } else {
                    prop_assert!(Request::decode(label, &words).is_ok());
                }
            }
        }
    }
}

mod declared {
    use super::*;
    use crate::config::{ANCHOR_BYTES, ClientLink, Declared, SetupError};
    use tenure_abi::mm_config::{self, MmConfig};
    use tenure_abi::vcpu::{WINDOW_IPA, WINDOW_SIZE};

    /// What the tool would patch for a VMM (PD 3, channel 5) and a client
    /// without a window (PD 1, channel 0), and one guest, VM 1.
    fn words() -> [u64; mm_config::WORDS] {
        let pool_bytes = (ROOT_AREA_PAGES as u64 + TABLE_PAGES + POOL_PAGES) * PAGE_SIZE;
        let pool =
            mm_config::Pool { base: BASE, size: pool_bytes, vaddr: 0x1000_0000, table_pages: 128 };
        let mut c = MmConfig::new(pool);
        c.add_client(mm_config::Client { channel: 5, vmid: 4, window: true, pd: 3 }).unwrap();
        c.add_client(mm_config::Client { channel: 0, vmid: 2, window: false, pd: 1 }).unwrap();
        let mut guest = mm_config::Guest::new(1, 9, 0);
        guest.add_ram(mm_config::RamRange { ipa: RAM, size: 8 << 20 }).unwrap();
        guest
            .add_device(mm_config::DeviceRange { ipa: UART, pa: UART_PA, size: PAGE_SIZE })
            .unwrap();
        c.add_guest(guest).unwrap();
        c.encode().unwrap()
    }

    #[test]
    fn the_patched_words_become_the_managers_configuration() {
        let d = Declared::decode(&words()).unwrap();
        assert_eq!(d.pool_vaddr, 0x1000_0000);
        assert_eq!(d.layout.roots(), PhysAddr::new(BASE));
        assert_eq!(d.layout.table_pages(), TABLE_PAGES);
        assert_eq!(d.client_on(5), Some(ClientId(0)));
        assert_eq!(d.client_on(0), Some(ClientId(1)));
        assert_eq!(d.client_on(1), None);
        assert_eq!(
            (d.pd_of(ClientId(0)), d.pd_of(ClientId(1)), d.pd_of(ClientId(2))),
            (Some(3), Some(1), None)
        );
        assert_eq!(d.clients[0], Some(ClientLink { channel: 5, pd: 3 }));
        let window = d.config.client(ClientId(0)).unwrap().window.unwrap();
        assert_eq!(window.vmid, VmId(4));
        assert_eq!(window.range, range(WINDOW_IPA, WINDOW_SIZE - ANCHOR_BYTES));
        assert_eq!(d.config.client(ClientId(1)).unwrap().window, None);
        assert!(d.config.guest(1).is_none(), "guest ids are VM index + 1");
        let guest = d.config.guest(2).unwrap();
        assert_eq!((guest.vmid, guest.controller), (VmId(9), ClientId(0)));
        assert!(guest.ram_covers(RAM, 8 << 20) && !guest.ram_covers(RAM, 9 << 20));
        assert_eq!(guest.device_at(UART).map(|d| d.pa), Some(PhysAddr::new(UART_PA)));
    }

    #[test]
    fn bad_words_are_refused_with_the_reason() {
        let mut w = words();
        w[0] = 0;
        assert_eq!(
            Declared::decode(&w),
            Err(SetupError::Words(mm_config::MmConfigError::BadMagic))
        );
        assert_eq!(
            Declared::decode(&w[..3]),
            Err(SetupError::Words(mm_config::MmConfigError::Truncated))
        );
        // A VM index past what mm serves.
        let mut w = words();
        w[39] = mm_config::MAX_GUESTS as u64;
        assert_eq!(Declared::decode(&w), Err(SetupError::Config));
    }

    #[test]
    fn a_window_keeps_its_linked_table_while_it_empties() {
        let d = Declared::decode(&words()).unwrap();
        let mut w = World::over(d.layout, d.config);
        let links: Vec<Op> =
            w.m.control().log.iter().copied().filter(|o| matches!(o, Op::Link(..))).collect();
        let [Op::Link(0, VmId(4), table)] = links[..] else { panic!("{links:?}") };
        let root = w.m.ownership().component(OwnerId(9)).unwrap().root();
        let entry = (WINDOW_IPA >> 30) as usize;
        assert_eq!(w.m.mem().read(root, entry), Pte::table(table), "the linked level-2 table");
        let last = WINDOW_IPA + WINDOW_SIZE - ANCHOR_BYTES - PAGE_SIZE;
        for ipa in [WINDOW_IPA, last] {
            w.ok(0, populate(Target::Caller, ipa));
            assert_eq!(w.state(0, Target::Caller, ipa), PageState::Owned);
            w.ok(0, Request::Relinquish { target: Target::Caller, range: pages(ipa, 1) });
            assert_eq!(w.m.mem().read(root, entry), Pte::table(table), "still linked");
            assert!(w.m.mem().page_count(table) >= 2, "the anchor keeps it counted");
        }
        // The anchor is mm's: no request reaches it.
        let anchor = WINDOW_IPA + WINDOW_SIZE - ANCHOR_BYTES;
        w.refused(0, populate(Target::Caller, anchor), MmError::NotDeclared);
        assert_eq!(w.state(0, Target::Caller, anchor), PageState::NoPage, "no page to see");
        w.refused(1, populate(Target::Caller, WINDOW_IPA), MmError::NotDeclared);
        w.ok(0, Request::CreateGuest { guest: g(2) });
        w.ok(0, populate(Target::Guest(g(2)), RAM));
        w.ok(0, Request::Teardown { guest: g(2) });
        assert_eq!(w.m.mem().read(root, entry), Pte::table(table), "teardown leaves it");
    }
}
