//! Any bytes as a boot image: `Image::parse` refuses them or returns an
//! image whose every accessor the kernel uses is total.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenure_boot_image::Image;

fuzz_target!(|data: &[u8]| {
    let Ok(image) = Image::parse(data) else { return };
    let _ = image.board().name();
    let _ = image.board().memory();
    let system = image.system();
    for pd in system.pds {
        let _ = pd.name();
        let caps = system.caps_of(pd);
        assert_eq!(caps.len(), pd.cap_count.get() as usize, "a parsed image's cap runs are in range");
    }
    for load in system.loads {
        assert_eq!(system.data_of(load).len() as u64, load.data_size.get(), "loads lie in the blob");
    }
});
