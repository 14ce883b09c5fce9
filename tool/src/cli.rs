//! The `tenure` command line: `pack-kernel`, `run`, `test-image` (and
//! `pack`, `test` as they arrive).

use crate::board::{self, Board};
use crate::{image, qemu};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs the command line `args` (without the program name); the error is
/// the message to print.
pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("--help" | "-h" | "help") | None => {
            println!("{}", USAGE);
            Ok(())
        }
        Some("pack-kernel") => pack_kernel(&Options::parse(&args[1..])?),
        Some("run") => run_image(&Options::parse(&args[1..])?),
        Some("test-image") => test_image(&Options::parse(&args[1..])?),
        Some(other) => Err(format!("Error: unknown command '{other}'\n{USAGE}")),
    }
}

const USAGE: &str = "usage: tenure pack SYSTEM.xml --board BOARD --config debug|release|benchmark \
--search-path DIR -o IMAGE -r REPORT  (coming)
       tenure pack-kernel KERNEL.elf --board BOARD -o IMAGE
       tenure run IMAGE [--board BOARD]
       tenure test-image IMAGE [--board BOARD] [--timeout SECONDS]
       tenure test DIR  (coming)";

/// The flags the commands share, and their one positional argument.
#[derive(Debug, Default)]
struct Options {
    input: Option<PathBuf>,
    board: Option<String>,
    output: Option<PathBuf>,
    timeout: Option<Duration>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Self::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |flag: &str| {
                args.next().cloned().ok_or_else(|| format!("Error: {flag} needs a value"))
            };
            match arg.as_str() {
                "--board" => options.board = Some(value("--board")?),
                "-o" | "--output" => options.output = Some(value("-o")?.into()),
                "--timeout" => {
                    let text = value("--timeout")?;
                    let seconds: u64 = text.parse().map_err(|_| {
                        format!("Error: --timeout takes whole seconds, not '{text}'")
                    })?;
                    options.timeout = Some(Duration::from_secs(seconds));
                }
                flag if flag.starts_with('-') => {
                    return Err(format!("Error: unknown option '{flag}'\n{USAGE}"));
                }
                _ if options.input.is_some() => {
                    return Err(format!("Error: unexpected argument '{arg}'\n{USAGE}"));
                }
                _ => options.input = Some(arg.into()),
            }
        }
        Ok(options)
    }

    fn input(&self, what: &str) -> Result<&Path, String> {
        self.input.as_deref().ok_or_else(|| format!("Error: missing {what}\n{USAGE}"))
    }

    /// The named board, or the default one.
    fn board(&self) -> Result<&'static Board, String> {
        let name = self.board.as_deref().unwrap_or(board::BOARDS[0].name);
        board::by_name(name).ok_or_else(|| {
            let known: Vec<_> = board::names().collect();
            format!("Error: unknown board '{name}'; known boards: {}", known.join(", "))
        })
    }
}

fn pack_kernel(options: &Options) -> Result<(), String> {
    let kernel = options.input("the kernel ELF")?;
    let board = options.board()?;
    let output =
        options.output.as_deref().ok_or_else(|| format!("Error: missing -o IMAGE\n{USAGE}"))?;
    let elf = std::fs::read(kernel)
        .map_err(|e| format!("Error: cannot read {}: {e}", kernel.display()))?;
    let packed =
        image::pack_kernel(&elf, board).map_err(|e| format!("Error: {e}: {}", kernel.display()))?;
    std::fs::write(output, &packed.bytes)
        .map_err(|e| format!("Error: cannot write {}: {e}", output.display()))?;
    println!(
        "{}: {:?} image for {}, kernel at {:#x}, boot image at {:#x}, {} bytes of memory",
        output.display(),
        packed.format,
        board.name,
        packed.load_addr,
        packed.boot_image_addr,
        packed.memory_size
    );
    Ok(())
}

fn run_image(options: &Options) -> Result<(), String> {
    let image = options.input("the image")?;
    let board = options.board()?;
    eprintln!("tenure: booting {} on {} (quit: Ctrl-A X)", image.display(), board.name);
    let status = qemu::run_interactive(board, image)
        .map_err(|e| format!("Error: cannot start {}: {e}", qemu::QEMU))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("Error: {} exited with {status}", qemu::QEMU))
    }
}

fn test_image(options: &Options) -> Result<(), String> {
    let image = options.input("the image")?;
    let board = options.board()?;
    let timeout = options.timeout.unwrap_or(qemu::DEFAULT_TIMEOUT);
    let tap = qemu::run_suite(qemu::command(board, image), timeout, &mut std::io::stdout())
        .map_err(|e| format!("Error: cannot run {}: {e}", qemu::QEMU))?;
    let (passed, failed) = tap.counts();
    let verdict = match &tap.verdict {
        Some(qemu::Verdict::Timeout) => format!("no sentinel within {} s", timeout.as_secs()),
        Some(verdict) => format!("{verdict:?}"),
        None => "unfinished".into(),
    };
    // The last line is what ci/test.sh counts.
    println!(
        "tenure: {} on {}: {verdict}\nTAP: {passed} passed, {failed} failed",
        image.display(),
        board.name
    );
    if tap.success() {
        Ok(())
    } else {
        Err(format!("Error: the suite in {} failed", image.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse() {
        let options = Options::parse(&args(&[
            "k.elf",
            "--board",
            "rpi4b_1gb",
            "-o",
            "out",
            "--timeout",
            "5",
        ]))
        .unwrap();
        assert_eq!(options.input.as_deref(), Some(Path::new("k.elf")));
        assert_eq!(options.board().unwrap().name, "rpi4b_1gb");
        assert_eq!(options.output.as_deref(), Some(Path::new("out")));
        assert_eq!(options.timeout, Some(Duration::from_secs(5)));
        // The default board.
        let options = Options::parse(&args(&["img"])).unwrap();
        assert_eq!(options.board().unwrap().name, "qemu_virt_aarch64");
    }

    #[test]
    fn bad_options_are_sentences() {
        let error = |list: &[&str]| Options::parse(&args(list)).unwrap_err();
        assert!(error(&["--board"]).starts_with("Error: --board needs a value"));
        assert!(error(&["--timeout", "soon"]).starts_with("Error: --timeout takes whole seconds"));
        assert!(error(&["--frobnicate"]).starts_with("Error: unknown option '--frobnicate'"));
        assert!(error(&["a", "b"]).starts_with("Error: unexpected argument 'b'"));
        let unknown = Options::parse(&args(&["--board", "pc"])).unwrap().board().unwrap_err();
        assert_eq!(
            unknown,
            "Error: unknown board 'pc'; known boards: qemu_virt_aarch64, rpi4b_1gb, rpi4b_2gb, \
             rpi4b_4gb, rpi4b_8gb"
        );
        assert!(
            run(&args(&["pack-kernel", "k.elf"])).unwrap_err().starts_with("Error: missing -o")
        );
    }
}
