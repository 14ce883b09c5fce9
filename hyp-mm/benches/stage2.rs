//! Criterion benchmarks of hyp-mm's stage-2 operations, side by side with
//! aarch64-paging 0.12 on the same work, ending with a plain-text summary.
//!
//! Run with `make bench` (`ci/bench.sh`, which passes `--features host`).
//!
//! Every workload starts from a fresh table built outside the timed part: an
//! empty 40-bit stage-2 table (hyp-mm: [`Geometry::IPA_40`], two
//! concatenated root pages at level 1; aarch64-paging: one root page at
//! level 0, the only way its single-page root covers 40 bits) and, for
//! hyp-mm, a [`MemCache`] topped up with exactly the pages the operation
//! needs. Both libraries write the same leaf descriptors (Normal write-back,
//! inner shareable, AF, S2AP read-write, XN); [`check_workloads`] checks that
//! before anything is timed.
//!
//! A workload is one `fn(&mut Suite)` listed in [`WORKLOADS`]: it opens a
//! [`Workload`], hands each library's variant to [`Workload::hyp_mm`] or
//! [`Workload::aarch64_paging`] (which run it under criterion) and closes it
//! with [`Workload::finish`], which times the variants again, taking turns,
//! for the summary rows. After criterion's own output, [`print_summary`]
//! prints one row per variant: medians, the aarch64-paging / hyp-mm ratio
//! (> 1: hyp-mm is faster), table pages in use, and hyp-mm's count checked
//! against the bound `mapped / 511 + root pages` (a full tree of 4 KiB pages
//! needs 1/512 + 1/512² + ... = 1/511 of the memory it maps). The bench
//! exits non-zero if hyp-mm exceeds the bound.

use std::hint::black_box;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::idmap::IdTranslation;
use aarch64_paging::paging::{self as ap, Constraints, MemoryRegion, PageTable, Translation};
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput};
use hyp_mm::host::Arena;
use hyp_mm::{
    Annotation, Geometry, Ipa, IpaRange, Mapping, MemCache, OwnerId, Ownership, PAGE_SIZE,
    PhysAddr, Prot, Stage2, TableKind, Transfer, Update, VmId,
};

/// The workloads, in the order they run and appear in the summary.
///
const WORKLOADS: &[fn(&mut Suite)] = &[
    map_pages,
    map_blocks,
    unmap_pages,
    annotate_mapped,
    annotate_empty,
    greedy_faults,
    share_unshare,
];

const GIB: u64 = 1 << 30;
const MIB_2: u64 = 2 << 20;
/// Where the workloads map 1 GiB: QEMU virt's RAM base, 1 GiB aligned.
const RAM: u64 = 0x4000_0000;
/// First byte of the host arena's "physical" table memory: any address
/// aligned to the concatenated root works; this one is outside every IPA
/// the workloads map.
const ARENA_BASE: u64 = 0x80_0000_0000;
/// Table pages under the root that 1 GiB of 4 KiB pages takes: 512 level-3
/// tables and the level-2 table above them.
const PAGES_1GIB: usize = 513;
/// 1 GiB slots in a 40-bit IPA space: the per-operation workloads on single
/// entries repeat the operation once per slot, so that one timed run is
/// long enough to measure next to its setup.
const SLOTS: u64 = 1 << 10;
/// Criterion's name for the aarch64-paging variant of a workload.
const PAGING: &str = "aarch64-paging";
/// Runs per variant for the summary's medians (criterion's own runs come
/// first and are not reused).
const SUMMARY_RUNS: usize = 15;

