//! Builds the example and test components (`../components`) once per test
//! build, for `wasm32-wasip2` in release mode, and tells the tests where the
//! `.wasm` files are (`WHARF_COMPONENT_DIR`).
//!
//! The nested cargo runs with the outer build's environment cleaned, and
//! builds into `target/components` (set by `components/.cargo/config.toml`),
//! a directory of its own inside the one target dir, so the two never wait on
//! each other's lock.

use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let components = root.join("components");
    println!("cargo:rerun-if-changed={}", components.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    ensure_target();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--release", "--target", TARGET]).current_dir(&components);
    for (key, _) in std::env::vars() {
        let inherited_from_outer_build = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTFLAGS")
            || key == "TARGET"
            || key == "HOST"
            || key == "OPT_LEVEL"
            || key == "PROFILE"
            || key == "DEBUG"
            || key == "OUT_DIR"
            || key == "NUM_JOBS";
        if inherited_from_outer_build {
            command.env_remove(key);
        }
    }
    let status = command.status().expect("run cargo to build the components");
    assert!(status.success(), "building the components failed: see the output above");

    let out = root.join("target/components").join(TARGET).join("release");
    let out = out.canonicalize().unwrap_or(out);
    println!("cargo:rustc-env=WHARF_COMPONENT_DIR={}", out.display());
}

/// Installs the wasm target with rustup if it is missing, and says so.
fn ensure_target() {
    let Ok(output) = Command::new("rustup").args(["target", "list", "--installed"]).output() else {
        return;
    };
    if String::from_utf8_lossy(&output.stdout).lines().any(|l| l.trim() == TARGET) {
        return;
    }
    println!("cargo:warning=installing the missing Rust target: rustup target add {TARGET}");
    let status = Command::new("rustup").args(["target", "add", TARGET]).status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "the {TARGET} target is missing; run `rustup target add {TARGET}`"
    );
}
