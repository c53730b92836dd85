//! The app manifest (`wharf.toml`): which component serves which route, with
//! what configuration and which key-value stores, plus server-wide settings.
//!
//! This module only parses and validates the file; it never compiles a
//! component. Every error names the manifest file, the route or component and
//! what was expected, because a bad manifest is the first thing a new user
//! meets.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated manifest, with every path resolved against the manifest's
/// directory.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where the manifest was read from.
    pub path: PathBuf,
    /// Server-wide settings.
    pub server: ServerSettings,
    /// Routes in the order they were written.
    pub routes: Vec<RouteSpec>,
    /// Components by name.
    pub components: BTreeMap<String, ComponentSpec>,
}

/// The `[server]` table.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address the public listener binds. Default `127.0.0.1:3000`.
    pub listen: SocketAddr,
    /// Directory for persistent state (the key-value database, caches).
    /// Default `.wharf` beside the manifest.
    pub data_dir: PathBuf,
    /// Key-value backend: `redb` (default, persistent in `data_dir`) or
    /// `memory`.
    pub key_value: KeyValueBackendKind,
    /// Requests served at once across the whole server; further requests get
    /// 503 with `Retry-After: 1` at once. Also sizes the instance pool.
    /// Default 1000.
    pub max_concurrent_requests: usize,
    /// Largest linear memory one instance may have, in bytes. Default 64 MiB.
    pub max_instance_memory: u64,
    /// Runtime threads, each with its own listener socket (`SO_REUSEPORT`).
    /// Default: one per available core.
    pub threads: usize,
    /// How long a graceful shutdown waits for requests in flight. Default 30 s.
    pub shutdown_timeout: Duration,
}

/// Which key-value backend serves `wasi:keyvalue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyValueBackendKind {
    /// An embedded `redb` database in the data directory: persistent.
    Redb,
    /// A process-local map: gone when the process exits.
    Memory,
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The path as written: `/hello` (exact) or `/api/...` (prefix).
    pub path: String,
    /// How the path matches.
    pub matcher: PathMatch,
    /// Name of the component that serves it.
    pub component: String,
    /// No response headers by then answers 504. Default 30 s.
    pub timeout: Duration,
    /// Once the body streams, a gap this long between chunks ends it.
    /// Default 60 s.
    pub idle_timeout: Duration,
    /// The whole response, headers and body, must end by then. Default 600 s.
    pub max_duration: Duration,
}

/// How a route's path matches a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The request path equals this.
    Exact(String),
    /// The request path is this, or starts with this followed by `/`.
    Prefix(String),
}

impl PathMatch {
    /// Parses `/hello` (exact) or `/api/...` (prefix; `/...` matches all).
    fn parse(path: &str) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} must start with '/'"));
        }
        if let Some(prefix) = path.strip_suffix("/...") {
            if prefix.contains("...") {
                return Err(format!("path {path:?} may use '...' only once, at the end"));
            }
            return Ok(Self::Prefix(prefix.to_string()));
        }
        if path.contains("...") {
            return Err(format!("path {path:?} may use '...' only at the end, as '/...'"));
        }
        let path = path.trim_end_matches('/');
        Ok(Self::Exact(if path.is_empty() { "/".into() } else { path.into() }))
    }

    /// Whether `request_path` is served by this route.
    pub fn matches(&self, request_path: &str) -> bool {
        match self {
            Self::Exact(path) => {
                request_path == path
                    || (request_path.len() == path.len() + 1
                        && request_path.starts_with(path.as_str())
                        && request_path.ends_with('/'))
            }
            Self::Prefix(prefix) => match request_path.strip_prefix(prefix.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
                None => false,
            },
        }
    }

    /// Longer, exact matches win over shorter or prefix ones.
    pub fn specificity(&self) -> (usize, bool) {
        match self {
            Self::Exact(path) => (path.len(), true),
            Self::Prefix(prefix) => (prefix.len(), false),
        }
    }
}