/// aarch64-paging's root level for a 40-bit IPA: its root is one 512-entry
/// page, so level 1 only reaches 39 bits (no concatenated roots).
const PAGING_ROOT_LEVEL: usize = 0;
/// hyp-mm's leaf attributes for [`Prot::RW`] in aarch64-paging's terms.
const PAGING_NORMAL_RW: Stage2Attributes = Stage2Attributes::VALID
    .union(Stage2Attributes::MEMATTR_NORMAL_OUTER_WB)
    .union(Stage2Attributes::MEMATTR_NORMAL_INNER_WB)
    .union(Stage2Attributes::S2AP_ACCESS_RW)
    .union(Stage2Attributes::SH_INNER)
    .union(Stage2Attributes::ACCESS_FLAG)
    .union(Stage2Attributes::XN);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    // `cargo bench` passes --bench; `cargo test --benches` does not, and
    // criterion then runs every routine once as a test.
    let benchmarking = has("--bench") && !has("--test");
    let listing = has("--list");
    let runs = match (listing, benchmarking) {
        (true, _) => 0,
        (false, true) => SUMMARY_RUNS,
        (false, false) => 1,
    };
    if !listing {
        check_workloads();
    }
    let criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut suite = Suite { criterion, runs, rows: Vec::new() };
    for workload in WORKLOADS {
        workload(&mut suite);
    }
    suite.criterion.final_summary();
    if runs > 0 && !print_summary(&suite.rows, runs) {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// The workloads.

/// 1 GiB at [`RAM`] in 4 KiB pages into an empty table; for hyp-mm also with
/// the cache top-up (and its `pages_needed` walk) inside the timed part,
/// which is where aarch64-paging pays for its allocations.
fn map_pages(suite: &mut Suite) {
    let range = ipa_range(RAM, GIB);
    let mapping = Mapping::new(Prot::RW).pages();
    let mut w = suite.workload("map_pages", "map 1 GiB, 4 KiB pages", 1, Some(GIB));
    w.hyp_mm(
        "hyp-mm",
        || HypTable::empty(PAGES_1GIB).topped_up(range, map_update(range, mapping)),
        |t| t.map(range, mapping),
    );
    w.hyp_mm(
        "hyp-mm incl. top-up",
        || HypTable::empty(PAGES_1GIB),
        |t| t.topped_up(range, map_update(range, mapping)).map(range, mapping),
    );
    w.aarch64_paging(PagingTable::new, |t| t.map(range, Constraints::NO_BLOCK_MAPPINGS));
    w.finish();
}

/// Block mappings: a whole 1 GiB block (one level-1 entry, repeated over
/// every 1 GiB slot of the IPA space and reported per operation), and 1 GiB
/// that is only 2 MiB aligned (512 level-2 blocks under two tables).
fn map_blocks(suite: &mut Suite) {
    let slots = || (0..SLOTS).map(|slot| ipa_range(slot * GIB, GIB));
    let mapping = Mapping::new(Prot::RW);
    let mut w = suite.workload("map_block_1g", "map 1 GiB block, per op", SLOTS, Some(SLOTS * GIB));
    w.hyp_mm(
        "hyp-mm",
        || HypTable::empty(0),
        |mut t| {
            slots().for_each(|r| t.map_one(r, mapping));
            t
        },
    );
    w.aarch64_paging(PagingTable::new, |mut t| {
        slots().for_each(|r| t.map_one(r, Constraints::empty()));
        t
    });
    w.finish();

    let range = ipa_range(RAM + MIB_2, GIB);
    let mut w = suite.workload("map_blocks_2m", "map 1 GiB, 2 MiB blocks", 1, Some(GIB));
    w.hyp_mm(
        "hyp-mm",
        || HypTable::empty(2).topped_up(range, map_update(range, mapping)),
        |t| t.map(range, mapping),
    );
    w.aarch64_paging(PagingTable::new, |t| t.map(range, Constraints::empty()));
    w.finish();
}

/// Unmapping the 1 GiB that [`map_pages`] mapped; both libraries free all
/// 513 tables below the level-1 entry. aarch64-paging unmaps by mapping
/// with attributes that lack `VALID` (its documented way).
fn unmap_pages(suite: &mut Suite) {
    let range = ipa_range(RAM, GIB);
    let mapped = HypTable::mapped_1gib_pages();
    let mut w = suite.workload("unmap_pages", "unmap 1 GiB of 4 KiB pages", 1, Some(0));
    w.hyp_mm(
        "hyp-mm",
        || mapped.duplicate().topped_up(range, Update::Unmap),
        |mut t| {
            t.s2.unmap(&mut t.arena, &mut t.cache, range).expect("unmapping a mapped range works");
            t
        },
    );
    w.aarch64_paging(
        || PagingTable::new().map(range, Constraints::NO_BLOCK_MAPPINGS),
        |t| t.unmap(range),
    );
    w.finish();
}

/// hyp-mm only (aarch64-paging has no annotations): give 1 GiB mapped in
/// 4 KiB pages to owner 1, which replaces the level-1 table entry by one
/// annotation and frees the 513 tables below it.
fn annotate_mapped(suite: &mut Suite) {
    let range = ipa_range(RAM, GIB);
    let update = Update::Annotate(owner_1());
    let mapped = HypTable::mapped_1gib_pages();
    let mut w = suite.workload("annotate_mapped", "annotate 1 GiB of 4 KiB pages", 1, Some(0));
    w.hyp_mm("hyp-mm", || mapped.duplicate().topped_up(range, update), |t| t.annotate(range));
    w.finish();
}

/// hyp-mm only: annotate an empty 1 GiB, one level-1 entry, repeated over
/// every 1 GiB slot and reported per operation.
fn annotate_empty(suite: &mut Suite) {
    let mut w = suite.workload("annotate_empty", "annotate empty 1 GiB, per op", SLOTS, Some(0));
    w.hyp_mm(
        "hyp-mm",
        || HypTable::empty(0),
        |mut t| {
            (0..SLOTS).for_each(|slot| t.annotate_one(ipa_range(slot * GIB, GIB)));
            t
        },
    );
    w.finish();
}

/// First fault of [`greedy_faults`]: one page past [`RAM`], so the
/// permitted range is not 2 MiB aligned at either end.
const GREEDY_START: u64 = RAM + PAGE_SIZE;
/// Faults in [`greedy_faults`]: one per 2 MiB step over 1 GiB + 4 KiB.
const GREEDY_FAULTS: u64 = GIB / MIB_2 + 1;
/// What the faults map: a 4 KiB page at each end and 2 MiB blocks between.
const GREEDY_MAPPED: u64 = (GREEDY_FAULTS - 2) * MIB_2 + 2 * PAGE_SIZE;

/// hyp-mm only: greedy identity-map faults at every 2 MiB step of a
/// permitted range of 1 GiB + 4 KiB from [`GREEDY_START`], on an empty
/// table. The first and last faults get a 4 KiB page (their 2 MiB block
/// leaves the range), the 511 between get a 2 MiB block each. Reported per
/// fault.
fn greedy_faults(suite: &mut Suite) {
    let mut w = suite.workload(
        "greedy_faults",
        "greedy idmap fault, per fault",
        GREEDY_FAULTS,
        Some(GREEDY_MAPPED),
    );
    w.hyp_mm(
        "hyp-mm",
        // Two tables at each end: a level-2 and a level-3 table.
        || HypTable::empty(4).with_cache(4),
        |mut t| {
            black_box(t.greedy());
            t
        },
    );
    w.finish();
}

/// Share / unshare round trips per timed run.
const ROUND_TRIPS: u64 = 100_000;

/// hyp-mm only: a guest shares one page it owns with a PD and unshares it,
/// [`ROUND_TRIPS`] times; each round trip checks both tables and the ledger
/// and changes the software bits of the owner's leaf, maps and unmaps the
/// borrower's leaf, and edits the ledger record twice. Reported per round
/// trip.
fn share_unshare(suite: &mut Suite) {
    let mut w = suite.workload("share_unshare", "share + unshare round trip", ROUND_TRIPS, None);
    w.hyp_mm("hyp-mm", Owners::new, |mut o| {
        for _ in 0..ROUND_TRIPS {
            o.round_trip();
        }
        o
    });
    w.finish();
}

/// A ledger over 2 MiB of "RAM" and two components: a guest that owns its
/// first page and a PD it shares it with.
struct Owners {
    arena: Arena,
    own: Ownership<3>,
    cache: MemCache,
    capacity: usize,
}

impl Owners {
    const GUEST: OwnerId = OwnerId(1);
    const PD: OwnerId = OwnerId(2);
    const CAPACITY: usize = 64;

    fn new() -> Self {
        let g = Geometry::IPA_40;
        let mut arena = Arena::new(PhysAddr::new(ARENA_BASE), Self::CAPACITY);
        arena.record_tlb = false;
        arena.poison_freed = false;
        let table = |arena: &mut Arena, vmid, kind| {
            let root = arena.alloc_contiguous(g.root_pages()).expect("the arena fits a root");
            Stage2::new(g, root, VmId(vmid), kind).expect("aligned root")
        };
        let ledger = table(&mut arena, 0, TableKind::Ledger);
        let mut own = Ownership::new(ledger, ipa_range(RAM, MIB_2)).expect("valid ledger");
        for (id, vmid) in [(Self::GUEST, 1), (Self::PD, 2)] {
            let t = table(&mut arena, vmid, TableKind::Component);
            own.add_component(id, t).expect("new component");
        }
        let mut cache = MemCache::new();
        cache.topup(&mut arena, 16).expect("the arena fits the cache");
        let donate = Transfer {
            from: OwnerId::DEFAULT,
            from_addr: RAM,
            to: Self::GUEST,
            to_ipa: Ipa::new(RAM),
            pages: 1,
        };
        own.donate(&mut arena, &mut cache, donate, Prot::RW).expect("donate");
        // The PD's first share allocates its tables; from then on a round
        // trip frees and reallocates them, as a real one would.
        Owners { arena, own, cache, capacity: Self::CAPACITY }
    }

    fn round_trip(&mut self) {
        let t = Transfer {
            from: Self::GUEST,
            from_addr: RAM,
            to: Self::PD,
            to_ipa: Ipa::new(0x1000_0000),
            pages: 1,
        };
        self.own.share(&mut self.arena, &mut self.cache, t, Prot::RW).expect("share");
        self.own.unshare(&mut self.arena, &mut self.cache, t).expect("unshare");
        self.cache.topup(&mut self.arena, 16).expect("pages freed by unshare come back");
    }
}

impl TablePages for Owners {
    fn table_pages(&self) -> usize {
        self.capacity - self.arena.free_pages() - self.cache.len()
    }
}

/// Checks, before anything is timed, that the two libraries do the same
/// work: identical leaf descriptors at the same levels, and the greedy
/// faults mapping what [`greedy_faults`] says they do.
fn check_workloads() {
    let range = ipa_range(RAM, GIB);
    let hyp = HypTable::mapped_1gib_pages();
    let paging = PagingTable::new().map(range, Constraints::NO_BLOCK_MAPPINGS);
    for ipa in [RAM, RAM + 0x1234_5000, RAM + GIB - PAGE_SIZE] {
        assert_eq!(hyp.leaf(ipa), paging.leaf(ipa), "4 KiB leaf at {ipa:#x}");
        assert_eq!(hyp.leaf(ipa).1, 3);
    }
    let block = ipa_range(RAM, GIB);
    let mut hyp = HypTable::empty(0);
    hyp.map_one(block, Mapping::new(Prot::RW));
    let mut paging = PagingTable::new();
    paging.map_one(block, Constraints::empty());
    assert_eq!(hyp.leaf(RAM), paging.leaf(RAM), "1 GiB block");
    assert_eq!(hyp.leaf(RAM).1, 1);

    let mut t = HypTable::empty(4).with_cache(4);
    assert_eq!(t.greedy(), GREEDY_MAPPED, "bytes the greedy faults map");
    assert!(t.cache.is_empty(), "the greedy faults take exactly the 4 cached pages");
}

// ---------------------------------------------------------------------------
// The two libraries' tables.

/// Table pages in use, root included.
trait TablePages {
    fn table_pages(&self) -> usize;
}

/// A hyp-mm component table over a host arena, and its memory cache.
struct HypTable {
    arena: Arena,
    s2: Stage2,
    cache: MemCache,
    /// Pages of the arena, root included.
    capacity: usize,
}

impl HypTable {
    /// An empty 40-bit table whose arena holds its root and `tables` more
    /// table pages.
    fn empty(tables: usize) -> Self {
        let geometry = Geometry::IPA_40;
        let capacity = geometry.root_pages() + tables;
        let mut arena = Arena::new(PhysAddr::new(ARENA_BASE), capacity);
        arena.record_tlb = false;
        arena.poison_freed = false;
        let root = arena.alloc_contiguous(geometry.root_pages()).expect("the arena fits the root");
        let s2 = Stage2::new(geometry, root, VmId(1), TableKind::Component)
            .expect("the arena base is aligned for the root");
        HypTable { arena, s2, cache: MemCache::new(), capacity }
    }

    /// 1 GiB at [`RAM`] mapped in 4 KiB pages, every table page in use and
    /// the cache empty (so that [`HypTable::duplicate`] can copy it).
    fn mapped_1gib_pages() -> Self {
        let range = ipa_range(RAM, GIB);
        let mapping = Mapping::new(Prot::RW).pages();
        let t = HypTable::empty(PAGES_1GIB).topped_up(range, map_update(range, mapping));
        t.map(range, mapping)
    }

    /// A copy of this table in a copy of its arena (a cheaper setup than
    /// building it again). The cache must be empty: it cannot be copied.
    fn duplicate(&self) -> Self {
        assert!(self.cache.is_empty(), "a table with cached pages cannot be duplicated");
        let s2 = Stage2::new(self.s2.geometry(), self.s2.root(), self.s2.vmid(), self.s2.kind())
            .expect("the root was accepted before");
        HypTable { arena: self.arena.clone(), s2, cache: MemCache::new(), capacity: self.capacity }
    }

    /// Tops the cache up with what `update` of `range` needs.
    fn topped_up(self, range: IpaRange, update: Update) -> Self {
        let needed = self.s2.pages_needed(&self.arena, range, update).expect("the update is valid");
        self.with_cache(needed)
    }

    /// Tops the cache up to `pages` pages.
    fn with_cache(mut self, pages: usize) -> Self {
        self.cache.topup(&mut self.arena, pages).expect("the arena holds the pages needed");
        self
    }

    /// Identity-maps `range` (the timed part of the map workloads).
    fn map(mut self, range: IpaRange, mapping: Mapping) -> Self {
        self.map_one(range, mapping);
        self
    }

    fn map_one(&mut self, range: IpaRange, mapping: Mapping) {
        let pa = PhysAddr::new(range.start().raw());
        self.s2.map(&mut self.arena, &mut self.cache, range, pa, mapping).expect("the map works");
    }

    fn annotate(mut self, range: IpaRange) -> Self {
        self.annotate_one(range);
        self
    }

    fn annotate_one(&mut self, range: IpaRange) {
        let (arena, cache) = (&mut self.arena, &mut self.cache);
        self.s2.annotate(arena, cache, range, owner_1()).expect("the annotation works");
    }

    /// The faults of [`greedy_faults`]; returns the bytes they mapped.
    fn greedy(&mut self) -> u64 {
        let permitted = IpaRange::new(Ipa::new(GREEDY_START), GIB + PAGE_SIZE)
            .expect("the permitted range is page aligned");
        (0..GREEDY_FAULTS)
            .map(|k| {
                let fault = Ipa::new(GREEDY_START + k * MIB_2);
                let (arena, cache) = (&mut self.arena, &mut self.cache);
                let mapped = self
                    .s2
                    .idmap_greedy(arena, cache, fault, permitted, Prot::RW)
                    .expect("each fault meets an empty entry");
                mapped.size()
            })
            .sum()
    }

    /// The descriptor bits that translate `ipa`, and their level.
    fn leaf(&self, ipa: u64) -> (u64, u8) {
        let (pte, level) = self.s2.get_leaf(&self.arena, Ipa::new(ipa)).expect("ipa in range");
        (pte.0, level)
    }
}

impl TablePages for HypTable {
    fn table_pages(&self) -> usize {
        self.capacity - self.arena.free_pages() - self.cache.len()
    }
}

/// aarch64-paging's heap-backed identity translation, counting the table
/// pages it holds.
#[derive(Default)]
struct CountingTranslation {
    inner: IdTranslation<Stage2Attributes>,
    live: usize,
}

impl Translation<Stage2Attributes> for CountingTranslation {
    fn allocate_table(&mut self) -> (NonNull<PageTable<Stage2Attributes>>, PhysicalAddress) {
        self.live += 1;
        self.inner.allocate_table()
    }

    unsafe fn deallocate_table(&mut self, page_table: NonNull<PageTable<Stage2Attributes>>) {
        self.live -= 1;
        // SAFETY: our caller promises that `page_table` came from
        // `allocate_table` on this translation and is not freed yet; every
        // table this translation hands out comes from `self.inner`.
        unsafe { self.inner.deallocate_table(page_table) }
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<Stage2Attributes>> {
        self.inner.physical_to_virtual(pa)
    }
}

/// An aarch64-paging stage-2 table, never activated (so, like hyp-mm's
/// arena with `record_tlb` off, it does no TLB maintenance).
struct PagingTable {
    map: aarch64_paging::Mapping<CountingTranslation, ap::Stage2>,
}

impl PagingTable {
    fn new() -> Self {
        let translation = CountingTranslation::default();
        PagingTable {
            map: aarch64_paging::Mapping::new(translation, PAGING_ROOT_LEVEL, ap::Stage2),
        }
    }

    fn map(mut self, range: IpaRange, constraints: Constraints) -> Self {
        self.map_one(range, constraints);
        self
    }

    fn map_one(&mut self, range: IpaRange, constraints: Constraints) {
        let pa = PhysicalAddress(range.start().raw() as usize);
        let region = region(range);
        self.map.map_range(&region, pa, PAGING_NORMAL_RW, constraints).expect("the map works");
    }

    fn unmap(mut self, range: IpaRange) -> Self {
        let (pa, invalid) = (PhysicalAddress(0), Stage2Attributes::empty());
        let region = region(range);
        self.map.map_range(&region, pa, invalid, Constraints::empty()).expect("the unmap works");
        self
    }

    /// The descriptor bits that translate `ipa`, and their level.
    fn leaf(&self, ipa: u64) -> (u64, u8) {
        let mut found = None;
        let page = MemoryRegion::new(ipa as usize, (ipa + PAGE_SIZE) as usize);
        self.map
            .walk_range(&page, &mut |_, descriptor, level| {
                let bits = descriptor.flags().bits() | descriptor.output_address().0;
                found = Some((bits as u64, level as u8));
                Ok(())
            })
            .expect("ipa in range");
        found.expect("the walk visits the entry")
    }
}

impl TablePages for PagingTable {
    fn table_pages(&self) -> usize {
        self.map.translation().live
    }
}

// ---------------------------------------------------------------------------
// Running and reporting.

/// Criterion, and the summary rows collected so far.
struct Suite {
    criterion: Criterion,
    /// Timed runs per variant for the summary.
    runs: usize,
    rows: Vec<Row>,
}

impl Suite {
    /// Opens a workload: criterion group `id`, summary rows titled `title`.
    /// Each timed run performs `ops` operations (times are reported per
    /// operation) and leaves `mapped` bytes mapped (`None`: the bound does
    /// not apply).
    fn workload<'f>(
        &mut self,
        id: &str,
        title: &'static str,
        ops: u64,
        mapped: Option<u64>,
    ) -> Workload<'_, 'f> {
        let mut group = self.criterion.benchmark_group(id);
        if ops > 1 {
            group.throughput(Throughput::Elements(ops));
        }
        Workload {
            group,
            runs: self.runs,
            rows: &mut self.rows,
            title,
            ops,
            mapped,
            variants: Vec::new(),
        }
    }
}

/// One timed run of a variant for the summary: builds its input, times the
/// routine, and returns the time and the table pages in use afterwards.
type TimedRun<'f> = Box<dyn FnMut() -> (Duration, usize) + 'f>;

/// One library's (or one hyp-mm variant's) take on a workload.
struct Variant<'f> {
    name: &'static str,
    run: TimedRun<'f>,
}

