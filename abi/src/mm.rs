//! The memory manager's protocol: what PDs ask the mm PD over protected
//! procedure calls, in which message words, and why it may refuse.
//!
//! A request is a PPC to the mm PD: the message label is a [`Label`], the
//! message words are the request's fields in the order the table gives.
//! The caller is known by the channel the call arrives on, never by a word
//! of the message: "the caller" below is the PD at the other end of that
//! channel, and "the caller's window" is the part of its address space
//! whose table the mm PD owns (declared in system.xml).
//!
//! | label | request       | words                                                   | reply words             |
//! |-------|---------------|---------------------------------------------------------|-------------------------|
//! | 1     | `CreateGuest` | guest                                                   |                         |
//! | 2     | `Donate`      | guest, window IPA, guest IPA, pages, access             |                         |
//! | 3     | `Share`       | guest, direction, from IPA, to IPA, pages, access       |                         |
//! | 4     | `Lend`        | guest, direction, from IPA, to IPA, pages, access       |                         |
//! | 5     | `Unshare`     | guest, direction, from IPA, to IPA, pages               |                         |
//! | 6     | `Reclaim`     | guest, direction, from IPA, to IPA, pages               |                         |
//! | 7     | `Relinquish`  | target, IPA, pages                                      |                         |
//! | 8     | `Populate`    | target, IPA, walk flags                                 | first IPA, pages mapped |
//! | 9     | `MapDevice`   | guest, IPA, walk flags                                  | first IPA, pages mapped |
//! | 10    | `Teardown`    | guest                                                   | pages freed, tables freed |
//! | 11    | `Query`       | target, IPA                                             | state, access, borrowers |
//!
//! - *guest*: a [`GuestId`], a guest system.xml declares and gives to the
//!   caller to control; *target*: a [`Target`], 0 for the caller's window
//!   or a guest id.
//! - *direction*: a [`Direction`]: who initiates (owns the pages) and who
//!   completes (gets a mapping). *from IPA* is in the initiator's space,
//!   *to IPA* in the completer's.
//! - IPAs are page aligned and a range of *pages* pages must lie inside the
//!   40-bit IPA space, except where a request takes a fault address
//!   (`Populate`, `MapDevice`, `Query`): any byte of the page will do.
//! - *access*: an [`Access`]; *walk flags*: [`WalkFlags`].
//!
//! The reply's label is 0 on success and an [`MmError`] code otherwise
//! (with no words); a successful reply carries the words the table lists.
//!
//! Invariants: every request is checked whole before anything changes, so a
//! refused request has changed nothing; decoding never panics, and refuses
//! any word it does not understand instead of ignoring it.

/// Bits of IPA every guest and window table translates (Tenure's fixed
/// stage-2 geometry: 40 bits, level-1 start, two concatenated roots).
pub const IPA_BITS: u32 = 40;
/// First IPA past the end of every address space.
pub const IPA_LIMIT: u64 = 1 << IPA_BITS;
/// Size of the pages requests count in (the 4 KiB translation granule).
pub const PAGE_SIZE: u64 = 1 << 12;
/// Most words a request carries (`Share` and `Lend`).
pub const MAX_REQUEST_WORDS: usize = 6;
/// Most words a reply carries.
pub const MAX_REPLY_WORDS: usize = 3;

/// A request, as the PPC's label.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum Label {
    /// Create a declared guest's empty stage-2 table and install it.
    CreateGuest = 1,
    /// Give pages of the caller's window to a guest: the caller loses them.
    Donate = 2,
    /// Share pages: the owner keeps them, the completer maps them too.
    Share = 3,
    /// Lend pages: the completer maps them, the owner loses access until
    /// they come back.
    Lend = 4,
    /// The owner ends a share; the completer's mapping goes.
    Unshare = 5,
    /// The owner takes back pages it shared or lent, without the
    /// borrower's consent.
    Reclaim = 6,
    /// The target gives pages up: borrowed pages go back to their owner,
    /// owned pages go back to the free pool, zeroed.
    Relinquish = 7,
    /// Map a fresh, zeroed page from the free pool at a faulting IPA of a
    /// guest's RAM (or of the caller's window).
    Populate = 8,
    /// Map the declared device memory around a faulting IPA with device
    /// attributes (MMIO passthrough, mapped lazily).
    MapDevice = 9,
    /// Stop a guest and take back everything it holds: its pages, zeroed,
    /// and its table pages.
    Teardown = 10,
    /// Report the state of one page.
    Query = 11,
}

