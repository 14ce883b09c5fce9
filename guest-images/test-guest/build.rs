//! Links the guest with `link.ld` as a static position-independent
//! executable when it is built for the target; host builds (tests,
//! clippy) link as ordinary programs.

fn main() {
    println!("cargo::rerun-if-changed=link.ld");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    // Linked at 0; `_start` applies its own R_AARCH64_RELATIVE relocations
    // for wherever the boot loader put it (README.md, "Boot protocol").
    println!("cargo::rustc-link-arg-bins=-T{dir}/link.ld");
    println!("cargo::rustc-link-arg-bins=-pie");
    println!("cargo::rustc-link-arg-bins=--no-dynamic-linker");
    println!("cargo::rustc-link-arg-bins=-znotext");
}
