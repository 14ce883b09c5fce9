//! Scheduling suite: every PD of the suite runs this program; its role
//! comes from its name (see ../../README.md). The PDs record what they
//! observe in a shared page; `lead` reads it, prints TAP and ends with
//! `TEST_PASS` or `TEST_FAIL`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use microkit::symbols::pd_name;
    use microkit::{
        Channel, ChannelSet, Handler, MessageInfo, debug_println, memory_region_symbol,
        protection_domain,
    };

    /// Words of the shared page, by index.
    mod w {
        /// Number of PDs that have started `init`.
        pub const LOG_LEN: usize = 0;
        /// Priorities of the PDs, in the order they started `init`.
        pub const LOG: usize = 1;
        /// `high`: notifications from lead handled.
        pub const HIGH_L: usize = 16;
        /// `high`: notifications from top handled.
        pub const HIGH_T: usize = 17;
        /// Entry points entered while another was running, by any PD.
        pub const REENTERED: usize = 18;
        /// `high`: the notification top sent while high was in `init`
        /// arrived after `init` returned.
        pub const HIGH_T_AFTER_INIT: usize = 19;
        /// `peer`: notifications handled.
        pub const PEER_RUNS: usize = 20;
        /// Busy PDs: iterations so far (a, b).
        pub const BUSY: usize = 24;
        /// Busy PDs: how each ended (a, b): 1 = saw the other progress,
        /// 2 = gave up.
        pub const BUSY_END: usize = 26;
        /// Busy PDs: FP/SIMD registers that did not hold their pattern
        /// across the spin (a, b), plus one (0 = not run).
        pub const FP_BAD: usize = 28;
    }

    /// Iterations each busy PD spins before it looks for the other's
    /// progress: several time slices on QEMU.
    const BUSY_MIN: u64 = 3_000_000;
    /// Iterations after which a busy PD gives up (no round robin).
    const BUSY_MAX: u64 = 200_000_000;

    fn word(i: usize) -> &'static AtomicU64 {
        let word = memory_region_symbol!(shm: *mut AtomicU64).as_ptr().wrapping_add(i);
        // SAFETY: system.xml maps the 4 KiB region `shm` read-write at
        // `shm` in every PD of the suite; `i` is below 512, so the word is
        // inside it, aligned; all accesses are atomic.
        unsafe { &*word }
    }

    /// Set while an entry point of this PD runs.
    static IN_ENTRY: AtomicBool = AtomicBool::new(false);
    /// Set when this PD's `init` has returned.
    static INIT_DONE: AtomicBool = AtomicBool::new(false);

    /// Marks an entry point as entered; counts a re-entry.
    fn enter() {
        if IN_ENTRY.swap(true, SeqCst) {
            word(w::REENTERED).fetch_add(1, SeqCst);
        }
    }

    fn leave() {
        IN_ENTRY.store(false, SeqCst);
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Role {
        Top,
        High,
        Lead,
        Peer,
        Busy(usize),
    }

    /// top: high's calls; notifications to high.
    const TOP_HIGH: Channel = Channel::new(1);
    /// high: notifications from lead ...
    const HIGH_LEAD: Channel = Channel::new(0);
    /// ... and calls to top, notifications from it.
    const HIGH_TOP: Channel = Channel::new(1);
    /// lead: notifications to high.
    const LEAD_HIGH: Channel = Channel::new(0);
    /// lead and peer: notifications both ways (the same id at both ends).
    const PEER: Channel = Channel::new(2);
    /// lead and busy PDs: notifications both ways.
    const BUSY: [Channel; 2] = [Channel::new(3), Channel::new(4)];

    /// top's operation that notifies high before replying.
    const OP_NOTIFY_BACK: u64 = 1;

    const PLAN: u32 = 8;

    struct Pd {
        role: Role,
        /// lead: checks reported, failures, busy PDs done.
        reported: u32,
        failed: u32,
        busy_done: u32,
    }

    impl Pd {
        fn check(&mut self, n: u32, ok: bool, what: &str) {
            self.reported += 1;
            if ok {
                debug_println!("ok {n} - {what}");
            } else {
                self.failed += 1;
                debug_println!("not ok {n} - {what}");
            }
            if self.reported == PLAN {
                debug_println!("{}", if self.failed == 0 { "TEST_PASS" } else { "TEST_FAIL" });
            }
        }

        /// lead, once both busy PDs are done: everything else.
        fn final_checks(&mut self) {
            let ends = [word(w::BUSY_END).load(SeqCst), word(w::BUSY_END + 1).load(SeqCst)];
            let counts = [word(w::BUSY).load(SeqCst), word(w::BUSY + 1).load(SeqCst)];
            if ends != [1, 1] {
                debug_println!("# busy ends {ends:?}, iterations {counts:?}");
            }
            self.check(
                4,
                ends == [1, 1],
                "round robin: two busy PDs of equal priority both progress",
            );
            let n = word(w::LOG_LEN).load(SeqCst) as usize;
            let log: [u64; 8] = core::array::from_fn(|i| word(w::LOG + i).load(SeqCst));
            let ordered = n == 6 && log[0] == 200 && log[..n].windows(2).all(|p| p[0] >= p[1]);
            if !ordered {
                debug_println!("# init order (priorities) {:?}", &log[..n.min(8)]);
            }
            self.check(5, ordered, "init runs in priority order, the highest first");
            self.check(
                6,
                word(w::HIGH_T_AFTER_INIT).load(SeqCst) == 1,
                "a signal sent during init is delivered after init returns",
            );
            let (t, re) = (word(w::HIGH_T).load(SeqCst), word(w::REENTERED).load(SeqCst));
            if (t, re) != (2, 0) {
                debug_println!("# high saw {t} notifications from top, {re} re-entries");
            }
            self.check(
                7,
                t == 2 && re == 0,
                "a signal during a handler's PPC waits until the handler returns",
            );
            let fp = [word(w::FP_BAD).load(SeqCst), word(w::FP_BAD + 1).load(SeqCst)];
            if fp != [1, 1] {
                debug_println!("# FP/SIMD registers lost (plus one): {fp:?}");
            }
            self.check(
                8,
                fp == [1, 1],
                "FP/SIMD registers survive preemption by a PD that uses them too",
            );
        }
    }

    fn role() -> Role {
        match pd_name() {
            "top" => Role::Top,
            "high" => Role::High,
            "lead" => Role::Lead,
            "peer" => Role::Peer,
            "busy_a" => Role::Busy(0),
            "busy_b" => Role::Busy(1),
            other => panic!("sched_pd: no role for PD '{other}'"),
        }
    }

    fn priority(role: Role) -> u64 {
        match role {
            Role::Top => 200,
            Role::High => 150,
            Role::Lead | Role::Peer => 100,
            Role::Busy(_) => 50,
        }
    }

    fn init() -> Pd {
        enter();
        let role = role();
        let slot = word(w::LOG_LEN).fetch_add(1, SeqCst) as usize;
        if slot < 8 {
            word(w::LOG + slot).store(priority(role), SeqCst);
        }
        let mut pd = Pd { role, reported: 0, failed: 0, busy_done: 0 };
        match role {
            // top notifies high during this call: the signal must wait
            // until high's init has returned.
            Role::High => {
                HIGH_TOP.pp_call(MessageInfo::new(OP_NOTIFY_BACK, 0).unwrap_or_default());
            }
            Role::Lead => {
                debug_println!("1..{PLAN}");
                let before = word(w::HIGH_L).load(SeqCst);
                LEAD_HIGH.notify();
                let after = word(w::HIGH_L).load(SeqCst);
                pd.check(
                    1,
                    after == before + 1,
                    "a higher-priority receiver runs before notify returns",
                );
            }
            // Tell lead this PD is about to wait.
            Role::Peer => PEER.notify(),
            _ => {}
        }
        leave();
        INIT_DONE.store(true, SeqCst);
        pd
    }

    /// Iterations of the FP/SIMD check's spin: several timeslices on QEMU.
    const FP_SPIN: u64 = 20_000_000;

    /// Fills every FP/SIMD register with a pattern of this PD's own,
    /// spins (equal-priority PDs preempt each other meanwhile), then
    /// counts the registers that lost their pattern. All in one asm block,
    /// so only another PD (or the kernel) could have changed them.
    fn fp_registers_survive(me: usize) -> u64 {
        let pattern = 0x5a5a_0000_0000_0000u64 | me as u64;
        let bad: u64;
        // SAFETY: the block uses only the registers it declares and the FP
        // registers it clobbers; it touches no memory.
        unsafe {
            core::arch::asm!(
                "dup v0.2d, {p}",
                "mov v1.16b, v0.16b", "mov v2.16b, v0.16b", "mov v3.16b, v0.16b",
                "mov v4.16b, v0.16b", "mov v5.16b, v0.16b", "mov v6.16b, v0.16b",
                "mov v7.16b, v0.16b", "mov v8.16b, v0.16b", "mov v9.16b, v0.16b",
                "mov v10.16b, v0.16b", "mov v11.16b, v0.16b", "mov v12.16b, v0.16b",
                "mov v13.16b, v0.16b", "mov v14.16b, v0.16b", "mov v15.16b, v0.16b",
                "mov v16.16b, v0.16b", "mov v17.16b, v0.16b", "mov v18.16b, v0.16b",
                "mov v19.16b, v0.16b", "mov v20.16b, v0.16b", "mov v21.16b, v0.16b",
                "mov v22.16b, v0.16b", "mov v23.16b, v0.16b", "mov v24.16b, v0.16b",
                "mov v25.16b, v0.16b", "mov v26.16b, v0.16b", "mov v27.16b, v0.16b",
                "mov v28.16b, v0.16b", "mov v29.16b, v0.16b", "mov v30.16b, v0.16b",
                "mov v31.16b, v0.16b",
                "2:",
                "subs {n}, {n}, #1",
                "b.ne 2b",
                "mov {bad}, #0",
                ".irp r, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
                "umov {t}, v\\r\\().d[0]",
                "cmp {t}, {p}",
                "cinc {bad}, {bad}, ne",
                "umov {t}, v\\r\\().d[1]",
                "cmp {t}, {p}",
                "cinc {bad}, {bad}, ne",
                ".endr",
                p = in(reg) pattern,
                n = inout(reg) FP_SPIN => _,
                bad = out(reg) bad,
                t = out(reg) _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
                out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _,
                out("v17") _, out("v18") _, out("v19") _, out("v20") _, out("v21") _,
                out("v22") _, out("v23") _, out("v24") _, out("v25") _, out("v26") _,
                out("v27") _, out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                options(nomem, nostack),
            );
        }
        bad
    }

    fn spin(me: usize) {
        word(w::FP_BAD + me).store(fp_registers_survive(me) + 1, SeqCst);
        let other = 1 - me;
        let mut n = 0u64;
        let end = loop {
            n += 1;
            word(w::BUSY + me).store(n, SeqCst);
            if n >= BUSY_MIN && word(w::BUSY + other).load(SeqCst) >= BUSY_MIN {
                break 1;
            }
            if n >= BUSY_MAX {
                break 2;
            }
        };
        word(w::BUSY_END + me).store(end, SeqCst);
    }

    impl Handler for Pd {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            enter();
            match self.role {
                Role::High => {
                    if channels.contains(HIGH_TOP) && word(w::HIGH_T).fetch_add(1, SeqCst) == 0 {
                        let done = INIT_DONE.load(SeqCst);
                        word(w::HIGH_T_AFTER_INIT).store(u64::from(done), SeqCst);
                    }
                    if channels.contains(HIGH_LEAD) {
                        word(w::HIGH_L).fetch_add(1, SeqCst);
                        // top signals this PD while it is blocked in the
                        // call: no re-entry, the signal waits.
                        HIGH_TOP.pp_call(MessageInfo::new(OP_NOTIFY_BACK, 0).unwrap_or_default());
                    }
                }
                Role::Peer => {
                    word(w::PEER_RUNS).fetch_add(1, SeqCst);
                    PEER.notify();
                }
                Role::Busy(me) => {
                    spin(me);
                    BUSY[me].notify();
                }
                Role::Lead => {
                    if channels.contains(PEER) {
                        let runs = word(w::PEER_RUNS).load(SeqCst);
                        if runs == 0 && self.reported == 1 {
                            // peer is ready: it waits, or is about to.
                            PEER.notify();
                            let after = word(w::PEER_RUNS).load(SeqCst);
                            self.check(
                                2,
                                after == 0,
                                "an equal-priority receiver does not preempt the notifier",
                            );
                        } else {
                            self.check(
                                3,
                                runs == 1,
                                "the equal-priority receiver runs once the notifier waits",
                            );
                            for b in BUSY {
                                b.notify();
                            }
                        }
                    }
                    for b in BUSY {
                        if channels.contains(b) {
                            self.busy_done += 1;
                            if self.busy_done == 2 {
                                self.final_checks();
                            }
                        }
                    }
                }
                Role::Top => {}
            }
            leave();
            Ok(())
        }

        fn protected(
            &mut self,
            channel: Channel,
            msg_info: MessageInfo,
        ) -> Result<MessageInfo, Self::Error> {
            enter();
            if self.role == Role::Top && channel == TOP_HIGH && msg_info.label() == OP_NOTIFY_BACK {
                TOP_HIGH.notify();
            }
            leave();
            Ok(MessageInfo::default())
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("sched_pd is a protection domain: build it for aarch64-unknown-none");
}
