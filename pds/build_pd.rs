//! Shared build script of every PD crate: link with pds/pd.ld when
//! building for the target. PD crates live under `pds/` or in a target
//! suite (`ci/systems/<suite>/pds/`); either way the script is found as
//! `pds/pd.ld` in the nearest ancestor that has it.
fn main() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .flat_map(|dir| [dir.join("pd.ld"), dir.join("pds/pd.ld")])
        .find(|path| path.exists() && path.parent().is_some_and(|d| d.ends_with("pds")))
        .expect("PD crates live under a directory that has pds/pd.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
}
