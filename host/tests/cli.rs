//! The `wharf` binary's command line. (Besides what it checks, this test
//! makes `cargo test` build the binary, which the process-level tests in
//! `tests/` drive with real signals.)

use std::process::Command;

#[test]
fn help_lists_the_commands() {
    let output = Command::new(env!("CARGO_BIN_EXE_wharf")).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("up") && help.contains("check"), "{help}");
}

#[test]
fn check_names_a_missing_manifest() {
    let output = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["check", "--manifest", "/nonexistent/wharf.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot read manifest /nonexistent/wharf.toml"), "{stderr}");
}
