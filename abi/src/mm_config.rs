//! The memory manager's configuration: what system.xml declares for the mm
//! PD, as a fixed array of words the tool patches into the mm program's
//! `__tenure_mm_config` symbol and the PD decodes at start.
//!
//! # Word layout
//!
//! Every value is one little-endian `u64` at a fixed index; entries past a
//! count are zero. [`WORDS`] words in all (343); a larger symbol is fine,
//! the words past [`WORDS`] are zero.
//!
//! ```text
//! index                   word
//! 0                       MAGIC ("TNMMCFG" and the layout version in the low byte)
//! 1                       pool: physical base (8 KiB aligned: the roots are first)
//! 2                       pool: size in bytes (a multiple of 4 KiB)
//! 3                       pool: the IPA the pool is mapped at in mm (4 KiB aligned)
//! 4                       pool: table pages to reserve after the roots
//! 5                       number of clients, 0..=MAX_CLIENTS
//! 6                       number of guests, 0..=MAX_GUESTS
//! 7 + 4c + 0              client c: the channel id mm receives its calls on (0..=61)
//! 7 + 4c + 1              client c: its PD's VMID (1..=255)
//! 7 + 4c + 2              client c: flags; bit 0 = it has a window at WINDOW_IPA
//! 7 + 4c + 3              client c: its PD's index in system.xml order (0..MAX_PDS),
//!                         which the stage-2 control capability's LINK_WINDOW takes
//! GUESTS + 38g + 0        guest g: its VM index in system.xml order (0..=254)
//! GUESTS + 38g + 1        guest g: its VMID (1..=255)
//! GUESTS + 38g + 2        guest g: its controller, a client index (its VMM)
//! GUESTS + 38g + 3        guest g: number of RAM ranges, 0..=MAX_RAM_RANGES
//! GUESTS + 38g + 4        guest g: number of device ranges, 0..=MAX_DEVICE_RANGES
//! GUESTS + 38g + 5 + 2r   guest g, RAM range r: IPA, then size
//! GUESTS + 38g + 13 + 3d  guest g, device range d: IPA, PA, then size
//! GUESTS + 38g + 37       guest g: its memory limit, the most pages it may own
//!                         (at least 1; u64::MAX: no limit)
//! ```
//!
//! where `GUESTS` = 7 + 4 × [`MAX_CLIENTS`] = 39.
//!
//! Invariants [`MmConfig::decode`] establishes (and [`MmConfig::encode`]
//! requires): the magic matches; counts are within capacity and unused
//! entries zero; the pool is aligned, non-empty, does not overflow and
//! holds its roots, its table pages and at least one managed page; channel
//! ids are distinct and at most 61; PD indices are distinct and below
//! `MAX_PDS`; VMIDs are non-zero, at most 255 and distinct among clients
//! and guests; VM indices are distinct; a guest's
//! controller is a client; a guest's limit is at least one page; every range is page aligned, non-empty, inside
//! the 40-bit IPA space, and a device's physical range does not overflow.
//! Decoding never panics.

use crate::mm::{IPA_LIMIT, PAGE_SIZE};

/// First word: "TNMMCFG" then the layout version (3: guests carry their
/// memory limit).
pub const MAGIC: u64 = 0x544e_4d4d_4346_4703;
/// Most guests one memory manager serves (`pds/mm/src/config.rs`).
pub const MAX_GUESTS: usize = 8;
/// Most clients, PDs that call mm (`pds/mm/src/config.rs`).
pub const MAX_CLIENTS: usize = 8;
/// Most RAM ranges of one guest (`pds/mm/src/config.rs`).
pub const MAX_RAM_RANGES: usize = 4;
/// Most passthrough device ranges of one guest (`pds/mm/src/config.rs`).
pub const MAX_DEVICE_RANGES: usize = 8;
/// Pages at the pool's base that hold the roots of mm's tables: two
/// concatenated level-1 pages each for the ledger, every guest and every
/// window (`pds/mm/src/config.rs`, `ROOT_AREA_PAGES`).
pub const ROOT_AREA_PAGES: u64 = 2 * (1 + MAX_GUESTS + MAX_CLIENTS) as u64;
/// Alignment of the pool's base: one root (two concatenated pages).
pub const POOL_ALIGN: u64 = 2 * PAGE_SIZE;