/// One `[component.NAME]`.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component's name (the table key).
    pub name: String,
    /// Path of the `.wasm` file, resolved against the manifest directory.
    pub source: PathBuf,
    /// How to build it, for `wharf up --build`.
    pub build: Option<BuildSpec>,
    /// Values served through `wasi:config/store`.
    pub config: BTreeMap<String, String>,
    /// Key-value stores the component may open; any other is denied.
    pub key_value_stores: Vec<String>,
    /// What one instance may use.
    pub limits: InstanceLimits,
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
}

/// A component's `build` table.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// Shell command, run with `sh -c`.
    pub command: String,
    /// Directory to run it in, resolved against the manifest directory.
    pub workdir: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    key_value: Option<KeyValueBackendKind>,
    max_concurrent_requests: Option<usize>,
    max_instance_memory_mb: Option<u64>,
    threads: Option<usize>,
    shutdown_timeout_secs: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: String,
    component: String,
    timeout_secs: Option<f64>,
    idle_timeout_secs: Option<f64>,
    max_duration_secs: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    source: PathBuf,
    build: Option<RawBuild>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    max_memory_mb: Option<u64>,
    max_table_elements: Option<usize>,
    fuel: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    command: String,
    workdir: Option<PathBuf>,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:3000";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(600);
const DEFAULT_TABLE_ELEMENTS: usize = 20_000;

impl Manifest {
    /// Whether any component asks for fuel metering.
    pub fn uses_fuel(&self) -> bool {
        self.components.values().any(|c| c.limits.fuel.is_some())
    }

    /// Reads and validates the manifest at `path`. Component files must exist
    /// unless `require_sources` is false (before `--build` has made them).
    pub fn load(path: &Path, require_sources: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        Self::parse(&text, path, require_sources)
            .with_context(|| format!("invalid manifest {}", path.display()))
    }

    /// Validates manifest `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path, require_sources: bool) -> Result<Self> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let server = ServerSettings::from_raw(raw.server, dir)?;

        let mut components = BTreeMap::new();
        for (name, raw) in raw.component {
            let spec = ComponentSpec::from_raw(&name, raw, dir, require_sources, &server)
                .with_context(|| format!("component {name:?}"))?;
            components.insert(name, spec);
        }

        let mut routes: Vec<RouteSpec> = Vec::new();
        for raw in raw.route {
            let context = || format!("route {:?}", raw.path);
            let matcher = PathMatch::parse(&raw.path).map_err(anyhow::Error::msg).with_context(context)?;
            if let Some(other) = routes.iter().find(|r| r.matcher == matcher) {
                bail!(
                    "route {:?}: duplicate route: {:?} already matches the same paths",
                    raw.path,
                    other.path
                );
            }
            if !components.contains_key(&raw.component) {
                let known: Vec<_> = components.keys().map(String::as_str).collect();
                bail!(
                    "route {:?}: component {:?} is not defined (defined: {})",
                    raw.path,
                    raw.component,
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                );
            }
            let timeout =
                parse_secs(raw.timeout_secs, DEFAULT_TIMEOUT, "timeout_secs").with_context(context)?;
            let idle_timeout = parse_secs(raw.idle_timeout_secs, DEFAULT_IDLE_TIMEOUT, "idle_timeout_secs")
                .with_context(context)?;
            let max_duration = parse_secs(raw.max_duration_secs, DEFAULT_MAX_DURATION, "max_duration_secs")
                .with_context(context)?;
            if max_duration < timeout {
                bail!("route {:?}: max_duration_secs must not be shorter than timeout_secs", raw.path);
            }
            routes.push(RouteSpec {
                path: raw.path,
                matcher,
                component: raw.component,
                timeout,
                idle_timeout,
                max_duration,
            });
        }
        if routes.is_empty() {
            bail!("no routes: add at least one [[route]] with a path and a component");
        }
        Ok(Self { path: path.to_path_buf(), server, routes, components })
    }
}