impl Label {
    /// Every label, in order.
    pub const ALL: [Label; 11] = [
        Label::CreateGuest,
        Label::Donate,
        Label::Share,
        Label::Lend,
        Label::Unshare,
        Label::Reclaim,
        Label::Relinquish,
        Label::Populate,
        Label::MapDevice,
        Label::Teardown,
        Label::Query,
    ];

    /// Decodes a PPC label.
    pub const fn from_raw(raw: u64) -> Result<Label, MmError> {
        if raw == 0 || raw > Label::ALL.len() as u64 {
            return Err(MmError::UnknownRequest);
        }
        Ok(Label::ALL[raw as usize - 1])
    }

    /// The number of words a request with this label carries.
    #[must_use]
    pub const fn request_words(self) -> usize {
        match self {
            Label::CreateGuest | Label::Teardown => 1,
            Label::Query => 2,
            Label::Relinquish | Label::Populate | Label::MapDevice => 3,
            Label::Donate | Label::Unshare | Label::Reclaim => 5,
            Label::Share | Label::Lend => 6,
        }
    }

    /// The number of words a successful reply to this request carries.
    #[must_use]
    pub const fn reply_words(self) -> usize {
        match self {
            Label::Populate | Label::MapDevice | Label::Teardown => 2,
            Label::Query => 3,
            _ => 0,
        }
    }
}

/// Why the mm PD refused a request: the reply's label. Each code names the
/// first thing found wrong; hyp-mm's errors map onto them as the variants
/// say.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum MmError {
    /// The label names no request.
    UnknownRequest = 1,
    /// The message has more or fewer words than the request takes.
    BadLength = 2,
    /// A word is not a valid value of its field (a direction, target,
    /// access, walk flag or guest id this protocol does not define; zero
    /// pages), or the request is malformed in a way no other code names
    /// (hyp-mm's `InvalidArgument`).
    BadArgument = 3,
    /// An IPA that must be page aligned is not.
    Misaligned = 4,
    /// A range's size or end does not fit in 64 bits.
    Overflow = 5,
    /// A range runs past the end of the 40-bit IPA space.
    PastEnd = 6,
    /// No guest with this id exists for the caller: undeclared, or
    /// declared for another controller, or not created yet.
    NoSuchGuest = 7,
    /// `CreateGuest` for a guest that exists already.
    GuestExists = 8,
    /// The caller has no window, or a range lies outside its window or
    /// outside the guest RAM (or device ranges) system.xml declares.
    NotDeclared = 9,
    /// Nothing is mapped where the request expected a page (hyp-mm's
    /// `NotFound`).
    NotMapped = 10,
    /// The initiator does not own the page (it borrows it, or lent it
    /// out), or asks for more access than it has (hyp-mm's `Permission`).
    NotOwned = 11,
    /// The page must be owned exclusively but is shared or lent out.
    AlreadyShared = 12,
    /// The page is not shared with (or lent to) that completer.
    NotShared = 13,
    /// The destination already maps something (hyp-mm's `Exists`, and a
    /// repeated fault without [`WalkFlags::IGNORE_RETRY`]).
    AlreadyMapped = 14,
    /// The page is device memory, which never changes hands; or RAM was
    /// asked for in a device range.
    DeviceMemory = 15,
    /// The pages are not backed by contiguous physical memory; split the
    /// request.
    NotContiguous = 16,
    /// A page is pinned, or a counter would saturate; retrying later may
    /// succeed (hyp-mm's `Busy`).
    Busy = 17,
    /// The free pool has no page left for `Populate`.
    PoolExhausted = 18,
    /// The mm PD's table memory cannot hold the tables the request needs
    /// (hyp-mm's `OutOfMemory`).
    OutOfTableMemory = 19,
    /// The kernel refused to install the guest's table.
    KernelRefused = 20,
    /// Never sent: what a client reports for a reply it cannot decode.
    MalformedReply = 21,
    /// The guest holds as many pages as its memory limit allows
    /// (system.xml's `memory_limit`); only that guest's controller sees it.
    OverLimit = 22,
}

