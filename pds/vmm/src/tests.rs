//! Whole exits through [`Vmm::handle_exit`], with a fake vCPU, a model of
//! mm and a console that records lines.

use crate::console::Console;
use crate::esr::{IL, Wfx, ec};
use crate::inject::{Exception, FNV, Reason};
use crate::layout::tests::virt;
use crate::memory::fake::FakeMm;
use crate::smccc::{Conduit, psci};
use crate::vcpu::fake::FakeVcpu;
use crate::vcpu::pstate;
use crate::vgic::IrqDecision;
use crate::{Decision, Device, Halt, Vmm, VmmError};
use microkit::Reg;
use proptest::prelude::{Just, Strategy, any, prop_assert, prop_assert_eq, prop_oneof, proptest};
use tenure_abi::hvc::{Function, GRANULE};
use tenure_abi::mm::{MmError, Request};
use tenure_abi::vcpu::VcpuReg;

const RAM: u64 = 0x4000_0000;
const RAM_END: u64 = RAM + (64 << 20);
const UART: u64 = 0x0900_0000;
const GICD: u64 = 0x0800_0000;
const GICC: u64 = 0x0801_0000;
const PC: u64 = 0x4008_1000;
const VBAR: u64 = 0x4008_0800;

/// Exit labels (abi::vcpu::Exit).
const VM_FAULT: u64 = 6;
const MAINTENANCE: u64 = 7;
const VCPU_FAULT: u64 = 8;
const VPPI: u64 = 9;

#[derive(Default, Debug)]
struct Lines(Vec<Vec<u8>>);

impl Console for Lines {
    fn write(&mut self, bytes: &[u8]) {
        self.0.push(bytes.to_vec());
    }
}

struct Guest {
    vmm: Vmm,
    vcpu: FakeVcpu,
    mm: FakeMm,
    out: Lines,
}

impl Guest {
    fn new() -> Guest {
        let mut vcpu = FakeVcpu::default();
        vcpu.set(Reg::PSTATE, pstate::EL1H);
        vcpu.set(Reg::Named(VcpuReg::VbarEl1), VBAR);
        vcpu.set(Reg::PC, PC);
        Guest { vmm: Vmm::new(virt()).unwrap(), vcpu, mm: FakeMm::default(), out: Lines::default() }
    }

    fn exit(&mut self, label: u64, mrs: [u64; 4]) -> Result<Decision, VmmError> {
        self.vmm.handle_exit(label, mrs, &mut self.vcpu, &mut self.mm, &mut self.out)
    }

    /// A data abort at `ipa` with ISS `iss` (the VA equal to the IPA, as
    /// with the guest's MMU off).
    fn data(&mut self, ipa: u64, iss: u64) -> Result<Decision, VmmError> {
        self.exit(VM_FAULT, [PC, ipa, (ec::DABT_LOW << 26) | IL | iss, ipa])
    }

    fn fetch(&mut self, ipa: u64, iss: u64) -> Result<Decision, VmmError> {
        self.exit(VM_FAULT, [PC, ipa, (ec::IABT_LOW << 26) | IL | iss, ipa])
    }

    /// An HVC (PC past it) or SMC (PC at it) with `x0..=x3`.
    fn call(&mut self, conduit: Conduit, x: [u64; 4]) -> Result<Decision, VmmError> {
        for (n, v) in x.into_iter().enumerate() {
            self.vcpu.set_x(n as u64, v);
        }
        let class = match conduit {
            Conduit::Hvc => ec::HVC64,
            Conduit::Smc => ec::SMC64,
        };
        self.exit(VCPU_FAULT, [PC, 0, (class << 26) | IL, 0])
    }

    fn hvc(&mut self, x: [u64; 4]) -> i64 {
        self.call(Conduit::Hvc, x).unwrap();
        self.vcpu.x(0) as i64
    }

    fn pc(&self) -> u64 {
        self.vcpu.get(Reg::PC)
    }
}

/// Translation fault, level 3.
const TRANSLATION: u64 = 0b00_0111;
const PERMISSION: u64 = 0b00_1111;
const ALIGNMENT: u64 = 0b10_0001;
const ISV: u64 = 1 << 24;
const WNR: u64 = 1 << 6;
const SSE: u64 = 1 << 21;
const SF: u64 = 1 << 15;
const CM: u64 = 1 << 8;
const S1PTW: u64 = 1 << 7;

