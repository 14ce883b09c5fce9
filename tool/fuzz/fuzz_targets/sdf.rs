//! Any bytes as system.xml: the parser and the checks return a result and
//! never panic; an error always formats as Microkit's `Error: ...` line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenure_tool::sdf::{BoardLimits, check_supported, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else { return };
    match parse("fuzz.system", xml, &BoardLimits::default()) {
        Ok(system) => {
            let _ = check_supported(&system);
            let _ = system.all_pds();
        }
        Err(e) => assert!(e.to_string().starts_with("Error: "), "{e}"),
    }
});
