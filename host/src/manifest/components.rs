//! Components as the runtime loads them: where the code is, what it may
//! reach (stores, databases, hosts, files), what it is given (config,
//! environment) and what one instance may use. Both formats resolve into
//! [`ComponentSpec`]; the per-instance limits are written the same way in
//! both (`wharf.toml`'s `[component.NAME]`, also beside a `spin.toml`).

use super::allow_list::AllowList;
use super::settings::ServerSettings;
use anyhow::{Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

const DEFAULT_TABLE_ELEMENTS: usize = 20_000;
const DEFAULT_MAX_RESOURCES: usize = 10_000;

/// One component of the app.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component's name (its id in the manifest).
    pub name: String,
    /// Path of the `.wasm` file, resolved against the manifest directory.
    pub source: PathBuf,
    /// How to build it, for `wharf up --build`.
    pub build: Option<BuildSpec>,
    /// Values served through `wasi:config/store` (and, for a Spin app, its
    /// resolved component variables through Spin's variables interfaces).
    pub config: BTreeMap<String, String>,
    /// Environment variables its instances see.
    pub environment: BTreeMap<String, String>,
    /// Host directories its instances see, read-only.
    pub files: Vec<FileMount>,
    /// Key-value stores the component may open; any other is denied.
    pub key_value_stores: Vec<String>,
    /// SQLite databases the component may open; any other is denied.
    pub sqlite_databases: Vec<String>,
    /// What one instance may use.
    pub limits: InstanceLimits,
    /// Hosts its outgoing requests and sockets may reach (default: none).
    pub allowed_outbound_hosts: AllowList,
}

/// A host directory a component sees, read-only, at `guest` (Spin's
/// `files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it (`/` for Spin's file patterns).
    pub guest: String,
}

/// Per-instance limits; exceeding one traps the instance (500), never the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Largest linear memory, in bytes. Default: the server's
    /// `max_instance_memory_mb` (64 MiB), which is also the ceiling.
    pub max_memory: u64,
    /// Most elements one table may grow to. Default 20,000.
    pub max_table_elements: usize,
    /// Fuel (roughly, wasm instructions) one request may burn; unset means
    /// unmetered. Setting it on any component turns fuel metering on for the
    /// whole engine, which costs guests some speed.
    pub fuel: Option<u64>,
    /// Outgoing requests and socket connections one instance may make in
    /// all, and its whole request tree. Default 64.
    pub max_outbound_requests: u32,
    /// Outgoing HTTP requests one instance may have in flight at once (more
    /// wait their turn). Default 16.
    pub max_concurrent_outbound_requests: u32,
    /// Host memory one instance may make the host hold (headers, buffered
    /// bodies, resources...), in bytes. Default: `max_memory`.
    pub max_host_memory: u64,
    /// Resources (fields, bodies, pollables, streams...) one instance may
    /// hold at once. Default 10,000.
    pub max_resources: usize,
}

/// A component's build commands.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// Shell commands, run in order with `sh -c`.
    pub commands: Vec<String>,
    /// Directory to run them in, resolved against the manifest directory.
    pub workdir: PathBuf,
}

/// The per-instance limits as either format writes them (`wharf.toml`'s
/// `[component.NAME]`; for a Spin app, the same table in `wharf.toml`).
#[derive(Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_memory_mb: Option<u64>,
    pub(super) max_table_elements: Option<usize>,
    pub(super) fuel: Option<u64>,
    pub(super) max_outbound_requests: Option<u32>,
    pub(super) max_concurrent_outbound_requests: Option<u32>,
    pub(super) max_host_memory_mb: Option<u64>,
    pub(super) max_resources: Option<usize>,
}

impl RawLimits {
    /// The limits, with the server's defaults.
    pub(super) fn validate(&self, server: &ServerSettings) -> Result<InstanceLimits> {
        let max_memory = match self.max_memory_mb {
            None => server.max_instance_memory,
            Some(mb) if mb >= 1 && mb << 20 <= server.max_instance_memory => mb << 20,
            Some(mb) => bail!(
                "max_memory_mb must be between 1 and server.max_instance_memory_mb ({}), not {mb}",
                server.max_instance_memory >> 20
            ),
        };
        if self.fuel == Some(0) {
            bail!("fuel must be at least 1 (leave it out for unmetered)");
        }
        Ok(InstanceLimits {
            max_memory,
            max_table_elements: self.max_table_elements.unwrap_or(DEFAULT_TABLE_ELEMENTS),
            fuel: self.fuel,
            max_outbound_requests: self.max_outbound_requests.unwrap_or(64),
            max_concurrent_outbound_requests: match self.max_concurrent_outbound_requests {
                Some(0) => bail!("max_concurrent_outbound_requests must be at least 1"),
                Some(n) => n,
                None => 16,
            },
            max_host_memory: match self.max_host_memory_mb {
                None => max_memory,
                Some(mb) if (1..=65_536).contains(&mb) => mb << 20,
                Some(mb) => bail!("max_host_memory_mb must be between 1 and 65536, not {mb}"),
            },
            max_resources: match self.max_resources {
                Some(0) => bail!("max_resources must be at least 1"),
                Some(n) => n,
                None => DEFAULT_MAX_RESOURCES,
            },
        })
    }
}

/// Checks a component's name: letters, digits, `-` and `_`.
pub(super) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bail!("name must be non-empty and use only letters, digits, '-' and '_'");
    }
    Ok(())
}

/// Checks that the `.wasm` file exists (unless it is yet to be built).
pub(super) fn check_source(source: &std::path::Path, buildable: bool, require: bool) -> Result<()> {
    if require && !source.is_file() {
        let hint = if buildable { " (run with --build to build it)" } else { "" };
        bail!("source file {} does not exist{hint}", source.display());
    }
    Ok(())
}

/// Checks store or database labels: none empty.
pub(super) fn check_labels(field: &str, labels: &[String]) -> Result<()> {
    if labels.iter().any(String::is_empty) {
        bail!("{field}: a name must not be empty");
    }
    Ok(())
}