/// ISS of an access of 2^`sas` bytes through register `srt`.
fn access(sas: u64, srt: u64) -> u64 {
    ISV | (sas << 22) | (srt << 16) | TRANSLATION
}

// ---- the emulated PL011 ----

#[test]
fn a_store_to_uartdr_is_console_output_and_steps_the_pc() {
    let mut g = Guest::new();
    for &b in b"ok\n" {
        g.vcpu.set_x(1, 0xffff_ff00 | u64::from(b));
        let d = g.data(UART, access(2, 1) | WNR).unwrap();
        assert_eq!(
            d,
            Decision::Emulated {
                device: Device::Pl011,
                ipa: UART,
                write: true,
                value: 0xffff_ff00 | u64::from(b)
            }
        );
        assert_eq!(g.pc(), PC + 4);
    }
    assert_eq!(g.out.0, [b"ok\n".to_vec()]);
}

#[test]
fn a_byte_store_moves_only_the_byte() {
    let mut g = Guest::new();
    g.vcpu.set_x(3, 0x1234_5678_9abc_de41);
    let d = g.data(UART, access(0, 3) | WNR | SF).unwrap();
    assert!(matches!(d, Decision::Emulated { value: 0x41, .. }));
    g.vmm.flush_console(&mut g.out);
    assert_eq!(g.out.0, [b"A".to_vec()]);
}

#[test]
fn uartfr_reads_transmit_empty_and_receive_empty() {
    let mut g = Guest::new();
    g.vcpu.set_x(2, u64::MAX);
    let d = g.data(UART + 0x18, access(2, 2)).unwrap();
    assert!(matches!(d, Decision::Emulated { write: false, value: 0x90, .. }));
    assert_eq!(g.vcpu.x(2), 0x90, "a W register load clears the upper half");
    assert_eq!(g.pc(), PC + 4);
}

#[test]
fn other_registers_read_their_reset_values_and_ignore_writes() {
    let mut g = Guest::new();
    g.data(UART + 0x30, access(2, 4) | SF).unwrap();
    assert_eq!(g.vcpu.x(4), 0x300);
    g.vcpu.set_x(5, 0);
    g.data(UART + 0x30, access(2, 5) | WNR).unwrap();
    g.data(UART + 0x30, access(2, 4)).unwrap();
    assert_eq!(g.vcpu.x(4), 0x300, "the write changed nothing");
    g.vmm.flush_console(&mut g.out);
    assert!(g.out.0.is_empty(), "no output from other registers");
    // PeriphID / PCellID, for Linux's AMBA bus.
    g.data(UART + 0xfe0, access(2, 6)).unwrap();
    assert_eq!(g.vcpu.x(6), 0x11);
}

#[test]
fn loads_sign_extend_as_the_syndrome_says() {
    let mut g = Guest::new();
    // ldrsb x7, [UARTPCellID3] = 0xb1.
    g.data(UART + 0xffc, access(0, 7) | SSE | SF).unwrap();
    assert_eq!(g.vcpu.x(7), 0xffff_ffff_ffff_ffb1);
    // ldrsb w7: sign extended to 32 bits, upper half zero.
    g.data(UART + 0xffc, access(0, 7) | SSE).unwrap();
    assert_eq!(g.vcpu.x(7), 0xffff_ffb1);
    // ldrb w7: zero extended.
    g.data(UART + 0xffc, access(0, 7)).unwrap();
    assert_eq!(g.vcpu.x(7), 0xb1);
}

#[test]
fn the_zero_register_stores_zero_and_loads_nowhere() {
    let mut g = Guest::new();
    let before = g.vcpu.regs;
    g.data(UART + 0x18, access(2, 31)).unwrap();
    let mut after = g.vcpu.regs;
    after[Reg::PC.raw() as usize] = before[Reg::PC.raw() as usize];
    assert_eq!(after, before, "a load into xzr writes no register but the PC");
    let d = g.data(UART, access(2, 31) | WNR).unwrap();
    assert!(matches!(d, Decision::Emulated { value: 0, .. }));
}

