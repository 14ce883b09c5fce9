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

    const PLAN: u32 = 7;

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

    fn spin(me: usize) {
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
