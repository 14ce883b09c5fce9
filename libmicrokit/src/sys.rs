//! The target side: `svc` stubs, the channel operations, the debug console,
//! the entry point, and the panic handler. Built only for the target.

use crate::channel::{Channel, Child};
use crate::handler::{DeferredAction, Dispatcher, Handler, Kernel};
use crate::ipc::{MessageInfo, with_msg_regs, with_msg_regs_mut};
use crate::symbols::{__tenure_irqs, __tenure_notifications, __tenure_pps, pd_name};
use core::fmt::{self, Write};
use tenure_abi::{FAST_MSG_REGS, Slot, Syscall};

/// Traps into the kernel: `x0` slot, `x1` message info, the fast message
/// registers in `x2..=x5`, `x6` a second argument. Returns `x0`, `x1`, and
/// stores `x2..=x5` back into the IPC buffer.
fn syscall(call: Syscall, slot: u64, info: u64, arg: u64) -> (u64, u64) {
    let [mut m0, mut m1, mut m2, mut m3] = with_msg_regs(|mrs| [mrs[0], mrs[1], mrs[2], mrs[3]]);
    let (mut x0, mut x1) = (slot, info);
    // SAFETY: `svc` transfers control to the kernel, which follows the ABI
    // of `tenure_abi`: it reads and writes only x0..x6 and the IPC buffer,
    // and returns here. The asm may touch memory (the IPC buffer), so no
    // `nomem`.
    unsafe {
        core::arch::asm!(
            "svc #0",
            inout("x0") x0,
            inout("x1") x1,
            inout("x2") m0,
            inout("x3") m1,
            inout("x4") m2,
            inout("x5") m3,
            in("x6") arg,
            in("x7") call as u64,
            options(nostack),
        );
    }
    with_msg_regs_mut(|mrs| mrs[..FAST_MSG_REGS].copy_from_slice(&[m0, m1, m2, m3]));
    (x0, x1)
}

/// A trap that only receives a message (Recv, NbSendRecv): `x2..=x5` come
/// back from the kernel and are stored into the IPC buffer.
fn syscall_receive(call: Syscall, slot: u64, arg: u64) -> (u64, u64) {
    let (mut x0, mut x1) = (slot, 0u64);
    let (m0, m1, m2, m3): (u64, u64, u64, u64);
    // SAFETY: as for `syscall`.
    unsafe {
        core::arch::asm!(
            "svc #0",
            inout("x0") x0,
            inout("x1") x1,
            out("x2") m0,
            out("x3") m1,
            out("x4") m2,
            out("x5") m3,
            in("x6") arg,
            in("x7") call as u64,
            options(nostack),
        );
    }
    with_msg_regs_mut(|mrs| mrs[..FAST_MSG_REGS].copy_from_slice(&[m0, m1, m2, m3]));
    (x0, x1)
}

/// A trap that carries no message registers (Signal, Invoke, the debug
/// console): `x2..=x5` are neither loaded nor stored, which the kernel
/// preserves for these calls.
fn syscall_no_message(call: Syscall, slot: u64, info: u64, arg: u64) -> (u64, u64) {
    let (mut x0, mut x1) = (slot, info);
    // SAFETY: as for `syscall`; the kernel returns x0 and x1 and restores
    // every other register of this PD.
    unsafe {
        core::arch::asm!(
            "svc #0",
            inout("x0") x0,
            inout("x1") x1,
            in("x6") arg,
            in("x7") call as u64,
            options(nostack),
        );
    }
    (x0, x1)
}

/// An invocation that passes message registers 0 and 1 in `x2` and `x3`
/// (the fast path, not the IPC buffer) and returns `x0` (the error code)
/// and `x1` (a value, for methods that return one). `x2..=x5` are treated
/// as clobbered.
pub(crate) fn invoke(slot: u64, info: u64, arg: u64, mr0: u64, mr1: u64) -> (u64, u64) {
    let (mut x0, mut x1) = (slot, info);
    // SAFETY: as for `syscall`; the kernel reads x0..x7, returns x0 and
    // x1, may change x2..x5 (declared clobbered) and restores the rest.
    unsafe {
        core::arch::asm!(
            "svc #0",
            inout("x0") x0,
            inout("x1") x1,
            inout("x2") mr0 => _,
            inout("x3") mr1 => _,
            out("x4") _,
            out("x5") _,
            in("x6") arg,
            in("x7") Syscall::Invoke as u64,
            options(nostack),
        );
    }
    (x0, x1)
}

fn info(raw: u64) -> MessageInfo {
    MessageInfo::from_raw(raw).unwrap_or_default()
}

fn allowed(mask: u64, channel: Channel, what: &str) -> bool {
    let ok = mask & (1 << channel.index()) != 0;
    if !ok {
        debug_print(format_args!(
            "{} {what}: invalid channel given '{}'\n",
            pd_name(),
            channel.index()
        ));
    }
    ok
}

impl Channel {
    /// Signals the other end.
    pub fn notify(self) {
        if allowed(*__tenure_notifications.get(), self, "notify") {
            syscall_no_message(
                Syscall::Signal,
                Slot::notification(self.index() as u8).0.into(),
                0,
                0,
            );
        }
    }