impl MmError {
    /// Every code, in order.
    pub const ALL: [MmError; 22] = [
        MmError::UnknownRequest,
        MmError::BadLength,
        MmError::BadArgument,
        MmError::Misaligned,
        MmError::Overflow,
        MmError::PastEnd,
        MmError::NoSuchGuest,
        MmError::GuestExists,
        MmError::NotDeclared,
        MmError::NotMapped,
        MmError::NotOwned,
        MmError::AlreadyShared,
        MmError::NotShared,
        MmError::AlreadyMapped,
        MmError::DeviceMemory,
        MmError::NotContiguous,
        MmError::Busy,
        MmError::PoolExhausted,
        MmError::OutOfTableMemory,
        MmError::KernelRefused,
        MmError::MalformedReply,
        MmError::OverLimit,
    ];

    /// Decodes a reply label that is not 0.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Option<MmError> {
        if raw == 0 || raw > MmError::ALL.len() as u64 {
            return None;
        }
        Some(MmError::ALL[raw as usize - 1])
    }

    /// The reply label.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self as u64
    }
}

/// A guest, as system.xml numbers it: 1 to 65535 (owner ids are 16 bits
/// and 0 is the free pool).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct GuestId(u16);

impl GuestId {
    /// The guest `id`, or `None` for 0.
    #[must_use]
    pub const fn new(id: u16) -> Option<GuestId> {
        if id == 0 { None } else { Some(GuestId(id)) }
    }

    /// Decodes a word.
    pub const fn from_raw(raw: u64) -> Result<GuestId, MmError> {
        if raw == 0 || raw > u16::MAX as u64 {
            return Err(MmError::BadArgument);
        }
        Ok(GuestId(raw as u16))
    }

    /// The id.
    #[must_use]
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// Whose address space a one-sided request names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Target {
    /// The caller's window (word 0).
    Caller,
    /// A guest the caller controls (word: the guest id).
    Guest(GuestId),
}

impl Target {
    /// Decodes a word.
    pub const fn from_raw(raw: u64) -> Result<Target, MmError> {
        if raw == 0 {
            return Ok(Target::Caller);
        }
        match GuestId::from_raw(raw) {
            Ok(g) => Ok(Target::Guest(g)),
            Err(e) => Err(e),
        }
    }

    /// The word.
    #[must_use]
    pub const fn raw(self) -> u64 {
        match self {
            Target::Caller => 0,
            Target::Guest(g) => g.0 as u64,
        }
    }
}

/// Which side of a two-sided request owns the pages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum Direction {
    /// The caller's window initiates, the guest completes.
    ToGuest = 0,
    /// The guest initiates (its own hypercall, which its controller
    /// forwards), the caller's window completes.
    FromGuest = 1,
}

impl Direction {
    /// Decodes a word.
    pub const fn from_raw(raw: u64) -> Result<Direction, MmError> {
        match raw {
            0 => Ok(Direction::ToGuest),
            1 => Ok(Direction::FromGuest),
            _ => Err(MmError::BadArgument),
        }
    }
}

/// Access a mapping grants: any non-empty combination of read, write and
/// execute. Normal memory only: device memory is mapped by `MapDevice`.
/// The bits are hyp-mm's `Prot` bits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Access(u8);

impl Access {
    /// Readable.
    pub const R: Access = Access(1 << 0);
    /// Writable.
    pub const W: Access = Access(1 << 1);
    /// Executable.
    pub const X: Access = Access(1 << 2);
    /// Read and write.
    pub const RW: Access = Access(0b011);
    /// Read, write and execute.
    pub const RWX: Access = Access(0b111);
    /// In query replies only: the page is device memory.
    pub const DEVICE: Access = Access(1 << 3);

    /// Decodes a request word: refused if empty or if it sets any bit
    /// but R, W and X.
    pub const fn from_raw(raw: u64) -> Result<Access, MmError> {
        if raw == 0 || raw & !(Access::RWX.0 as u64) != 0 {
            return Err(MmError::BadArgument);
        }
        Ok(Access(raw as u8))
    }

    /// The bits, as hyp-mm's `Prot` has them.
    #[must_use]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The access with `bits` (R, W, X, DEVICE), unknown bits dropped; for
    /// replies, which may carry DEVICE or no access at all.
    #[must_use]
    pub const fn from_bits_truncate(bits: u8) -> Access {
        Access(bits & 0xf)
    }

