//! The kernel binary: the entry point on the target, nothing on the host.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    // The kernel only runs on aarch64-unknown-none; its pure logic is the
    // `tenure_kernel` library, tested on the host with `cargo test`.
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    tenure_kernel::arch::panic(info)
}
