//! The app manifest: what Wharf serves and how. Two file formats, each
//! parsed into raw types of its own ([`wharf`]: `wharf.toml`; [`spin`]:
//! Spin's `spin.toml`), resolve into the one [`Manifest`] the runtime
//! serves: server settings ([`settings`], shared by both), routes
//! ([`routes`]), components ([`components`]), and for a Spin app its
//! variables ([`variables`]). Outbound permissions are [`allow_list`]s.
//!
//! This module only parses and validates; it never compiles a component.
//! Every error names the file, the route or component and what was
//! expected, because a bad manifest is the first thing a new user meets.

pub mod allow_list;
pub mod build;
pub mod components;
pub mod routes;
pub mod settings;
pub mod spin;
pub mod traces;
pub mod variables;
mod wharf;

pub use allow_list::{AllowList, AllowedHost};
pub use components::{BuildSpec, ComponentSpec, FileMount, InstanceLimits};
pub use routes::{ReuseSpec, RoutePattern, RouteSpec, WorkerPoolSpec};
pub use settings::{
    AuthSpec, ClientSettings, ConnectionSettings, KeyValueBackendKind, KeyValueLimits, OnStoreError,
    OutboundSettings, RateLimitSpec, RateLimitStore, RequestBodySettings, ServerSettings, TlsFiles,
};
pub use variables::Variables;

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A validated manifest, with every path resolved against the manifest's
/// directory.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where the manifest was read from.
    pub path: PathBuf,
    /// Which format it came from.
    pub kind: AppKind,
    /// Server-wide settings.
    pub server: ServerSettings,
    /// Routes in the order they were written.
    pub routes: Vec<RouteSpec>,
    /// Components by name.
    pub components: BTreeMap<String, ComponentSpec>,
}

/// Which format an app came from, and what only that format has.
#[derive(Debug, Clone)]
pub enum AppKind {
    /// A `wharf.toml`.
    Wharf,
    /// A `spin.toml`: its components get Spin's request headers, and may
    /// chain to each other at `http://COMPONENT.spin.internal`.
    Spin(SpinApp),
}

/// What a Spin app has beyond routes and components.
#[derive(Debug, Clone)]
pub struct SpinApp {
    /// `[application] name`.
    pub name: String,
    /// `[application] version`.
    pub version: String,
    /// Its variables, resolved.
    pub variables: Variables,
}

/// What a manifest is given from outside it (the command line).
#[derive(Debug, Clone, Default)]
pub struct ManifestOptions {
    /// A Spin app's `--variable NAME=VALUE`s, in order (a later one wins).
    pub variables: Vec<(String, String)>,
    /// `--data-dir`: where the app's data lives, instead of `data_dir`.
    pub data_dir: Option<PathBuf>,
}

/// The manifest files `wharf up` looks for.
pub const WHARF_MANIFEST: &str = "wharf.toml";
/// Spin's manifest file.
pub const SPIN_MANIFEST: &str = "spin.toml";

impl Manifest {
    /// Whether some route reuses instances.
    pub fn reuses_instances(&self) -> bool {
        self.routes.iter().any(|r| r.reuse.is_some())
    }

    /// Whether any component asks for fuel metering.
    pub fn uses_fuel(&self) -> bool {
        self.components.values().any(|c| c.limits.fuel.is_some())
    }

    /// The Spin app, if the manifest is a `spin.toml`.
    pub fn spin_app(&self) -> Option<&SpinApp> {
        match &self.kind {
            AppKind::Spin(app) => Some(app),
            AppKind::Wharf => None,
        }
    }

    /// Reads and validates the manifest at `path`. Component files must exist
    /// unless `require_sources` is false (before `--build` has made them).
    pub fn load(path: &Path, require_sources: bool) -> Result<Self> {
        Self::load_with(path, require_sources, &ManifestOptions::default())
    }

    /// Like [`Self::load`], with what the command line adds
    /// (`--variable`s, `--data-dir`).
    pub fn load_with(path: &Path, require_sources: bool, options: &ManifestOptions) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        Self::parse_with(&text, path, require_sources, options)
            .with_context(|| format!("invalid manifest {}", path.display()))
    }

    /// Validates manifest `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path, require_sources: bool) -> Result<Self> {
        Self::parse_with(text, path, require_sources, &ManifestOptions::default())
    }

    fn parse_with(text: &str, path: &Path, require_sources: bool, options: &ManifestOptions) -> Result<Self> {
        if !is_spin_manifest(path, text) {
            if !options.variables.is_empty() {
                bail!("--variable is for Spin apps; a wharf.toml gives its components config instead");
            }
            return wharf::parse(text, path, require_sources, options);
        }
        // Wharf's settings for a Spin app may sit beside it.
        let beside = dir_of(path).join(WHARF_MANIFEST);
        let settings = match std::fs::read_to_string(&beside) {
            Ok(text) => Some((beside, text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", beside.display())),
        };
        let settings = settings.as_ref().map(|(file, text)| (file.as_path(), text.as_str()));
        spin::parse(text, path, require_sources, settings, options)
    }

    /// The manifest `wharf up` serves in `dir` when none is named: a
    /// `wharf.toml` with routes; else a `spin.toml` (with any `wharf.toml`
    /// as its settings).
    pub fn discover(dir: &Path) -> Result<PathBuf> {
        let wharf = dir.join(WHARF_MANIFEST);
        let spin = dir.join(SPIN_MANIFEST);
        let wharf_has_routes = std::fs::read_to_string(&wharf)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .is_some_and(|table| table.contains_key("route"));
        if wharf_has_routes || (wharf.is_file() && !spin.is_file()) {
            return Ok(wharf);
        }
        if spin.is_file() {
            return Ok(spin);
        }
        bail!(
            "no {WHARF_MANIFEST} or {SPIN_MANIFEST} in {}: name one with --manifest",
            if dir.as_os_str().is_empty() { Path::new(".") } else { dir }.display()
        )
    }
}

/// Whether `text` read from `path` is a Spin manifest: its name, or its
/// `spin_manifest_version`.
fn is_spin_manifest(path: &Path, text: &str) -> bool {
    path.file_name().is_some_and(|name| name == SPIN_MANIFEST)
        || text.lines().any(|line| line.trim_start().starts_with("spin_manifest_version"))
}

/// The directory paths in the manifest at `path` are relative to.
fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}
