//! `wharf.toml`: Wharf's own manifest format, its raw serde types and
//! their resolution into a [`Manifest`].

use super::components::{self, BuildSpec, ComponentSpec, RawLimits};
use super::routes::{RawRoute, RoutePattern, RouteSpec};
use super::settings::{OutboundSettings, RawOutbound, RawServer, ServerSettings};
use super::{AllowList, AppKind, Manifest, ManifestOptions};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManifest {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) outbound: RawOutbound,
    #[serde(default)]
    pub(super) tracing: super::traces::RawTracing,
    #[serde(default)]
    pub(super) route: Vec<RawRoute>,
    #[serde(default)]
    pub(super) component: BTreeMap<String, RawComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawComponent {
    pub(super) source: Option<PathBuf>,
    build: Option<RawBuild>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    // The limits (flattening would lose deny_unknown_fields).
    max_memory_mb: Option<u64>,
    max_table_elements: Option<usize>,
    fuel: Option<u64>,
    max_outbound_requests: Option<u32>,
    max_concurrent_outbound_requests: Option<u32>,
    max_host_memory_mb: Option<u64>,
    max_resources: Option<usize>,
}

impl RawComponent {
    /// The per-instance limits it sets.
    pub(super) fn limits(&self) -> RawLimits {
        RawLimits {
            max_memory_mb: self.max_memory_mb,
            max_table_elements: self.max_table_elements,
            fuel: self.fuel,
            max_outbound_requests: self.max_outbound_requests,
            max_concurrent_outbound_requests: self.max_concurrent_outbound_requests,
            max_host_memory_mb: self.max_host_memory_mb,
            max_resources: self.max_resources,
        }
    }

    /// Whether it sets anything but limits (beside a `spin.toml`, the
    /// component itself is the Spin manifest's).
    pub(super) fn sets_more_than_limits(&self) -> bool {
        self.source.is_some()
            || self.build.is_some()
            || !self.config.is_empty()
            || !self.key_value_stores.is_empty()
            || !self.allowed_outbound_hosts.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    command: String,
    workdir: Option<PathBuf>,
}

/// Validates `wharf.toml` text as if read from `path`.
pub(super) fn parse(
    text: &str,
    path: &Path,
    require_sources: bool,
    options: &ManifestOptions,
) -> Result<Manifest> {
    let raw: RawManifest =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
    let dir = super::dir_of(path);
    let mut server = ServerSettings::from_raw(raw.server, dir)?;
    if let Some(data_dir) = &options.data_dir {
        server.data_dir = data_dir.clone();
    }
    server.outbound = OutboundSettings::from_raw(raw.outbound, dir)?;
    server.tracing = raw.tracing.validate()?;

    let mut components = BTreeMap::new();
    for (name, raw) in raw.component {
        let spec = component(&name, raw, dir, require_sources, &server)
            .with_context(|| format!("component {name:?}"))?;
        components.insert(name, spec);
    }

    let mut routes: Vec<RouteSpec> = Vec::new();
    for raw in raw.route {
        let path = raw.path.clone();
        let context = || format!("route {path:?}");
        let pattern = RoutePattern::parse(&raw.path).map_err(anyhow::Error::msg).with_context(context)?;
        if let Some(other) = routes.iter().find(|r| r.pattern == pattern) {
            bail!("route {path:?}: duplicate route: {:?} already matches the same paths", other.path);
        }
        let Some(component) = raw.component.clone() else {
            bail!("route {path:?}: component is missing (the name of a [component.NAME] table)");
        };
        if !components.contains_key(&component) {
            let known: Vec<_> = components.keys().map(String::as_str).collect();
            bail!(
                "route {path:?}: component {component:?} is not defined (defined: {})",
                if known.is_empty() { "none".into() } else { known.join(", ") }
            );
        }
        routes.push(raw.into_spec(pattern, component, false, &server, dir).with_context(context)?);
    }
    if routes.is_empty() {
        bail!("no routes: add at least one [[route]] with a path and a component");
    }
    Ok(Manifest { path: path.to_path_buf(), kind: AppKind::Wharf, server, routes, components })
}

fn component(
    name: &str,
    raw: RawComponent,
    dir: &Path,
    require_sources: bool,
    server: &ServerSettings,
) -> Result<ComponentSpec> {
    components::check_name(name)?;
    let Some(source) = &raw.source else { bail!("source is missing (the path of the .wasm file)") };
    let source = dir.join(source);
    components::check_source(&source, raw.build.is_some(), require_sources)?;
    components::check_labels("key_value_stores", &raw.key_value_stores)?;
    let limits = raw.limits().validate(server)?;
    Ok(ComponentSpec {
        limits,
        allowed_outbound_hosts: AllowList::parse(&raw.allowed_outbound_hosts)?,
        name: name.to_string(),
        source,
        build: raw.build.map(|b| BuildSpec {
            commands: vec![b.command],
            workdir: dir.join(b.workdir.unwrap_or_default()),
        }),
        config: raw.config,
        environment: BTreeMap::new(),
        files: Vec::new(),
        key_value_stores: raw.key_value_stores,
        sqlite_databases: Vec::new(),
    })
}
