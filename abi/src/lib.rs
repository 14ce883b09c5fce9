//! Tenure's kernel ABI, shared by the kernel, the PD runtime and the tool:
//! syscall numbers and registers, capability kinds and slots, the message
//! info word, error codes and the limits Microkit fixes.
//!
//! # Calling convention
//!
//! A PD traps with `svc #0` at EL0; the kernel (EL2, HCR_EL2.TGE set) takes
//! it. Registers on entry:
//!
//! | register | meaning |
//! |---|---|
//! | `x7` | [`Syscall`] number |
//! | `x0` | capability slot ([`Slot`]) the call names |
//! | `x1` | [`MessageInfo`] (label and length) |
//! | `x2..=x5` | message registers 0..=3 (the fast path); the rest are in the PD's IPC buffer |
//! | `x6` | second argument of invocations |
//!
//! On return `x0` holds the badge (receive) or an [`Error`] code (0 for
//! success), `x1` the reply's [`MessageInfo`], `x2..=x5` its first message
//! registers.
//!
//! Invariant: every value here crosses a trust boundary, so the kernel
//! decodes each one with a checked `from_raw` and refuses what it does not
//! know.
#![no_std]
#![forbid(unsafe_code)]

pub mod mm;
pub mod mm_config;
pub mod vcpu;

pub mod hvc;

/// Number of message registers a message may carry (Microkit's limit).
pub const MSG_REGS: usize = 64;
/// Message registers passed in `x2..=x5`; the rest go through the IPC buffer.
pub const FAST_MSG_REGS: usize = 4;
/// Channel (and IRQ, vCPU) ids are `0..=MAX_CHANNEL_ID` (Microkit's
/// `PD_MAX_ID`; badge bits 62 and 63 are reserved).
pub const MAX_CHANNEL_ID: u8 = 61;
/// Number of channel ids.
pub const CHANNELS: usize = MAX_CHANNEL_ID as usize + 1;
/// Most protection domains a system may have (Microkit's `MAX_PDS`).
pub const MAX_PDS: usize = 63;
/// Longest PD name, in bytes (Microkit 2.x).
pub const PD_NAME_LEN: usize = 64;
/// Highest scheduling priority a PD may have (255 is the kernel's own).
pub const MAX_PRIORITY: u8 = 254;

/// Badge bit set on a protected procedure call (Microkit's PPC bit).
pub const BADGE_PPC: u64 = 1 << 63;
/// Badge bit set on a fault message from a child.
pub const BADGE_FAULT: u64 = 1 << 62;

/// System calls, in `x7`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum Syscall {
    /// Send on an endpoint and wait for the reply (a PPC).
    Call = 1,
    /// Reply to the last caller, then wait on the PD's own endpoint.
    ReplyRecv = 2,
    /// Signal a notification.
    Signal = 3,
    /// Wait on the PD's own endpoint and notification.
    Recv = 4,
    /// Signal (or call) without blocking, then wait: one trap for a
    /// deferred notify and the next wait.
    NbSendRecv = 5,
    /// An invocation on a capability; the label of `x1` is the method.
    Invoke = 6,
    /// Give up the rest of the time slice.
    Yield = 7,
    /// Write one byte to the kernel console (debug builds only).
    DebugPutChar = 8,
}

impl Syscall {
    /// Decodes `x7`; `None` for an unknown number.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Option<Self> {
        Some(match raw {
            1 => Syscall::Call,
            2 => Syscall::ReplyRecv,
            3 => Syscall::Signal,
            4 => Syscall::Recv,
            5 => Syscall::NbSendRecv,
            6 => Syscall::Invoke,
            7 => Syscall::Yield,
            8 => Syscall::DebugPutChar,
            _ => return None,
        })
    }
}

