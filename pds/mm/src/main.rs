//! The memory-manager PD: serves the mm protocol (`docs/mm-protocol.md`)
//! from its `protected` entry with the `tenure_mm` core.
//!
//! Its system.xml contract: `<guest_memory mr="POOL"/>` names its pool,
//! which it maps read-write and cached; each client calls it on a channel
//! of its own; it holds the stage-2 control capability. Everything else
//! it learns from `__tenure_mm_config`, which the tool patches
//! (`tenure_abi::mm_config`).
//!
//! At start it decodes the configuration (a bad one is reported and the
//! PD stops without serving), takes over the pool through its own
//! mapping of it, and creates every client's window table, whose level-2
//! table the kernel links into the client. A call's client is the one
//! whose channel it arrives on, never a word of the message; the reply is
//! the label and words `Manager::dispatch` returns.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod pd {
    use hyp_mm::{IpaRange, PhysAddr, VmId};
    use microkit::abi::MSG_REGS;
    use microkit::abi::mm::{GuestId, MmError};
    use microkit::abi::mm_config::WORDS;
    use microkit::abi::vcpu::{WINDOW_IPA, WINDOW_SIZE};
    use microkit::symbols::Patched;
    use microkit::{
        Channel, Handler, MessageInfo, debug_println, protection_domain, with_msg_regs,
        with_msg_regs_mut,
    };
    use tenure_mm::config::{ClientLink, MAX_CLIENTS};
    use tenure_mm::window::Window;
    use tenure_mm::{ClientId, Declared, Manager, PoolOps, Refused, Stage2Control};

    /// mm's configuration: the tool writes it here (`docs/guests.md`).
    #[unsafe(no_mangle)]
    #[used]
    static __tenure_mm_config: Patched<[u64; WORDS]> = Patched::new([0; WORDS]);

    /// The kernel's stage-2 control capability, as the core asks for it.
    /// Guest `g` is VM `g - 1`; a client is its PD's index.
    struct Kernel {
        cap: microkit::Stage2Control,
        clients: [Option<ClientLink>; MAX_CLIENTS],
    }

    impl Kernel {
        /// The VM index of guest `id` (ids start at 1).
        fn vm(id: GuestId) -> u64 {
            u64::from(id.get()) - 1
        }

        /// A maintenance call the kernel refused: mm's view of the tables
        /// and the hardware's may now differ, so it stops rather than
        /// serve on stale translations.
        fn must(what: &str, result: Result<(), microkit::abi::Error>) {
            if let Err(e) = result {
                panic!("the kernel refused {what} ({e:?}); stopping");
            }
        }
    }

    impl Stage2Control for Kernel {
        fn install(&mut self, guest: GuestId, vmid: VmId, root: PhysAddr) -> Result<(), Refused> {
            let result = self.cap.install(Self::vm(guest), root.raw(), vmid.0.into());
            result.map_err(|e| {
                debug_println!("mm: the kernel refused to install guest {}: {e:?}", guest.get());
                Refused
            })
        }

        fn uninstall(&mut self, guest: GuestId, _vmid: VmId) {
            Self::must("UNINSTALL", self.cap.uninstall(Self::vm(guest)));
        }

        fn link_window(
            &mut self,
            client: ClientId,
            _vmid: VmId,
            span: IpaRange,
            table: PhysAddr,
        ) -> Result<(), Refused> {
            // The kernel links a window at WINDOW_IPA only.
            if span.start().raw() != WINDOW_IPA || span.size() != WINDOW_SIZE {
                return Err(Refused);
            }
            let link = self.clients.get(usize::from(client.0)).copied().flatten().ok_or(Refused)?;
            self.cap.link_window(link.pd.into(), table.raw()).map_err(|e| {
                debug_println!("mm: the kernel refused to link PD {}'s window: {e:?}", link.pd);
                Refused
            })
        }

        fn invalidate_range(&mut self, vmid: VmId, range: IpaRange) {
            let (start, end) = (range.start().raw(), range.end().raw());
            Self::must("INVALIDATE_RANGE", self.cap.invalidate_range(vmid.0.into(), start, end));
        }

        fn invalidate_vmid(&mut self, vmid: VmId) {
            Self::must("INVALIDATE_VMID", self.cap.invalidate_vmid(vmid.0.into()));
        }

        fn clean_to_poc(&mut self, pa: PhysAddr, bytes: u64) {
            Self::must("CLEAN_TO_POC", self.cap.clean_to_poc(pa.raw(), bytes));
        }
    }

    struct Mm {
        manager: Manager<PoolOps<Window>, Kernel>,
        declared: Declared,
    }

    fn init() -> Mm {
        let declared = match Declared::decode(__tenure_mm_config.get()) {
            Ok(d) => d,
            Err(e) => {
                debug_println!("mm: bad configuration ({e:?}); not serving");
                panic!("no configuration");
            }
        };
        let layout = &declared.layout;
        let offset = declared.pool_vaddr.wrapping_sub(layout.roots().raw());
        // SAFETY: system.xml maps the whole pool read-write and cached at
        // `pool_vaddr` in this PD (the tool checks it and patched that
        // address), nothing else here touches that range, and this is the
        // only window onto it.
        let window = unsafe { Window::new(offset, layout) };
        let kernel = Kernel { cap: microkit::Stage2Control, clients: declared.clients };
        match Manager::new(PoolOps::new(window, layout), kernel, layout, declared.config) {
            Ok(manager) => Mm { manager, declared },
            Err(e) => {
                debug_println!("mm: cannot start ({e:?}); not serving");
                panic!("no memory manager");
            }
        }
    }

    impl Handler for Mm {
        type Error = core::convert::Infallible;

        fn protected(
            &mut self,
            channel: Channel,
            msg_info: MessageInfo,
        ) -> Result<MessageInfo, Self::Error> {
            let Some(client) = self.declared.client_on(channel.index()) else {
                // Every pp end to mm is a client's; this cannot happen
                // with a configuration the tool wrote.
                return Ok(MessageInfo::new(MmError::UnknownRequest.raw(), 0).unwrap_or_default());
            };
            let words: [u64; MSG_REGS] = with_msg_regs(|mrs| *mrs);
            let count = msg_info.count().min(MSG_REGS);
            let reply = self.manager.dispatch(client, msg_info.label(), &words[..count]);
            with_msg_regs_mut(|mrs| mrs[..reply.len].copy_from_slice(reply.words()));
            Ok(MessageInfo::new(reply.label, reply.len).unwrap_or_default())
        }
    }

    protection_domain!(init);
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("mm is a protection domain: build it for aarch64-unknown-none");
}