/// Words of the header (magic, pool, counts).
const HEADER_WORDS: usize = 7;
/// Words of one client entry.
pub const CLIENT_WORDS: usize = 4;
/// Words of one guest entry.
pub const GUEST_WORDS: usize = 6 + 2 * MAX_RAM_RANGES + 3 * MAX_DEVICE_RANGES;
/// Offset of a guest's memory limit in its entry.
const LIMIT_AT: usize = GUEST_WORDS - 1;
/// Index of the first guest entry.
const GUESTS_AT: usize = HEADER_WORDS + CLIENT_WORDS * MAX_CLIENTS;
/// Words of the whole configuration.
pub const WORDS: usize = GUESTS_AT + GUEST_WORDS * MAX_GUESTS;
/// Bit 0 of a client's flags: it has a window.
const FLAG_WINDOW: u64 = 1;
/// Highest channel id (Microkit's).
const MAX_CHANNEL: u64 = crate::MAX_CHANNEL_ID as u64;

/// Why a configuration was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MmConfigError {
    /// Fewer than [`WORDS`] words.
    Truncated,
    /// The first word is not [`MAGIC`] (not a configuration, or another
    /// layout version).
    BadMagic,
    /// The pool is misaligned, empty, overflows, or cannot hold its roots,
    /// its table pages and one managed page.
    BadPool,
    /// A count exceeds its capacity.
    TooMany,
    /// A word past a count is not zero.
    UnusedNotZero,
    /// A client's channel id, VMID, flags or PD index are out of range,
    /// or two clients share a channel id or a PD.
    BadClient,
    /// A guest's VM index, VMID or controller is out of range or taken,
    /// or its memory limit is zero.
    BadGuest,
    /// Two tables (clients' windows, guests) would share a VMID.
    DuplicateVmid,
    /// A range is misaligned, empty, overflows or leaves the IPA space.
    BadRange,
}

/// The pool: one physical range mm splits into roots, table pages and
/// managed memory (`pds/mm/src/config.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Pool {
    /// Physical base, [`POOL_ALIGN`] aligned.
    pub base: u64,
    /// Bytes, a multiple of the page size.
    pub size: u64,
    /// Where mm sees the pool in its own address space.
    pub vaddr: u64,
    /// Table pages after the roots; managed memory follows them.
    pub table_pages: u64,
}

/// A PD that calls mm.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Client {
    /// The id of the channel its calls arrive on, as mm sees it.
    pub channel: u8,
    /// Its PD's VMID (its window's TLB entries live under it).
    pub vmid: u8,
    /// Whether it has a window (`vcpu::WINDOW_IPA`, `WINDOW_SIZE`).
    pub window: bool,
    /// Its PD's index in system.xml order (the boot image's `Pds` index,
    /// which the stage-2 control capability's `LINK_WINDOW` takes).
    pub pd: u8,
}

/// A guest RAM range: `size` bytes from `ipa`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RamRange {
    /// First IPA.
    pub ipa: u64,
    /// Bytes.
    pub size: u64,
}

/// A passthrough device range: `size` bytes at `ipa` map physical memory
/// from `pa` on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DeviceRange {
    /// First IPA.
    pub ipa: u64,
    /// First physical address.
    pub pa: u64,
    /// Bytes.
    pub size: u64,
}

/// One guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Guest {
    /// Its VM's index in system.xml order (the boot image's `Vms` index,
    /// which the stage-2 control capability's methods take).
    pub vm: u8,
    /// Its VMID.
    pub vmid: u8,
    /// The client that controls it (its VMM), an index into the clients.
    pub controller: u8,
    /// The most pages of the pool the guest may own at once (populated or
    /// donated to it): its memory limit. `u64::MAX`, the default, is none.
    pub limit_pages: u64,
    ram: [RamRange; MAX_RAM_RANGES],
    ram_count: usize,
    devices: [DeviceRange; MAX_DEVICE_RANGES],
    device_count: usize,
}