#[test]
fn the_gic_distributor_reads_as_zero_and_ignores_writes() {
    let mut g = Guest::new();
    g.vcpu.set_x(1, 5);
    let d = g.data(GICD + 4, access(2, 1)).unwrap();
    assert_eq!(
        d,
        Decision::Emulated {
            device: Device::GicDistributor,
            ipa: GICD + 4,
            write: false,
            value: 0
        }
    );
    assert_eq!(g.vcpu.x(1), 0);
    assert!(matches!(
        g.data(GICD, access(2, 1) | WNR).unwrap(),
        Decision::Emulated { write: true, .. }
    ));
    assert_eq!(g.pc(), PC + 4);
}

#[test]
fn cache_maintenance_on_a_device_is_stepped_over() {
    let mut g = Guest::new();
    assert_eq!(
        g.data(UART, CM | WNR | TRANSLATION).unwrap(),
        Decision::CacheMaintenance { ipa: UART }
    );
    assert_eq!(g.pc(), PC + 4);
}

// ---- aborts injected ----

fn injected(d: Result<Decision, VmmError>) -> crate::inject::Injected {
    match d {
        Ok(Decision::Injected(i)) => i,
        other => panic!("no injection: {other:?}"),
    }
}

#[test]
fn an_access_outside_ram_and_devices_is_an_external_abort_in_the_guest() {
    let mut g = Guest::new();
    let i = injected(g.data(RAM_END, access(3, 0) | SF));
    assert_eq!((i.exception, i.reason), (Exception::DataAbort(Some(RAM_END)), Reason::Outside));
    assert_eq!(i.esr, 0x9600_0010);
    assert_eq!(g.vcpu.named(VcpuReg::EsrEl1), 0x9600_0010);
    assert_eq!(g.vcpu.named(VcpuReg::FarEl1), RAM_END);
    assert_eq!(g.vcpu.named(VcpuReg::ElrEl1), PC, "the load did not complete");
    assert_eq!(g.vcpu.named(VcpuReg::SpsrEl1), pstate::EL1H);
    assert_eq!(g.pc(), VBAR + 0x200);
    assert_eq!(g.vcpu.get(Reg::PSTATE), pstate::EL1H_MASKED);
    assert_eq!(g.vmm.injections(), (1, Some(i)));
    assert!(g.mm.requests.is_empty());
}

#[test]
fn every_unbacked_address_aborts() {
    for ipa in [0, 0x0900_1000, 0x0800_1000, 0x0801_2000, RAM - 1, RAM_END, 1 << 39, u64::MAX] {
        let mut g = Guest::new();
        let i = injected(g.data(ipa, access(2, 0)));
        assert_eq!(i.reason, Reason::Outside, "{ipa:#x}");
    }
}

#[test]
fn an_unknown_far_is_reported_as_such() {
    let mut g = Guest::new();
    g.vcpu.set(Reg::Named(VcpuReg::FarEl1), 0x1234);
    let i = injected(g.data(RAM_END, access(2, 0) | FNV));
    assert_eq!(i.exception, Exception::DataAbort(None));
    assert_eq!(i.esr & FNV, FNV);
    assert_eq!(g.vcpu.named(VcpuReg::FarEl1), 0);
}

#[test]
fn device_accesses_the_syndrome_does_not_describe_abort() {
    let mut g = Guest::new();
    // No ISV (say, ldp from the UART).
    let i = injected(g.data(UART, (3 << 22) | TRANSLATION));
    assert_eq!(i.reason, Reason::Undecodable);
    // A doubleword running past the PL011's page.
    let mut g = Guest::new();
    assert_eq!(injected(g.data(UART + 0xffc, access(3, 0))).reason, Reason::Undecodable);
    // The guest's own page table in device memory.
    let mut g = Guest::new();
    assert_eq!(injected(g.data(UART, access(3, 0) | S1PTW)).reason, Reason::Undecodable);
    assert_eq!(g.vmm.injections().0, 1);
}

#[test]
fn from_guest_el0_the_abort_is_a_lower_el_one_through_the_0x400_vector() {
    let mut g = Guest::new();
    g.vcpu.set(Reg::PSTATE, pstate::EL0T);
    let i = injected(g.data(RAM_END, access(2, 0)));
    assert_eq!(i.esr >> 26, 0x24);
    assert_eq!(g.pc(), VBAR + 0x400);
}