    /// Whether every bit of `other` is set.
    #[must_use]
    pub const fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

/// How a fault-path request treats what it finds: hyp-mm's walk flags,
/// carried bit for bit. By default a walk stops at the first entry it
/// cannot change and the request is refused; with
/// [`WalkFlags::IGNORE_RETRY`] an entry already as asked (a fault another
/// vCPU resolved first) is success. The flags that pick a walker's visits
/// (leaf, table-pre, table-post) belong to the mm PD and are refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct WalkFlags(u64);

impl WalkFlags {
    /// No flags: stop and refuse at the first entry that is not as needed.
    pub const NONE: WalkFlags = WalkFlags(0);
    /// Continue past "retry" results (hyp-mm's `WalkFlags::IGNORE_RETRY`,
    /// bit 3).
    pub const IGNORE_RETRY: WalkFlags = WalkFlags(1 << 3);

    /// Decodes a word: any bit but those defined is refused, so that no
    /// flag a caller set is silently dropped.
    pub const fn from_raw(raw: u64) -> Result<WalkFlags, MmError> {
        if raw & !WalkFlags::IGNORE_RETRY.0 != 0 {
            return Err(MmError::BadArgument);
        }
        Ok(WalkFlags(raw))
    }

    /// The word (hyp-mm's `WalkFlags` bits).
    #[must_use]
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every flag of `other` is set.
    #[must_use]
    pub const fn contains(self, other: WalkFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A checked range of pages in a 40-bit IPA space: page aligned, at least
/// one page, inside [`IPA_LIMIT`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageRange {
    start: u64,
    pages: u64,
}

impl PageRange {
    /// The range of `pages` pages from `start`, checked in the order the
    /// refusals are listed: [`MmError::Misaligned`], [`MmError::BadArgument`]
    /// (no pages), [`MmError::Overflow`], [`MmError::PastEnd`].
    pub const fn new(start: u64, pages: u64) -> Result<PageRange, MmError> {
        if !start.is_multiple_of(PAGE_SIZE) {
            return Err(MmError::Misaligned);
        }
        if pages == 0 {
            return Err(MmError::BadArgument);
        }
        let Some(size) = pages.checked_mul(PAGE_SIZE) else {
            return Err(MmError::Overflow);
        };
        let Some(end) = start.checked_add(size) else {
            return Err(MmError::Overflow);
        };
        if end > IPA_LIMIT {
            return Err(MmError::PastEnd);
        }
        Ok(PageRange { start, pages })
    }

    /// First IPA.
    #[must_use]
    pub const fn start(self) -> u64 {
        self.start
    }

    /// Number of pages.
    #[must_use]
    pub const fn pages(self) -> u64 {
        self.pages
    }

    /// First IPA past the range.
    #[must_use]
    pub const fn end(self) -> u64 {
        self.start + self.pages * PAGE_SIZE
    }
}

/// A page named by any address in it: a fault address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FaultAddr(u64);

impl FaultAddr {
    /// Decodes a word: refused with [`MmError::PastEnd`] outside the IPA
    /// space.
    pub const fn from_raw(raw: u64) -> Result<FaultAddr, MmError> {
        if raw >= IPA_LIMIT {
            return Err(MmError::PastEnd);
        }
        Ok(FaultAddr(raw))
    }

    /// The address as given.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The first IPA of the page.
    #[must_use]
    pub const fn page(self) -> u64 {
        self.0 & !(PAGE_SIZE - 1)
    }
}

/// A two-sided request's fields: the initiator's pages at `from`, the
/// completer's at `to`, the same number of each.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Transfer {
    /// The guest on the other side of the caller.
    pub guest: GuestId,
    /// Who initiates.
    pub direction: Direction,
    /// The pages in the initiator's space.
    pub from: PageRange,
    /// The pages in the completer's space.
    pub to: PageRange,
}

/// A decoded request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Request {
    /// [`Label::CreateGuest`].
    CreateGuest {
        /// The guest.
        guest: GuestId,
    },
    /// [`Label::Donate`]: from the caller's window to the guest.
    Donate {
        /// The pages: `direction` is always [`Direction::ToGuest`].
        transfer: Transfer,
        /// The guest's access.
        access: Access,
    },
    /// [`Label::Share`].
    Share {
        /// The pages.
        transfer: Transfer,
        /// The completer's access (at most the owner's).
        access: Access,
    },
    /// [`Label::Lend`].
    Lend {
        /// The pages.
        transfer: Transfer,
        /// The completer's access (at most the owner's).
        access: Access,
    },
    /// [`Label::Unshare`].
    Unshare(Transfer),
    /// [`Label::Reclaim`].
    Reclaim(Transfer),
    /// [`Label::Relinquish`].
    Relinquish {
        /// Who gives the pages up.
        target: Target,
        /// The pages.
        range: PageRange,
    },
    /// [`Label::Populate`].
    Populate {
        /// Whose fault.
        target: Target,
        /// The faulting address.
        addr: FaultAddr,
        /// What an existing mapping means.
        flags: WalkFlags,
    },
    /// [`Label::MapDevice`].
    MapDevice {
        /// The guest.
        guest: GuestId,
        /// The faulting address.
        addr: FaultAddr,
        /// What an existing mapping means.
        flags: WalkFlags,
    },
    /// [`Label::Teardown`].
    Teardown {
        /// The guest.
        guest: GuestId,
    },
    /// [`Label::Query`].
    Query {
        /// Whose address space.
        target: Target,
        /// Any address in the page.
        addr: FaultAddr,
    },
}