impl ServerSettings {
    fn from_raw(raw: RawServer, dir: &Path) -> Result<Self> {
        let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen.parse().map_err(|_| {
            anyhow::anyhow!("server.listen: {listen:?} is not an address like \"127.0.0.1:3000\"")
        })?;
        let max_concurrent_requests = raw.max_concurrent_requests.unwrap_or(1000);
        if max_concurrent_requests == 0 {
            bail!("server.max_concurrent_requests must be at least 1");
        }
        let memory_mb = raw.max_instance_memory_mb.unwrap_or(64);
        if !(1..=4096).contains(&memory_mb) {
            bail!("server.max_instance_memory_mb must be between 1 and 4096, not {memory_mb}");
        }
        let threads = match raw.threads {
            Some(0) => bail!("server.threads must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(Self {
            listen,
            data_dir: dir.join(raw.data_dir.unwrap_or_else(|| ".wharf".into())),
            key_value: raw.key_value.unwrap_or(KeyValueBackendKind::Redb),
            max_concurrent_requests,
            max_instance_memory: memory_mb << 20,
            threads,
            shutdown_timeout: parse_secs(
                raw.shutdown_timeout_secs,
                Duration::from_secs(30),
                "server.shutdown_timeout_secs",
            )?,
        })
    }
}

impl ComponentSpec {
    fn from_raw(
        name: &str,
        raw: RawComponent,
        dir: &Path,
        require_sources: bool,
        server: &ServerSettings,
    ) -> Result<Self> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("name must be non-empty and use only letters, digits, '-' and '_'");
        }
        let source = dir.join(&raw.source);
        if require_sources && !source.is_file() {
            let hint = if raw.build.is_some() { " (run with --build to build it)" } else { "" };
            bail!("source file {} does not exist{hint}", source.display());
        }
        for store in &raw.key_value_stores {
            if store.is_empty() {
                bail!("key_value_stores: a store name must not be empty");
            }
        }
        let max_memory = match raw.max_memory_mb {
            None => server.max_instance_memory,
            Some(mb) if mb >= 1 && mb << 20 <= server.max_instance_memory => mb << 20,
            Some(mb) => bail!(
                "max_memory_mb must be between 1 and server.max_instance_memory_mb ({}), not {mb}",
                server.max_instance_memory >> 20
            ),
        };
        if raw.fuel == Some(0) {
            bail!("fuel must be at least 1 (leave it out for unmetered)");
        }
        let limits = InstanceLimits {
            max_memory,
            max_table_elements: raw.max_table_elements.unwrap_or(DEFAULT_TABLE_ELEMENTS),
            fuel: raw.fuel,
        };
        Ok(Self {
            limits,
            name: name.to_string(),
            source,
            build: raw
                .build
                .map(|b| BuildSpec { command: b.command, workdir: dir.join(b.workdir.unwrap_or_default()) }),
            config: raw.config,
            key_value_stores: raw.key_value_stores,
        })
    }
}

fn parse_secs(value: Option<f64>, default: Duration, field: &str) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => Ok(Duration::from_secs_f64(secs)),
        Some(secs) => bail!("{field} must be a number of seconds above 0 and at most 86400, not {secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix_paths_match() {
        let hello = PathMatch::parse("/hello").unwrap();
        assert!(hello.matches("/hello"));
        assert!(hello.matches("/hello/"));
        assert!(!hello.matches("/hello/x"));
        assert!(!hello.matches("/hellox"));
        let api = PathMatch::parse("/api/...").unwrap();
        assert!(api.matches("/api"));
        assert!(api.matches("/api/users/1"));
        assert!(!api.matches("/apix"));
        let all = PathMatch::parse("/...").unwrap();
        assert!(all.matches("/anything/at/all"));
        assert!(PathMatch::parse("hello").is_err());
        assert!(PathMatch::parse("/a/.../b").is_err());
    }
}