#[test]
fn fetches_from_devices_or_nothing_are_instruction_aborts() {
    let mut g = Guest::new();
    let i = injected(g.fetch(RAM_END, TRANSLATION));
    assert_eq!((i.reason, i.esr >> 26), (Reason::Outside, 0x21));
    let mut g = Guest::new();
    assert_eq!(injected(g.fetch(UART, TRANSLATION)).reason, Reason::ExecuteDevice);
    let mut g = Guest::new();
    assert_eq!(injected(g.fetch(GICC, TRANSLATION)).reason, Reason::ExecuteDevice);
}

#[test]
fn trapped_system_registers_and_unknown_traps_are_undefined_instructions() {
    let mut g = Guest::new();
    let iss = (3 << 20) | (1 << 17) | (3 << 14) | (2 << 5) | 1;
    let i = injected(g.exit(VCPU_FAULT, [PC, 0, (ec::SYSREG << 26) | IL | iss, 0]));
    assert_eq!((i.exception, i.reason, i.esr), (Exception::Undefined, Reason::Untrapped, IL));
    assert_eq!(g.vcpu.named(VcpuReg::ElrEl1), PC);
    let mut g = Guest::new();
    let i = injected(g.exit(VCPU_FAULT, [PC, 0, (0x07 << 26) | IL, 0]));
    assert_eq!(i.exception, Exception::Undefined);
}

// ---- RAM and passthrough devices ----

#[test]
fn a_fault_on_ram_is_populated_and_retried() {
    let mut g = Guest::new();
    let d = g.data(RAM + 0x12_3456, access(2, 0)).unwrap();
    assert_eq!(d, Decision::Populated { ipa: RAM + 0x12_3000, pages: 1 });
    assert_eq!(g.pc(), PC, "the access runs again");
    assert!(g.vcpu.writes.is_empty());
    assert_eq!(
        g.fetch(RAM + 0x20_0000, TRANSLATION).unwrap(),
        Decision::Populated { ipa: RAM + 0x20_0000, pages: 1 }
    );
    // A stage-1 walk of a table in RAM that is not there yet.
    assert!(matches!(
        g.data(RAM + 0x30_0000, S1PTW | TRANSLATION).unwrap(),
        Decision::Populated { .. }
    ));
}

#[test]
fn a_permission_fault_on_ram_is_not_papered_over() {
    let mut g = Guest::new();
    let i = injected(g.data(RAM, ISV | WNR | PERMISSION));
    assert_eq!(i.reason, Reason::Unexpected);
    assert!(g.mm.requests.is_empty());
}

#[test]
fn ram_mm_refuses_to_back_is_an_abort_for_the_guest() {
    let mut g = Guest::new();
    for refusal in [MmError::PoolExhausted, MmError::OverLimit] {
        g.mm.refuse_all = Some(refusal);
        let i = injected(g.data(RAM, access(2, 0)));
        assert_eq!(i.reason, Reason::MemoryRefused(refusal));
    }
}

#[test]
fn a_fault_on_a_page_mm_has_mapped_is_an_abort_not_a_retry() {
    let mut g = Guest::new();
    g.data(GICC + 4, access(2, 0)).unwrap();
    // The same translation fault again: mm maps nothing new.
    assert_eq!(injected(g.data(GICC + 4, access(2, 0))).reason, Reason::Refault);
    g.data(RAM, access(2, 0)).unwrap();
    assert_eq!(injected(g.data(RAM, access(2, 0))).reason, Reason::Refault);
}

#[test]
fn an_alignment_fault_on_a_passthrough_page_is_an_abort_without_asking_mm() {
    let mut g = Guest::new();
    let i = injected(g.data(GICC + 4, (access(3, 0) & !0x3f) | ALIGNMENT));
    assert_eq!(i.reason, Reason::Unexpected);
    assert!(g.mm.requests.is_empty());
}

#[test]
fn passthrough_devices_are_mapped_on_fault() {
    let mut g = Guest::new();
    let d = g.data(GICC + 4, access(2, 0)).unwrap();
    assert_eq!(d, Decision::MappedDevice { ipa: GICC, pages: 1 });
    assert!(matches!(g.mm.requests[0], Request::MapDevice { .. }));
    g.mm.refuse_all = Some(MmError::NotDeclared);
    assert_eq!(injected(g.data(GICC + 4, access(2, 0))).reason, Reason::DeviceRefused);
}

// ---- calls ----

