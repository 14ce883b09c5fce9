//! vCPU suite (../../README.md): `hyp` stands in for the memory manager
//! (it holds the guest pool and the stage-2 control capability and builds
//! a guest's stage-2 table by hand), `vmm` runs the guest's one vCPU
//! through a short program whose every step exits to it, checks each exit
//! and prints TAP, ending with `TEST_PASS` or `TEST_FAIL`.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use microkit::abi::Error;
    use microkit::abi::mm_config::{self, MmConfig, Pool};
    use microkit::abi::vcpu::{Exit, VcpuReg};
    use microkit::symbols::{Patched, pd_name};
    use microkit::{
        Channel, Child, Handler, MessageInfo, Reg, Stage2Control, Vcpu, debug_println, get_mr,
        protection_domain, set_mr,
    };

    /// The memory manager's configuration, which the tool patches in.
    #[unsafe(no_mangle)]
    static __tenure_mm_config: Patched<[u64; mm_config::WORDS]> =
        Patched::new([0; mm_config::WORDS]);

    const PAGE: u64 = 4096;
    /// Guest RAM as system.xml maps it into the VM.
    const RAM: u64 = 0x4000_0000;
    /// The guest's code page and data page (mapped), and an IPA in its
    /// RAM range that `hyp` leaves unmapped.
    const CODE: u64 = RAM;
    const DATA: u64 = RAM + PAGE;
    const UNMAPPED: u64 = RAM + 2 * PAGE + 8;
    /// What the guest stores into its data page.
    const STORED: u64 = 0x1234_5678_9abc_def0;
    /// What the VMM "reads" for the guest's load from the unmapped IPA.
    const EMULATED: u64 = 0x77;

    /// Where the guest sees its GIC CPU interface (the GICV page(s) the
    /// system passes through): GICC_CTLR, PMR, IAR and EOIR offsets.
    const GICC: u64 = 0x0801_0000;
    /// The virtual interrupt the VMM injects.
    const VIRQ: u64 = 40;

    /// The guest program at IPA `CODE` (EL1, MMU off), one exit a step.
    const PROGRAM: [u32; 21] = [
        0xd400_0002, // 0x00 hvc #0
        0xd400_0003, // 0x04 smc #0
        0xd503_207f, // 0x08 wfi
        0xf940_0041, // 0x0c ldr x1, [x2]      x2 = UNMAPPED: stage-2 fault
        0xf900_0083, // 0x10 str x3, [x4]      x4 = DATA, x3 = STORED
        0xd400_0022, // 0x14 hvc #1            the VMM checks DATA
        0xd51b_e345, // 0x18 msr cntv_cval_el0, x5   x5 = 0: due now
        0xd51b_e326, // 0x1c msr cntv_ctl_el0, x6    x6 = 1: enabled
        0x1400_0000, // 0x20 b .               until the timer exits
        0xd400_0062, // 0x24 hvc #3            the VMM injects VIRQ
        0xb900_0107, // 0x28 str w7, [x8]      GICC_CTLR = 1 (x8 = GICC)
        0xb900_0509, // 0x2c str w9, [x8, #4]  GICC_PMR = 0xff
        0xb940_0d0a, // 0x30 ldr w10, [x8, #12]  GICC_IAR
        0xb900_110a, // 0x34 str w10, [x8, #16]  GICC_EOIR: maintenance
        0x1400_0000, // 0x38 b .               until the maintenance exit
        0xd400_0082, // 0x3c hvc #4            done
        0x1400_0000, // 0x40 b .
        // The benchmark's loops (ci/bench/guest): one exit each pass.
        0xd400_00a2, // 0x44 hvc #5
        0x17ff_ffff, // 0x48 b 0x44
        0xf940_0041, // 0x4c ldr x1, [x2]      x2 = UNMAPPED: emulated
        0x17ff_ffff, // 0x50 b 0x4c
    ];
    /// Where the benchmark's loops start.
    const HVC_LOOP: u64 = CODE + 0x44;
    const FAULT_LOOP: u64 = CODE + 0x4c;

    /// hyp's operations for vmm.
    mod op {
        /// Build the table and install it, after the refused installs.
        pub const SETUP: u64 = 1;
        /// Read the first word of the guest's data page.
        pub const READ_DATA: u64 = 2;
        /// Uninstall the guest's table.
        pub const UNINSTALL: u64 = 3;
    }

    const VMM_HYP: Channel = Channel::new(0);
    const VCPU: Vcpu = Vcpu::new(0);
    const GUEST: Child = Child::new(0);

    /// Stage-2 leaf for a 4 KiB page (Arm ARM D8.3): valid page, MemAttr
    /// Normal write-back (0b1111), S2AP read/write, inner shareable, AF.
    const S2_PAGE: u64 = 0b11 | (0b1111 << 2) | (0b11 << 6) | (0b11 << 8) | (1 << 10);
    /// The same for device memory: MemAttr Device-nGnRE (0b0001),
    /// read/write, AF, execute-never (XN = 0b10).
    const S2_DEVICE: u64 = 0b11 | (0b0001 << 2) | (0b11 << 6) | (1 << 10) | (0b10 << 53);
    const S2_TABLE: u64 = 0b11;

    /// hyp: the pool page `n` as hyp sees it, and its physical address.
    fn pool_page(pool: &Pool, n: u64) -> (*mut u64, u64) {
        ((pool.vaddr + n * PAGE) as *mut u64, pool.base + n * PAGE)
    }

    /// hyp: writes word `i` of a pool page.
    fn put(page: *mut u64, i: usize, value: u64) {
        let word = page.wrapping_add(i);
        // SAFETY: system.xml maps the pool read-write at pool.vaddr in
        // this PD; callers pass pages 0..6 of it and `i` below 512.
        unsafe { word.write_volatile(value) };
    }

    /// hyp: builds the guest's table in the pool: root (pages 0 and 1,
    /// two concatenated level-1 tables), level 2 (page 2), level 3 (page
    /// 3), the code page (4) and the data page (5); and levels 2 and 3 for
    /// the GIC CPU interface (pages 6 and 7) at `GICC`, mapping `gicv`.
    fn build(pool: &Pool, gicv: u64) {
        for n in 0..8 {
            let (page, _) = pool_page(pool, n);
            for i in 0..512 {
                put(page, i, 0);
            }
        }
        let (root, _) = pool_page(pool, 0);
        let (l2, l2_pa) = pool_page(pool, 2);
        let (l3, l3_pa) = pool_page(pool, 3);
        let (code, code_pa) = pool_page(pool, 4);
        let (_, data_pa) = pool_page(pool, 5);
        put(root, (RAM >> 30) as usize, l2_pa | S2_TABLE);
        put(l2, 0, l3_pa | S2_TABLE);
        put(l3, 0, code_pa | S2_PAGE);
        put(l3, 1, data_pa | S2_PAGE);
        let (dev_l2, dev_l2_pa) = pool_page(pool, 6);
        let (dev_l3, dev_l3_pa) = pool_page(pool, 7);
        put(root, (GICC >> 30) as usize, dev_l2_pa | S2_TABLE);
        put(dev_l2, ((GICC >> 21) & 0x1ff) as usize, dev_l3_pa | S2_TABLE);
        for page in 0..2 {
            put(
                dev_l3,
                ((GICC >> 12) & 0x1ff) as usize + page,
                (gicv + page as u64 * PAGE) | S2_DEVICE,
            );
        }
        for (i, pair) in PROGRAM.chunks(2).enumerate() {
            let hi = pair.get(1).copied().unwrap_or(0);
            put(code, i, u64::from(pair[0]) | (u64::from(hi) << 32));
        }
    }

    /// hyp: the pool, and the guest's VM index and VMID, from the patched
    /// configuration (`None` if it does not decode).
    struct Hyp {
        config: Option<(Pool, u64, u64, u64)>,
    }

    impl Hyp {
        /// The refused installs (one bit each when refused as they must
        /// be), then the real one (bit 3). Reply: MR0 = the bits.
        fn setup(&self) -> u64 {
            let Some((pool, vm, vmid, gicv)) = self.config else { return 0 };
            build(&pool, gicv);
            let s2 = Stage2Control;
            let mut bits = 0;
            let refused = |r: Result<(), Error>| r == Err(Error::InvalidArgument);
            bits |= u64::from(refused(s2.install(vm, pool.base - 2 * PAGE, vmid)));
            bits |= u64::from(refused(s2.install(vm, pool.base + PAGE, vmid))) << 1;
            bits |= u64::from(refused(s2.install(vm, pool.base, vmid + 1))) << 2;
            // The guest runs with its MMU off: uncached, so what this PD
            // wrote through its cacheable mapping must reach memory.
            let cleaned = s2.clean_to_poc(pool.base, 8 * PAGE).is_ok();
            bits |= u64::from(cleaned && s2.install(vm, pool.base, vmid).is_ok()) << 3;
            bits |= u64::from(refused(s2.clean_to_poc(pool.base + pool.size, PAGE))) << 4;
            bits
        }

        fn read_data(&self) -> u64 {
            let Some((pool, ..)) = self.config else { return 0 };
            let (data, data_pa) = pool_page(&pool, 5);
            // The guest wrote uncached: drop any stale line first.
            let _ = Stage2Control.clean_to_poc(data_pa, PAGE);
            // SAFETY: page 5 of the pool, mapped read-write here.
            unsafe { data.read_volatile() }
        }
    }

    /// vmm's progress through the guest program.
    struct Vmm {
        step: u32,
        failed: u32,
    }

    const PLAN: u32 = 17;

    impl Vmm {
        fn check(&mut self, ok: bool, what: &str) {
            self.step += 1;
            if ok {
                debug_println!("ok {} - {what}", self.step);
            } else {
                self.failed += 1;
                debug_println!("not ok {} - {what}", self.step);
            }
        }

        fn finish(&self) {
            debug_println!(
                "{}",
                if self.failed == 0 && self.step == PLAN { "TEST_PASS" } else { "TEST_FAIL" }
            );
        }

        fn call_hyp(label: u64) -> u64 {
            VMM_HYP.pp_call(MessageInfo::new(label, 0).unwrap_or_default());
            get_mr(0)
        }

        fn pc() -> u64 {
            VCPU.arm_read_reg(Reg::PC).unwrap_or(0)
        }

        fn set(reg: Reg, value: u64) -> bool {
            VCPU.arm_write_reg(reg, value).is_ok()
        }

        fn x(n: u64) -> Reg {
            Reg::x(n).unwrap_or(Reg::X(0))
        }

        /// Everything before the guest runs.
        fn start(&mut self) {
            debug_println!("1..{PLAN}");
            self.check(
                VCPU.restart(CODE) == Err(Error::IllegalOperation),
                "a vCPU without a stage-2 table cannot be started",
            );
            let bits = Self::call_hyp(op::SETUP);
            self.check(
                bits & 0b111 == 0b111,
                "installs outside the pool, misaligned or under another VMID are refused",
            );
            self.check(bits & 0b1_0000 != 0, "a cache clean outside the pool is refused");
            self.check(bits & 0b1000 != 0, "the memory manager installs the guest's table");
            self.check(
                VCPU.arm_write_reg(Reg::PSTATE, 0x3c9) == Err(Error::InvalidArgument),
                "a VMM cannot give its guest an EL2 PSTATE",
            );
            let regs = [
                (2, UNMAPPED),
                (3, STORED),
                (4, DATA),
                (5, 0),
                (6, 1),
                (7, 1),
                (8, GICC),
                (9, 0xff),
            ];
            let written = regs.iter().all(|&(n, v)| Self::set(Self::x(n), v))
                && regs.iter().all(|&(n, v)| VCPU.arm_read_reg(Self::x(n)) == Ok(v));
            self.check(
                written && VCPU.restart(CODE).is_ok(),
                "registers written and read back; the vCPU starts",
            );
        }

        /// One guest exit; `Some` resumes the guest.
        fn exit(&mut self, label: u64) -> Option<MessageInfo> {
            let (mr0, mr1, esr) = (get_mr(0), get_mr(1), get_mr(2));
            let ec = (esr >> 26) & 0x3f;
            let exit = Exit::from_label(label);
            let resume = MessageInfo::new(0, 0);
            match self.step {
                6 => {
                    // hvc #0: the PC is already past it.
                    let ok = exit == Some(Exit::VcpuFault)
                        && ec == 0x16
                        && mr0 == CODE + 4
                        && Self::pc() == CODE + 4;
                    self.check(ok, "HVC exits to the VMM (EC 0x16), PC past it");
                    resume
                }
                7 => {
                    let ok = exit == Some(Exit::VcpuFault) && ec == 0x17 && mr0 == CODE + 4;
                    self.check(
                        ok && Self::set(Reg::PC, mr0 + 4),
                        "SMC traps to the VMM (EC 0x17), PC at it",
                    );
                    resume
                }
                8 => {
                    let ok = exit == Some(Exit::VcpuFault) && ec == 0x01 && mr0 == CODE + 8;
                    self.check(ok && Self::set(Reg::PC, mr0 + 4), "WFI traps to the VMM (EC 0x01)");
                    resume
                }
                9 => {
                    let ok = exit == Some(Exit::VmFault)
                        && ec == 0x24
                        && mr1 == UNMAPPED
                        && mr0 == CODE + 0xc;
                    if !ok {
                        debug_println!(
                            "# stage-2 fault: label {label}, pc {mr0:#x}, ipa {mr1:#x}, esr {esr:#x}"
                        );
                    }
                    // Emulate the load: x1 gets a value, the PC moves on.
                    let emulated = Self::set(Self::x(1), EMULATED) && Self::set(Reg::PC, mr0 + 4);
                    self.check(
                        ok && emulated,
                        "a guest load from an unmapped IPA exits with that IPA",
                    );
                    resume
                }
                10 => {
                    let stored = Self::call_hyp(op::READ_DATA);
                    let ok = exit == Some(Exit::VcpuFault) && ec == 0x16 && stored == STORED;
                    if stored != STORED {
                        debug_println!("# data page holds {stored:#x}");
                    }
                    self.check(ok, "a guest store reaches its own page through its stage-2 table");
                    resume
                }
                11 => {
                    let ok = exit == Some(Exit::VppiEvent) && mr0 == 27;
                    // Turn the guest's timer off, unmask, move past `b .`.
                    let handled = Self::set(Reg::Named(VcpuReg::CntvCtl), 0)
                        && VCPU.arm_ack_vppi(27).is_ok()
                        && Self::set(Reg::PC, CODE + 0x24);
                    self.check(
                        ok && handled,
                        "the guest's virtual timer exits to the VMM (VPPI 27)",
                    );
                    resume
                }
                12 => {
                    let x1 = VCPU.arm_read_reg(Self::x(1)).unwrap_or(0);
                    let ok = exit == Some(Exit::VcpuFault) && x1 == EMULATED;
                    self.check(ok, "the guest resumes with the registers its VMM set");
                    let refused = VCPU.arm_inject_irq(1020, 0, 0) == Err(Error::InvalidArgument)
                        && VCPU.arm_inject_irq(VIRQ as u16, 32, 0) == Err(Error::InvalidArgument)
                        && VCPU.arm_inject_irq(VIRQ as u16, 0, 64) == Err(Error::InvalidArgument);
                    let injected = VCPU.arm_inject_irq(VIRQ as u16, 0, 0).is_ok();
                    let busy =
                        VCPU.arm_inject_irq(VIRQ as u16 + 1, 0, 0) == Err(Error::IllegalOperation);
                    self.check(
                        refused && injected && busy,
                        "injection checks its interrupt, priority and list register, and a busy one",
                    );
                    resume
                }
                14 => {
                    let ok = exit == Some(Exit::VgicMaintenance) && mr0 == 0;
                    if !ok {
                        debug_println!(
                            "# expected a maintenance exit: label {label}, mr0 {mr0:#x}"
                        );
                    }
                    let moved = Self::set(Reg::PC, CODE + 0x3c);
                    self.check(
                        ok && moved,
                        "the guest's end of the interrupt exits to the VMM (maintenance, LR 0)",
                    );
                    resume
                }
                15 => {
                    let iar = VCPU.arm_read_reg(Self::x(10)).unwrap_or(0);
                    let ok = exit == Some(Exit::VcpuFault) && iar & 0x3ff == VIRQ;
                    if !ok {
                        debug_println!("# the guest's IAR read {iar:#x}");
                    }
                    self.check(
                        ok,
                        "the guest acknowledges the injected interrupt at its GIC CPU interface",
                    );
                    Self::call_hyp(op::UNINSTALL);
                    self.check(
                        VCPU.restart(CODE) == Err(Error::IllegalOperation),
                        "once its table is uninstalled the vCPU cannot run",
                    );
                    self.finish();
                    None
                }
                _ => {
                    debug_println!(
                        "# unexpected exit {label} at step {}: pc {mr0:#x} esr {esr:#x}",
                        self.step
                    );
                    self.failed += 1;
                    self.finish();
                    None
                }
            }
        }
    }

    /// The benchmark's VMM (`make bench`, ci/bench/guest): times guest
    /// exit round trips, every instruction on the CPU counted (the
    /// `benchmark` kernel lets EL0 read PMU event counter 0).
    struct Bench {
        /// Exits so far in the current loop.
        exits: u32,
        /// The counter after the warm-up.
        start: u32,
        /// Which loop: 0 = HVC, 1 = stage-2 fault.
        phase: u32,
    }

    const WARMUP: u32 = 100;
    const ITERATIONS: u32 = 10_000;

    fn instructions() -> u32 {
        let n: u64;
        // SAFETY: a `benchmark` kernel lets EL0 read event counter 0; the
        // read has no side effect.
        unsafe { core::arch::asm!("mrs {}, pmevcntr0_el0", out(reg) n, options(nomem, nostack)) };
        n as u32
    }

    impl Bench {
        fn start() -> Bench {
            let bits = Vmm::call_hyp(op::SETUP);
            let ready = bits & 0b1000 != 0
                && Vmm::set(Vmm::x(2), UNMAPPED)
                && VCPU.restart(HVC_LOOP).is_ok();
            if !ready {
                debug_println!("TEST_FAIL: the benchmark guest did not start");
            }
            Bench { exits: 0, start: 0, phase: 0 }
        }

        /// One exit: count it, report after the last, and resume.
        fn exit(&mut self) -> Option<MessageInfo> {
            let now = instructions();
            if self.phase == 1 {
                // Emulate the load: move the PC past it (x1 is left).
                let _ = Vmm::set(Reg::PC, FAULT_LOOP + 4);
            }
            self.exits += 1;
            if self.exits == WARMUP {
                self.start = now;
            }
            if self.exits < WARMUP + ITERATIONS {
                return MessageInfo::new(0, 0);
            }
            let tenths = u64::from(now.wrapping_sub(self.start)) * 10 / u64::from(ITERATIONS);
            let name = if self.phase == 0 { "guest_hvc" } else { "guest_stage2_fault" };
            debug_println!("BENCH {name} {}.{}", tenths / 10, tenths % 10);
            self.exits = 0;
            self.phase += 1;
            if self.phase == 1 {
                let _ = Vmm::set(Reg::PC, FAULT_LOOP);
                return MessageInfo::new(0, 0);
            }
            debug_println!("BENCH_DONE");
            debug_println!("TEST_PASS");
            None
        }
    }

    enum Role {
        Hyp(Hyp),
        Vmm(Vmm),
        Bench(Bench),
    }

    fn init() -> Role {
        if pd_name() == "hyp" {
            let config = MmConfig::decode(__tenure_mm_config.get()).ok().and_then(|c| {
                let guest = c.guests().first()?;
                let gicv = guest.devices().first()?.pa;
                Some((c.pool, u64::from(guest.vm), u64::from(guest.vmid), gicv))
            });
            if config.is_none() {
                debug_println!("# hyp: the patched mm configuration does not decode");
            }
            return Role::Hyp(Hyp { config });
        }
        if pd_name() == "bench" {
            return Role::Bench(Bench::start());
        }
        let mut vmm = Vmm { step: 0, failed: 0 };
        vmm.start();
        Role::Vmm(vmm)
    }

    impl Handler for Role {
        type Error = core::convert::Infallible;

        fn protected(
            &mut self,
            _channel: Channel,
            msg_info: MessageInfo,
        ) -> Result<MessageInfo, Self::Error> {
            let Role::Hyp(hyp) = self else { return Ok(MessageInfo::default()) };
            let value = match msg_info.label() {
                op::SETUP => hyp.setup(),
                op::READ_DATA => hyp.read_data(),
                op::UNINSTALL => {
                    let vm = hyp.config.map_or(0, |(_, vm, ..)| vm);
                    u64::from(Stage2Control.uninstall(vm).is_ok())
                }
                _ => 0,
            };
            set_mr(0, value);
            Ok(MessageInfo::new(0, 1).unwrap_or_default())
        }

        fn fault(
            &mut self,
            child: Child,
            msg_info: MessageInfo,
        ) -> Result<Option<MessageInfo>, Self::Error> {
            if child != GUEST {
                return Ok(None);
            }
            Ok(match self {
                Role::Vmm(vmm) => vmm.exit(msg_info.label()),
                Role::Bench(bench) => bench.exit(),
                Role::Hyp(_) => None,
            })
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("vcpu_pd is a protection domain: build it for aarch64-unknown-none");
}
