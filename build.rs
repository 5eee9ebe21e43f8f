//! Builds `mc-mounter` (`mounter/main.rs`), the static helper the CPI puts into each
//! node's mounter image: one source file, std only, linked statically so the image needs
//! nothing else. It is built for the machine that builds the CPI (x86_64 Linux, like the
//! nodes) with the same rustc, whatever target the CPI itself is built for.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;

/// The helper's sources; their digest is its version, compiled into both programs.
const SOURCES: &[&str] = &[
    "mounter/main.rs",
    "src/disk_mounts.rs",
    "src/loop_device.rs",
    "src/image_copy.rs",
];

fn main() {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
        std::fs::read(source)
            .unwrap_or_else(|e| panic!("reading {source}: {e}"))
            .hash(&mut hasher);
    }
    let version = format!("{:016x}", hasher.finish());
    println!("cargo:rustc-env=MC_MOUNTER_VERSION={version}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let binary = out.join("mc-mounter");
    let status = Command::new(rustc)
        .args([
            "--edition=2024",
            "--crate-type=bin",
            "--crate-name=mc_mounter",
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&binary)
        .arg("mounter/main.rs")
        // The CPI's own flags (a target, a linker for it) are not the helper's.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("MC_MOUNTER_VERSION", &version)
        .status()
        .expect("cannot run rustc for mc-mounter");
    assert!(status.success(), "building mc-mounter failed ({status})");
}
