//! Putting a guest into its memory: mm makes the guest's table, the VMM
//! writes the kernel and device tree where [`loader::plan`] says, page by
//! page through its window, and donates each page to the guest.
//!
//! For each page of the kernel (`image_size` of it: the file, then
//! zeroes) and of the device tree: mm `Populate`s the page of the VMM's
//! window that [`Layout::window_of`] its IPA names (fresh, zeroed), the
//! VMM copies the file's bytes in, and mm `Donate`s it to the guest at
//! the IPA, read-write-execute. The VMM loses the page; mm cleans it to
//! the point of coherency on the way (the guest starts with its MMU and
//! caches off), so the VMM does no cache maintenance of its own. One page
//! per request: pages populated one at a time need not be physically
//! contiguous, which a multi-page Donate requires.

use crate::layout::Layout;
use crate::loader::{self, LoadError, LoadPlan};
use tenure_abi::mm::{
    Access, Direction, FaultAddr, MmError, PAGE_SIZE, PageRange, Reply, Request, Target, Transfer,
    WalkFlags,
};

use crate::memory::MmClient;

/// The step of loading that failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BootError {
    /// The image or device tree cannot be loaded.
    Plan(LoadError),
    /// mm refused to create the guest.
    CreateGuest(MmError),
    /// mm refused to tear the guest down for a reset.
    Teardown(MmError),
    /// mm refused a page of the window at this guest IPA.
    Populate(u64, MmError),
    /// mm refused to donate the page at this guest IPA.
    Donate(u64, MmError),
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootError::Plan(e) => f.write_str(e.describe()),
            BootError::CreateGuest(e) => write!(f, "mm refused to create the guest: {e:?}"),
            BootError::Teardown(e) => write!(f, "mm refused to tear the guest down: {e:?}"),
            BootError::Populate(ipa, e) => {
                write!(f, "mm refused a window page for guest IPA {ipa:#x}: {e:?}")
            }
            BootError::Donate(ipa, e) => {
                write!(f, "mm refused to donate the page at guest IPA {ipa:#x}: {e:?}")
            }
        }
    }
}

/// Creates the guest with mm and loads `image` and `dtb` into it;
/// `write(window_ipa, bytes)` copies at most a page into the VMM's
/// window. Returns the plan, whose [`LoadPlan::boot`] registers start it.
pub fn boot(
    mm: &mut impl MmClient,
    layout: &Layout,
    image: &[u8],
    dtb: &[u8],
    write: impl FnMut(u64, &[u8]),
) -> Result<LoadPlan, BootError> {
    let plan = loader::plan(image, dtb, layout.ram).map_err(BootError::Plan)?;
    match mm.call(Request::CreateGuest { guest: layout.guest }) {
        Ok(Reply::Done) => {}
        Ok(_) => return Err(BootError::CreateGuest(MmError::MalformedReply)),
        Err(e) => return Err(BootError::CreateGuest(e)),
    }
    load(mm, layout, &plan, image, dtb, write)?;
    Ok(plan)
}

/// Takes the guest apart (SYSTEM_RESET): mm stops it, takes back every
/// page it owns or lends (zeroed) and the ones it shares with the VMM.
pub fn teardown(mm: &mut impl MmClient, layout: &Layout) -> Result<(), BootError> {
    match mm.call(Request::Teardown { guest: layout.guest }) {
        Ok(Reply::TornDown { .. }) => Ok(()),
        Ok(_) => Err(BootError::Teardown(MmError::MalformedReply)),
        Err(e) => Err(BootError::Teardown(e)),
    }
}

/// [`teardown`], then [`boot`] afresh.
pub fn reboot(
    mm: &mut impl MmClient,
    layout: &Layout,
    image: &[u8],
    dtb: &[u8],
    write: impl FnMut(u64, &[u8]),
) -> Result<LoadPlan, BootError> {
    teardown(mm, layout)?;
    boot(mm, layout, image, dtb, write)
}

