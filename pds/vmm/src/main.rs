//! The VMM PD: boots one guest of one vCPU and serves its exits with the
//! library's [`tenure_vmm::Vmm`].
//!
//! Its system.xml contract:
//!
//! - one `virtual_machine` with one `vcpu` whose `setvar_id` is
//!   `guest_vcpu` (its id, the child id of its faults), and the VM's RAM as
//!   the guest's device tree declares it in `/memory`; its mm guest id is
//!   the one the tool patches (`microkit::symbols::guest_id`);
//! - a `pp` channel end with id 0 to the memory manager (the VMM is its
//!   client, with a window);
//! - the guest's arm64 Image and device tree in read-only regions with a
//!   `prefill_path`, mapped with `setvar_vaddr` / `setvar_prefill_size`
//!   `guest_image` / `guest_image_size` and `guest_dtb` /
//!   `guest_dtb_size`;
//! - a serial client region at `setvar_vaddr` `serial_region`, channel 1
//!   to the serial PD (the guest's console goes there, labelled with the
//!   VMM's name).
//!
//! Optional, for suites whose TAP spans several boots or PDs
//! ([`tenure_vmm::selftest`]):
//!
//! - a second device tree, `guest_reset_dtb` / `guest_reset_dtb_size`:
//!   after the guest's PSCI SYSTEM_RESET the VMM tears it down and boots
//!   it again with this one (and expects that reset);
//! - a page shared with the next PD of the stream, `setvar_vaddr`
//!   `tap_relay`: the VMM prints its plan last and reads the counts of the
//!   PDs before it there, or leaves its own there for the PD after it;
//! - channel 2 (NEXT), which the VMM may notify: when its guest stops,
//!   it leaves its counts in the relay page and notifies NEXT instead of
//!   closing the stream;
//! - channel 3 (PREVIOUS), which the VMM may notify too (system.xml's
//!   default): the VMM starts its guest only when PREVIOUS notifies it,
//!   after checking that none of the previous guest's shared pages is in
//!   its window;
//! - channel 4 (MONITOR), to its parent: when its guest stops, the VMM
//!   leaves its counts in the relay page, notifies MONITOR and reads the
//!   first page of its guest's kernel through its window. mm donated that
//!   page to the guest, so the read faults and the parent, which closes
//!   the stream, gets the fault;
//! - channel 5 (MONITOR_UNSHARED), to its parent, instead: the same, but
//!   the VMM reads the page its guest shared and then unshared last. The
//!   guest took the page back, so that read faults too;
//! - channel 6 (COLLECTOR), instead of the above, for VMMs that run side
//!   by side: the VMM's guest's TAP and the VMM's own checks stay on its
//!   labelled console (nothing on the kernel's), and when its guest stops
//!   the VMM leaves its counts in the relay page and notifies COLLECTOR,
//!   which closes the stream;
//! - a `setvar` `gicv_paddr` (`region_paddr`: the region passed through
//!   to the VM at the device tree's GIC CPU interface): the guest must
//!   touch that device, and the VMM checks that mm mapped it on the
//!   guest's first access
//!   ([`tenure_vmm::selftest::SelfTest::expect_device`]).
//!
//! `init` creates the guest with mm, loads it ([`tenure_vmm::boot`]), sets
//! the boot registers and restarts the vCPU. `fault` turns each exit into
//! the library's decision and resumes the guest unless it stopped. A test
//! guest's TAP and `BENCH` lines go to the kernel's console, with the
//! VMM's own checks added ([`tenure_vmm::selftest`]).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use core::fmt::{self, Write};
    use microkit::symbols::{__tenure_notifications, guest_id};
    use microkit::{
        Channel, ChannelSet, Child, Handler, MessageInfo, Vcpu, get_mr, protection_domain, var,
    };
    use tenure_abi::mm::GuestId;
    use tenure_abi::vcpu::WINDOW_IPA;
    use tenure_serial::client::{Writer, region_at};
    use tenure_serial::region::Region;
    use tenure_vmm::boot::{self, BootError};
    use tenure_vmm::exit;
    use tenure_vmm::fdt;
    use tenure_vmm::selftest::{LoadTimes, Relay, Route, SelfTest};
    use tenure_vmm::{Console, Decision, Halt, Layout, Vmm, VmmError};

    /// The protected procedure calls to mm.
    const MM: Channel = Channel::new(0);
    /// Notifications to the serial PD.
    const SERIAL: Channel = Channel::new(1);
    /// The VMM after which this one starts its guest, if any.
    const PREVIOUS: Channel = Channel::new(3);
    /// The VMM to hand the TAP stream on to, if any.
    const NEXT: Channel = Channel::new(2);
    /// The parent that closes the stream after this VMM's fault, if any:
    /// the VMM reads a page it donated to the guest.
    const MONITOR: Channel = Channel::new(4);
    /// As MONITOR, but the VMM reads the page the guest unshared last.
    const MONITOR_UNSHARED: Channel = Channel::new(5);
    /// The PD that closes a stream of VMMs running side by side, if any:
    /// the VMM prints nothing on the kernel's console (its guest's TAP and
    /// its own checks go to its labelled console), and when its guest
    /// stops it leaves its counts in the relay page and notifies this.
    const COLLECTOR: Channel = Channel::new(6);

    /// Whether system.xml gives this PD channel `channel` to notify.
    fn has(channel: Channel) -> bool {
        ChannelSet::from_badge(*__tenure_notifications.get()).contains(channel)
    }

    /// The kernel's console, unlabelled: where a suite's runner reads TAP.
    struct KernelConsole;

    impl Write for KernelConsole {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            microkit::sys::debug_print(format_args!("{s}"));
            Ok(())
        }
    }

    /// The guest's console and the VMM's own lines: the serial PD,
    /// labelled, but for a test guest's TAP (unless `quiet`).
    struct GuestConsole {
        region: &'static Region,
        selftest: SelfTest,
        /// A COLLECTOR closes the stream: everything stays labelled.
        quiet: bool,
    }

    impl GuestConsole {
        fn writer(&self) -> Writer<'static, impl FnMut()> {
            Writer::new(self.region, || SERIAL.notify())
        }

        /// One line of the VMM's own.
        fn say(&self, args: fmt::Arguments<'_>) {
            let mut w = self.writer();
            let _ = w.write_fmt(args);
            let _ = w.write_str("\n");
        }
    }

    impl Console for GuestConsole {
        fn write(&mut self, bytes: &[u8]) {
            // The guest ends its lines with "\r\n"; the runners and
            // `grep '^BENCH '` read them as the PDs print theirs.
            let tap = |bytes: &[u8]| {
                let text = core::str::from_utf8(bytes).unwrap_or("?");
                let _ = writeln!(KernelConsole, "{}", text.trim_end_matches(['\r', '\n']));
            };
            let route = self.selftest.route(bytes);
            if self.quiet {
                // Counted, but said only where the guest's label shows.
                if route != Route::Withheld {
                    self.writer().write_bytes(bytes);
                }
                return;
            }
            match route {
                Route::Console => self.writer().write_bytes(bytes),
                Route::Tap => tap(bytes),
                Route::Result { ok, number, rest } => {
                    let not = if ok { "" } else { "not " };
                    let _ = writeln!(KernelConsole, "{not}ok {number}{rest}");
                }
                Route::Plan(n) => {
                    let _ = writeln!(KernelConsole, "1..{n}");
                }
                Route::BenchDone => {
                    let _ = self.selftest.bench_done(&mut KernelConsole);
                }
                Route::Withheld => {}
            }
        }
    }

    /// The guest's files, as the tool prefilled them.
    struct Files {
        image: &'static [u8],
        dtb: &'static [u8],
        /// The device tree of boots after a reset; empty: `dtb`.
        reset_dtb: &'static [u8],
    }

    fn files() -> Files {
        let region = |addr: usize, len: usize| -> &'static [u8] {
            if addr == 0 {
                return &[];
            }
            // SAFETY: system.xml maps the region read-only at `addr` for
            // the PD's life, prefilled with a file of `len` bytes (the
            // tool patches both); nothing writes it.
            unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
        };
        Files {
            image: region(*var!(guest_image: usize = 0), *var!(guest_image_size: usize = 0)),
            dtb: region(*var!(guest_dtb: usize = 0), *var!(guest_dtb_size: usize = 0)),
            reset_dtb: region(
                *var!(guest_reset_dtb: usize = 0),
                *var!(guest_reset_dtb_size: usize = 0),
            ),
        }
    }

    /// Copies `bytes` (at most a page) to `window`, a page of the VMM's
    /// window that mm has just populated.
    fn write_window(window: u64, bytes: &[u8]) {
        // SAFETY: mm mapped the page at `window` read-write for this PD
        // (its Populate succeeded), and nothing else of the PD uses the
        // window; `bytes` is at most a page and lies in a prefilled region.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), window as *mut u8, bytes.len()) };
    }

    /// Reads the first word of a page of the VMM's window that mm reports
    /// borrowed (shared) from the guest.
    fn read_window(window: u64) -> u64 {
        // SAFETY: mm's Query said the page at `window` is shared with this
        // PD, read-write; the address is page aligned.
        unsafe { core::ptr::read_volatile(window as *const u64) }
    }

    /// The system counter (CNTPCT_EL0, which PDs may read) and its
    /// frequency (CNTFRQ_EL0).
    fn counter() -> (u64, u64) {
        let (count, hz): (u64, u64);
        // SAFETY: reading the counter registers has no effects; the kernel
        // lets EL0 read them (CNTKCTL_EL1). Not `nomem`: the read stays
        // where it is among the work it times.
        unsafe {
            core::arch::asm!(
                "mrs {c}, cntpct_el0",
                "mrs {f}, cntfrq_el0",
                c = out(reg) count,
                f = out(reg) hz,
                options(nostack, preserves_flags),
            )
        };
        (count, hz)
    }

    /// The relay page, if system.xml maps one.
    fn relay_page() -> Option<*mut [u64; Relay::WORDS]> {
        let addr = *var!(tap_relay: usize = 0);
        (addr != 0).then_some(addr as *mut [u64; Relay::WORDS])
    }

    fn read_relay(page: *mut [u64; Relay::WORDS]) -> Relay {
        // SAFETY: system.xml maps the relay page read-write at `tap_relay`
        // (the contract in the module docs); the PD that wrote it has
        // notified this one and writes it no more; the words are aligned.
        Relay::decode(&unsafe { core::ptr::read_volatile(page) })
    }

    fn write_relay(page: *mut [u64; Relay::WORDS], relay: &Relay) {
        // SAFETY: as in `read_relay`; the next PD reads it only after this
        // PD notifies it or faults.
        unsafe { core::ptr::write_volatile(page, relay.encode()) };
    }

    struct VmmPd {
        /// `None` if the guest could not be started.
        vmm: Option<Vmm>,
        /// The system counter when `init` began.
        init_count: u64,
        /// The guest's kernel's first page, for the monitor's probe.
        kernel: u64,
        vcpu: Vcpu,
        mm: Channel,
        console: GuestConsole,
        files: Files,
    }

    fn init() -> VmmPd {
        let init_count = counter().0;
        // SAFETY: system.xml maps this PD's serial client region at
        // `serial_region` (the contract in the module docs).
        let region = unsafe { region_at(*var!(serial_region: usize = 0)) };
        region.set_name(microkit::symbols::pd_name());
        let vcpu = Vcpu::new(*var!(guest_vcpu: usize = 0));
        let files = files();
        let expect_reset = !files.reset_dtb.is_empty();
        let selftest = if relay_page().is_some() || expect_reset || has(COLLECTOR) {
            SelfTest::deferred(Relay::default(), expect_reset)
        } else {
            SelfTest::new()
        };
        let mut pd = VmmPd {
            vmm: None,
            init_count,
            kernel: 0,
            vcpu,
            mm: MM,
            console: GuestConsole { region, selftest, quiet: has(COLLECTOR) },
            files,
        };
        if !has(PREVIOUS) {
            pd.begin();
        }
        pd
    }

    /// Why the guest did not start.
    enum StartError {
        Fdt(fdt::FdtError),
        Layout(tenure_vmm::LayoutError),
        Boot(BootError),
        Vcpu(tenure_abi::Error),
        /// system.xml gives this PD no `virtual_machine`.
        NoGuest,
    }

    impl fmt::Display for StartError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                StartError::Fdt(e) => f.write_str(e.describe()),
                StartError::Layout(e) => write!(f, "the device tree's layout is unusable: {e:?}"),
                StartError::Boot(e) => write!(f, "{e}"),
                StartError::Vcpu(e) => write!(f, "the kernel refused the vCPU: {e:?}"),
                StartError::NoGuest => f.write_str("this PD has no virtual_machine in system.xml"),
            }
        }
    }

    impl VmmPd {
        fn begin(&mut self) {
            match self.start() {
                Ok(vmm) => self.vmm = Some(vmm),
                Err(why) => self.console.say(format_args!("cannot start the guest: {why}")),
            }
        }

        /// The guest's layout as its device tree gives it, under the guest
        /// id the tool patched in.
        fn layout(&self) -> Result<Layout, StartError> {
            let machine = fdt::machine(self.files.dtb).map_err(StartError::Fdt)?;
            // The GIC CPU interface: mm maps it on the guest's first
            // access if system.xml passes a device through there, and
            // refuses (the guest gets an abort) if not.
            let mut passthrough = [None; tenure_vmm::layout::MAX_PASSTHROUGH];
            passthrough[0] = machine.gic_cpu;
            let layout = Layout {
                guest: guest_id().and_then(GuestId::new).ok_or(StartError::NoGuest)?,
                ram: machine.ram,
                pl011: machine.pl011,
                gic_distributor: machine.gic_distributor,
                passthrough,
                window: WINDOW_IPA,
            };
            layout.check().map_err(StartError::Layout)?;
            Ok(layout)
        }

        fn start(&mut self) -> Result<Vmm, StartError> {
            let (begun, _) = counter();
            let layout = self.layout()?;
            let (image, dtb) = (self.files.image, self.files.dtb);
            let plan = boot::boot(&mut self.mm, &layout, image, dtb, write_window)
                .map_err(StartError::Boot)?;
            let (loaded, frequency) = counter();
            let load = LoadTimes { init: self.init_count, begun, loaded, frequency };
            self.console.selftest.loaded(load);
            let vmm = Vmm::new(layout).map_err(StartError::Layout)?;
            if *var!(gicv_paddr: usize = 0) != 0 {
                // Before the guest runs: the device must not be mapped yet.
                self.console.selftest.expect_device(&layout, &mut self.mm);
            }
            self.kernel = plan.kernel;
            self.run(&plan)?;
            self.console.say(format_args!(
                "guest loaded: kernel at {:#x}..{:#x}, device tree at {:#x}",
                plan.kernel, plan.kernel_end, plan.dtb
            ));
            Ok(vmm)
        }

        /// Sets the boot registers and starts the vCPU.
        fn run(&mut self, plan: &tenure_vmm::loader::LoadPlan) -> Result<(), StartError> {
            plan.boot.apply(&mut self.vcpu).map_err(StartError::Vcpu)?;
            self.vcpu.restart(plan.boot.pc).map_err(StartError::Vcpu)
        }

        /// The guest stopped for good: the checks of a test guest, then the
        /// sentinel, or the stream handed on (NEXT, MONITOR).
        fn finish(&mut self) {
            let Some(vmm) = &self.vmm else { return };
            let layout = *vmm.layout();
            let page = relay_page();
            if has(COLLECTOR) {
                let mut out = Writer::new(self.console.region, || SERIAL.notify());
                let finished = self.console.selftest.finish(
                    &layout,
                    &mut self.mm,
                    read_window,
                    false,
                    &mut out,
                );
                if let (Ok(relay), Some(page)) = (finished, page) {
                    write_relay(page, &relay);
                }
                COLLECTOR.notify();
                return;
            }
            let monitor = [MONITOR_UNSHARED, MONITOR].into_iter().find(|&c| has(c));
            let hand_on = page.is_some() && (has(NEXT) || monitor.is_some());
            let Ok(mut relay) = self.console.selftest.finish(
                &layout,
                &mut self.mm,
                read_window,
                !hand_on,
                &mut KernelConsole,
            ) else {
                return;
            };
            let Some(page) = page.filter(|_| hand_on) else { return };
            if has(NEXT) {
                write_relay(page, &relay);
                NEXT.notify();
                return;
            }
            let Some(monitor) = monitor else { return };
            // MONITOR: the guest's first kernel page, donated to it, through
            // the window where the VMM wrote it before the donation.
            // MONITOR_UNSHARED: the page the guest shared and unshared last.
            let (page_ipa, what) = if monitor == MONITOR_UNSHARED {
                (self.console.selftest.unshared(), "unshared")
            } else {
                (Some(self.kernel), "donated")
            };
            let window = page_ipa.and_then(|ipa| Some((ipa, layout.window_of(ipa)?)));
            let Some((ipa, probe)) = window else {
                let _ = writeln!(
                    KernelConsole,
                    "not ok {} - vmm: no {what} guest page to read through the window \
                     (guest page {page_ipa:#x?})\n1..{}\nTEST_FAIL",
                    relay.printed + 1,
                    relay.planned + 1
                );
                return;
            };
            relay.probe = probe;
            write_relay(page, &relay);
            monitor.notify();
            let _ = writeln!(
                KernelConsole,
                "# vmm: reading {what} guest page {ipa:#x} through the window at {probe:#x}"
            );
            // SAFETY: not sound on purpose: mm took the page out of this
            // PD's window when it donated it or when the guest unshared
            // it, so the read faults and the kernel stops this PD there;
            // the parent reports the fault.
            let word = unsafe { core::ptr::read_volatile(probe as *const u64) };
            let _ = writeln!(
                KernelConsole,
                "not ok {} - vmm: the {what} guest page is out of the VMM's reach: {probe:#x} \
                 read {word:#x}\n1..{}\nTEST_FAIL",
                relay.printed + 1,
                relay.planned + 1
            );
        }

        fn stopped(&mut self, why: VmmError) {
            self.console.say(format_args!("the guest stays stopped: {why:?}"));
            self.finish();
        }

        fn halt(&mut self, halt: Halt) -> Option<MessageInfo> {
            match halt {
                Halt::PowerOff => self.console.say(format_args!("guest powered off")),
                Halt::CpuOff => self.console.say(format_args!("guest powered off (CPU_OFF)")),
                Halt::Reset => {
                    let layout = *self.vmm.as_ref()?.layout();
                    let image = self.files.image;
                    let dtb = match self.files.reset_dtb {
                        [] => self.files.dtb,
                        reset => reset,
                    };
                    let result = boot::teardown(&mut self.mm, &layout)
                        .and_then(|()| {
                            // Torn down, before anything is loaded again.
                            self.console.selftest.reset(&layout, &mut self.mm);
                            boot::boot(&mut self.mm, &layout, image, dtb, write_window)
                        })
                        .map_err(StartError::Boot)
                        .and_then(|plan| {
                            self.kernel = plan.kernel;
                            self.run(&plan)
                        });
                    match result {
                        Ok(()) => {
                            self.console.say(format_args!("guest reset"));
                            if let Some(vmm) = &mut self.vmm {
                                vmm.reset(&mut self.console);
                            }
                        }
                        Err(why) => {
                            self.console.say(format_args!("cannot reset the guest: {why}"));
                            self.finish();
                        }
                    }
                    // Restarted (or not): the fault is not replied to.
                    return None;
                }
            }
            self.finish();
            None
        }
    }

    impl Handler for VmmPd {
        type Error = core::convert::Infallible;

        fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
            if !channels.contains(PREVIOUS) || self.vmm.is_some() || !has(PREVIOUS) {
                return Ok(());
            }
            let Some(page) = relay_page() else {
                self.console
                    .say(format_args!("PREVIOUS notified, but no relay page: not starting"));
                return Ok(());
            };
            let before = read_relay(page);
            let expect_reset = !self.files.reset_dtb.is_empty();
            self.console.selftest = SelfTest::deferred(before, expect_reset);
            // Before this VMM loads anything into its window.
            if let Ok(layout) = self.layout() {
                self.console.selftest.foreign(&layout, &mut self.mm);
            }
            self.begin();
            Ok(())
        }

        fn fault(
            &mut self,
            child: Child,
            msg_info: MessageInfo,
        ) -> Result<Option<MessageInfo>, Self::Error> {
            let Some(vmm) = &mut self.vmm else { return Ok(None) };
            if child.index() != self.vcpu.index() {
                self.console.say(format_args!("fault of unknown child {}", child.index()));
                return Ok(None);
            }
            let mrs = [get_mr(0), get_mr(1), get_mr(2), get_mr(3)];
            let event = match exit::decode(msg_info.label(), mrs, &mut self.vcpu) {
                Ok(event) => event,
                Err(why) => {
                    self.stopped(why);
                    return Ok(None);
                }
            };
            let decision = vmm.handle(event, &mut self.vcpu, &mut self.mm, &mut self.console);
            match decision {
                Ok(Decision::Halt(halt)) => Ok(self.halt(halt)),
                Ok(decision) => {
                    self.console.selftest.observe(&event, &decision, vmm.layout(), &mut self.mm);
                    Ok(Some(MessageInfo::default()))
                }
                Err(why) => {
                    vmm.flush_console(&mut self.console);
                    self.stopped(why);
                    Ok(None)
                }
            }
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("vmm is a protection domain: build it for aarch64-unknown-none");
}
