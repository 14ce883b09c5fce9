//! Every SDF rule has a fixture under `tests/fixtures/sdf/`: `<rule>.system`
//! with the exact error in `<rule>.expected`; `valid-*.system` files must
//! parse and pass [`check_supported`]. `prefill_path` files are found in the
//! fixture directory (`*.bin`). Run with `SDF_BLESS=1` to (re)write the
//! `.expected` files from the current messages, then review the diff.

use std::fs;
use std::path::{Path, PathBuf};

use tenure_tool::sdf::guests::{self, RegionUse};
use tenure_tool::sdf::{
    BoardLimits, SdfError, SystemDescription, Trigger, Warning, check_supported, parse,
    parse_with_search_paths,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdf")
}

/// Parses a fixture as `tenure pack` would: the file name as given, the
/// default board, the fixture directory as the search path, then the
/// Tenure support check.
fn load(name: &str) -> Result<SystemDescription, SdfError> {
    let xml = fs::read_to_string(fixtures().join(name)).expect("fixture is readable");
    let system = parse_with_search_paths(name, &xml, &BoardLimits::default(), &[fixtures()])?;
    check_supported(&system)?;
    Ok(system)
}

fn valid(name: &str) -> SystemDescription {
    load(name).unwrap_or_else(|e| panic!("{name} should be valid: {e}"))
}

#[test]
fn every_fixture_gives_its_expected_result() {
    let bless = std::env::var_os("SDF_BLESS").is_some();
    let mut names: Vec<String> = fs::read_dir(fixtures())
        .expect("fixture directory exists")
        .map(|entry| entry.expect("directory entry").file_name().into_string().expect("UTF-8"))
        .filter(|name| name.ends_with(".system"))
        .collect();
    names.sort();

    let mut errors = 0;
    let mut failures = Vec::new();
    for name in &names {
        let expected_path = fixtures().join(name.replace(".system", ".expected"));
        let result = load(name);
        if name.starts_with("valid-") {
            assert!(!expected_path.exists(), "{name}: a valid fixture has no .expected");
            if let Err(e) = result {
                failures.push(format!("{name}: expected success, got\n  {e}"));
            }
            continue;
        }
        errors += 1;
        let actual = match result {
            Ok(_) => {
                failures.push(format!("{name}: expected an error, but it was accepted"));
                continue;
            }
            Err(e) => e.to_string(),
        };
        if bless {
            fs::write(&expected_path, format!("{actual}\n")).expect("write .expected");
            continue;
        }
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{name}: missing {}", expected_path.display()));
        if expected.trim_end() != actual {
            failures
                .push(format!("{name}:\n  expected {}\n  actual   {actual}", expected.trim_end()));
        }
    }
    assert!(failures.is_empty(), "{} fixture(s) failed:\n{}", failures.len(), failures.join("\n"));
    assert!(errors >= 45, "only {errors} error fixtures");
}

#[test]
fn every_expected_file_has_its_system() {
    for entry in fs::read_dir(fixtures()).expect("fixture directory exists") {
        let name = entry.expect("directory entry").file_name().into_string().expect("UTF-8");
        if let Some(stem) = name.strip_suffix(".expected") {
            assert!(fixtures().join(format!("{stem}.system")).exists(), "{name} has no .system");
        }
    }
}

#[test]
fn minimal_system_takes_the_defaults() {
    let system = valid("valid-minimal.system");
    assert!(system.warnings.is_empty());
    let [pd] = system.protection_domains.as_slice() else { panic!("one PD") };
    assert_eq!(pd.name, "hello");
    assert_eq!(pd.priority, 0);
    assert_eq!((pd.budget, pd.period), (1000, 1000));
    assert_eq!(pd.stack_size, 0x2000);
    assert!(!pd.passive && !pd.smc && pd.fpu);
    assert_eq!(pd.cpu, 0);
    assert_eq!(pd.id, None);
    assert_eq!(pd.program_image.path, Path::new("hello.elf"));
    assert_eq!((pd.at.line, pd.at.col), (3, 5));
    assert_eq!(pd.at.file, "valid-minimal.system");
}

#[test]
fn nested_children_form_a_tree() {
    let system = valid("valid-nested-children.system");
    assert_eq!(system.protection_domains.len(), 2);
    let root = &system.protection_domains[0];
    assert_eq!(root.name, "root");
    assert_eq!(root.children.len(), 2);
    let child = &root.children[0];
    assert_eq!((child.name.as_str(), child.id), ("child", Some(0)));
    assert_eq!(child.setvar_id.as_deref(), Some("child_id"));
    assert_eq!(child.children[0].name, "grandchild");
    assert_eq!(child.children[0].id, Some(3));
    assert_eq!(root.children[1].id, Some(1));
    let names: Vec<_> = system.all_pds().iter().map(|pd| pd.name.as_str()).collect();
    assert_eq!(names, ["root", "child", "grandchild", "sibling", "other"]);
    assert_eq!(system.pd("grandchild").map(|pd| pd.priority), Some(30));
}

#[test]
fn ppc_channel_keeps_both_ends() {
    let system = valid("valid-ppc.system");
    let [channel] = system.channels.as_slice() else { panic!("one channel") };
    let [client, server] = &channel.ends;
    assert_eq!(
        (client.pd.as_str(), client.id, client.pp, client.notify),
        ("client", 0, true, true)
    );
    assert_eq!(
        (server.pd.as_str(), server.id, server.pp, server.notify),
        ("server", 61, false, false)
    );
    assert_eq!(server.setvar_id.as_deref(), Some("client_channel"));
    let server_pd = system.pd("server").expect("server");
    assert!(server_pd.passive);
    assert_eq!(server_pd.priority, 200);
}

