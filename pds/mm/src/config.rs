//! What system.xml tells the memory manager: its pool, its clients and
//! their windows, and each guest's VMID, controller, RAM and devices.
//!
//! Pool layout (physical, one range system.xml declares for the mm PD):
//!
//! ```text
//! base                          roots: ROOT_AREA_PAGES pages, one 8 KiB root per
//!                               table (the ledger, each guest, each window)
//! base + ROOT_AREA_PAGES pages  table pages: the page source of every other
//!                               table page (and, on the target, its refcounts)
//! ... + table_pages pages       managed memory: the pages that change hands,
//!  ...                          recorded in the ledger, up to base + bytes
//! ```

use hyp_mm::desc::level_size;
use hyp_mm::{Geometry, Ipa, IpaRange, OwnerId, PAGE_SIZE, PhysAddr, VmId};
use tenure_abi::mm_config;
use tenure_abi::vcpu::{WINDOW_IPA, WINDOW_SIZE};

/// Most guests one memory manager serves: a fixed capacity, as mm
/// allocates nothing; the configuration's layout fixes it.
pub const MAX_GUESTS: usize = mm_config::MAX_GUESTS;
/// Most clients (PDs with a channel to mm), likewise.
pub const MAX_CLIENTS: usize = mm_config::MAX_CLIENTS;
/// Most RAM ranges one guest declares.
pub const MAX_RAM_RANGES: usize = mm_config::MAX_RAM_RANGES;
/// Most passthrough device ranges one guest declares.
pub const MAX_DEVICE_RANGES: usize = mm_config::MAX_DEVICE_RANGES;
/// Components of the ledger: the default owner, every guest, every window.
pub const COMPONENTS: usize = 1 + MAX_GUESTS + MAX_CLIENTS;
/// The geometry of every table mm keeps: 40-bit IPA (the guests' and the
/// PDs' stage 2), and the ledger's identity map of physical memory.
pub const GEOMETRY: Geometry = Geometry::IPA_40;
/// Pages of one root (two concatenated level-1 tables).
pub const ROOT_PAGES: usize = GEOMETRY.root_pages();
/// Pages at the pool's base that hold the roots: one per component.
pub const ROOT_AREA_PAGES: usize = mm_config::ROOT_AREA_PAGES as usize;
const _: () = assert!(ROOT_AREA_PAGES == COMPONENTS * ROOT_PAGES, "one root per component");
const _: () = assert!(mm_config::POOL_ALIGN == GEOMETRY.root_bytes(), "roots need their size");

/// Bytes at the end of a window's gigabyte that mm keeps for itself: one
/// level-2 block, annotated with [`ANCHOR_OWNER`] when the window is made.
/// The kernel links the window's level-2 table into the client's own
/// table once, at start; hyp-mm frees a table that holds only zeroes, so
/// this one non-zero entry keeps the table alive however the window fills
/// and empties. The anchor costs IPA space, no memory: a block needs no
/// level-3 table.
pub const ANCHOR_BYTES: u64 = level_size(2);
/// The owner the anchor is annotated with: a component id no table has,
/// so no request can name, move or map it.
pub const ANCHOR_OWNER: OwnerId = OwnerId(u16::MAX);
/// What a window's level-2 table spans: one level-1 entry.
pub const WINDOW_SPAN: u64 = level_size(1);
const _: () = assert!(WINDOW_SPAN == WINDOW_SIZE, "the kernel links one level-1 entry");

/// A client of mm: the index of the channel's entry in [`Config::clients`].
/// The PD's `protected` entry maps the channel a call arrives on to it, so
/// a caller can never claim to be another.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ClientId(pub u8);

/// The part of a client's address space whose table mm owns, through which
/// the client maps pages it is given, lent or shared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Window {
    /// The client PD's VMID (its TLB entries are invalidated under it).
    pub vmid: VmId,
    /// The window's IPA range in the client's address space.
    pub range: IpaRange,
}

/// One client.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ClientConfig {
    /// Its window, if it has one.
    pub window: Option<Window>,
}

/// Device memory a guest may map: `ipa` in the guest's space maps physical
/// memory from `pa` on, with device attributes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeviceRange {
    /// Where the guest sees the device.
    pub ipa: IpaRange,
    /// Where the device is.
    pub pa: PhysAddr,
}

impl DeviceRange {
    /// The physical address behind `ipa` (inside the range).
    #[must_use]
    pub fn pa_of(&self, ipa: u64) -> PhysAddr {
        self.pa.add(ipa - self.ipa.start().raw())
    }
}

