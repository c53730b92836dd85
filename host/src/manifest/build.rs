//! Runs components' build commands for `wharf up --build` and `wharf check
//! --build`, like `spin up --build`.
//!
//! If a command builds for a Rust target that is not installed (typically
//! `wasm32-wasip2`) and `rustup` is available, the target is installed first
//! and the user is told so.

use crate::manifest::Manifest;
use anyhow::{Context, Result, bail};
use std::process::Command;

/// Runs every component's build command, in manifest order.
pub fn build_components(manifest: &Manifest) -> Result<()> {
    for component in manifest.components.values() {
        let Some(build) = &component.build else { continue };
        for command in &build.commands {
            ensure_rust_target(command)?;
            tracing::info!(component = %component.name, %command, workdir = %build.workdir.display(), "building");
            let status =
                Command::new("sh").arg("-c").arg(command).current_dir(&build.workdir).status().with_context(
                    || format!("component {:?}: cannot run build command {command:?}", component.name),
                )?;
            if !status.success() {
                bail!("component {:?}: build command {command:?} failed ({status})", component.name);
            }
        }
        if !component.source.is_file() {
            bail!(
                "component {:?}: build succeeded but {} does not exist; check `source`",
                component.name,
                component.source.display()
            );
        }
    }
    Ok(())
}

fn ensure_rust_target(command: &str) -> Result<()> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let Some(target) = words
        .windows(2)
        .find(|pair| pair[0] == "--target")
        .map(|pair| pair[1])
        .or_else(|| words.iter().find_map(|w| w.strip_prefix("--target=")))
    else {
        return Ok(());
    };
    let Ok(installed) = Command::new("rustup").args(["target", "list", "--installed"]).output() else {
        return Ok(()); // no rustup: let cargo report what is missing
    };
    if String::from_utf8_lossy(&installed.stdout).lines().any(|line| line.trim() == target) {
        return Ok(());
    }
    tracing::warn!(%target, "Rust target not installed; running `rustup target add {target}`");
    let status = Command::new("rustup").args(["target", "add", target]).status()?;
    if !status.success() {
        bail!("the Rust target {target} is missing and `rustup target add {target}` failed; run it by hand");
    }
    Ok(())
}