/// One workload being measured; see [`Suite::workload`].
struct Workload<'s, 'f> {
    group: BenchmarkGroup<'s, WallTime>,
    runs: usize,
    rows: &'s mut Vec<Row>,
    title: &'static str,
    ops: u64,
    mapped: Option<u64>,
    variants: Vec<Variant<'f>>,
}

impl<'f> Workload<'_, 'f> {
    /// Adds a hyp-mm variant named `name` (starting with "hyp-mm"):
    /// `setup` builds the input untimed, `routine` is timed and returns the
    /// table for counting.
    fn hyp_mm<I, O: TablePages>(
        &mut self,
        name: &'static str,
        setup: impl FnMut() -> I + 'f,
        routine: impl FnMut(I) -> O + 'f,
    ) {
        self.variant(name, setup, routine);
    }

    /// Adds aarch64-paging's take on the same work.
    fn aarch64_paging<I, O: TablePages>(
        &mut self,
        setup: impl FnMut() -> I + 'f,
        routine: impl FnMut(I) -> O + 'f,
    ) {
        self.variant(PAGING, setup, routine);
    }

    /// Runs the variant under criterion now and keeps it for the summary.
    fn variant<I, O: TablePages>(
        &mut self,
        name: &'static str,
        mut setup: impl FnMut() -> I + 'f,
        mut routine: impl FnMut(I) -> O + 'f,
    ) {
        self.group.bench_function(name, |b| {
            b.iter_batched(&mut setup, &mut routine, BatchSize::LargeInput);
        });
        let run = move || {
            let input = black_box(setup());
            let start = Instant::now();
            let output = black_box(routine(input));
            let time = start.elapsed();
            (time, output.table_pages()) // the output is dropped untimed
        };
        self.variants.push(Variant { name, run: Box::new(run) });
    }

    /// Closes the criterion group, times the variants for the summary and
    /// adds one row per hyp-mm variant. The variants take turns, run by
    /// run, so that a busy machine slows them alike and the ratios hold.
    fn finish(mut self) {
        self.group.finish();
        if self.runs == 0 {
            return; // listing: criterion only printed the names
        }
        let mut times = vec![Vec::with_capacity(self.runs); self.variants.len()];
        let mut pages = vec![0; self.variants.len()];
        for _ in 0..self.runs {
            for (i, variant) in self.variants.iter_mut().enumerate() {
                let (time, count) = (variant.run)();
                times[i].push(time);
                pages[i] = count;
            }
        }
        let ops = u32::try_from(self.ops).expect("operations per run fit in u32");
        let results: Vec<(&str, Duration, usize)> = self
            .variants
            .iter()
            .zip(times.iter_mut().zip(pages))
            .map(|(variant, (times, pages))| {
                times.sort_unstable();
                (variant.name, times[times.len() / 2] / ops, pages)
            })
            .collect();
        let paging = results
            .iter()
            .find(|(name, ..)| *name == PAGING)
            .map(|&(_, time, pages)| (time, pages));
        for &(name, time, pages) in results.iter().filter(|(name, ..)| *name != PAGING) {
            let workload = match name.strip_prefix("hyp-mm ") {
                None => self.title.to_string(),
                Some(variant) => format!("{} ({variant})", self.title),
            };
            self.rows.push(Row { workload, hyp_mm: (time, pages), paging, mapped: self.mapped });
        }
    }
}