/// An encoded message: a label and its words.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Message<const N: usize> {
    /// The PPC label.
    pub label: u64,
    /// The message words; only the first `len` are sent.
    pub words: [u64; N],
    /// Number of words.
    pub len: usize,
}

impl<const N: usize> Message<N> {
    /// The words that are sent.
    #[must_use]
    pub fn words(&self) -> &[u64] {
        &self.words[..self.len]
    }
}

impl Request {
    /// Decodes a PPC: its label and message words. Checks the label, then
    /// the length, then each word in order; the first refusal wins.
    pub fn decode(label: u64, words: &[u64]) -> Result<Request, MmError> {
        let label = Label::from_raw(label)?;
        if words.len() != label.request_words() {
            return Err(MmError::BadLength);
        }
        let w = |i: usize| words[i];
        let transfer = |direction: Direction| -> Result<Transfer, MmError> {
            Ok(Transfer {
                guest: GuestId::from_raw(w(0))?,
                direction,
                from: PageRange::new(w(2), w(4))?,
                to: PageRange::new(w(3), w(4))?,
            })
        };
        let two_sided = || -> Result<Transfer, MmError> {
            GuestId::from_raw(w(0))?;
            transfer(Direction::from_raw(w(1))?)
        };
        Ok(match label {
            Label::CreateGuest => Request::CreateGuest { guest: GuestId::from_raw(w(0))? },
            Label::Donate => {
                let guest = GuestId::from_raw(w(0))?;
                let from = PageRange::new(w(1), w(3))?;
                let to = PageRange::new(w(2), w(3))?;
                let transfer = Transfer { guest, direction: Direction::ToGuest, from, to };
                Request::Donate { transfer, access: Access::from_raw(w(4))? }
            }
            Label::Share => {
                let transfer = two_sided()?;
                Request::Share { transfer, access: Access::from_raw(w(5))? }
            }
            Label::Lend => {
                let transfer = two_sided()?;
                Request::Lend { transfer, access: Access::from_raw(w(5))? }
            }
            Label::Unshare => Request::Unshare(two_sided()?),
            Label::Reclaim => Request::Reclaim(two_sided()?),
            Label::Relinquish => Request::Relinquish {
                target: Target::from_raw(w(0))?,
                range: PageRange::new(w(1), w(2))?,
            },
            Label::Populate => Request::Populate {
                target: Target::from_raw(w(0))?,
                addr: FaultAddr::from_raw(w(1))?,
                flags: WalkFlags::from_raw(w(2))?,
            },
            Label::MapDevice => Request::MapDevice {
                guest: GuestId::from_raw(w(0))?,
                addr: FaultAddr::from_raw(w(1))?,
                flags: WalkFlags::from_raw(w(2))?,
            },
            Label::Teardown => Request::Teardown { guest: GuestId::from_raw(w(0))? },
            Label::Query => {
                Request::Query { target: Target::from_raw(w(0))?, addr: FaultAddr::from_raw(w(1))? }
            }
        })
    }

    /// The request's label.
    #[must_use]
    pub const fn label(&self) -> Label {
        match self {
            Request::CreateGuest { .. } => Label::CreateGuest,
            Request::Donate { .. } => Label::Donate,
            Request::Share { .. } => Label::Share,
            Request::Lend { .. } => Label::Lend,
            Request::Unshare(_) => Label::Unshare,
            Request::Reclaim(_) => Label::Reclaim,
            Request::Relinquish { .. } => Label::Relinquish,
            Request::Populate { .. } => Label::Populate,
            Request::MapDevice { .. } => Label::MapDevice,
            Request::Teardown { .. } => Label::Teardown,
            Request::Query { .. } => Label::Query,
        }
    }

