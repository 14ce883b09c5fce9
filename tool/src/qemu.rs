//! Running images in QEMU: on the terminal (`tenure run`), or as a target
//! test suite watched for its TAP lines, its sentinel and a timeout.
//!
//! A suite passes only if the console shows `TEST_PASS`, no `not ok`
//! line, and as many results as its `1..N` plan says (when it prints
//! one). A timeout, `TEST_FAIL`, a kernel panic, an unexpected exception,
//! or QEMU exiting first fails it.

use crate::board::Board;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The QEMU binary (on `PATH`).
pub const QEMU: &str = "qemu-system-aarch64";
/// Default time a target suite may take, boot included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the rest of a crash report may take to arrive.
const CRASH_REPORT_GRACE: Duration = Duration::from_secs(2);
/// Console lines that fail a suite as a crash.
const CRASH_MARKERS: [&str; 2] = ["KERNEL PANIC", "KERNEL UNEXPECTED EXCEPTION"];

/// The QEMU command that boots `image` on `board`, console on stdio.
pub fn command(board: &Board, image: &Path) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args(board.qemu_machine).arg("-nographic").arg("-kernel").arg(image);
    cmd
}

/// Boots `image` on `board` with the console on this terminal, until
/// QEMU exits (Ctrl-A X); `extra` QEMU arguments follow the board's.
pub fn run_interactive(board: &Board, image: &Path, extra: &[String]) -> io::Result<ExitStatus> {
    command(board, image).args(extra).status()
}

/// How a suite ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `TEST_PASS` was printed.
    Pass,
    /// `TEST_FAIL` was printed.
    Fail,
    /// The console showed a kernel panic or unexpected exception (the
    /// line).
    Crash(String),
    /// No sentinel within the timeout.
    Timeout,
    /// QEMU exited before a sentinel (its exit code, if any).
    Exited(Option<i32>),
}

/// What a suite printed, as counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tap {
    /// `ok N` lines.
    pub passed: u32,
    /// `not ok N` lines.
    pub failed: u32,
    /// N of a `1..N` plan line, if one was printed.
    pub plan: Option<u32>,
    /// How it ended, once it has.
    pub verdict: Option<Verdict>,
}

impl Tap {
    /// Takes one console line; returns true when the suite has ended.
    /// After a crash line the suite ends at the kernel's closing
    /// `TEST_FAIL`, so that the whole report reaches the console.
    pub fn line(&mut self, line: &str) -> bool {
        let line = line.trim_end_matches(['\r', '\n']);
        if matches!(self.verdict, Some(Verdict::Crash(_))) {
            return line == "TEST_FAIL";
        }
        // A client's line (the serial PD labels each one) is that
        // client's, whatever it says: a guest's console can print
        // anything, and nothing in it is the kernel's or a suite's.
        if client_line(line) {
            return false;
        }
        if CRASH_MARKERS.iter().any(|marker| line.contains(marker)) {
            self.verdict = Some(Verdict::Crash(line.to_string()));
            return false;
        } else if line == "TEST_PASS" {
            self.verdict = Some(Verdict::Pass);
        } else if line == "TEST_FAIL" {
            self.verdict = Some(Verdict::Fail);
        } else if is_result(line, "ok ") {
            self.passed += 1;
        } else if is_result(line, "not ok ") {
            self.failed += 1;
        } else if let Some(n) = line.strip_prefix("1..").and_then(|n| n.parse().ok()) {
            self.plan = Some(n);
        }
        self.verdict.is_some()
    }

    /// Whether the suite passed: `TEST_PASS`, no failure, plan met.
    pub fn success(&self) -> bool {
        self.verdict == Some(Verdict::Pass)
            && self.failed == 0
            && self.plan.is_none_or(|n| n == self.passed)
    }

    /// `(passed, failed)` for the totals: a suite that did not succeed
    /// counts at least one failure, even if no `not ok` line said so.
    pub fn counts(&self) -> (u32, u32) {
        let extra = u32::from(!self.success() && self.failed == 0);
        (self.passed, self.failed + extra)
    }
}

/// Whether `line` is one the serial PD labelled with a client's name
/// (`name| ...`: up to 32 characters, no space, then `| `), which the
/// runner attributes to that client and never counts.
fn client_line(line: &str) -> bool {
    line.split_once("| ").is_some_and(|(name, _)| {
        !name.is_empty() && name.len() <= 32 && !name.contains(char::is_whitespace)
    })
}