fn load(
    mm: &mut impl MmClient,
    layout: &Layout,
    plan: &LoadPlan,
    image: &[u8],
    dtb: &[u8],
    mut write: impl FnMut(u64, &[u8]),
) -> Result<(), BootError> {
    let dtb = dtb.get(..plan.dtb_len as usize).unwrap_or(dtb);
    for (start, end, file) in
        [(plan.kernel, plan.kernel_end, image), (plan.dtb, plan.dtb + plan.dtb_len, dtb)]
    {
        let mut ipa = start;
        while ipa < end {
            let window =
                layout.window_of(ipa).ok_or(BootError::Populate(ipa, MmError::NotDeclared))?;
            populate_window(mm, window).map_err(|e| BootError::Populate(ipa, e))?;
            let offset = (ipa - start) as usize;
            let bytes = file.get(offset..).unwrap_or(&[]);
            let bytes = &bytes[..bytes.len().min(PAGE_SIZE as usize)];
            if !bytes.is_empty() {
                write(window, bytes);
            }
            donate(mm, layout, window, ipa).map_err(|e| BootError::Donate(ipa, e))?;
            ipa += PAGE_SIZE;
        }
    }
    Ok(())
}

fn populate_window(mm: &mut impl MmClient, window: u64) -> Result<(), MmError> {
    let request = Request::Populate {
        target: Target::Caller,
        addr: FaultAddr::from_raw(window)?,
        flags: WalkFlags::NONE,
    };
    match mm.call(request)? {
        Reply::Mapped { pages: 1, .. } => Ok(()),
        _ => Err(MmError::MalformedReply),
    }
}

