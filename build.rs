//! Rebuilds the binary when the embedded web panel changes: `include_dir!` reads `vendor-ui/`
//! at compile time, but cargo only watches Rust sources unless told about other inputs.

fn main() {
    println!("cargo:rerun-if-changed=vendor-ui");
    // Naming any path turns off cargo's default "rerun on any package change", so the sources
    // and migrations (read by include_str!) are named too.
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=migrations");
}
