//! Fault suite: every PD of the suite runs this program; its role comes
//! from its name (see ../../README.md). `parent` handles its children's
//! faults, prints TAP and ends with `TEST_PASS` or `TEST_FAIL`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use microkit::symbols::pd_name;
    use microkit::{
        Channel, ChannelSet, Child, Handler, MessageInfo, debug_println, get_mr,
        memory_region_symbol, protection_domain, set_mr,
    };

    /// Words of the shared page, by index.
    mod w {
        /// What kid does when it starts: 0 data abort, 1 `udf`, 2 report.
        pub const KID_STAGE: usize = 0;
        /// Times kid has started.
        pub const KID_STARTS: usize = 1;
        /// orphan got as far as its fault ...
        pub const ORPHAN_STARTED: usize = 2;
        /// ... and, wrongly, past it.
        pub const ORPHAN_AFTER: usize = 3;
        /// Times hikid has started.
        pub const HIKID_STARTS: usize = 4;
        /// Times hikid woke without a signal from its parent.
        pub const HIKID_SPURIOUS: usize = 5;
    }

    /// Addresses nothing maps (stage-2 faults), one per faulting PD.
    const KID_BAD: usize = 0xdead_0008;
    const HIKID_BAD: usize = 0xdead_2000;
    const ORPHAN_BAD: usize = 0xdead_3000;
    /// Every PD's entry (`_start`): pds/pd.ld puts it first in .text at
    /// 0x200000.
    const ENTRY: usize = 0x20_0000;
    /// End of where the programs' text can be.
    const TEXT_END: usize = 0x40_0000;

    /// Fault labels (seL4 MCS numbering).
    const USER_EXCEPTION: u64 = 3;
    const VM_FAULT: u64 = 6;

    const KID: Child = Child::new(1);
    const HIKID: Child = Child::new(2);
    /// parent: kid's reports, hikid, survivor's report.
    const FROM_KID: Channel = Channel::new(0);
    const TO_HIKID: Channel = Channel::new(1);
    const FROM_SURVIVOR: Channel = Channel::new(2);
    /// busy_parent: hikid's report after its restart; hikid: to parent.
    const FROM_HIKID: Channel = Channel::new(1);
    const HIKID_PARENT: Channel = Channel::new(1);
    /// kid, survivor: to parent.
    const KID_PARENT: Channel = Channel::new(0);
    const SURVIVOR_PARENT: Channel = Channel::new(2);

    /// Checks of `parent` (the faults suite) and of `busy_parent` (the
    /// fault_busy suite).
    const PLAN: u32 = 6;
    const BUSY_PLAN: u32 = 3;
    /// parent's message registers before it signals hikid.
    const SENTINEL: u64 = 0x5e17_0000;

    fn word(i: usize) -> &'static AtomicU64 {
        let word = memory_region_symbol!(shm: *mut AtomicU64).as_ptr().wrapping_add(i);
        // SAFETY: system.xml maps the 4 KiB region `shm` read-write at
        // `shm` in every PD of the suite; `i` is below 512, so the word is
        // inside it, aligned; all accesses are atomic.
        unsafe { &*word }
    }

    /// Reads `addr`, which nothing maps: a stage-2 data abort.
    fn touch(addr: usize) -> u64 {
        // SAFETY: not sound on purpose: the read faults, and the kernel
        // stops this PD there; it is never resumed past the read.
        unsafe { core::ptr::read_volatile(addr as *const u64) }
    }

    struct Parent {
        plan: u32,
        reported: u32,
        failed: u32,
    }

    impl Parent {
        fn check(&mut self, n: u32, ok: bool, what: &str) {
            self.reported += 1;
            if ok {
                debug_println!("ok {n} - {what}");
            } else {
                self.failed += 1;
                debug_println!("not ok {n} - {what}");
            }
            if self.reported == self.plan {
                debug_println!("{}", if self.failed == 0 { "TEST_PASS" } else { "TEST_FAIL" });
            }
        }
    }

    /// busy_parent: signals hikid (priority 150), which preempts this PD
    /// and faults while it runs.
    fn fault_while_busy(p: &mut Parent) {
        // hikid (priority 150) preempts this PD and faults while
        // it runs: the fault must wait for this PD's next receive
        // and must not touch its registers now.
        for i in 0..4 {
            set_mr(i, SENTINEL + i as u64);
        }
        TO_HIKID.notify();
        let kept = (0..4).all(|i| get_mr(i) == SENTINEL + i as u64);
        if !kept {
            debug_println!(
                "# mr0..3 after notify: {:#x} {:#x} {:#x} {:#x}",
                get_mr(0),
                get_mr(1),
                get_mr(2),
                get_mr(3)
            );
        }
        p.check(1, kept, "a child's fault leaves its busy parent's registers alone");
        // The parent goes on using its message registers (as any
        // IPC would) before it waits for hikid's fault message.
        for i in 0..4 {
            set_mr(i, 0);
        }
    }

    enum Pd {
        Parent(Parent),
        Other,
    }

    fn init() -> Pd {
        match pd_name() {
            "parent" => {
                debug_println!("1..{PLAN}");
                return Pd::Parent(Parent { plan: PLAN, reported: 0, failed: 0 });
            }
            "busy_parent" => {
                debug_println!("1..{BUSY_PLAN}");
                let mut p = Parent { plan: BUSY_PLAN, reported: 0, failed: 0 };
                fault_while_busy(&mut p);
                return Pd::Parent(p);
            }
            "kid" => {
                word(w::KID_STARTS).fetch_add(1, SeqCst);
                match word(w::KID_STAGE).load(SeqCst) {
                    0 => {
                        touch(KID_BAD);
                    }
                    1 => {
                        // SAFETY: an undefined instruction: the kernel
                        // stops this PD here and tells its parent.
                        unsafe { core::arch::asm!("udf #1", options(nomem, nostack)) };
                    }
                    _ => KID_PARENT.notify(),
                }
            }
            "orphan" => {
                word(w::ORPHAN_STARTED).store(1, SeqCst);
                touch(ORPHAN_BAD);
                word(w::ORPHAN_AFTER).store(1, SeqCst);
            }
            "survivor" => SURVIVOR_PARENT.notify(),
            // hikid waits for parent's signal; restarted, it reports.
            "hikid" if word(w::HIKID_STARTS).fetch_add(1, SeqCst) > 0 => HIKID_PARENT.notify(),
            _ => {}
        }
        Pd::Other
    }

    impl Handler for Pd {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            let Pd::Parent(p) = self else {
                // hikid: fault at once when the parent says so.
                if channels.contains(HIKID_PARENT) {
                    touch(HIKID_BAD);
                } else {
                    word(w::HIKID_SPURIOUS).fetch_add(1, SeqCst);
                }
                return Ok(());
            };
            if p.plan == BUSY_PLAN {
                let starts = word(w::HIKID_STARTS).load(SeqCst);
                let spurious = word(w::HIKID_SPURIOUS).load(SeqCst);
                if spurious != 0 {
                    debug_println!("# hikid woke {spurious} times without a signal");
                }
                p.check(
                    3,
                    channels.contains(FROM_HIKID) && starts == 2 && spurious == 0,
                    "a child restarted in fault() that also replies runs once from its entry",
                );
                return Ok(());
            }
            if channels.contains(FROM_KID) {
                let starts = word(w::KID_STARTS).load(SeqCst);
                p.check(5, starts == 3, "a child restarted after a udf fault runs again");
            }
            if channels.contains(FROM_SURVIVOR) {
                let started = word(w::ORPHAN_STARTED).load(SeqCst);
                let after = word(w::ORPHAN_AFTER).load(SeqCst);
                p.check(
                    6,
                    started == 1 && after == 0,
                    "a parentless PD's fault stops it while the rest runs on",
                );
            }
            Ok(())
        }

        fn fault(
            &mut self,
            child: Child,
            msg_info: MessageInfo,
        ) -> Result<Option<MessageInfo>, Self::Error> {
            let Pd::Parent(p) = self else { return Ok(None) };
            let (pc, addr) = (get_mr(0) as usize, get_mr(1) as usize);
            let label = msg_info.label();
            if child == HIKID {
                if (label, addr) != (VM_FAULT, HIKID_BAD) {
                    debug_println!("# hikid fault: label {label}, mr0 {pc:#x}, mr1 {addr:#x}");
                }
                p.check(
                    2,
                    label == VM_FAULT && addr == HIKID_BAD,
                    "a fault while the parent is busy arrives intact (child 2, VmFault, address)",
                );
                // Restart it and reply too: the reply finds no fault to
                // resume (seL4's restart cancels the IPC), so it must
                // change nothing.
                HIKID.restart(ENTRY);
                return Ok(Some(MessageInfo::default()));
            }
            let stage = word(w::KID_STAGE).load(SeqCst);
            let starts = word(w::KID_STARTS).load(SeqCst);
            if child != KID || stage > 1 {
                debug_println!("# unexpected fault of child {} (stage {stage})", child.index());
                p.failed += 1;
                return Ok(None);
            }
            if stage == 0 {
                p.check(
                    1,
                    label == VM_FAULT,
                    "a child's data abort reaches fault() as child 1, VmFault",
                );
                if !(addr == KID_BAD && (ENTRY..TEXT_END).contains(&pc)) {
                    debug_println!("# fault message: mr0 {pc:#x}, mr1 {addr:#x}");
                }
                p.check(
                    2,
                    addr == KID_BAD && (ENTRY..TEXT_END).contains(&pc),
                    "the fault message gives the PC and the faulting address",
                );
            } else {
                p.check(
                    3,
                    starts == 2,
                    "a child restarted at its entry runs again (and faults again)",
                );
                if label != USER_EXCEPTION {
                    debug_println!("# udf fault label {label}");
                }
                p.check(
                    4,
                    label == USER_EXCEPTION && (ENTRY..TEXT_END).contains(&pc),
                    "a child's udf reaches fault() as child 1, UserException",
                );
            }
            word(w::KID_STAGE).store(stage + 1, SeqCst);
            KID.restart(ENTRY);
            Ok(None)
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("faults_pd is a protection domain: build it for aarch64-unknown-none");
}
