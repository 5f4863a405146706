//! Links the binary as a fixed-position (non-PIE) executable: a PIE's relocated read-only data
//! (~370 KB of vtables and static tables) is copied into private memory by the loader in every
//! process, and both of ours (the init shim and the supervisor) run this binary. Non-PIE, those
//! pages stay shared, clean and loaded only when used (BENCHMARKS.md, idle memory).
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
