//! The plan of a boot, read from `/chosen/bootargs`.
//!
//! Arguments are separated by spaces; the guest reads these and ignores
//! the rest (a boot loader may add its own):
//!
//! | argument | meaning |
//! |---|---|
//! | `probes=a,b,...` | the probes to run, in order ([`crate::probe::Probe`] names); `hostile` stands for every hostile probe; `off` (last) ends the boot with PSCI SYSTEM_OFF, `reset` (last) with PSCI SYSTEM_RESET |
//! | `expect=tenure` / `expect=native` | what the calls must return: under Tenure (the default) or with no hypervisor of this ABI |
//! | `secret=ADDR` | the page `secret-write` and `secret-read` use (hex with `0x`, or decimal) instead of the guest's own secret scratch page |
//! | `tag=N` | the number `el1-state` builds its secrets from (hex with `0x`, or decimal; default 0): guests side by side each take their own |
//! | `tap=none` | print no TAP (no plan, results or sentinel), only comments and what the probes print: a guest that is no test guest |
//!
//! Without `probes=` the guest runs [`DEFAULT_PROBES`].

use crate::probe::{Expect, HOSTILE, Probe};

/// The probes of a boot whose bootargs name none.
pub const DEFAULT_PROBES: &str = "print,meminfo,share,unshare,relinquish,hostile,outside,off";

/// Most entries a plan holds (every probe once, with room for repeats).
pub const MAX_ENTRIES: usize = 32;

/// One line of the plan.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Entry<'a> {
    /// A probe to run.
    Probe(Probe),
    /// A probe name the guest does not know: a failing line, so that a
    /// typo in a test's bootargs cannot pass unnoticed.
    Unknown(&'a str),
    /// A bootarg the guest cannot read (`expect=` or `secret=` with a bad
    /// value, `off` or `reset` before the last probe, more than [`MAX_ENTRIES`]
    /// entries): a failing line too.
    BadArg(&'a str),
}

/// What a boot does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Plan<'a> {
    entries: [Entry<'a>; MAX_ENTRIES],
    len: usize,
    /// What the calls must return.
    pub expect: Expect,
    /// The `secret=` page, if given.
    pub secret: Option<u64>,
    /// The `tag=` number.
    pub tag: u64,
    /// `tap=none`: no TAP lines.
    pub quiet: bool,
    /// How the boot ends after the sentinel.
    pub end: End,
}

/// How a boot ends after its sentinel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum End {
    /// The core stops in `wfi` (no `off` or `reset` in the probes).
    Stop,
    /// PSCI SYSTEM_OFF (`off`).
    Off,
    /// PSCI SYSTEM_RESET (`reset`): the hypervisor boots the guest
    /// afresh, as it chooses.
    Reset,
}

impl<'a> Plan<'a> {
    /// Reads the plan from the kernel command line `bootargs`.
    #[must_use]
    pub fn parse(bootargs: &'a str) -> Self {
        let mut plan = Plan {
            entries: [Entry::BadArg(""); MAX_ENTRIES],
            len: 0,
            expect: Expect::Tenure,
            secret: None,
            tag: 0,
            quiet: false,
            end: End::Stop,
        };
        let mut probes = DEFAULT_PROBES;
        for arg in bootargs.split_ascii_whitespace() {
            if let Some(list) = arg.strip_prefix("probes=") {
                probes = list;
            } else if let Some(name) = arg.strip_prefix("expect=") {
                match Expect::from_name(name) {
                    Some(expect) => plan.expect = expect,
                    None => plan.push(Entry::BadArg(arg)),
                }
            } else if let Some(value) = arg.strip_prefix("secret=") {
                match parse_u64(value) {
                    Some(addr) => plan.secret = Some(addr),
                    None => plan.push(Entry::BadArg(arg)),
                }
            } else if let Some(value) = arg.strip_prefix("tag=") {
                match parse_u64(value) {
                    Some(tag) => plan.tag = tag,
                    None => plan.push(Entry::BadArg(arg)),
                }
            } else if arg == "tap=none" {
                plan.quiet = true;
            }
        }
        let mut names = probes.split(',').filter(|n| !n.is_empty()).peekable();
        while let Some(name) = names.next() {
            let end = match name {
                "off" => Some((End::Off, "off before the last probe")),
                "reset" => Some((End::Reset, "reset before the last probe")),
                _ => None,
            };
            if let Some((end, misplaced)) = end {
                if names.peek().is_none() {
                    plan.end = end;
                } else {
                    plan.push(Entry::BadArg(misplaced));
                }
            } else if name == "hostile" {
                for probe in HOSTILE {
                    plan.push(Entry::Probe(probe));
                }
            } else {
                plan.push(Probe::from_name(name).map_or(Entry::Unknown(name), Entry::Probe));
            }
        }
        plan
    }