#[test]
fn psci_version_over_hvc_leaves_the_pc_and_over_smc_steps_it() {
    let mut g = Guest::new();
    let d = g.call(Conduit::Hvc, [0x8400_0000, 7, 7, 7]).unwrap();
    assert_eq!(
        d,
        Decision::Answered { conduit: Conduit::Hvc, function: 0x8400_0000, x: [0x1_0000, 0, 0, 0] }
    );
    assert_eq!([g.vcpu.x(0), g.vcpu.x(1), g.vcpu.x(2), g.vcpu.x(3)], [0x1_0000, 0, 0, 0]);
    assert_eq!(g.pc(), PC, "HVC: already past");
    g.call(Conduit::Smc, [0x8400_0000, 0, 0, 0]).unwrap();
    assert_eq!(g.pc(), PC + 4, "SMC: at the instruction");
}

#[test]
fn smccc_version_and_features() {
    let mut g = Guest::new();
    assert_eq!(g.hvc([0x8000_0000, 0, 0, 0]), 0x1_0001);
    assert_eq!(g.hvc([u64::from(psci::PSCI_FEATURES), 0x8000_0000, 0, 0]), 0);
    assert_eq!(g.hvc([u64::from(psci::PSCI_FEATURES), 0xc600_0003, 0, 0]), -1);
}

#[test]
fn cpu_on_and_bad_psci_arguments_are_refused() {
    let mut g = Guest::new();
    assert_eq!(g.hvc([u64::from(psci::CPU_ON_64), 0, RAM, 0]), -4, "ALREADY_ON");
    assert_eq!(g.hvc([u64::from(psci::CPU_ON_64), 1, RAM, 0]), -2);
    assert_eq!(g.hvc([u64::from(psci::CPU_ON_64), u64::MAX, u64::MAX, u64::MAX]), -2);
    assert_eq!(g.hvc([u64::from(psci::AFFINITY_INFO_64), 0, 7, 0]), -2);
    assert_eq!(g.hvc([u64::from(psci::PSCI_FEATURES), u64::MAX, 0, 0]), -1);
}

#[test]
fn unknown_calls_and_immediates_are_not_supported() {
    let mut g = Guest::new();
    for id in [0xc600_00fe, 0x8600_ff01, 0xc400_0012, 0x0, 0xffff_ffff, 0x8400_0005] {
        g.vcpu.set_x(1, 9);
        assert_eq!(g.hvc([id, 9, 9, 9]), -1, "{id:#x}");
        assert_eq!(g.vcpu.x(1), 0);
    }
    // hvc #1 is no SMCCC call, whatever w0 says.
    g.vcpu.set_x(0, 0x8400_0000);
    let d = g.exit(VCPU_FAULT, [PC, 0, (ec::HVC64 << 26) | IL | 1, 0]).unwrap();
    assert!(matches!(d, Decision::Answered { x: [u64::MAX, 0, 0, 0], .. }));
}

#[test]
fn power_off_and_reset_halt_without_touching_registers_and_flush_the_console() {
    let mut g = Guest::new();
    g.vcpu.set_x(1, u64::from(b'x'));
    g.data(UART, access(2, 1) | WNR).unwrap();
    g.vcpu.writes.clear();
    let d = g.call(Conduit::Smc, [u64::from(Function::SystemOff.id()), 0, 0, 0]).unwrap();
    assert_eq!(d, Decision::Halt(Halt::PowerOff));
    assert!(!d.resumes());
    assert!(g.vcpu.writes.is_empty());
    assert_eq!(g.out.0, [b"x".to_vec()], "the unfinished line went out");
    let d = g.call(Conduit::Hvc, [u64::from(Function::SystemReset.id()), 0, 0, 0]).unwrap();
    assert_eq!(d, Decision::Halt(Halt::Reset));
    assert_eq!(
        g.call(Conduit::Hvc, [u64::from(psci::CPU_OFF), 0, 0, 0]),
        Ok(Decision::Halt(Halt::CpuOff))
    );
}

#[test]
fn meminfo_and_memory_calls_go_to_mm() {
    let mut g = Guest::new();
    assert_eq!(g.hvc([0xc600_0002, 0, 0, 0]), 4096);
    assert_eq!(g.vcpu.x(1), 1);
    let page = RAM + 0x10_0000;
    assert_eq!(g.hvc([0xc600_0003, page, 3, 0]), 0);
    assert_eq!(g.vcpu.x(1), 3, "granules done");
    assert!(matches!(g.mm.requests[0], Request::Share { .. }));
    // Over SMC the PC moves on too.
    g.call(Conduit::Smc, [0xc600_0004, page, 3, 0]).unwrap();
    assert_eq!((g.vcpu.x(0), g.vcpu.x(1), g.pc()), (0, 3, PC + 4));
}

