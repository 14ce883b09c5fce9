//! The `tenure` command line: `pack`, `run`, `test`.

/// Runs the command line `args` (without the program name); the error is
/// the message to print.
pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("--help" | "-h" | "help") | None => {
            println!("{}", USAGE);
            Ok(())
        }
        Some(other) => Err(format!("Error: unknown command '{other}'\n{USAGE}")),
    }
}

const USAGE: &str = "usage: tenure pack SYSTEM.xml --board BOARD --config debug|release|benchmark \
--search-path DIR -o IMAGE -r REPORT\n       tenure run IMAGE\n       tenure test DIR";
