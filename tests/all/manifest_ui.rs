//! Golden files for invalid manifests: each `tests/ui/invalid/NAME.toml`
//! must fail to load with the message in `NAME.err` (`$DIR` stands for the
//! directory the manifest was copied to; `WHARF_BLESS=1` rewrites them). Fixture components are written
//! from `tests/ui/fixtures/*.wat` beside the manifest first.

use std::path::{Path, PathBuf};

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// Writes every fixture into `dir`: `NAME.wasm` from `NAME.wat`, plus a
/// text file that is not wasm, a core module and the real hello component.
fn write_fixtures(dir: &Path) {
    for entry in std::fs::read_dir(ui_dir().join("fixtures")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wat") {
            let binary = wat::parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            std::fs::write(dir.join(path.with_extension("wasm").file_name().unwrap()), binary).unwrap();
        }
    }
    std::fs::write(dir.join("not-wasm.wasm"), "this is not WebAssembly").unwrap();
    std::fs::copy(crate::harness::component("hello"), dir.join("hello.wasm")).unwrap();
}

#[test]
fn invalid_manifests_fail_with_their_golden_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_fixtures(dir.path());
    let mut checked = 0;
    let mut entries: Vec<_> =
        std::fs::read_dir(ui_dir().join("invalid")).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    let mut failures = Vec::new();
    for toml in entries.iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
        let copy = dir.path().join(toml.file_name().unwrap());
        std::fs::copy(toml, &copy).unwrap();
        let error = match wharf::manifest::Manifest::load(&copy, true).and_then(|m| {
            wharf::App::load(
                &m,
                &wharf::LoadOptions {
                    pooling: false,
                    compile_cache: false,
                    watch: false,
                    ..Default::default()
                },
            )
            .map(drop)
        }) {
            Ok(()) => "<loaded without error>".to_string(),
            Err(error) => format!("{error:#}"),
        };
        let actual = error.replace(&dir.path().display().to_string(), "$DIR");
        if std::env::var_os("WHARF_BLESS").is_some() {
            std::fs::write(toml.with_extension("err"), format!("{}\n", actual.trim())).unwrap();
        }
        let expected = std::fs::read_to_string(toml.with_extension("err"))
            .unwrap_or_else(|_| panic!("{} has no .err file (WHARF_BLESS=1 writes it)", toml.display()));
        if actual.trim() != expected.trim() {
            failures.push(format!(
                "{}:\n  expected: {}\n  actual:   {}",
                toml.display(),
                expected.trim(),
                actual.trim()
            ));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "golden mismatches:\n{}", failures.join("\n"));
    assert!(checked >= 8, "only {checked} golden manifests found");
}