/// The test guest's hostile probes (guest-images/README.md, "Probes"),
/// with what they must return under Tenure.
#[test]
fn the_test_guests_probes_get_the_answers_it_expects() {
    let mut g = Guest::new();
    let (share, unshare) = (0xc600_0003, 0xc600_0004);
    let p = |i: u64| RAM + 0x20_0000 + i * GRANULE;
    let last = RAM_END - GRANULE;
    // (function, x1..=x3, x0 expected), by probe.
    type Steps<'a> = &'a [(u64, [u64; 3], i64)];
    let cases: [(&str, Steps<'_>); 10] = [
        ("share-outside", &[(share, [RAM - GRANULE, 1, 0], -4)]),
        (
            "share-twice",
            &[
                (share, [p(0), 1, 0], 0),
                (share, [p(0), 1, 0], -4),
                (unshare, [p(0), 1, 0], 0),
                (unshare, [p(0), 1, 0], -4),
            ],
        ),
        (
            "unshare-unshared",
            &[(unshare, [p(1), 1, 0], -4), (share, [p(1), 1, 0], 0), (unshare, [p(1), 1, 0], 0)],
        ),
        ("share-device", &[(share, [UART, 1, 0], -4)]),
        ("share-past-end", &[(share, [last, 2, 0], -4), (unshare, [last, 1, 0], -4)]),
        (
            "share-overflow",
            &[(share, [p(2), u64::MAX / GRANULE, 0], -3), (unshare, [p(2), 1, 0], -4)],
        ),
        ("share-misaligned", &[(share, [p(3) + 16, 1, 0], -3), (unshare, [p(3), 1, 0], -4)]),
        ("share-reserved", &[(share, [p(4), 1, 1], -3), (unshare, [p(4), 1, 0], -4)]),
        ("share-beyond-ipa", &[(share, [1 << 56, 1, 0], -3)]),
        ("unknown-call", &[(0xc600_00fe, [0, 0, 0], -1)]),
    ];
    for (probe, steps) in cases {
        for &(f, [x1, x2, x3], want) in steps {
            assert_eq!(g.hvc([f, x1, x2, x3]), want, "{probe}: {f:#x} {x1:#x} {x2} {x3}");
        }
    }
}

// ---- waits and interrupts ----

#[test]
fn wfi_and_wfe_are_stepped_over() {
    let mut g = Guest::new();
    assert_eq!(
        g.exit(VCPU_FAULT, [PC, 0, (ec::WFX << 26) | IL, 0]),
        Ok(Decision::Waited(Wfx::Wfi))
    );
    assert_eq!(g.pc(), PC + 4);
    assert_eq!(
        g.exit(VCPU_FAULT, [PC + 4, 0, (ec::WFX << 26) | IL | 1, 0]),
        Ok(Decision::Waited(Wfx::Wfe))
    );
    assert_eq!(g.pc(), PC + 8);
}

#[test]
fn the_timer_goes_through_a_list_register() {
    let mut g = Guest::new();
    let d = g.exit(VPPI, [27, 0, 0, 0]).unwrap();
    assert_eq!(d, Decision::Irq(IrqDecision::Injected { intid: 27, list_register: 0 }));
    let d = g.exit(MAINTENANCE, [0, 0, 0, 0]).unwrap();
    assert_eq!(d, Decision::Irq(IrqDecision::Ended { list_register: 0, intid: 27, next: None }));
    assert_eq!(g.vcpu.acked, [27]);
    assert!(g.vcpu.writes.is_empty(), "interrupt exits resume where the guest was");
}

// ---- errors ----

#[test]
fn malformed_exits_and_kernel_refusals_are_errors() {
    let mut g = Guest::new();
    assert_eq!(g.exit(1, [0; 4]), Err(VmmError::UnknownExit(1)));
    assert_eq!(
        g.exit(VM_FAULT, [0, RAM, ec::WFX << 26, 0]),
        Err(VmmError::MalformedExit(ec::WFX << 26))
    );
    g.vcpu.refuse = Some(Reg::PC);
    assert_eq!(
        g.exit(VCPU_FAULT, [PC, 0, (ec::WFX << 26) | IL, 0]),
        Err(VmmError::Vcpu(tenure_abi::Error::InvalidState))
    );
}

// ---- any exit ----

/// ESR_EL2 values: every class the VMM knows with any ISS, and anything.
fn esr() -> impl Strategy<Value = u64> {
    let classes = prop_oneof![
        Just(ec::DABT_LOW),
        Just(ec::IABT_LOW),
        Just(ec::HVC64),
        Just(ec::SMC64),
        Just(ec::WFX),
        Just(ec::SYSREG),
        0..64u64,
    ];
    prop_oneof![
        (classes, any::<u64>()).prop_map(|(ec, iss)| (ec << 26) | IL | (iss & 0x1ff_ffff)),
        any::<u64>(),
    ]
}

/// Addresses near everything the layout has, and anywhere.
fn ipa() -> impl Strategy<Value = u64> {
    let near =
        prop_oneof![Just(RAM), Just(RAM_END), Just(UART), Just(GICD), Just(GICC), Just(0u64)];
    prop_oneof![
        (near, -0x2000i64..0x2000).prop_map(|(b, d)| b.wrapping_add_signed(d)),
        any::<u64>()
    ]
}

/// SMCCC function ids: those answered, and anything.
fn function() -> impl Strategy<Value = u64> {
    let known: Vec<u64> = Function::ALL
        .iter()
        .map(|f| u64::from(f.id()))
        .chain(
            [
                psci::CPU_ON_64,
                psci::CPU_ON_32,
                psci::AFFINITY_INFO_64,
                psci::PSCI_FEATURES,
                psci::CPU_OFF,
            ]
            .map(u64::from),
        )
        .collect();
    prop_oneof![proptest::sample::select(known), any::<u64>()]
}

proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

    #[test]
    fn no_exit_makes_the_vmm_panic(
        label in prop_oneof![6..10u64, any::<u64>()],
        pc in any::<u64>(),
        ipa in ipa(),
        esr in esr(),
        far in any::<u64>(),
        x0 in function(),
        args in any::<[u64; 3]>(),
        pstate in any::<u64>(),
        vbar in any::<u64>(),
        fragmented in any::<bool>(),
    ) {
        let mut g = Guest::new();
        g.mm.fragmented = fragmented;
        g.vcpu.set(Reg::PSTATE, pstate);
        g.vcpu.set(Reg::Named(VcpuReg::VbarEl1), vbar);
        g.vcpu.set_x(0, x0);
        for (n, a) in args.into_iter().enumerate() {
            g.vcpu.set_x(n as u64 + 1, a);
        }
        let mrs = if label == VPPI || label == MAINTENANCE { [ipa, 0, 0, 0] } else { [pc, ipa, esr, far] };
        let before = g.vcpu.get(Reg::PC);
        match g.exit(label, mrs) {
            Ok(Decision::Emulated { .. } | Decision::CacheMaintenance { .. } | Decision::Waited(_)) => {
                prop_assert_eq!(g.vcpu.get(Reg::PC), pc.wrapping_add(4));
            }
            Ok(Decision::Injected(i)) => {
                prop_assert_eq!(g.vcpu.get(Reg::PC), i.vector);
                prop_assert_eq!(g.vcpu.named(VcpuReg::ElrEl1), pc);
                prop_assert_eq!(g.vcpu.get(Reg::PSTATE), pstate::EL1H_MASKED);
                prop_assert_eq!(g.vmm.injections().0, 1);
            }
            Ok(Decision::Populated { .. } | Decision::MappedDevice { .. } | Decision::Irq(_) | Decision::Halt(_)) => {
                prop_assert_eq!(g.vcpu.get(Reg::PC), before, "retried or not resumed");
            }
            Ok(Decision::Answered { x, .. }) => {
                prop_assert_eq!([g.vcpu.x(0), g.vcpu.x(1), g.vcpu.x(2), g.vcpu.x(3)], x);
            }
            Ok(Decision::Memory { outcome, .. }) => {
                prop_assert!(outcome.done == 0 || outcome.ret == tenure_abi::hvc::Ret::Success);
                prop_assert_eq!(outcome.left_changed, 0);
            }
            Err(e) => prop_assert!(matches!(e, VmmError::UnknownExit(_) | VmmError::MalformedExit(_))),
        }
    }
}
