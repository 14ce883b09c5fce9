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

use hyp_mm::{Geometry, Ipa, IpaRange, OwnerId, PAGE_SIZE, PhysAddr, VmId};

/// Most guests one memory manager serves: a fixed capacity, as mm
/// allocates nothing; raise it with the systems that need more.
pub const MAX_GUESTS: usize = 8;
/// Most clients (PDs with a channel to mm), likewise.
pub const MAX_CLIENTS: usize = 8;
/// Most RAM ranges one guest declares.
pub const MAX_RAM_RANGES: usize = 4;
/// Most passthrough device ranges one guest declares.
pub const MAX_DEVICE_RANGES: usize = 8;
/// Components of the ledger: the default owner, every guest, every window.
pub const COMPONENTS: usize = 1 + MAX_GUESTS + MAX_CLIENTS;
/// The geometry of every table mm keeps: 40-bit IPA (the guests' and the
/// PDs' stage 2), and the ledger's identity map of physical memory.
pub const GEOMETRY: Geometry = Geometry::IPA_40;
/// Pages of one root (two concatenated level-1 tables).
pub const ROOT_PAGES: usize = GEOMETRY.root_pages();
/// Pages at the pool's base that hold the roots: one per component.
pub const ROOT_AREA_PAGES: usize = COMPONENTS * ROOT_PAGES;

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
        }
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
    /// The pool is misaligned, too small for its roots and table pages, or
    /// not page sized.
    Pool,
    /// A guest's controller is undeclared, a window or device range is
    /// malformed, a device range overlaps managed memory, or two tables
    /// share a VMID.
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