/// One guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestConfig {
    /// The guest's VMID.
    pub vmid: VmId,
    /// The client that may make requests about it (its VMM).
    pub controller: ClientId,
    /// Its RAM: where pages may be populated, donated, shared and lent.
    pub ram: [Option<IpaRange>; MAX_RAM_RANGES],
    /// Its passthrough devices, mapped on fault.
    pub devices: [Option<DeviceRange>; MAX_DEVICE_RANGES],
    /// The most pool pages it may own at once (system.xml's
    /// `memory_limit`; `u64::MAX` for none).
    pub limit: u64,
}

impl GuestConfig {
    /// A guest with no RAM and no devices yet.
    #[must_use]
    pub const fn new(vmid: VmId, controller: ClientId) -> Self {
        GuestConfig {
            vmid,
            controller,
            ram: [None; MAX_RAM_RANGES],
            devices: [None; MAX_DEVICE_RANGES],
            limit: u64::MAX,
        }
    }

    /// Limits the guest to `pages` pool pages.
    #[must_use]
    pub const fn with_limit(mut self, pages: u64) -> Self {
        self.limit = pages;
        self
    }

    /// Adds a RAM range; `None` if the list is full.
    #[must_use]
    pub fn with_ram(mut self, range: IpaRange) -> Option<Self> {
        *self.ram.iter_mut().find(|r| r.is_none())? = Some(range);
        Some(self)
    }

    /// Adds a device range; `None` if the list is full.
    #[must_use]
    pub fn with_device(mut self, device: DeviceRange) -> Option<Self> {
        *self.devices.iter_mut().find(|r| r.is_none())? = Some(device);
        Some(self)
    }

    /// Whether `[start, start + size)` lies inside one RAM range.
    #[must_use]
    pub fn ram_covers(&self, start: u64, size: u64) -> bool {
        self.ram.iter().flatten().any(|r| r.covers(start, size))
    }

    /// Whether `[start, start + size)` meets a device range.
    #[must_use]
    pub fn meets_device(&self, start: u64, size: u64) -> bool {
        self.devices
            .iter()
            .flatten()
            .any(|d| start < d.ipa.end().raw() && d.ipa.start().raw() < start.saturating_add(size))
    }

    /// The device range holding `ipa`.
    #[must_use]
    pub fn device_at(&self, ipa: u64) -> Option<&DeviceRange> {
        self.devices.iter().flatten().find(|d| d.ipa.contains(Ipa::new(ipa)))
    }
}

/// Everything system.xml declares for mm but its pool.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Config {
    /// Guests by id: entry `i` is guest `i + 1`.
    pub guests: [Option<GuestConfig>; MAX_GUESTS],
    /// Clients by [`ClientId`].
    pub clients: [Option<ClientConfig>; MAX_CLIENTS],
}

impl Default for Config {
    fn default() -> Self {
        Config { guests: [None; MAX_GUESTS], clients: [None; MAX_CLIENTS] }
    }
}

impl Config {
    /// The configuration of guest `id`, if declared.
    #[must_use]
    pub fn guest(&self, id: u16) -> Option<&GuestConfig> {
        self.guests.get(usize::from(id).checked_sub(1)?)?.as_ref()
    }

    /// The configuration of client `id`, if declared.
    #[must_use]
    pub fn client(&self, id: ClientId) -> Option<&ClientConfig> {
        self.clients.get(usize::from(id.0))?.as_ref()
    }
}

/// The ledger owner id of guest `id` (1..=MAX_GUESTS).
#[must_use]
pub const fn guest_owner(id: u16) -> OwnerId {
    OwnerId(id)
}

/// The ledger owner id of client `id`'s window.
#[must_use]
pub const fn client_owner(id: ClientId) -> OwnerId {
    OwnerId(MAX_GUESTS as u16 + 1 + id.0 as u16)
}

/// Why a memory manager could not start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SetupError {
    /// The words the tool patched are not a configuration
    /// ([`mm_config::MmConfig::decode`] says why).
    Words(mm_config::MmConfigError),
    /// The pool is misaligned, too small for its roots and table pages, or
    /// not page sized.
    Pool,
    /// A guest's controller is undeclared, a window or device range is
    /// malformed (a window must lie in one gigabyte, clear of its anchor),
    /// a device range overlaps managed memory, a VM index is past
    /// [`MAX_GUESTS`], or two tables share a VMID.
    Config,
    /// The table pages cannot fill the first cache.
    TableMemory,
    /// The kernel refused to link a window.
    Kernel,
}

/// Where the pool's three parts are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PoolLayout {
    base: PhysAddr,
    table_pages: u64,
    pages: u64,
}

impl PoolLayout {
    /// Splits the pool of `bytes` at `base` into roots, `table_pages`
    /// table pages and managed memory (at least one page).
    pub fn new(base: PhysAddr, bytes: u64, table_pages: u64) -> Result<Self, SetupError> {
        let root_bytes = GEOMETRY.root_bytes();
        let reserved = (ROOT_AREA_PAGES as u64).checked_add(table_pages).ok_or(SetupError::Pool)?;
        let pages = bytes / PAGE_SIZE;
        if !base.is_aligned(root_bytes)
            || !bytes.is_multiple_of(PAGE_SIZE)
            || base.checked_add(bytes).is_none()
            || pages <= reserved
        {
            return Err(SetupError::Pool);
        }
        Ok(PoolLayout { base, table_pages, pages })
    }

