//! Messages: the message info word and the message registers, which live
//! in the PD's IPC buffer (the kernel moves the first four in registers).

use core::cell::UnsafeCell;
use tenure_abi::MSG_REGS;

pub use tenure_abi::MessageInfo;

/// The IPC buffer: message registers shared with the kernel. The tool finds
/// it by its symbol and tells the kernel where it is.
#[repr(C, align(4096))]
pub struct IpcBuffer {
    mrs: UnsafeCell<[u64; MSG_REGS]>,
}

// SAFETY: a PD has one thread of control and its handlers never re-enter,
// so the buffer is never accessed concurrently; every access below copies
// in or out without keeping a reference.
unsafe impl Sync for IpcBuffer {}

/// The PD's IPC buffer.
#[unsafe(no_mangle)]
#[used]
pub static __tenure_ipc_buffer: IpcBuffer = IpcBuffer { mrs: UnsafeCell::new([0; MSG_REGS]) };

/// Message register `i` (0..64).
#[must_use]
pub fn get_mr(i: usize) -> u64 {
    with_msg_regs(|mrs| mrs[i])
}

/// Sets message register `i` (0..64).
pub fn set_mr(i: usize, value: u64) {
    with_msg_regs_mut(|mrs| mrs[i] = value);
}

/// Runs `f` on the message registers.
pub fn with_msg_regs<T>(f: impl FnOnce(&[u64; MSG_REGS]) -> T) -> T {
    // SAFETY: see `IpcBuffer`'s Sync: no other access is live while `f`
    // runs, and the reference does not outlive the call.
    f(unsafe { &*__tenure_ipc_buffer.mrs.get() })
}

/// Runs `f` on the message registers, mutably.
pub fn with_msg_regs_mut<T>(f: impl FnOnce(&mut [u64; MSG_REGS]) -> T) -> T {
    // SAFETY: as for `with_msg_regs`; the handler is single-threaded and
    // `f` cannot call back into another accessor with the borrow alive
    // except by re-entering, which the closure type does not allow to
    // escape.
    f(unsafe { &mut *__tenure_ipc_buffer.mrs.get() })
}
