//! The `tenure` command line: `pack`, `pack-kernel`, `run`, `test-image`
//! and `test`.

use crate::board::{self, Board};
use crate::elf::PdElf;
use crate::sdf::{self, BoardLimits};
use crate::{image, qemu, system_image};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs the command line `args` (without the program name); the error is
/// the message to print.
pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("--help" | "-h" | "help") | None => {
            println!("{}", USAGE);
            Ok(())
        }
        Some("pack") => pack(&Options::parse(&args[1..])?).map(|_| ()),
        Some("test") => test_suites(&Options::parse(&args[1..])?),
        Some("pack-kernel") => pack_kernel(&Options::parse(&args[1..])?),
        Some("run") => run_image(&Options::parse(&args[1..])?),
        Some("test-image") => test_image(&Options::parse(&args[1..])?),
        Some(other) => Err(format!("Error: unknown command '{other}'\n{USAGE}")),
    }
}

const USAGE: &str = "usage: tenure pack SYSTEM.xml --board BOARD --config debug|release|benchmark \
--search-path DIR... -o IMAGE -r REPORT [--kernel KERNEL.elf]
       tenure pack-kernel KERNEL.elf --board BOARD -o IMAGE
       tenure run IMAGE [--board BOARD] [--qemu-arg ARG]...
       tenure test-image IMAGE [--board BOARD] [--timeout SECONDS] [--qemu-arg ARG]...
       tenure test DIR|SUITE [--board BOARD] [--timeout SECONDS] [--kernel KERNEL.elf]";

/// Where cargo puts PD programs (release builds); the kernel is built
/// soft-float, under `target/aarch64-unknown-none-softfloat`.
const TARGET_RELEASE: &str = "target/aarch64-unknown-none/release";
/// The configurations `--config` accepts (Microkit's).
const CONFIGS: [&str; 3] = ["debug", "release", "benchmark"];