    /// The root area.
    #[must_use]
    pub fn roots(&self) -> PhysAddr {
        self.base
    }

    /// The first table page.
    #[must_use]
    pub fn tables(&self) -> PhysAddr {
        self.base.add(ROOT_AREA_PAGES as u64 * PAGE_SIZE)
    }

    /// Number of table pages.
    #[must_use]
    pub fn table_pages(&self) -> u64 {
        self.table_pages
    }

    /// The managed memory, as the ledger's (identity) IPA range.
    #[must_use]
    pub fn managed(&self) -> IpaRange {
        let first = ROOT_AREA_PAGES as u64 + self.table_pages;
        IpaRange::pages(Ipa::new(self.base.raw() + first * PAGE_SIZE), self.pages - first)
            .expect("checked by new")
    }

    /// The whole pool: first byte and size.
    #[must_use]
    pub fn pool(&self) -> (PhysAddr, u64) {
        (self.base, self.pages * PAGE_SIZE)
    }
}

/// How the kernel names a client: the channel its calls arrive on (mm's
/// end) and its PD's index, which `LINK_WINDOW` takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ClientLink {
    /// mm's end of the client's channel.
    pub channel: u8,
    /// The client PD's index in system.xml order.
    pub pd: u8,
}

/// Everything system.xml declares for the mm PD, decoded from the words
/// the tool patched into it (`tenure_abi::mm_config`): the manager's
/// configuration and pool, where the pool is mapped in mm, and the
/// kernel's names for the clients. Guest `g` of the protocol is the VM of
/// index `g - 1`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Declared {
    /// The manager's configuration.
    pub config: Config,
    /// The pool's parts.
    pub layout: PoolLayout,
    /// Where the pool's first byte is mapped in mm's address space.
    pub pool_vaddr: u64,
    /// The clients, by [`ClientId`].
    pub clients: [Option<ClientLink>; MAX_CLIENTS],
}

impl Declared {
    /// Decodes and checks `words`. Never panics.
    pub fn decode(words: &[u64]) -> Result<Declared, SetupError> {
        let abi = mm_config::MmConfig::decode(words).map_err(SetupError::Words)?;
        let pool = abi.pool;
        let layout = PoolLayout::new(PhysAddr::new(pool.base), pool.size, pool.table_pages)?;
        let mut config = Config::default();
        let mut clients = [None; MAX_CLIENTS];
        // The usable part of every window: its gigabyte but the anchor.
        let window = IpaRange::new(Ipa::new(WINDOW_IPA), WINDOW_SIZE - ANCHOR_BYTES)
            .ok_or(SetupError::Config)?;
        for (i, c) in abi.clients().iter().enumerate() {
            let vmid = VmId(c.vmid.into());
            config.clients[i] =
                Some(ClientConfig { window: c.window.then_some(Window { vmid, range: window }) });
            clients[i] = Some(ClientLink { channel: c.channel, pd: c.pd });
        }
        for g in abi.guests() {
            let mut guest = GuestConfig::new(VmId(g.vmid.into()), ClientId(g.controller))
                .with_limit(g.limit_pages);
            for r in g.ram() {
                let range = IpaRange::new(Ipa::new(r.ipa), r.size).ok_or(SetupError::Config)?;
                guest = guest.with_ram(range).ok_or(SetupError::Config)?;
            }
            for d in g.devices() {
                let ipa = IpaRange::new(Ipa::new(d.ipa), d.size).ok_or(SetupError::Config)?;
                let device = DeviceRange { ipa, pa: PhysAddr::new(d.pa) };
                guest = guest.with_device(device).ok_or(SetupError::Config)?;
            }
            let slot = config.guests.get_mut(usize::from(g.vm)).ok_or(SetupError::Config)?;
            *slot = Some(guest);
        }
        Ok(Declared { config, layout, pool_vaddr: pool.vaddr, clients })
    }

    /// The client whose calls arrive on `channel`.
    #[must_use]
    pub fn client_on(&self, channel: usize) -> Option<ClientId> {
        let at = self
            .clients
            .iter()
            .position(|c| c.is_some_and(|c| usize::from(c.channel) == channel))?;
        Some(ClientId(at as u8))
    }

    /// The PD index of client `id`.
    #[must_use]
    pub fn pd_of(&self, id: ClientId) -> Option<u8> {
        Some(self.clients.get(usize::from(id.0))?.as_ref()?.pd)
    }
}