    /// Encodes the request as a PPC message.
    #[must_use]
    pub fn encode(&self) -> Message<MAX_REQUEST_WORDS> {
        let label = self.label();
        let mut words = [0; MAX_REQUEST_WORDS];
        let g = |g: GuestId| u64::from(g.0);
        let two = |t: &Transfer| {
            [g(t.guest), t.direction as u64, t.from.start, t.to.start, t.from.pages, 0]
        };
        match *self {
            Request::CreateGuest { guest } | Request::Teardown { guest } => words[0] = g(guest),
            Request::Donate { transfer: t, access } => {
                words[..5].copy_from_slice(&[
                    g(t.guest),
                    t.from.start,
                    t.to.start,
                    t.from.pages,
                    u64::from(access.0),
                ]);
            }
            Request::Share { transfer, access } | Request::Lend { transfer, access } => {
                words = two(&transfer);
                words[5] = u64::from(access.0);
            }
            Request::Unshare(t) | Request::Reclaim(t) => words = two(&t),
            Request::Relinquish { target, range } => {
                words[..3].copy_from_slice(&[target.raw(), range.start, range.pages]);
            }
            Request::Populate { target, addr, flags } => {
                words[..3].copy_from_slice(&[target.raw(), addr.0, flags.0]);
            }
            Request::MapDevice { guest, addr, flags } => {
                words[..3].copy_from_slice(&[g(guest), addr.0, flags.0]);
            }
            Request::Query { target, addr } => words[..2].copy_from_slice(&[target.raw(), addr.0]),
        }
        Message { label: label as u64, words, len: label.request_words() }
    }
}

/// The state of a page in one address space, as `Query` reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum PageState {
    /// Nothing this space may access.
    NoPage = 0,
    /// Owned, mapped by nobody else (device mappings report this too).
    Owned = 1,
    /// Owned and shared with borrowers.
    SharedOwned = 2,
    /// Someone else's page, shared with this space.
    SharedBorrowed = 3,
    /// Someone else's page, lent to this space.
    Lent = 4,
    /// This space's page, lent out: it cannot access it until it returns.
    LentOut = 5,
}

impl PageState {
    /// Decodes a reply word.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Option<PageState> {
        Some(match raw {
            0 => PageState::NoPage,
            1 => PageState::Owned,
            2 => PageState::SharedOwned,
            3 => PageState::SharedBorrowed,
            4 => PageState::Lent,
            5 => PageState::LentOut,
            _ => return None,
        })
    }
}

/// What `Query` reports about a page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageInfo {
    /// The page's state in the queried space.
    pub state: PageState,
    /// The space's access to it (for `LentOut`: the access it gets back);
    /// [`Access::DEVICE`] for device memory.
    pub access: Access,
    /// How many spaces borrow the page (0 unless shared or lent).
    pub borrowers: u8,
}

/// A successful reply.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reply {
    /// Done; no words.
    Done,
    /// `Populate` and `MapDevice`: the range now mapped; zero pages when
    /// [`WalkFlags::IGNORE_RETRY`] found the page mapped already.
    Mapped {
        /// First IPA mapped (the fault's page when nothing was).
        ipa: u64,
        /// Pages mapped.
        pages: u64,
    },
    /// `Teardown`: what came back.
    TornDown {
        /// Data pages zeroed and returned to the free pool.
        pages: u64,
        /// Table pages returned to the mm PD's table memory.
        tables: u64,
    },
    /// `Query`.
    Page(PageInfo),
}

/// The reply to any request: success with its words, or a refusal.
pub type Outcome = Result<Reply, MmError>;

/// Encodes the reply to a request.
#[must_use]
pub fn encode_reply(outcome: Outcome) -> Message<MAX_REPLY_WORDS> {
    let mut words = [0; MAX_REPLY_WORDS];
    let (label, len) = match outcome {
        Err(e) => (e.raw(), 0),
        Ok(Reply::Done) => (0, 0),
        Ok(Reply::Mapped { ipa, pages }) => {
            words[..2].copy_from_slice(&[ipa, pages]);
            (0, 2)
        }
        Ok(Reply::TornDown { pages, tables }) => {
            words[..2].copy_from_slice(&[pages, tables]);
            (0, 2)
        }
        Ok(Reply::Page(info)) => {
            words = [info.state as u64, u64::from(info.access.0), u64::from(info.borrowers)];
            (0, 3)
        }
    };
    Message { label, words, len }
}