/// The flags the commands share, and their one positional argument.
#[derive(Debug, Default)]
struct Options {
    input: Option<PathBuf>,
    board: Option<String>,
    output: Option<PathBuf>,
    timeout: Option<Duration>,
    config: Option<String>,
    search_paths: Vec<PathBuf>,
    report: Option<PathBuf>,
    kernel: Option<PathBuf>,
    /// Extra QEMU arguments, after the board's (a later `-cpu` wins).
    qemu_args: Vec<String>,
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
                "--config" => {
                    let config = value("--config")?;
                    if !CONFIGS.contains(&config.as_str()) {
                        return Err(format!(
                            "Error: unknown config '{config}'; known configs: {}",
                            CONFIGS.join(", ")
                        ));
                    }
                    options.config = Some(config);
                }
                "--search-path" => options.search_paths.push(value("--search-path")?.into()),
                "-r" | "--report" => options.report = Some(value("-r")?.into()),
                "--kernel" => options.kernel = Some(value("--kernel")?.into()),
                "--qemu-arg" => options.qemu_args.push(value("--qemu-arg")?),
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

/// The kernel ELF: `--kernel`, or cargo's build of it for the config.
fn kernel_path(options: &Options) -> PathBuf {
    options.kernel.clone().unwrap_or_else(|| {
        let profile = if options.config.as_deref() == Some("debug") { "debug" } else { "release" };
        PathBuf::from(format!("target/aarch64-unknown-none-softfloat/{profile}/tenure-kernel"))
    })
}

/// The first file called `name` in `search_paths` (Microkit's lookup).
fn find_program(name: &Path, search_paths: &[PathBuf]) -> Option<PathBuf> {
    search_paths.iter().map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// `tenure pack`: system.xml to image and report. Nothing is written
/// unless everything succeeded.
fn pack(options: &Options) -> Result<system_image::SystemImage, String> {
    let system_path = options.input("the system description")?;
    let board = options.board()?;
    let output =
        options.output.as_deref().ok_or_else(|| format!("Error: missing -o IMAGE\n{USAGE}"))?;
    let xml = std::fs::read_to_string(system_path)
        .map_err(|e| format!("Error: cannot read {}: {e}", system_path.display()))?;
    let name = system_path.display().to_string();
    let system =
        sdf::parse_with_search_paths(&name, &xml, &BoardLimits::default(), &options.search_paths)
            .map_err(|e| e.to_string())?;
    sdf::check_supported(&system).map_err(|e| e.to_string())?;
    for warning in &system.warnings {
        eprintln!("{warning}");
    }
    let mut programs = BTreeMap::new();
    for pd in system.all_pds() {
        let path = &pd.program_image.path;
        let found = find_program(path, &options.search_paths)
            .ok_or_else(|| format!("Error: unable to find program image: '{}'", path.display()))?;
        let bytes = std::fs::read(&found)
            .map_err(|e| format!("Error: cannot read {}: {e}", found.display()))?;
        let elf = PdElf::parse(&bytes).map_err(|e| format!("Error: {}: {e}", found.display()))?;
        programs.insert(pd.name.clone(), elf);
    }
    let kernel = kernel_path(options);
    let kernel_elf = std::fs::read(&kernel)
        .map_err(|e| format!("Error: cannot read the kernel {}: {e}", kernel.display()))?;
    let kernel_error = |e: image::PackError| format!("Error: {e}: {}", kernel.display());
    let kernel_size = image::kernel_size(&kernel_elf).map_err(kernel_error)?;
    let built =
        system_image::build(&system, programs, board, kernel_size).map_err(|e| e.to_string())?;
    let boot_image = tenure_boot_image::write_image(&board.boot_info(), &built.parts);
    system_image::check_size(&boot_image).map_err(|e| e.to_string())?;
    let packed = image::pack(&kernel_elf, board, &boot_image).map_err(kernel_error)?;
    std::fs::write(output, &packed.bytes)
        .map_err(|e| format!("Error: cannot write {}: {e}", output.display()))?;
    if let Some(report) = &options.report {
        std::fs::write(report, &built.report)
            .map_err(|e| format!("Error: cannot write {}: {e}", report.display()))?;
    }
    println!(
        "{}: {} PDs for {}, boot image {} bytes at {:#x}",
        output.display(),
        built.parts.pds.len(),
        board.name,
        boot_image.len(),
        packed.boot_image_addr
    );
    Ok(built)
}

/// The package names of the PD crates under `suite/pds/*/Cargo.toml`.
fn suite_packages(suite: &Path) -> Result<Vec<String>, String> {
    let Ok(entries) = std::fs::read_dir(suite.join("pds")) else { return Ok(Vec::new()) };
    let mut packages = Vec::new();
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
        let name = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = \"")?.strip_suffix('"').map(String::from))
            .ok_or_else(|| format!("Error: no package name in {}", manifest.display()))?;
        packages.push(name);
    }
    packages.sort();
    Ok(packages)
}

/// Whether `dir` is a target suite: it has a `system.xml`, or a
/// `system.<board>.xml` for some board.
fn is_suite(dir: &Path) -> bool {
    dir.join("system.xml").is_file()
        || board::names().any(|b| dir.join(format!("system.{b}.xml")).is_file())
}

/// The system a suite runs on `board`: its `system.<board>.xml` if it has
/// one, else its `system.xml`; `None` when it has neither (the suite does
/// not run on that board).
fn suite_system(suite: &Path, board: &str) -> Option<PathBuf> {
    [suite.join(format!("system.{board}.xml")), suite.join("system.xml")]
        .into_iter()
        .find(|p| p.is_file())
}