impl Guest {
    /// A guest with no ranges yet.
    #[must_use]
    pub const fn new(vm: u8, vmid: u8, controller: u8) -> Self {
        Guest {
            vm,
            vmid,
            controller,
            limit_pages: u64::MAX,
            ram: [RamRange { ipa: 0, size: 0 }; MAX_RAM_RANGES],
            ram_count: 0,
            devices: [DeviceRange { ipa: 0, pa: 0, size: 0 }; MAX_DEVICE_RANGES],
            device_count: 0,
        }
    }

    /// Adds a RAM range; [`MmConfigError::TooMany`] if the list is full.
    pub fn add_ram(&mut self, range: RamRange) -> Result<(), MmConfigError> {
        *self.ram.get_mut(self.ram_count).ok_or(MmConfigError::TooMany)? = range;
        self.ram_count += 1;
        Ok(())
    }

    /// Adds a device range; [`MmConfigError::TooMany`] if the list is full.
    pub fn add_device(&mut self, range: DeviceRange) -> Result<(), MmConfigError> {
        *self.devices.get_mut(self.device_count).ok_or(MmConfigError::TooMany)? = range;
        self.device_count += 1;
        Ok(())
    }

    /// Its RAM ranges.
    #[must_use]
    pub fn ram(&self) -> &[RamRange] {
        &self.ram[..self.ram_count]
    }

    /// Its device ranges.
    #[must_use]
    pub fn devices(&self) -> &[DeviceRange] {
        &self.devices[..self.device_count]
    }
}

/// The whole configuration.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MmConfig {
    /// The pool.
    pub pool: Pool,
    clients: [Client; MAX_CLIENTS],
    client_count: usize,
    guests: [Guest; MAX_GUESTS],
    guest_count: usize,
}

/// Whether `[start, start + size)` is a page-aligned, non-empty range of
/// the IPA space.
fn ipa_range_ok(start: u64, size: u64) -> bool {
    start.is_multiple_of(PAGE_SIZE)
        && size.is_multiple_of(PAGE_SIZE)
        && size != 0
        && start.checked_add(size).is_some_and(|end| end <= IPA_LIMIT)
}

