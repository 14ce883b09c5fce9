//! The one error type of hyp-mm.

use core::fmt;

/// Why a stage-2 or ownership operation was refused. A refused operation has
/// changed nothing: no table entry, no refcount, no cache page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum Error {
    /// An argument is malformed: misaligned, empty, overflowing, outside the
    /// address space or the managed memory, or a forbidden combination.
    InvalidArgument = 1,
    /// A page is not in the state the transition requires, or the caller may
    /// not touch it (for example an annotated page on the fault path).
    Permission = 2,
    /// The page is in use: pinned, still shared or lent, or a counter would
    /// saturate. Retrying later may succeed.
    Busy = 3,
    /// The memory cache holds fewer table pages than the operation needs.
    OutOfMemory = 4,
    /// Nothing is mapped where the request expected a mapping.
    NotFound = 5,
    /// A mapping is already present (for example a repeated fault).
    Exists = 6,
    /// A walker visitor asked to stop and retry; also returned by a map that
    /// found every entry already exactly as requested.
    Retry = 7,
}

/// Result of every fallible hyp-mm operation.
pub type Result<T> = core::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::InvalidArgument => "invalid argument",
            Error::Permission => "permission denied",
            Error::Busy => "page busy",
            Error::OutOfMemory => "out of table memory",
            Error::NotFound => "no such mapping",
            Error::Exists => "mapping exists",
            Error::Retry => "retry",
        })
    }
}