fn donate(mm: &mut impl MmClient, layout: &Layout, window: u64, ipa: u64) -> Result<(), MmError> {
    let transfer = Transfer {
        guest: layout.guest,
        direction: Direction::ToGuest,
        from: PageRange::new(window, 1)?,
        to: PageRange::new(ipa, 1)?,
    };
    match mm.call(Request::Donate { transfer, access: Access::RWX })? {
        Reply::Done => Ok(()),
        _ => Err(MmError::MalformedReply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests::virt;
    use crate::loader::{FDT_MAGIC, HEADER_LEN, IMAGE_MAGIC};
    use std::collections::BTreeMap;
    use tenure_abi::vcpu::WINDOW_IPA;

    /// mm as the loader sees it: window pages populated, then donated.
    #[derive(Default)]
    struct LoaderMm {
        requests: Vec<Request>,
        window: BTreeMap<u64, ()>,
        guest: BTreeMap<u64, u64>,
        refuse: Option<(u64, MmError)>,
    }

    impl MmClient for LoaderMm {
        fn call(&mut self, request: Request) -> tenure_abi::mm::Outcome {
            self.requests.push(request);
            if let Some((n, e)) = self.refuse
                && self.requests.len() as u64 == n
            {
                return Err(e);
            }
            match request {
                Request::CreateGuest { .. } => Ok(Reply::Done),
                Request::Teardown { .. } => Ok(Reply::TornDown { pages: 0, tables: 0 }),
                Request::Populate { target: Target::Caller, addr, .. } => {
                    self.window.insert(addr.page(), ());
                    Ok(Reply::Mapped { ipa: addr.page(), pages: 1 })
                }
                Request::Donate { transfer, access } => {
                    assert_eq!(access, Access::RWX);
                    assert_eq!(transfer.direction, Direction::ToGuest);
                    let w = transfer.from.start();
                    self.window.remove(&w).ok_or(MmError::NotMapped)?;
                    self.guest.insert(transfer.to.start(), w);
                    Ok(Reply::Done)
                }
                _ => Err(MmError::UnknownRequest),
            }
        }
    }

    fn image(len: usize, image_size: u64) -> Vec<u8> {
        let mut b: Vec<u8> = (0..len).map(|i| i as u8).collect();
        b[8..16].copy_from_slice(&0x8_0000u64.to_le_bytes());
        b[16..24].copy_from_slice(&image_size.to_le_bytes());
        b[24..32].copy_from_slice(&2u64.to_le_bytes());
        b[56..60].copy_from_slice(&IMAGE_MAGIC.to_le_bytes());
        assert!(len >= HEADER_LEN);
        b
    }

    fn dtb(total: u32) -> Vec<u8> {
        let mut b = vec![0xaa; total as usize + 100];
        b[..4].copy_from_slice(&FDT_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&total.to_be_bytes());
        b
    }

    #[test]
    fn every_page_is_populated_written_and_donated_at_its_ipa() {
        let (mut mm, l) = (LoaderMm::default(), virt());
        let img = image(0x2100, 0x4000);
        let mut written = Vec::new();
        let plan =
            boot(&mut mm, &l, &img, &dtb(0x1800), |w, b| written.push((w, b.to_vec()))).unwrap();
        assert_eq!(plan.kernel, 0x4008_0000);
        assert!(matches!(mm.requests[0], Request::CreateGuest { guest } if guest == l.guest));
        // Four kernel pages (three with file bytes), two DTB pages.
        let ipas: Vec<u64> = mm.guest.keys().copied().collect();
        assert_eq!(
            ipas,
            [0x4008_0000, 0x4008_1000, 0x4008_2000, 0x4008_3000, 0x4020_0000, 0x4020_1000]
        );
        for (ipa, w) in &mm.guest {
            assert_eq!(*w, WINDOW_IPA + (ipa - 0x4000_0000), "same offset in the window");
        }
        assert!(mm.window.is_empty(), "every window page was given away");
        assert_eq!(written.len(), 5);
        assert_eq!(written[0], (WINDOW_IPA + 0x8_0000, img[..0x1000].to_vec()));
        assert_eq!(written[2].1, img[0x2000..].to_vec(), "the file's tail");
        assert_eq!(written[4].1.len(), 0x800, "the DTB's totalsize, not the buffer");
    }

    #[test]
    fn a_refusal_names_its_step_and_page() {
        let l = virt();
        let (img, d) = (image(0x1000, 0x1000), dtb(0x100));
        let mut mm = LoaderMm { refuse: Some((1, MmError::KernelRefused)), ..LoaderMm::default() };
        assert_eq!(
            boot(&mut mm, &l, &img, &d, |_, _| {}),
            Err(BootError::CreateGuest(MmError::KernelRefused))
        );
        let mut mm = LoaderMm { refuse: Some((2, MmError::PoolExhausted)), ..LoaderMm::default() };
        assert_eq!(
            boot(&mut mm, &l, &img, &d, |_, _| {}),
            Err(BootError::Populate(0x4008_0000, MmError::PoolExhausted))
        );
        let mut mm = LoaderMm { refuse: Some((5, MmError::NotDeclared)), ..LoaderMm::default() };
        let e = boot(&mut mm, &l, &img, &d, |_, _| {}).unwrap_err();
        assert_eq!(e, BootError::Donate(0x4020_0000, MmError::NotDeclared));
        assert_eq!(
            e.to_string(),
            "mm refused to donate the page at guest IPA 0x40200000: NotDeclared"
        );
        let mut mm = LoaderMm::default();
        assert_eq!(
            boot(&mut mm, &l, &[0; 10], &d, |_, _| {}),
            Err(BootError::Plan(LoadError::TooShort))
        );
        assert!(mm.requests.is_empty(), "nothing asked of a bad image");
    }

    #[test]
    fn a_reboot_tears_down_first() {
        let (mut mm, l) = (LoaderMm::default(), virt());
        reboot(&mut mm, &l, &image(0x1000, 0x1000), &dtb(0x100), |_, _| {}).unwrap();
        assert!(matches!(mm.requests[0], Request::Teardown { .. }));
        assert!(matches!(mm.requests[1], Request::CreateGuest { .. }));
        let mut mm = LoaderMm { refuse: Some((1, MmError::NoSuchGuest)), ..LoaderMm::default() };
        assert_eq!(
            reboot(&mut mm, &l, &image(0x1000, 0x1000), &dtb(0x100), |_, _| {}),
            Err(BootError::Teardown(MmError::NoSuchGuest))
        );
    }
}