/// One line of the summary.
struct Row {
    workload: String,
    /// Median per operation and table pages in use after the run.
    hyp_mm: (Duration, usize),
    paging: Option<(Duration, usize)>,
    /// Bytes mapped after the run, if the table-page bound applies.
    mapped: Option<u64>,
}

/// Prints the summary table; returns whether hyp-mm kept every bound.
fn print_summary(rows: &[Row], runs: usize) -> bool {
    let hyp_root = Geometry::IPA_40.root_pages();
    let paging_root = 1;
    println!();
    let timing = if runs == 1 {
        "one unoptimised run each: a smoke test, not a measurement".to_string()
    } else {
        format!("median of {runs} runs, per operation")
    };
    println!("hyp-mm vs aarch64-paging 0.12, 40-bit stage 2 ({timing})");
    let header = format!(
        "{:<46} {:>10} {:>10} {:>7} {:>12} {:>14} {:>7} {:>5}",
        "workload", "hyp-mm", "a64-paging", "ratio", "pages h / a", "pages/GiB h/a", "bound", "ok"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    let mut all_ok = true;
    for row in rows {
        let (hyp_time, hyp_pages) = row.hyp_mm;
        let paging_time = row.paging.map_or("-".into(), |(t, _)| fmt_duration(t));
        let ratio = row.paging.map_or("-".into(), |(t, _)| {
            format!("{:.2}", t.as_secs_f64() / hyp_time.as_secs_f64())
        });
        let paging_pages = row.paging.map_or("-".into(), |(_, p)| p.to_string());
        let (per_gib, bound, ok) = match row.mapped {
            Some(mapped) => {
                let bound = (mapped / PAGE_SIZE).div_ceil(511) as usize + hyp_root;
                let ok = hyp_pages <= bound;
                all_ok &= ok;
                let per_gib = |pages: usize, root: usize| {
                    if mapped == 0 {
                        "-".to_string()
                    } else {
                        format!("{:.1}", (pages - root) as f64 * GIB as f64 / mapped as f64)
                    }
                };
                let paging_per_gib =
                    row.paging.map_or("-".into(), |(_, p)| per_gib(p, paging_root));
                let per_gib = format!("{}/{}", per_gib(hyp_pages, hyp_root), paging_per_gib);
                (per_gib, bound.to_string(), if ok { "yes" } else { "OVER" })
            }
            None => ("-".into(), "-".into(), "-"),
        };
        println!(
            "{:<46} {:>10} {:>10} {:>7} {:>12} {:>14} {:>7} {:>5}",
            row.workload,
            fmt_duration(hyp_time),
            paging_time,
            ratio,
            format!("{hyp_pages} / {paging_pages}"),
            per_gib,
            bound,
            ok,
        );
    }
    println!();
    println!("ratio: aarch64-paging / hyp-mm time (> 1: hyp-mm is faster).");
    println!(
        "pages: table pages in use after the run, root included (hyp-mm: {hyp_root} concatenated \
         root pages at level 1; aarch64-paging: {paging_root} root page at level 0)."
    );
    println!("bound: ceil(mapped 4 KiB pages / 511) + hyp-mm's root pages; ok: hyp-mm within it.");
    println!(
        "hyp-mm allocates nothing while timed (its cache is topped up in setup, except in the \
         'incl. top-up' row); aarch64-paging's times include allocating each table from the heap."
    );
    println!("hyp-mm runs on the test Arena with TLB recording and freed-page poisoning off.");
    if !all_ok {
        println!("hyp-mm used more table pages than the bound allows.");
    }
    all_ok
}

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn ipa_range(start: u64, size: u64) -> IpaRange {
    IpaRange::new(Ipa::new(start), size).expect("workload ranges are page aligned")
}

fn region(range: IpaRange) -> MemoryRegion {
    MemoryRegion::new(range.start().raw() as usize, range.end().raw() as usize)
}

fn map_update(range: IpaRange, mapping: Mapping) -> Update {
    Update::Map { pa: PhysAddr::new(range.start().raw()), mapping }
}

fn owner_1() -> Annotation {
    Annotation::new(OwnerId(1), 0).expect("owner 1 without metadata is a valid annotation")
}