/// `tenure test DIR`: builds, packs and boots every suite under DIR (each
/// directory with a `system.xml`, or a `system.<board>.xml` that replaces
/// it on that board), or DIR itself if it is a suite, printing TAP and
/// `N passed, M failed`. A suite with neither file for the board is
/// skipped, saying so.
fn test_suites(options: &Options) -> Result<(), String> {
    let dir = options.input("the suites directory")?;
    let board = options.board()?;
    let timeout = options.timeout.unwrap_or(qemu::DEFAULT_TIMEOUT);
    let mut suites: Vec<PathBuf> = if is_suite(dir) {
        vec![dir.to_path_buf()]
    } else {
        std::fs::read_dir(dir)
            .map_err(|e| format!("Error: cannot read {}: {e}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_suite(p))
            .collect()
    };
    suites.sort();
    let (mut passed, mut failed) = (0, 0);
    for suite in &suites {
        let name = suite.file_name().map_or_else(String::new, |n| n.to_string_lossy().into());
        let Some(system) = suite_system(suite, board.name) else {
            println!("# suite {name} skipped on {}: no system.xml for this board", board.name);
            continue;
        };
        println!("# suite {name} on {}", board.name);
        match run_suite(options, board, suite, &system, &name, timeout) {
            Ok((p, f)) => {
                passed += p;
                failed += f;
            }
            Err(message) => {
                println!("not ok - {name}: {message}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 { Ok(()) } else { Err(format!("Error: {failed} target tests failed")) }
}

/// Builds the PD crates of `suite`, packs `system` and boots it.
fn run_suite(
    options: &Options,
    board: &'static Board,
    suite: &Path,
    system: &Path,
    name: &str,
    timeout: Duration,
) -> Result<(u32, u32), String> {
    let packages = suite_packages(suite)?;
    if !packages.is_empty() {
        let mut cargo = Command::new("cargo");
        cargo.args(["build", "-q", "--release", "--target", "aarch64-unknown-none"]);
        for package in &packages {
            cargo.args(["-p", package]);
        }
        let status = cargo.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("building its PDs failed ({status})"));
        }
    }
    let out = PathBuf::from("build/systems").join(name);
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let image = out.join(format!("{}.img", board.name));
    let mut search_paths = options.search_paths.clone();
    search_paths.push(PathBuf::from(TARGET_RELEASE));
    // Where guest-images/build.sh and dtb.sh put guest images and device
    // trees, for the guest suites' prefilled regions.
    search_paths.push(PathBuf::from("build/guest-images"));
    let pack_options = Options {
        input: Some(system.to_path_buf()),
        board: Some(board.name.into()),
        output: Some(image.clone()),
        config: Some("release".into()),
        search_paths,
        report: Some(out.join(format!("{}.report.txt", board.name))),
        kernel: options.kernel.clone(),
        timeout: None,
        qemu_args: Vec::new(),
    };
    pack(&pack_options)?;
    let tap = qemu::run_suite(qemu::command(board, &image), timeout, &mut std::io::stdout())
        .map_err(|e| format!("cannot run {}: {e}", qemu::QEMU))?;
    if !tap.success() {
        println!("# suite {name} did not pass: {:?}", tap.verdict);
    }
    // A suite that did not succeed counts at least one failure.
    Ok(tap.counts())
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
    let status = qemu::run_interactive(board, image, &options.qemu_args)
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
    let mut cmd = qemu::command(board, image);
    cmd.args(&options.qemu_args);
    let tap = qemu::run_suite(cmd, timeout, &mut std::io::stdout())
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
            "--qemu-arg",
            "-icount",
            "--qemu-arg",
            "shift=0,sleep=off",
        ]))
        .unwrap();
        assert_eq!(options.qemu_args, ["-icount", "shift=0,sleep=off"]);
        assert_eq!(options.input.as_deref(), Some(Path::new("k.elf")));
        assert_eq!(options.board().unwrap().name, "rpi4b_1gb");
        assert_eq!(options.output.as_deref(), Some(Path::new("out")));
        assert_eq!(options.timeout, Some(Duration::from_secs(5)));
        // The default board.
        let options = Options::parse(&args(&["img"])).unwrap();
        assert_eq!(options.board().unwrap().name, "qemu_virt_aarch64");
    }

    #[test]
    fn pack_options_parse() {
        let options = Options::parse(&args(&[
            "system.xml",
            "--config",
            "release",
            "--search-path",
            "a",
            "--search-path",
            "b",
            "-o",
            "img",
            "-r",
            "report.txt",
            "--kernel",
            "k.elf",
        ]))
        .unwrap();
        assert_eq!(options.config.as_deref(), Some("release"));
        assert_eq!(options.search_paths, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(options.report.as_deref(), Some(Path::new("report.txt")));
        assert_eq!(kernel_path(&options), PathBuf::from("k.elf"));
        let debug = Options::parse(&args(&["--config", "debug"])).unwrap();
        assert_eq!(
            kernel_path(&debug),
            PathBuf::from("target/aarch64-unknown-none-softfloat/debug/tenure-kernel")
        );
        assert_eq!(
            Options::parse(&args(&["--config", "fast"])).unwrap_err(),
            "Error: unknown config 'fast'; known configs: debug, release, benchmark"
        );
    }

    /// A fresh scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tenure-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn pack_prints_sdf_errors_and_writes_nothing() {
        let dir = scratch("bad-sdf");
        let system = dir.join("system.xml");
        std::fs::write(&system, "<system>\n  <protection_domain priority=\"1\"/>\n</system>\n")
            .unwrap();
        let image = dir.join("out.img");
        let report = dir.join("report.txt");
        let path = |p: &Path| p.display().to_string();
        let error = run(&args(&[
            "pack",
            &path(&system),
            "-o",
            &path(&image),
            "-r",
            &path(&report),
            "--search-path",
            &path(&dir),
        ]))
        .unwrap_err();
        let xml = std::fs::read_to_string(&system).unwrap();
        let expected =
            sdf::parse(&path(&system), &xml, &BoardLimits::default()).unwrap_err().to_string();
        assert_eq!(error, expected);
        assert!(error.starts_with("Error: ") && error.contains("protection_domain"), "{error}");
        assert!(!image.exists() && !report.exists());

        // A valid system whose program is nowhere on the search path.
        std::fs::write(
            &system,
            "<system><protection_domain name=\"a\"><program_image path=\"a.elf\"/>\
             </protection_domain></system>",
        )
        .unwrap();
        let error = run(&args(&["pack", &path(&system), "-o", &path(&image)])).unwrap_err();
        assert_eq!(error, "Error: unable to find program image: 'a.elf'");
        assert!(!image.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn suites_name_their_pd_packages() {
        let dir = scratch("suite");
        for (crate_dir, name) in [("b", "pd-b"), ("a", "pd-a")] {
            let manifest = dir.join("pds").join(crate_dir);
            std::fs::create_dir_all(&manifest).unwrap();
            std::fs::write(
                manifest.join("Cargo.toml"),
                format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\n"),
            )
            .unwrap();
        }
        assert_eq!(suite_packages(&dir).unwrap(), ["pd-a", "pd-b"]);
        assert_eq!(suite_packages(&dir.join("pds/a")).unwrap(), Vec::<String>::new());
        assert_eq!(
            find_program(Path::new("Cargo.toml"), &[dir.clone(), dir.join("pds/a")]),
            Some(dir.join("pds/a/Cargo.toml"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_board_system_file_replaces_system_xml_on_that_board() {
        let dir = scratch("board-system");
        assert!(!is_suite(&dir));
        assert_eq!(suite_system(&dir, "rpi4b_1gb"), None);
        std::fs::write(dir.join("system.qemu_virt_aarch64.xml"), "<system/>").unwrap();
        assert!(is_suite(&dir));
        assert_eq!(
            suite_system(&dir, "qemu_virt_aarch64"),
            Some(dir.join("system.qemu_virt_aarch64.xml"))
        );
        assert_eq!(suite_system(&dir, "rpi4b_1gb"), None);
        std::fs::write(dir.join("system.xml"), "<system/>").unwrap();
        assert_eq!(suite_system(&dir, "rpi4b_1gb"), Some(dir.join("system.xml")));
        assert_eq!(
            suite_system(&dir, "qemu_virt_aarch64"),
            Some(dir.join("system.qemu_virt_aarch64.xml"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
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
