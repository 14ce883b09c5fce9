//! Links the kernel with `link.ld` when it is built for the target; host
//! builds (tests, clippy) link as ordinary programs.

fn main() {
    println!("cargo::rerun-if-changed=link.ld");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    // A static position-independent executable linked at 0: the tool
    // applies its R_AARCH64_RELATIVE relocations for the board's load
    // address when it packs the image (docs/decisions/0003).
    println!("cargo::rustc-link-arg-bins=-T{dir}/link.ld");
    println!("cargo::rustc-link-arg-bins=-pie");
    println!("cargo::rustc-link-arg-bins=--no-dynamic-linker");
    println!("cargo::rustc-link-arg-bins=-znotext");
    // Segments are page aligned (W^X, decision 0008); 4 KiB pages keep the
    // file from padding each one to 64 KiB.
    println!("cargo::rustc-link-arg-bins=-zmax-page-size=4096");
}