/// Why the kernel refused a syscall, returned in `x0`. 0 is success.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum Error {
    /// The slot is empty or out of range.
    InvalidCapability = 1,
    /// The capability is of the wrong kind for this syscall or invocation.
    WrongKind = 2,
    /// The capability lacks the right this use needs.
    InsufficientRights = 3,
    /// An argument is malformed (length, label, address, id).
    InvalidArgument = 4,
    /// The object is not in a state that allows this (for example a reply
    /// with no caller waiting).
    InvalidState = 5,
    /// The unknown syscall or invocation method.
    IllegalOperation = 6,
}

impl Error {
    /// Decodes a return value: `Ok(())` for 0, the error otherwise; `None`
    /// for a code this ABI does not define.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Option<Result<(), Error>> {
        Some(match raw {
            0 => Ok(()),
            1 => Err(Error::InvalidCapability),
            2 => Err(Error::WrongKind),
            3 => Err(Error::InsufficientRights),
            4 => Err(Error::InvalidArgument),
            5 => Err(Error::InvalidState),
            6 => Err(Error::IllegalOperation),
            _ => return None,
        })
    }
}

/// Kinds of capability a slot may hold.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum CapKind {
    /// Nothing.
    Null = 0,
    /// A badged notification: Signal sets badge bits in the target.
    Notification = 1,
    /// A badged endpoint: Call performs a PPC into the target.
    Endpoint = 2,
    /// Acknowledge (unmask) one interrupt.
    IrqHandler = 3,
    /// Control a child PD: restart, stop, read and write its registers.
    ChildTcb = 4,
    /// Control a vCPU of a guest.
    Vcpu = 5,
    /// The memory manager's control of stage-2 roots, TLBs and caches.
    Stage2Control = 6,
}

impl CapKind {
    /// Decodes a kind byte from the boot image.
    #[must_use]
    pub const fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            0 => CapKind::Null,
            1 => CapKind::Notification,
            2 => CapKind::Endpoint,
            3 => CapKind::IrqHandler,
            4 => CapKind::ChildTcb,
            5 => CapKind::Vcpu,
            6 => CapKind::Stage2Control,
            _ => return None,
        })
    }
}

/// A capability slot number in a PD's table.
///
/// The layout follows Microkit's so that its `microkit_*` numbering
/// carries over: one block of [`CHANNELS`] slots per kind, indexed by
/// channel (or child, or vCPU) id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Slot(pub u16);

impl Slot {
    /// The PD's own endpoint, on which it receives notifications and PPCs.
    pub const INPUT: Slot = Slot(1);
    /// First notification capability, for channel 0.
    pub const BASE_NOTIFICATION: u16 = 10;
    /// First endpoint (PPC) capability, for channel 0.
    pub const BASE_ENDPOINT: u16 = 74;
    /// First IRQ handler capability, for channel 0.
    pub const BASE_IRQ: u16 = 138;
    /// First child TCB capability, for child id 0.
    pub const BASE_CHILD: u16 = 202;
    /// First vCPU capability, for vCPU id 0.
    pub const BASE_VCPU: u16 = 330;
    /// The memory manager's stage-2 control capability.
    pub const STAGE2_CONTROL: Slot = Slot(394);
    /// Slots in a PD's table.
    pub const COUNT: usize = 395;

    /// The notification capability for channel `id` (at most
    /// [`MAX_CHANNEL_ID`]).
    #[must_use]
    pub const fn notification(id: u8) -> Slot {
        Slot(Self::BASE_NOTIFICATION + id as u16)
    }

    /// The endpoint capability for channel `id`.
    #[must_use]
    pub const fn endpoint(id: u8) -> Slot {
        Slot(Self::BASE_ENDPOINT + id as u16)
    }

    /// The IRQ handler capability for channel `id`.
    #[must_use]
    pub const fn irq(id: u8) -> Slot {
        Slot(Self::BASE_IRQ + id as u16)
    }

    /// The TCB capability of child `id`.
    #[must_use]
    pub const fn child(id: u8) -> Slot {
        Slot(Self::BASE_CHILD + id as u16)
    }