    /// Acknowledges this channel's interrupt, unmasking it.
    pub fn irq_ack(self) {
        if allowed(*__tenure_irqs.get(), self, "irq_ack") {
            syscall_no_message(Syscall::Invoke, Slot::irq(self.index() as u8).0.into(), 0, 0);
        }
    }

    /// Calls the other end (a protected procedure call) and returns its
    /// reply. Panics if this end may not call, as Microkit does.
    pub fn pp_call(self, msg_info: MessageInfo) -> MessageInfo {
        assert!(
            *__tenure_pps.get() & (1 << self.index()) != 0,
            "pp_call: not valid for channel '{}'",
            self.index()
        );
        let slot = Slot::endpoint(self.index() as u8).0.into();
        info(syscall(Syscall::Call, slot, msg_info.raw(), 0).1)
    }
}

/// Invocation labels on a child TCB capability.
mod child_method {
    pub const RESTART: u64 = 1;
    pub const STOP: u64 = 2;
}

impl Child {
    /// Restarts the child at `pc`.
    pub fn restart(self, pc: usize) {
        let info = MessageInfo::new(child_method::RESTART, 0).unwrap_or_default();
        syscall_no_message(
            Syscall::Invoke,
            Slot::child(self.index() as u8).0.into(),
            info.raw(),
            pc as u64,
        );
    }

    /// Stops the child.
    pub fn stop(self) {
        let info = MessageInfo::new(child_method::STOP, 0).unwrap_or_default();
        syscall_no_message(
            Syscall::Invoke,
            Slot::child(self.index() as u8).0.into(),
            info.raw(),
            0,
        );
    }
}

/// The kernel, reached by `svc`.
struct Svc;

impl Svc {
    fn perform_raw(action: DeferredAction) {
        match action {
            DeferredAction::Notify(channel) => channel.notify(),
            DeferredAction::IrqAck(channel) => channel.irq_ack(),
        }
    }
}

impl Kernel for Svc {
    fn recv(&mut self) -> (u64, MessageInfo) {
        let (badge, raw) = syscall_receive(Syscall::Recv, Slot::INPUT.0.into(), 0);
        (badge, info(raw))
    }

    fn reply_recv(&mut self, reply: MessageInfo) -> (u64, MessageInfo) {
        let (badge, raw) = syscall(Syscall::ReplyRecv, Slot::INPUT.0.into(), reply.raw(), 0);
        (badge, info(raw))
    }

    fn nb_send_recv(&mut self, action: DeferredAction) -> (u64, MessageInfo) {
        let target = match action {
            DeferredAction::Notify(c) if allowed(*__tenure_notifications.get(), c, "notify") => {
                Slot::notification(c.index() as u8)
            }
            DeferredAction::IrqAck(c) if allowed(*__tenure_irqs.get(), c, "irq_ack") => {
                Slot::irq(c.index() as u8)
            }
            _ => return self.recv(),
        };
        let (badge, raw) =
            syscall_receive(Syscall::NbSendRecv, Slot::INPUT.0.into(), target.0.into());
        (badge, info(raw))
    }

    fn perform(&mut self, action: DeferredAction) {
        Self::perform_raw(action);
    }

    fn report_unknown_badge(&mut self, badge: u64) {
        debug_print(format_args!("{}: ignoring unknown badge {badge:#x}\n", pd_name()));
    }
}

/// Runs a PD: calls `init`, then dispatches events to its handler forever.
/// An entry point's error is reported and the PD stops by faulting, so its
/// parent (or the console) hears of it.
pub fn run_main<H: Handler>(init: impl FnOnce() -> H) -> ! {
    let mut handler = init();
    let mut dispatcher = Dispatcher::new();
    loop {
        if let Err(e) = dispatcher.step(&mut Svc, &mut handler) {
            debug_print(format_args!("{}: handler error: {e}\n", pd_name()));
            abort();
        }
    }
}

/// Names the PD's `init` function, which returns its handler.
#[macro_export]
macro_rules! protection_domain {
    ($init:path) => {
        #[unsafe(no_mangle)]
        extern "C" fn __tenure_pd_main() -> ! {
            $crate::sys::run_main($init)
        }
    };
}

// The kernel enters a PD at `_start` with SP at the top of the stack the
// tool placed; there is nothing else to set up (stage 1 is off).
core::arch::global_asm!(
    ".section .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "    bl __tenure_pd_main",
    "1:  b 1b",
);

struct DebugConsole;

impl Write for DebugConsole {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            syscall_no_message(Syscall::DebugPutChar, u64::from(b), 0, 0);
        }
        Ok(())
    }
}

/// Prints to the kernel's debug console (debug builds of the kernel).
pub fn debug_print(args: fmt::Arguments<'_>) {
    let _ = DebugConsole.write_fmt(args);
}

/// Prints a line to the kernel's debug console.
#[macro_export]
macro_rules! debug_println {
    ($($arg:tt)*) => {
        $crate::sys::debug_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Stops the PD with a fault the kernel reports to its parent.
fn abort() -> ! {
    loop {
        // SAFETY: `udf` raises an undefined-instruction exception, which the
        // kernel turns into a fault of this PD; it has no other effect.
        unsafe { core::arch::asm!("udf #0", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    debug_print(format_args!("{}: panicked: {info}\n", pd_name()));
    abort()
}