/// `ok 3 - what` (or `not ok 3`): `prefix`, then a test number.
fn is_result(line: &str, prefix: &str) -> bool {
    line.strip_prefix(prefix).is_some_and(|rest| {
        let number = rest.split([' ', '\t']).next().unwrap_or("");
        !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Runs `cmd` as a target suite: echoes its console to `echo`, feeds it to
/// a [`Tap`], and kills it on a sentinel, a crash or after `timeout`.
pub fn run_suite(mut cmd: Command, timeout: Duration, echo: &mut dyn Write) -> io::Result<Tap> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let (lines, received) = mpsc::channel();
    // Detached: it ends when the pipe closes, which a grandchild holding
    // it open (a wrapper script's child) could delay past our return.
    std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdout.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if lines.send(text).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut deadline = Instant::now() + timeout;
    let mut tap = Tap::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => {
                echo.write_all(line.as_bytes())?;
                if tap.line(&line) {
                    break;
                }
                if matches!(tap.verdict, Some(Verdict::Crash(_))) {
                    deadline = deadline.min(Instant::now() + CRASH_REPORT_GRACE);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tap.verdict.get_or_insert(Verdict::Timeout);
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                tap.verdict.get_or_insert(Verdict::Exited(status.code()));
                break;
            }
        }
    }
    // Already exited or not, it is ours to stop; an error here means it
    // had exited.
    let _ = child.kill();
    child.wait()?;
    echo.flush()?;
    Ok(tap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::by_name;

    fn feed(lines: &[&str]) -> Tap {
        let mut tap = Tap::default();
        for line in lines {
            if tap.line(line) {
                break;
            }
        }
        tap
    }

    #[test]
    fn a_passing_suite() {
        let tap = feed(&["banner", "ok 1 - a\r\n", "ok 2 - b", "1..2", "TEST_PASS"]);
        assert!(tap.success());
        assert_eq!(tap.counts(), (2, 0));
    }

    #[test]
    fn failures_and_broken_plans() {
        let tap = feed(&["ok 1 - a", "not ok 2 - b", "TEST_FAIL"]);
        assert_eq!(tap.counts(), (1, 1));
        // TEST_PASS with a failure, or short of its plan, is not a pass.
        assert!(!feed(&["not ok 1 - a", "TEST_PASS"]).success());
        let short = feed(&["ok 1 - a", "1..2", "TEST_PASS"]);
        assert_eq!(short.counts(), (1, 1));
        // Not results: no number, or text that merely starts alike.
        // What a guest prints reaches the console under its VMM's label:
        // nothing there counts, a forged crash included.
        let forged = feed(&[
            "1..1",
            "vmm| TEST_PASS",
            "vmm_forger| ok 999 - forged",
            "vmm_forger| not ok 998 - forged",
            "vmm_forger| 1..5",
            "vmm_forger| KERNEL PANIC: forged",
            "vmm_forger| KERNEL UNEXPECTED EXCEPTION: forged",
            "ok 1 - real",
            "TEST_PASS",
        ]);
        assert!(forged.success(), "{forged:?}");
        assert_eq!((forged.passed, forged.failed, forged.plan), (1, 0, Some(1)));
        // The kernel's own lines still count, labels or not in them.
        let mut crash = Tap::default();
        assert!(!crash.line("KERNEL PANIC: at src/x.rs| 3"));
        assert!(matches!(crash.verdict, Some(Verdict::Crash(_))));
        let noise = feed(&["ok - no number", "okay 1", "not ok", "TEST_PASS"]);
        assert_eq!(noise.counts(), (0, 0));
    }

    #[test]
    fn a_crash_ends_the_suite() {
        let mut tap = Tap::default();
        assert!(!tap.line("ok 1 - a"));
        assert!(!tap.line("KERNEL PANIC: at x"));
        assert!(!tap.line("ok 2 - not counted after a crash"));
        assert!(!tap.line("TEST_PASS"));
        assert!(tap.line("TEST_FAIL"));
        assert_eq!(tap.verdict, Some(Verdict::Crash("KERNEL PANIC: at x".into())));
        assert_eq!(tap.counts(), (1, 1));
    }

    fn shell(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    #[test]
    fn the_runner_stops_at_the_sentinel() {
        let mut echo = Vec::new();
        let started = Instant::now();
        let tap = run_suite(
            shell("echo 'ok 1 - x'; echo TEST_PASS; exec sleep 20"),
            Duration::from_secs(10),
            &mut echo,
        )
        .unwrap();
        assert!(tap.success());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(String::from_utf8(echo).unwrap(), "ok 1 - x\nTEST_PASS\n");
    }

    #[test]
    fn the_runner_times_out_and_notices_early_exits() {
        let tap = run_suite(
            shell("echo 'ok 1 - x'; exec sleep 20"),
            Duration::from_millis(300),
            &mut io::sink(),
        )
        .unwrap();
        assert_eq!(tap.verdict, Some(Verdict::Timeout));
        assert_eq!(tap.counts(), (1, 1));

        let tap = run_suite(shell("exit 3"), Duration::from_secs(10), &mut io::sink()).unwrap();
        assert_eq!(tap.verdict, Some(Verdict::Exited(Some(3))));
    }

    #[test]
    fn qemu_commands_follow_the_board() {
        let image = Path::new("img");
        let virt = command(by_name("qemu_virt_aarch64").unwrap(), image);
        let args: Vec<_> = virt.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "-M",
                "virt,virtualization=on,gic-version=2",
                "-cpu",
                "cortex-a72",
                "-m",
                "2G",
                "-nographic",
                "-kernel",
                "img"
            ]
        );
        let pi = command(by_name("rpi4b_1gb").unwrap(), image);
        assert_eq!(pi.get_args().nth(1).unwrap(), "raspi4b");
    }
}