impl MmConfig {
    /// A configuration with `pool` and no clients or guests yet.
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        MmConfig { pool, ..MmConfig::default() }
    }

    /// Adds a client; its index is the number of clients before it.
    pub fn add_client(&mut self, client: Client) -> Result<(), MmConfigError> {
        *self.clients.get_mut(self.client_count).ok_or(MmConfigError::TooMany)? = client;
        self.client_count += 1;
        Ok(())
    }

    /// Adds a guest.
    pub fn add_guest(&mut self, guest: Guest) -> Result<(), MmConfigError> {
        *self.guests.get_mut(self.guest_count).ok_or(MmConfigError::TooMany)? = guest;
        self.guest_count += 1;
        Ok(())
    }

    /// The clients, by index.
    #[must_use]
    pub fn clients(&self) -> &[Client] {
        &self.clients[..self.client_count]
    }

    /// The guests.
    #[must_use]
    pub fn guests(&self) -> &[Guest] {
        &self.guests[..self.guest_count]
    }

    /// Checks every invariant of the module header.
    pub fn validate(&self) -> Result<(), MmConfigError> {
        let pool = &self.pool;
        let pages = pool.size / PAGE_SIZE;
        let reserved = ROOT_AREA_PAGES.checked_add(pool.table_pages);
        if !pool.base.is_multiple_of(POOL_ALIGN)
            || !pool.size.is_multiple_of(PAGE_SIZE)
            || pool.base.checked_add(pool.size).is_none()
            || !ipa_range_ok(pool.vaddr, pool.size.max(PAGE_SIZE))
            || reserved.is_none_or(|r| pages <= r)
        {
            return Err(MmConfigError::BadPool);
        }
        let mut vmids = [0u8; MAX_CLIENTS + MAX_GUESTS];
        let mut taken = 0;
        let mut claim = |vmid: u8| {
            if vmids[..taken].contains(&vmid) {
                return Err(MmConfigError::DuplicateVmid);
            }
            vmids[taken] = vmid;
            taken += 1;
            Ok(())
        };
        for (i, c) in self.clients().iter().enumerate() {
            let reused = self.clients()[..i].iter().any(|o| o.channel == c.channel || o.pd == c.pd);
            let pd_ok = usize::from(c.pd) < crate::MAX_PDS;
            if u64::from(c.channel) > MAX_CHANNEL || c.vmid == 0 || !pd_ok || reused {
                return Err(MmConfigError::BadClient);
            }
            if c.window {
                claim(c.vmid)?;
            }
        }
        for (i, g) in self.guests().iter().enumerate() {
            let reused = self.guests()[..i].iter().any(|o| o.vm == g.vm);
            if g.vm == u8::MAX
                || g.vmid == 0
                || usize::from(g.controller) >= self.client_count
                || g.limit_pages == 0
                || reused
            {
                return Err(MmConfigError::BadGuest);
            }
            claim(g.vmid)?;
            if !g.ram().iter().all(|r| ipa_range_ok(r.ipa, r.size)) {
                return Err(MmConfigError::BadRange);
            }
            for d in g.devices() {
                if !ipa_range_ok(d.ipa, d.size)
                    || !d.pa.is_multiple_of(PAGE_SIZE)
                    || d.pa.checked_add(d.size).is_none()
                {
                    return Err(MmConfigError::BadRange);
                }
            }
        }
        Ok(())
    }

    /// The words of a valid configuration.
    pub fn encode(&self) -> Result<[u64; WORDS], MmConfigError> {
        self.validate()?;
        let mut w = [0u64; WORDS];
        w[0] = MAGIC;
        w[1] = self.pool.base;
        w[2] = self.pool.size;
        w[3] = self.pool.vaddr;
        w[4] = self.pool.table_pages;
        w[5] = self.client_count as u64;
        w[6] = self.guest_count as u64;
        for (i, c) in self.clients().iter().enumerate() {
            let at = HEADER_WORDS + CLIENT_WORDS * i;
            w[at] = c.channel.into();
            w[at + 1] = c.vmid.into();
            w[at + 2] = if c.window { FLAG_WINDOW } else { 0 };
            w[at + 3] = c.pd.into();
        }
        for (i, g) in self.guests().iter().enumerate() {
            let at = GUESTS_AT + GUEST_WORDS * i;
            w[at] = g.vm.into();
            w[at + 1] = g.vmid.into();
            w[at + 2] = g.controller.into();
            w[at + 3] = g.ram_count as u64;
            w[at + 4] = g.device_count as u64;
            w[at + LIMIT_AT] = g.limit_pages;
            for (r, range) in g.ram().iter().enumerate() {
                w[at + 5 + 2 * r] = range.ipa;
                w[at + 6 + 2 * r] = range.size;
            }
            for (d, range) in g.devices().iter().enumerate() {
                let d_at = at + 5 + 2 * MAX_RAM_RANGES + 3 * d;
                w[d_at] = range.ipa;
                w[d_at + 1] = range.pa;
                w[d_at + 2] = range.size;
            }
        }
        Ok(w)
    }

    /// Decodes and checks `words` (at least [`WORDS`]; the rest is
    /// ignored). Never panics.
    pub fn decode(words: &[u64]) -> Result<MmConfig, MmConfigError> {
        let w = words.get(..WORDS).ok_or(MmConfigError::Truncated)?;
        if w[0] != MAGIC {
            return Err(MmConfigError::BadMagic);
        }
        let count = |raw: u64, max: usize| {
            usize::try_from(raw).ok().filter(|&n| n <= max).ok_or(MmConfigError::TooMany)
        };
        let small = |raw: u64, err| u8::try_from(raw).map_err(|_| err);
        let mut config =
            MmConfig::new(Pool { base: w[1], size: w[2], vaddr: w[3], table_pages: w[4] });
        let clients = count(w[5], MAX_CLIENTS)?;
        let guests = count(w[6], MAX_GUESTS)?;
        // What encode would write for the entries read, to compare the
        // unused words against.
        let mut used = [false; WORDS];
        used[..HEADER_WORDS].fill(true);
        for i in 0..clients {
            let at = HEADER_WORDS + CLIENT_WORDS * i;
            used[at..at + CLIENT_WORDS].fill(true);
            let bad = MmConfigError::BadClient;
            if w[at + 2] & !FLAG_WINDOW != 0 {
                return Err(bad);
            }
            config.add_client(Client {
                channel: small(w[at], bad)?,
                vmid: small(w[at + 1], bad)?,
                window: w[at + 2] & FLAG_WINDOW != 0,
                pd: small(w[at + 3], bad)?,
            })?;
        }
        for i in 0..guests {
            let at = GUESTS_AT + GUEST_WORDS * i;
            let bad = MmConfigError::BadGuest;
            let mut guest =
                Guest::new(small(w[at], bad)?, small(w[at + 1], bad)?, small(w[at + 2], bad)?);
            let ram = count(w[at + 3], MAX_RAM_RANGES)?;
            let devices = count(w[at + 4], MAX_DEVICE_RANGES)?;
            used[at..at + 5].fill(true);
            used[at + LIMIT_AT] = true;
            guest.limit_pages = w[at + LIMIT_AT];
            for r in 0..ram {
                let r_at = at + 5 + 2 * r;
                used[r_at..r_at + 2].fill(true);
                guest.add_ram(RamRange { ipa: w[r_at], size: w[r_at + 1] })?;
            }
            for d in 0..devices {
                let d_at = at + 5 + 2 * MAX_RAM_RANGES + 3 * d;
                used[d_at..d_at + 3].fill(true);
                guest.add_device(DeviceRange {
                    ipa: w[d_at],
                    pa: w[d_at + 1],
                    size: w[d_at + 2],
                })?;
            }
            config.add_guest(guest)?;
        }
        if w.iter().zip(used).any(|(&word, used)| !used && word != 0) {
            return Err(MmConfigError::UnusedNotZero);
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MmConfig {
        let mut c = MmConfig::new(Pool {
            base: 0x5000_0000,
            size: 0x100_0000,
            vaddr: 0x1000_0000,
            table_pages: 64,
        });
        c.add_client(Client { channel: 3, vmid: 2, window: true, pd: 5 }).unwrap();
        c.add_client(Client { channel: 61, vmid: 4, window: false, pd: 7 }).unwrap();
        let mut g = Guest::new(0, 6, 0);
        g.limit_pages = 512;
        g.add_ram(RamRange { ipa: 0x4000_0000, size: 0x1000_0000 }).unwrap();
        g.add_ram(RamRange { ipa: 0, size: 0x1000 }).unwrap();
        g.add_device(DeviceRange { ipa: 0x900_0000, pa: 0x900_0000, size: 0x1000 }).unwrap();
        c.add_guest(g).unwrap();
        c.add_guest(Guest::new(1, 7, 1)).unwrap();
        c
    }

    #[test]
    fn the_layout_has_the_documented_size() {
        assert_eq!(GUESTS_AT, 39);
        assert_eq!(GUEST_WORDS, 38);
        assert_eq!(WORDS, 343);
    }

    #[test]
    fn a_configuration_round_trips() {
        let c = sample();
        let w = c.encode().unwrap();
        assert_eq!(w[0], MAGIC);
        assert_eq!(&w[1..7], &[0x5000_0000, 0x100_0000, 0x1000_0000, 64, 2, 2]);
        assert_eq!(&w[7..15], &[3, 2, 1, 5, 61, 4, 0, 7]);
        assert_eq!(&w[39..46], &[0, 6, 0, 2, 1, 0x4000_0000, 0x1000_0000]);
        assert_eq!(&w[52..55], &[0x900_0000, 0x900_0000, 0x1000]);
        assert_eq!(MmConfig::decode(&w), Ok(c));
        // A longer symbol: the words past the layout are ignored.
        let mut long = w.to_vec();
        long.extend([0; 5]);
        assert_eq!(MmConfig::decode(&long), Ok(c));
        let empty = MmConfig::new(c.pool);
        assert_eq!(MmConfig::decode(&empty.encode().unwrap()), Ok(empty));
    }

    #[test]
    fn malformed_words_are_refused() {
        let w = sample().encode().unwrap();
        let with = |i: usize, v: u64| {
            let mut x = w;
            x[i] = v;
            MmConfig::decode(&x)
        };
        assert_eq!(MmConfig::decode(&w[..WORDS - 1]), Err(MmConfigError::Truncated));
        assert_eq!(with(0, 0), Err(MmConfigError::BadMagic));
        assert_eq!(with(1, 0x5000_1000), Err(MmConfigError::BadPool), "not 8 KiB aligned");
        assert_eq!(with(2, 0x1000 * 98), Err(MmConfigError::BadPool), "no managed page");
        assert_eq!(with(2, !0xfff), Err(MmConfigError::BadPool));
        assert_eq!(with(4, u64::MAX), Err(MmConfigError::BadPool));
        assert_eq!(with(5, 9), Err(MmConfigError::TooMany));
        assert_eq!(with(6, u64::MAX), Err(MmConfigError::TooMany));
        assert_eq!(with(5, 1), Err(MmConfigError::UnusedNotZero), "client 1 left over");
        assert_eq!(with(7, 62), Err(MmConfigError::BadClient));
        assert_eq!(with(7, 61), Err(MmConfigError::BadClient), "channel used twice");
        assert_eq!(with(8, 0), Err(MmConfigError::BadClient));
        assert_eq!(with(8, 256), Err(MmConfigError::BadClient));
        assert_eq!(with(9, 2), Err(MmConfigError::BadClient));
        assert_eq!(with(10, 63), Err(MmConfigError::BadClient), "no such PD");
        assert_eq!(with(10, 256), Err(MmConfigError::BadClient));
        assert_eq!(with(10, 7), Err(MmConfigError::BadClient), "PD used twice");
        assert_eq!(with(40, 2), Err(MmConfigError::DuplicateVmid), "guest has client's VMID");
        assert_eq!(with(41, 2), Err(MmConfigError::BadGuest));
        assert_eq!(with(39 + 38, 0), Err(MmConfigError::BadGuest), "VM index twice");
        assert_eq!(with(39 + 37, 0), Err(MmConfigError::BadGuest), "no page allowed");
        assert_eq!(with(42, 5), Err(MmConfigError::TooMany));
        assert_eq!(with(44, 0x4000_0800), Err(MmConfigError::BadRange));
        assert_eq!(with(45, 0), Err(MmConfigError::BadRange));
        assert_eq!(with(45, 1 << 40), Err(MmConfigError::BadRange));
        assert_eq!(with(53, !0xfff), Err(MmConfigError::BadRange));
        assert_eq!(with(48, 1), Err(MmConfigError::UnusedNotZero), "third RAM range");
        assert_eq!(with(15, 1), Err(MmConfigError::UnusedNotZero), "third client");
        assert_eq!(with(WORDS - 1, 1), Err(MmConfigError::UnusedNotZero));
    }

    #[test]
    fn encoding_checks_what_decoding_checks() {
        let mut c = sample();
        c.pool.vaddr = 0x123;
        assert_eq!(c.encode(), Err(MmConfigError::BadPool));
        let mut g = Guest::new(0, 9, 0);
        for _ in 0..MAX_RAM_RANGES {
            g.add_ram(RamRange { ipa: 0, size: 0x1000 }).unwrap();
        }
        assert_eq!(g.add_ram(RamRange::default()), Err(MmConfigError::TooMany));
        let mut full = MmConfig::default();
        for i in 0..MAX_CLIENTS {
            full.add_client(Client { channel: i as u8, vmid: 1, window: false, pd: i as u8 })
                .unwrap();
        }
        assert_eq!(full.add_client(Client::default()), Err(MmConfigError::TooMany));
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic generator: every word from an xorshift.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = sample().encode().unwrap();
        for round in 0..2000 {
            let mut w = base;
            // Small counts often, so the entries are read.
            for _ in 0..1 + round % 8 {
                let i = (next() % WORDS as u64) as usize;
                w[i] = if next() % 2 == 0 { next() % 16 } else { next() };
            }
            if let Ok(c) = MmConfig::decode(&w) {
                assert_eq!(c.encode(), Ok(w));
            }
            let random: [u64; WORDS] = core::array::from_fn(|_| next());
            assert!(MmConfig::decode(&random).is_err());
        }
    }
}