    fn push(&mut self, entry: Entry<'a>) {
        if self.len < MAX_ENTRIES {
            self.entries[self.len] = entry;
            self.len += 1;
        } else {
            self.entries[MAX_ENTRIES - 1] = Entry::BadArg("more probes than the guest holds");
        }
    }

    /// The entries, in order: one TAP line each.
    #[must_use]
    pub fn entries(&self) -> &[Entry<'a>] {
        &self.entries[..self.len]
    }
}

/// Reads `0x`-prefixed hex or decimal.
fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    fn probes(plan: &Plan) -> impl Iterator<Item = Probe> {
        plan.entries().iter().filter_map(|e| match e {
            Entry::Probe(p) => Some(*p),
            _ => None,
        })
    }

    #[test]
    fn probes_run_in_the_order_given_and_off_ends_the_boot() {
        let plan = Plan::parse("console=ttyAMA0 probes=print,outside,secret-write,off earlycon");
        assert_eq!(
            plan.entries(),
            [
                Entry::Probe(Probe::Print),
                Entry::Probe(Probe::Outside),
                Entry::Probe(Probe::SecretWrite)
            ]
        );
        assert_eq!(plan.end, End::Off);
        assert_eq!(plan.expect, Expect::Tenure);
        assert_eq!(plan.secret, None);
    }

    #[test]
    fn hostile_expands_to_every_hostile_probe() {
        let plan = Plan::parse("probes=share,hostile");
        assert_eq!(plan.entries().len(), 1 + HOSTILE.len());
        assert!(probes(&plan).skip(1).eq(HOSTILE));
        assert_eq!(plan.end, End::Stop);
    }

    #[test]
    fn no_probes_means_the_default_plan() {
        let plan = Plan::parse("");
        assert_eq!(plan, Plan::parse(&format!("probes={DEFAULT_PROBES}")));
        assert_eq!(plan.end, End::Off);
        assert!(plan.entries().iter().all(|e| matches!(e, Entry::Probe(_))));
    }

    #[test]
    fn expectations_and_secret_page_are_read() {
        let plan = Plan::parse("probes=secret-read expect=native secret=0x40200000");
        assert_eq!(plan.expect, Expect::Native);
        assert_eq!(plan.secret, Some(0x4020_0000));
        assert_eq!(Plan::parse("secret=4096").secret, Some(4096));
    }

    #[test]
    fn mistakes_become_failing_entries() {
        let plan = Plan::parse("probes=print,shar,off,outside expect=kvm secret=0xzz");
        assert_eq!(
            plan.entries(),
            [
                Entry::BadArg("expect=kvm"),
                Entry::BadArg("secret=0xzz"),
                Entry::Probe(Probe::Print),
                Entry::Unknown("shar"),
                Entry::BadArg("off before the last probe"),
                Entry::Probe(Probe::Outside),
            ]
        );
        assert_eq!(plan.end, End::Stop);
    }

    #[test]
    fn reset_ends_the_boot_like_off() {
        let plan = Plan::parse("probes=print,secret-write,reset");
        assert_eq!(plan.entries().len(), 2);
        assert_eq!(plan.end, End::Reset);
        let plan = Plan::parse("probes=reset,print,off");
        assert_eq!(plan.entries()[0], Entry::BadArg("reset before the last probe"));
        assert_eq!(plan.end, End::Off);
    }

    #[test]
    fn too_many_probes_end_in_a_failing_entry() {
        let list = ["print"; MAX_ENTRIES + 3].join(",");
        let bootargs = format!("probes={list}");
        let plan = Plan::parse(&bootargs);
        assert_eq!(plan.entries().len(), MAX_ENTRIES);
        assert_eq!(
            plan.entries()[MAX_ENTRIES - 1],
            Entry::BadArg("more probes than the guest holds")
        );
    }
}