    /// The capability of vCPU `id`.
    #[must_use]
    pub const fn vcpu(id: u8) -> Slot {
        Slot(Self::BASE_VCPU + id as u16)
    }

    /// Decodes `x0`: `None` if it names no slot of the table.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Option<Slot> {
        if raw < Self::COUNT as u64 { Some(Slot(raw as u16)) } else { None }
    }
}

/// The message info word: a label and a length in message registers,
/// in seL4's layout (`label[63:12]`, `length[6:0]`; bits 11..7 are zero).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MessageInfo(u64);

impl MessageInfo {
    const LENGTH_MASK: u64 = 0x7f;
    const LABEL_SHIFT: u32 = 12;
    /// Largest label.
    pub const MAX_LABEL: u64 = (1 << 52) - 1;

    /// A message with `label` and `count` message registers; `None` if
    /// either is out of range.
    #[must_use]
    pub const fn new(label: u64, count: usize) -> Option<Self> {
        if label > Self::MAX_LABEL || count > MSG_REGS {
            return None;
        }
        Some(MessageInfo((label << Self::LABEL_SHIFT) | count as u64))
    }

    /// Decodes `x1` from a PD: `None` if reserved bits are set or the length
    /// exceeds [`MSG_REGS`].
    #[must_use]
    pub const fn from_raw(raw: u64) -> Option<Self> {
        let reserved = raw & ((1 << Self::LABEL_SHIFT) - 1) & !Self::LENGTH_MASK;
        if reserved != 0 || (raw & Self::LENGTH_MASK) as usize > MSG_REGS {
            return None;
        }
        Some(MessageInfo(raw))
    }

    /// The label.
    #[must_use]
    pub const fn label(self) -> u64 {
        self.0 >> Self::LABEL_SHIFT
    }

    /// Number of message registers.
    #[must_use]
    pub const fn count(self) -> usize {
        (self.0 & Self::LENGTH_MASK) as usize
    }

    /// The raw word.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_info_round_trips_label_and_length() {
        for (label, count) in [(0, 0), (1, 1), (0xabc, 4), (MessageInfo::MAX_LABEL, 64)] {
            let info = MessageInfo::new(label, count).unwrap();
            assert_eq!((info.label(), info.count()), (label, count));
            assert_eq!(MessageInfo::from_raw(info.raw()), Some(info));
        }
    }

    #[test]
    fn message_info_refuses_long_messages_and_reserved_bits() {
        assert_eq!(MessageInfo::new(0, 65), None);
        assert_eq!(MessageInfo::new(1 << 52, 0), None);
        assert_eq!(MessageInfo::from_raw(65), None);
        assert_eq!(MessageInfo::from_raw(1 << 7), None);
    }

    #[test]
    fn unknown_syscalls_kinds_and_errors_decode_to_none() {
        assert_eq!(Syscall::from_raw(0), None);
        assert_eq!(Syscall::from_raw(9), None);
        assert_eq!(Syscall::from_raw(1), Some(Syscall::Call));
        assert_eq!(CapKind::from_raw(7), None);
        assert_eq!(Error::from_raw(7), None);
        assert_eq!(Error::from_raw(0), Some(Ok(())));
    }

    #[test]
    fn slot_blocks_do_not_overlap() {
        assert!(Slot::notification(MAX_CHANNEL_ID).0 < Slot::BASE_ENDPOINT);
        assert!(Slot::endpoint(MAX_CHANNEL_ID).0 < Slot::BASE_IRQ);
        assert!(Slot::irq(MAX_CHANNEL_ID).0 < Slot::BASE_CHILD);
        assert!(Slot::child(63).0 < Slot::BASE_VCPU);
        assert!(Slot::vcpu(63).0 < Slot::STAGE2_CONTROL.0);
        assert_eq!(Slot::from_raw(Slot::COUNT as u64), None);
    }
}