#[test]
fn irq_setvar_and_fixed_physical_regions() {
    let system = valid("valid-irq-setvar-phys.system");
    let uart = system.memory_region("uart").expect("uart");
    assert_eq!((uart.size, uart.page_size, uart.phys_addr), (0x1000, 0x1000, Some(0x900_0000)));
    let dma = system.memory_region("dma").expect("dma");
    assert_eq!((dma.size, dma.page_size, dma.phys_addr), (0x40_0000, 0x20_0000, Some(0x4000_0000)));
    let driver = system.pd("driver").expect("driver");
    assert_eq!(driver.irqs.len(), 2);
    assert_eq!((driver.irqs[0].irq, driver.irqs[0].id), (33, 1));
    assert_eq!(driver.irqs[0].trigger, Trigger::Level);
    assert_eq!(driver.irqs[1].trigger, Trigger::Edge);
    let map = &driver.maps[0];
    assert_eq!((map.mr.as_str(), map.vaddr), ("uart", 0x200_0000));
    assert!(map.perms.read && map.perms.write && !map.perms.execute && !map.cached);
    assert_eq!(map.setvar_vaddr.as_deref(), Some("uart_base"));
    assert_eq!(driver.maps[1].setvar_size.as_deref(), Some("dma_size"));
    assert_eq!(driver.setvars[0].symbol, "dma_paddr");
    assert_eq!(driver.setvars[0].region_paddr, "dma");
    assert_eq!(driver.stack_size, 0x4000);
}

#[test]
fn unused_region_is_a_warning_not_an_error() {
    let system = valid("valid-unused-mr.system");
    let [warning] = system.warnings.as_slice() else { panic!("one warning") };
    assert!(matches!(warning, Warning::UnusedMemoryRegion { name, .. } if name == "spare"));
    assert_eq!(warning.to_string(), "WARNING: unused memory region 'spare'");
}

#[test]
fn a_guest_its_vmm_and_the_memory_manager() {
    let system = valid("valid-guest.system");
    let vmm = system.pd("vmm").expect("vmm");
    let vm = vmm.virtual_machine.as_ref().expect("vm");
    assert_eq!((vm.name.as_str(), vm.priority, vm.budget, vm.period), ("linux", 50, 2000, 4000));
    assert_eq!(vm.vcpus.iter().map(|v| v.id).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(vm.vcpus[1].setvar_id.as_deref(), Some("vcpu1"));
    let mm = guests::memory_manager(&system).expect("mm");
    assert_eq!(mm.name, "mm");
    assert_eq!(mm.guest_memory.as_ref().map(|g| g.mr.as_str()), Some("pool"));
    assert_eq!(guests::region_use(&system, "pool"), RegionUse::Pool);
    assert_eq!(guests::region_use(&system, "ram_low"), RegionUse::GuestRam);
    assert_eq!(guests::region_use(&system, "uart"), RegionUse::GuestDevice);
    assert_eq!(guests::region_use(&system, "images"), RegionUse::Ordinary);
    let clients = guests::mm_clients(&system);
    let clients: Vec<_> = clients.iter().map(|c| (c.pd.as_str(), c.mm_channel)).collect();
    assert_eq!(clients, [("vmm", 3), ("serial", 4)]);
    let ranges = guests::guest_ranges(&system, vm);
    // The two RAM maps are adjacent: one range.
    assert_eq!(ranges.ram, [(0x4000_0000, 0x1000_0000)]);
    assert_eq!(ranges.devices, [(0x900_0000, 0x900_0000, 0x1000)]);
    let images = system.memory_region("images").expect("images");
    let prefill = images.prefill.as_ref().expect("prefilled");
    assert_eq!(prefill.data.len(), 5000);
    assert_eq!(images.size, 0x2000, "the file's size, rounded up to pages");
    assert!(system.warnings.is_empty());
}

#[test]
fn prefill_files_come_from_the_search_paths() {
    let name = "valid-guest.system";
    let xml = fs::read_to_string(fixtures().join(name)).expect("fixture");
    let err = parse(name, &xml, &BoardLimits::default()).unwrap_err();
    assert!(err.to_string().contains("unable to find prefill file 'prefill-5000.bin'"), "{err}");
    assert!(check_supported(&valid(name)).is_ok());
}

#[test]
fn board_limits_are_parameters() {
    let name = "pd-cpu-out-of-range.system";
    let xml = fs::read_to_string(fixtures().join(name)).expect("fixture");
    assert!(parse(name, &xml, &BoardLimits::default()).is_err());
    let smp = BoardLimits { cpus: 4, ..BoardLimits::default() };
    assert_eq!(parse(name, &xml, &smp).expect("4 cores").pd("a").map(|pd| pd.cpu), Some(1));

    let name = "pd-smc-not-forwarded.system";
    let xml = fs::read_to_string(fixtures().join(name)).expect("fixture");
    let smc = BoardLimits { smc_forwarding: true, ..BoardLimits::default() };
    assert!(parse(name, &xml, &smc).expect("SMC forwarded").pd("a").is_some_and(|pd| pd.smc));
}