/// Decodes the reply to a request with label `request`: the refusal it
/// carries, or [`MmError::MalformedReply`] if the reply does not fit.
pub fn decode_reply(request: Label, label: u64, words: &[u64]) -> Outcome {
    if label != 0 {
        return match MmError::from_raw(label) {
            Some(e) if words.is_empty() => Err(e),
            _ => Err(MmError::MalformedReply),
        };
    }
    if words.len() != request.reply_words() {
        return Err(MmError::MalformedReply);
    }
    Ok(match request {
        Label::Populate | Label::MapDevice => Reply::Mapped { ipa: words[0], pages: words[1] },
        Label::Teardown => Reply::TornDown { pages: words[0], tables: words[1] },
        Label::Query => {
            let state = PageState::from_raw(words[0]).ok_or(MmError::MalformedReply)?;
            if words[1] > 0xf || words[2] > u64::from(u8::MAX) {
                return Err(MmError::MalformedReply);
            }
            let access = Access(words[1] as u8);
            Reply::Page(PageInfo { state, access, borrowers: words[2] as u8 })
        }
        _ => Reply::Done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(id: u16) -> GuestId {
        GuestId::new(id).unwrap()
    }

    fn transfer(direction: Direction) -> Transfer {
        Transfer {
            guest: guest(3),
            direction,
            from: PageRange::new(0x8000_0000, 4).unwrap(),
            to: PageRange::new(0x1000, 4).unwrap(),
        }
    }

    /// One request of every kind, with fields that are not all zero.
    fn every_request() -> [Request; 13] {
        let addr = FaultAddr::from_raw(0x4000_0123).unwrap();
        let range = PageRange::new(0x2000, 2).unwrap();
        [
            Request::CreateGuest { guest: guest(1) },
            Request::Donate { transfer: transfer(Direction::ToGuest), access: Access::RWX },
            Request::Share { transfer: transfer(Direction::FromGuest), access: Access::RW },
            Request::Lend { transfer: transfer(Direction::ToGuest), access: Access::R },
            Request::Unshare(transfer(Direction::FromGuest)),
            Request::Reclaim(transfer(Direction::ToGuest)),
            Request::Relinquish { target: Target::Caller, range },
            Request::Relinquish { target: Target::Guest(guest(65535)), range },
            Request::Populate { target: Target::Guest(guest(2)), addr, flags: WalkFlags::NONE },
            Request::Populate { target: Target::Caller, addr, flags: WalkFlags::IGNORE_RETRY },
            Request::MapDevice { guest: guest(2), addr, flags: WalkFlags::IGNORE_RETRY },
            Request::Teardown { guest: guest(9) },
            Request::Query { target: Target::Guest(guest(4)), addr },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for request in every_request() {
            let m = request.encode();
            assert_eq!(m.len, request.label().request_words());
            assert_eq!(Request::decode(m.label, m.words()), Ok(request), "{request:?}");
        }
    }

    #[test]
    fn every_label_and_code_round_trips() {
        for (i, label) in Label::ALL.into_iter().enumerate() {
            assert_eq!(label as u64, i as u64 + 1);
            assert_eq!(Label::from_raw(label as u64), Ok(label));
            assert!(label.request_words() <= MAX_REQUEST_WORDS);
        }
        for (i, e) in MmError::ALL.into_iter().enumerate() {
            assert_eq!(e.raw(), i as u64 + 1);
            assert_eq!(MmError::from_raw(e.raw()), Some(e));
        }
        assert_eq!(Label::from_raw(0), Err(MmError::UnknownRequest));
        assert_eq!(Label::from_raw(12), Err(MmError::UnknownRequest));
        assert_eq!(Label::from_raw(u64::MAX), Err(MmError::UnknownRequest));
        assert_eq!(MmError::from_raw(0), None);
        assert_eq!(MmError::from_raw(23), None);
    }

    #[test]
    fn every_reply_round_trips() {
        let info = PageInfo { state: PageState::LentOut, access: Access::RW, borrowers: 1 };
        let cases = [
            (Label::Share, Ok(Reply::Done)),
            (Label::Populate, Ok(Reply::Mapped { ipa: 0x20_0000, pages: 512 })),
            (Label::MapDevice, Ok(Reply::Mapped { ipa: 0x900_0000, pages: 0 })),
            (Label::Teardown, Ok(Reply::TornDown { pages: 7, tables: 3 })),
            (Label::Query, Ok(Reply::Page(info))),
            (Label::Donate, Err(MmError::NotOwned)),
            (Label::Query, Err(MmError::NoSuchGuest)),
        ];
        for (label, outcome) in cases {
            let m = encode_reply(outcome);
            assert_eq!(decode_reply(label, m.label, m.words()), outcome);
        }
    }

    #[test]
    fn malformed_replies_are_reported_not_trusted() {
        assert_eq!(decode_reply(Label::Share, 99, &[]), Err(MmError::MalformedReply));
        assert_eq!(decode_reply(Label::Share, 10, &[1]), Err(MmError::MalformedReply));
        assert_eq!(decode_reply(Label::Share, 0, &[1]), Err(MmError::MalformedReply));
        assert_eq!(decode_reply(Label::Query, 0, &[9, 0, 0]), Err(MmError::MalformedReply));
        assert_eq!(decode_reply(Label::Query, 0, &[1, 0x10, 0]), Err(MmError::MalformedReply));
        assert_eq!(decode_reply(Label::Query, 0, &[1, 3, 256]), Err(MmError::MalformedReply));
    }

    #[test]
    fn lengths_are_exact() {
        for label in Label::ALL {
            let n = label.request_words();
            let words = [0x1000; MAX_REQUEST_WORDS + 1];
            assert_eq!(Request::decode(label as u64, &words[..n + 1]), Err(MmError::BadLength));
            assert_eq!(Request::decode(label as u64, &words[..n - 1]), Err(MmError::BadLength));
        }
    }

    #[test]
    fn ranges_are_checked_in_order() {
        assert_eq!(PageRange::new(0x1001, 1), Err(MmError::Misaligned));
        assert_eq!(PageRange::new(0x1000, 0), Err(MmError::BadArgument));
        assert_eq!(PageRange::new(0, u64::MAX), Err(MmError::Overflow));
        assert_eq!(PageRange::new(!0xfff, 2), Err(MmError::Overflow));
        assert_eq!(PageRange::new(IPA_LIMIT - PAGE_SIZE, 2), Err(MmError::PastEnd));
        let last = PageRange::new(IPA_LIMIT - PAGE_SIZE, 1).unwrap();
        assert_eq!(last.end(), IPA_LIMIT);
        assert_eq!(FaultAddr::from_raw(IPA_LIMIT), Err(MmError::PastEnd));
        assert_eq!(FaultAddr::from_raw(0x1fff).unwrap().page(), 0x1000);
    }

    #[test]
    fn unknown_field_values_are_refused() {
        let share = |w: [u64; 6]| Request::decode(Label::Share as u64, &w);
        let ok = [1, 0, 0x1000, 0x2000, 1, Access::RW.bits().into()];
        assert!(share(ok).is_ok());
        for (i, bad) in [(0, 0), (0, 1 << 16), (1, 2), (5, 0), (5, 8), (5, 1 << 40)] {
            let mut w = ok;
            w[i] = bad;
            assert_eq!(share(w), Err(MmError::BadArgument), "word {i} = {bad:#x}");
        }
        let populate = |flags| Request::decode(Label::Populate as u64, &[1, 0x1000, flags]);
        assert!(populate(WalkFlags::IGNORE_RETRY.bits()).is_ok());
        for bad in [1, 2, 4, 1 << 4, u64::MAX] {
            assert_eq!(populate(bad), Err(MmError::BadArgument), "flags {bad:#x}");
        }
        assert_eq!(Target::from_raw(0), Ok(Target::Caller));
        assert_eq!(Target::from_raw(1 << 16), Err(MmError::BadArgument));
    }

    /// A tiny deterministic generator, so the garbage test needs no
    /// dependency: xorshift64*.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn garbage_never_panics_and_what_decodes_re_encodes_identically() {
        let mut s = 0x9e37_79b9_7f4a_7c15;
        let interesting = [0, 1, 2, 5, 0xfff, 0x1000, IPA_LIMIT - 0x1000, IPA_LIMIT, u64::MAX];
        for _ in 0..200_000 {
            let label = next(&mut s) % 14;
            let len = (next(&mut s) % 8) as usize;
            let mut words = [0; 8];
            for w in &mut words[..len] {
                let r = next(&mut s);
                *w =
                    if r & 1 == 0 { interesting[(r >> 1) as usize % interesting.len()] } else { r };
            }
            if let Ok(request) = Request::decode(label, &words[..len]) {
                let m = request.encode();
                assert_eq!((m.label, m.words()), (label, &words[..len]), "{request:?}");
            }
            let _ = decode_reply(Label::Query, label, &words[..len]);
        }
    }
}
