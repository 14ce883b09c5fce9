//! Shared build script of every PD crate: link with pds/pd.ld when
//! building for the target.
fn main() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("pd.ld").exists() && dir.ends_with("pds"))
        .map(|dir| dir.join("pd.ld"))
        .expect("PD crates live under pds/");
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
}
