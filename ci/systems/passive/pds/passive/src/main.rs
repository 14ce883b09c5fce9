//! Passive PD and budget suite: every PD of the suite runs this program;
//! its role comes from its name (see ../../README.md). The PDs record what
//! they observe in a shared page; `lead` reads it, prints TAP and ends
//! with `TEST_PASS` or `TEST_FAIL`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use core::arch::asm;
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use microkit::symbols::{pd_is_passive, pd_name};
    use microkit::{
        Channel, ChannelSet, Handler, MessageInfo, debug_println, get_mr, memory_region_symbol,
        protection_domain, set_mr,
    };

    /// Words of the shared page, by index.
    mod w {
        /// `low`: iterations so far.
        pub const LOW: usize = 0;
        /// `mid`: notifications handled.
        pub const MID: usize = 1;
        /// `srv`: 1 + whether it was passive, written by its `init`.
        pub const SRV_INIT: usize = 2;
        /// `srv2`: the same.
        pub const SRV2_INIT: usize = 3;
        /// `client`: 1 + whether it was passive.
        pub const CLIENT_INIT: usize = 4;
        /// Results of the steps, 1 = as expected, 2 = not: see `Step`.
        pub const RESULT: usize = 8;
        /// `hog`: its share of the CPU over its measuring window, in
        /// thousandths.
        pub const HOG_SHARE: usize = 24;
        /// `hog`: the median length of its slices between throttles, µs.
        pub const HOG_SLICE_US: usize = 25;
        /// `hog`: the median time from one slice's start to the next, µs.
        pub const HOG_PERIOD_US: usize = 26;
    }

    fn word(i: usize) -> &'static AtomicU64 {
        let word = memory_region_symbol!(shm: *mut AtomicU64).as_ptr().wrapping_add(i);
        // SAFETY: system.xml maps the 4 KiB region `shm` read-write at
        // `shm` in every PD of the suite; `i` is below 512, so the word is
        // inside it, aligned; all accesses are atomic.
        unsafe { &*word }
    }

    /// The counter, in ticks of [`freq`].
    fn now() -> u64 {
        let t: u64;
        // SAFETY: the kernel lets EL0 read the virtual counter (CNTKCTL);
        // reading it has no side effect.
        unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) t, options(nostack)) };
        t
    }

    /// Counter ticks per second.
    fn freq() -> u64 {
        let f: u64;
        // SAFETY: CNTFRQ_EL0 is readable at EL0; no side effect.
        unsafe { asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
        f
    }

    fn ms(n: u64) -> u64 {
        freq() / 1000 * n
    }

    /// Spins until `low` has counted on (so this PD was descheduled while
    /// runnable: out of budget), or gives up after `give_up_ms` of
    /// counter time. 1 if `low` ran, 2 if not.
    fn spin_until_low_runs(give_up_ms: u64) -> u64 {
        let (start, t0) = (word(w::LOW).load(SeqCst), now());
        while now() - t0 < ms(give_up_ms) {
            if word(w::LOW).load(SeqCst) != start {
                return 1;
            }
        }
        2
    }

    /// How long a PD that must not be descheduled spins, in ms: several
    /// of its callers' budgets.
    const HOLD_MS: u64 = 10;
    /// How long a PD that must be descheduled waits for `low`, in ms:
    /// ten periods of the longest period in system.xml.
    const GIVE_UP_MS: u64 = 500;
    /// `hog` measures its share of the CPU over this many ms.
    const SHARE_WINDOW_MS: u64 = 200;

    /// The steps lead runs, in order; each stores its result in
    /// `RESULT + step`.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    #[repr(u64)]
    enum Step {
        /// client calls srv: label and words come back.
        Echo = 0,
        /// client calls srv, which spins: it runs on client's budget.
        Donated = 1,
        /// client calls srv, which notifies mid: srv runs at its own
        /// priority, so mid (between the two) waits.
        OwnPriority = 2,
        /// client calls asrv, which spins: it runs on its own budget.
        Active = 3,
        /// lead notifies hog, which spins: its budget runs out.
        Throttled = 4,
        /// lead notifies srv2 (passive), which spins: it runs on its own
        /// budget, not lead's.
        NotifiedPassive = 5,
    }

    const STEPS: [Step; 6] = [
        Step::Echo,
        Step::Donated,
        Step::OwnPriority,
        Step::Active,
        Step::Throttled,
        Step::NotifiedPassive,
    ];

    fn result(step: Step) -> &'static AtomicU64 {
        word(w::RESULT + step as usize)
    }

    /// Step lead asks client to run (client reads it from here).
    const STEP_FOR_CLIENT: usize = 30;

    const LEAD_CLIENT: Channel = Channel::new(0);
    const LEAD_HOG: Channel = Channel::new(1);
    const LEAD_SRV2: Channel = Channel::new(2);
    const CLIENT_SRV: Channel = Channel::new(3);
    const CLIENT_ASRV: Channel = Channel::new(4);
    const SRV_MID: Channel = Channel::new(1);

    /// srv's and asrv's operations (labels).
    mod op {
        pub const ECHO: u64 = 1;
        pub const SPIN: u64 = 2;
        pub const NOTIFY_MID: u64 = 3;
        pub const HOLD: u64 = 4;
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Role {
        Srv,
        Asrv,
        Srv2,
        Hog,
        Mid,
        Client,
        Lead,
        Low,
    }

    struct Pd {
        role: Role,
        /// lead: the step running.
        step: usize,
    }

    fn init() -> Pd {
        let role = match pd_name() {
            "srv" => Role::Srv,
            "asrv" => Role::Asrv,
            "srv2" => Role::Srv2,
            "hog" => Role::Hog,
            "mid" => Role::Mid,
            "client" => Role::Client,
            "lead" => Role::Lead,
            _ => Role::Low,
        };
        let passive = 1 + u64::from(pd_is_passive());
        match role {
            Role::Srv => word(w::SRV_INIT).store(passive, SeqCst),
            Role::Srv2 => word(w::SRV2_INIT).store(passive, SeqCst),
            Role::Client => word(w::CLIENT_INIT).store(passive, SeqCst),
            Role::Lead => start(Step::Echo),
            Role::Low => loop {
                // The lowest priority: runs whenever nothing else can.
                word(w::LOW).fetch_add(1, SeqCst);
            },
            _ => {}
        }
        Pd { role, step: 0 }
    }

    /// lead: starts `step`.
    fn start(step: Step) {
        match step {
            Step::Throttled => LEAD_HOG.notify(),
            Step::NotifiedPassive => LEAD_SRV2.notify(),
            _ => {
                word(STEP_FOR_CLIENT).store(step as u64, SeqCst);
                LEAD_CLIENT.notify();
            }
        }
    }

    /// client: runs `step`, a call to srv or asrv, and records its result.
    fn client_step(step: u64) {
        let call = |ch: Channel, label: u64, words: usize| {
            ch.pp_call(MessageInfo::new(label, words).unwrap_or_default())
        };
        let ok = match step {
            s if s == Step::Echo as u64 => {
                set_mr(0, 41);
                set_mr(1, 0x5eed);
                let reply = call(CLIENT_SRV, op::ECHO, 2);
                reply.label() == op::ECHO + 100
                    && reply.count() == 2
                    && (get_mr(0), get_mr(1)) == (42, 0x5eed)
            }
            s if s == Step::Donated as u64 => {
                call(CLIENT_SRV, op::SPIN, 0);
                get_mr(0) == 1
            }
            s if s == Step::OwnPriority as u64 => {
                call(CLIENT_SRV, op::NOTIFY_MID, 0);
                get_mr(0) == 1
            }
            _ => {
                call(CLIENT_ASRV, op::HOLD, 0);
                get_mr(0) == 1
            }
        };
        let index = usize::try_from(step).unwrap_or(0).min(STEPS.len() - 1);
        result(STEPS[index]).store(if ok { 1 } else { 2 }, SeqCst);
    }

    /// hog: spins until its budget runs out, then measures its share of
    /// the CPU: the time between consecutive counter reads that are close
    /// together is time it ran.
    fn hog() {
        result(Step::Throttled).store(spin_until_low_runs(GIVE_UP_MS), SeqCst);
        // A gap of 2 ms or more between two reads is a throttle (the
        // hog's are about 9 ms); shorter ones (an emulator's host
        // stalls) stay inside the slice, as the kernel charges them too.
        let (t0, gap) = (now(), ms(2));
        let (mut last, mut ran) = (t0, 0);
        let mut starts = [0u64; SLICES];
        let mut lengths = [0u64; SLICES];
        let mut n = 0;
        starts[0] = t0;
        while last - t0 < ms(SHARE_WINDOW_MS) {
            let t = now();
            if t - last < gap {
                ran += t - last;
            } else if n + 1 < SLICES {
                lengths[n] = last - starts[n];
                n += 1;
                starts[n] = t;
            }
            last = t;
        }
        word(w::HOG_SHARE).store(ran * 1000 / (last - t0), SeqCst);
        // The first slice began mid-budget and the last is cut by the
        // window: medians of the whole ones between.
        let us = |ticks: u64| ticks * 1_000_000 / freq();
        let slices = &mut lengths[1..n.max(1)];
        let mut periods = [0u64; SLICES];
        for i in 1..n {
            periods[i - 1] = starts[i + 1].saturating_sub(starts[i]);
        }
        let periods = &mut periods[..n.saturating_sub(1)];
        word(w::HOG_SLICE_US).store(us(median(slices)), SeqCst);
        word(w::HOG_PERIOD_US).store(us(median(periods)), SeqCst);
    }

    /// Most slices the hog records.
    const SLICES: usize = 64;

    /// The median of `values` (0 for none).
    fn median(values: &mut [u64]) -> u64 {
        values.sort_unstable();
        values.get(values.len() / 2).copied().unwrap_or(0)
    }

    impl Pd {
        /// lead: prints every check once all steps ran.
        fn report(&self) {
            let checks: [(bool, &str); 8] = [
                (
                    word(w::SRV_INIT).load(SeqCst) == 2
                        && word(w::SRV2_INIT).load(SeqCst) == 2
                        && word(w::CLIENT_INIT).load(SeqCst) == 1,
                    "passive PDs run init and know they are passive, active ones not",
                ),
                (result(Step::Echo).load(SeqCst) == 1, "a PPC to a passive server is answered"),
                (
                    result(Step::Donated).load(SeqCst) == 1,
                    "a passive server runs a call on the caller's budget",
                ),
                (
                    result(Step::OwnPriority).load(SeqCst) == 1,
                    "a passive server runs a call at its own priority",
                ),
                (
                    result(Step::Active).load(SeqCst) == 1,
                    "an active server runs a call on its own budget",
                ),
                (
                    result(Step::Throttled).load(SeqCst) == 1,
                    "a PD out of budget lets lower priorities run",
                ),
                (
                    (500..=2000).contains(&word(w::HOG_SLICE_US).load(SeqCst))
                        && (5000..=20_000).contains(&word(w::HOG_PERIOD_US).load(SeqCst)),
                    "a PD with 1 ms per 10 ms runs ~1 ms slices ~10 ms apart (medians within 2x)",
                ),
                (
                    result(Step::NotifiedPassive).load(SeqCst) == 1,
                    "a notified passive PD runs on its own budget",
                ),
            ];
            debug_println!("1..{}", checks.len());
            let mut failed = 0;
            for (n, (ok, what)) in checks.iter().enumerate() {
                if *ok {
                    debug_println!("ok {} - {what}", n + 1);
                } else {
                    failed += 1;
                    debug_println!("not ok {} - {what}", n + 1);
                }
            }
            debug_println!(
                "# hog: median slice {} us, median period {} us, share {} per mille",
                word(w::HOG_SLICE_US).load(SeqCst),
                word(w::HOG_PERIOD_US).load(SeqCst),
                word(w::HOG_SHARE).load(SeqCst)
            );
            debug_println!("{}", if failed == 0 { "TEST_PASS" } else { "TEST_FAIL" });
        }
    }

    impl Handler for Pd {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            match self.role {
                Role::Lead => {
                    let done = [LEAD_CLIENT, LEAD_HOG, LEAD_SRV2];
                    if done.iter().any(|c| channels.contains(*c)) {
                        self.step += 1;
                        match STEPS.get(self.step) {
                            Some(step) => start(*step),
                            None => self.report(),
                        }
                    }
                }
                Role::Client => {
                    client_step(word(STEP_FOR_CLIENT).load(SeqCst));
                    LEAD_CLIENT.notify();
                }
                Role::Hog => {
                    hog();
                    LEAD_HOG.notify();
                }
                Role::Srv2 => {
                    result(Step::NotifiedPassive).store(spin_until_low_runs(GIVE_UP_MS), SeqCst);
                    LEAD_SRV2.notify();
                }
                Role::Mid => {
                    word(w::MID).fetch_add(1, SeqCst);
                }
                _ => {}
            }
            Ok(())
        }

        fn protected(
            &mut self,
            _channel: Channel,
            msg_info: MessageInfo,
        ) -> Result<MessageInfo, Self::Error> {
            let reply =
                |label: u64, words: usize| MessageInfo::new(label, words).unwrap_or_default();
            Ok(match msg_info.label() {
                op::ECHO => {
                    set_mr(0, get_mr(0) + 1);
                    reply(op::ECHO + 100, msg_info.count())
                }
                op::SPIN => {
                    set_mr(0, spin_until_low_runs(GIVE_UP_MS));
                    reply(0, 1)
                }
                op::NOTIFY_MID => {
                    let before = word(w::MID).load(SeqCst);
                    SRV_MID.notify();
                    let unmoved = word(w::MID).load(SeqCst) == before;
                    set_mr(0, if unmoved { 1 } else { 2 });
                    reply(0, 1)
                }
                _ => {
                    // Hold the CPU for several of the caller's budgets: on
                    // this PD's own context, low must not run meanwhile.
                    let (start, t0) = (word(w::LOW).load(SeqCst), now());
                    while now() - t0 < ms(HOLD_MS) {}
                    let held = word(w::LOW).load(SeqCst) == start;
                    set_mr(0, if held { 1 } else { 2 });
                    reply(0, 1)
                }
            })
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("passive_pd is a protection domain: build it for aarch64-unknown-none");
}
