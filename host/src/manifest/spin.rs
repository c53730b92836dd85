//! `spin.toml` (Spin's manifest, version 2): its raw serde types and their
//! resolution into a [`Manifest`], as `spin up` reads them. The app's
//! HTTP triggers become routes (`private` ones reachable only by service
//! chaining), its components keep their permissions (stores, databases,
//! hosts, variables, environment, files), and Wharf's own settings come
//! from a `wharf.toml` beside it or a `[wharf]` table: `[server]`,
//! `[outbound]`, a component's limits, a route's policy by its path.
//!
//! Facts about the format are Spin's (its manifest schema); the code is
//! ours. What Wharf does not serve (other trigger types, remote sources,
//! component dependencies, static responses, WAGI) is refused here by
//! name.

use super::components::{self, BuildSpec, ComponentSpec, FileMount, RawLimits};
use super::routes::{RawRoute, RoutePattern, RouteSpec};
use super::settings::{OutboundSettings, ServerSettings};
use super::variables::{RawVariable, Variables};
use super::wharf::RawManifest;
use super::{AllowList, AppKind, Manifest, ManifestOptions, SpinApp};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The domain service chaining uses: `http://COMPONENT.spin.internal`.
pub const SERVICE_CHAINING_SUFFIX: &str = ".spin.internal";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpinManifest {
    #[allow(dead_code, reason = "checked before the rest is read")]
    spin_manifest_version: toml::Value,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    /// By trigger type; only `http` is read further.
    #[serde(default)]
    trigger: BTreeMap<String, toml::Value>,
    #[serde(default)]
    component: BTreeMap<String, RawSpinComponent>,
    /// Wharf's own settings, when not in a `wharf.toml` beside.
    wharf: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApplication {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    #[allow(dead_code, reason = "part of the format")]
    description: String,
    #[serde(default)]
    #[allow(dead_code, reason = "part of the format")]
    authors: Vec<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "deployment targets: nothing for Wharf to check")]
    targets: Vec<toml::Value>,
    #[serde(default)]
    trigger: BTreeMap<String, toml::Table>,
    #[serde(default)]
    #[allow(dead_code, reason = "other tools' settings")]
    tool: BTreeMap<String, toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    #[serde(default)]
    id: String,
    component: Option<toml::Value>,
    #[serde(default)]
    components: BTreeMap<String, toml::Value>,
    route: Option<toml::Value>,
    executor: Option<toml::Table>,
    static_response: Option<toml::Value>,
    #[serde(default)]
    dependencies: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpinComponent {
    source: toml::Value,
    #[serde(default)]
    #[allow(dead_code, reason = "part of the format")]
    description: String,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<toml::Value>,
    #[serde(default)]
    exclude_files: Vec<String>,
    #[serde(default)]
    allowed_http_hosts: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default, alias = "key-value-stores")]
    key_value_stores: Vec<String>,
    #[serde(default, alias = "sqlite-databases")]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
    #[allow(dead_code, reason = "deployment targets: nothing for Wharf to check")]
    targets: Option<Vec<toml::Value>>,
    build: Option<RawSpinBuild>,
    #[serde(default)]
    #[allow(dead_code, reason = "other tools' settings")]
    tool: BTreeMap<String, toml::Table>,
    #[allow(dead_code, reason = "only with dependencies, which are refused")]
    dependencies_inherit_configuration: Option<bool>,
    #[serde(default)]
    dependencies: BTreeMap<String, toml::Value>,
    #[serde(default)]
    #[allow(dead_code, reason = "`spin up --profile`; Wharf serves the default profile")]
    profile: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpinBuild {
    command: Commands,
    workdir: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "`spin watch`")]
    watch: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Commands {
    One(String),
    Many(Vec<String>),
}

/// Validates `spin.toml` text as if read from `path`; Wharf's settings
/// come from `wharf_settings` (a `wharf.toml` beside it) or its `[wharf]`
/// table.
pub(super) fn parse(
    text: &str,
    path: &Path,
    require_sources: bool,
    wharf_settings: Option<(&Path, &str)>,
    options: &ManifestOptions,
) -> Result<Manifest> {
    // The version first: an older manifest has another shape entirely.
    let table: toml::Table =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
    match table.get("spin_manifest_version") {
        Some(version) if version.as_integer() == Some(2) => {}
        Some(version) => {
            bail!(
                "spin_manifest_version {version}: Wharf reads version 2 (`spin doctor` upgrades older manifests)"
            )
        }
        None => bail!("spin_manifest_version is missing: Wharf reads Spin manifests of version 2"),
    }
    let raw: RawSpinManifest =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
    let dir = super::dir_of(path);
    let settings = wharf_settings_of(raw.wharf, wharf_settings)?;
    let mut server = ServerSettings::from_raw(settings.server, dir).context("[server] (Wharf's settings)")?;
    if let Some(data_dir) = &options.data_dir {
        server.data_dir = data_dir.clone();
    }
    server.outbound =
        OutboundSettings::from_raw(settings.outbound, dir).context("[outbound] (Wharf's settings)")?;
    server.tracing = settings.tracing.validate().context("[tracing] (Wharf's settings)")?;
    let variables = Variables::resolve(&raw.variables, &options.variables, |key| std::env::var(key).ok())?;

    if let Some(kind) = raw.trigger.keys().find(|kind| kind.as_str() != "http") {
        bail!("trigger type {kind:?}: Wharf serves HTTP triggers only ([[trigger.http]])");
    }
    if let Some(http) = raw.application.trigger.get("http")
        && let Some(base) = http.get("base")
        && base.as_str() != Some("/")
    {
        bail!(
            "application.trigger.http.base {base}: this deprecated field must be \"/\"; prepend the base to each route"
        );
    }

    // Inline components become named ones, as Spin names them.
    let mut raw_components = raw.component;
    let mut triggers = Vec::new();
    let mut counter = 1;
    let http: Vec<RawTrigger> = match raw.trigger.get("http") {
        None => Vec::new(),
        Some(http) => http.clone().try_into().map_err(|e: toml::de::Error| {
            anyhow::anyhow!("[[trigger.http]]: {}", e.to_string().trim_end())
        })?,
    };
    for (index, trigger) in http.into_iter().enumerate() {
        let id =
            if trigger.id.is_empty() { format!("http-trigger{}", index + 1) } else { trigger.id.clone() };
        let context = || format!("trigger {id:?}");
        refuse_unserved_trigger_features(&trigger).with_context(context)?;
        let component = match trigger.component.clone() {
            None => bail!("trigger {id:?}: component is missing"),
            Some(toml::Value::String(name)) => name,
            Some(inline) => {
                let component = RawSpinComponent::deserialize(inline)
                    .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
                    .with_context(context)?;
                let mut name = format!("{id}-component");
                while raw_components.contains_key(&name) {
                    name = format!("inline-component{counter}");
                    counter += 1;
                }
                raw_components.insert(name.clone(), component);
                name
            }
        };
        triggers.push((id, trigger, component));
    }

    let mut components = BTreeMap::new();
    let names: Vec<String> = raw_components.keys().cloned().collect();
    for (name, raw) in raw_components {
        let limits = settings.components.get(&name).map(|c| c.limits()).unwrap_or_default();
        let spec = component(&name, raw, &limits, dir, require_sources, &server, &variables, &names)
            .with_context(|| format!("component {name:?}"))?;
        components.insert(name, spec);
    }
    for name in settings.components.keys() {
        if !components.contains_key(name) {
            bail!("[component.{name}] (Wharf's settings): the Spin app has no component {name:?}");
        }
    }

    let mut policies: BTreeMap<String, RawRoute> = BTreeMap::new();
    for route in settings.routes {
        if route.component.is_some() {
            bail!(
                "[[route]] {:?} (Wharf's settings): beside a spin.toml a route takes its component from the \
                 Spin trigger with the same route; leave `component` out",
                route.path
            );
        }
        policies.insert(route.path.clone(), route);
    }

    let mut routes: Vec<RouteSpec> = Vec::new();
    for (id, trigger, component) in triggers {
        let context = || format!("trigger {id:?}");
        if !components.contains_key(&component) {
            let known: Vec<_> = components.keys().map(String::as_str).collect();
            bail!("trigger {id:?}: component {component:?} is not defined (defined: {})", known.join(", "));
        }
        let (path, private) = match trigger.route {
            Some(toml::Value::String(route)) => (absolutize(&route), false),
            Some(toml::Value::Table(table))
                if table.get("private").and_then(toml::Value::as_bool) == Some(true) =>
            {
                if table.len() > 1 {
                    bail!("trigger {id:?}: a private route is written `route = {{ private = true }}`");
                }
                ("/...".to_string(), true)
            }
            Some(other) => {
                bail!("trigger {id:?}: route must be a string pattern or `{{ private = true }}`, not {other}")
            }
            None => bail!("trigger {id:?}: route is missing"),
        };
        let pattern = RoutePattern::parse(&path).map_err(anyhow::Error::msg).with_context(context)?;
        let policy = policies.remove(&path).unwrap_or_else(|| RawRoute::defaults(&path));
        let spec = policy.into_spec(pattern, component, private, &server, dir).with_context(context)?;
        // As on Spin, a later trigger with the same route replaces an
        // earlier one.
        if !private && let Some(at) = routes.iter().position(|r| !r.private && r.pattern == spec.pattern) {
            tracing::warn!(route = %path, replaced = %routes[at].component, by = %spec.component,
                "two triggers have the same route; the later one serves it, as on Spin");
            routes.remove(at);
        }
        routes.push(spec);
    }
    if let Some(path) = policies.keys().next() {
        bail!("[[route]] {path:?} (Wharf's settings): no Spin trigger has that route");
    }
    if routes.is_empty() {
        bail!("no HTTP triggers: add at least one [[trigger.http]] with a route and a component");
    }
    let app = SpinApp { name: raw.application.name, version: raw.application.version, variables };
    Ok(Manifest { path: path.to_path_buf(), kind: AppKind::Spin(app), server, routes, components })
}

/// The Wharf settings a Spin app has: from the `wharf.toml` beside it or
/// its `[wharf]` table, not both.
fn wharf_settings_of(table: Option<toml::Value>, beside: Option<(&Path, &str)>) -> Result<WharfSettings> {
    let raw: RawManifest = match (table, beside) {
        (Some(_), Some((file, _))) => {
            bail!("Wharf's settings are both in the [wharf] table and in {}: keep one", file.display())
        }
        (Some(table), None) => table
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("[wharf]: {}", e.to_string().trim_end()))?,
        (None, Some((file, text))) => toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?,
        (None, None) => toml::from_str("").expect("an empty manifest parses"),
    };
    for (name, component) in &raw.component {
        if component.sets_more_than_limits() {
            bail!(
                "[component.{name}] (Wharf's settings): beside a spin.toml only the limits \
                 (max_memory_mb, max_host_memory_mb, fuel, ...) may be set; the rest is the Spin manifest's"
            );
        }
    }
    Ok(WharfSettings {
        server: raw.server,
        outbound: raw.outbound,
        tracing: raw.tracing,
        routes: raw.route,
        components: raw.component,
    })
}

struct WharfSettings {
    server: super::settings::RawServer,
    outbound: super::settings::RawOutbound,
    tracing: super::traces::RawTracing,
    routes: Vec<RawRoute>,
    components: BTreeMap<String, super::wharf::RawComponent>,
}

fn refuse_unserved_trigger_features(trigger: &RawTrigger) -> Result<()> {
    if trigger.static_response.is_some() {
        bail!("static_response is not served by Wharf: give the route a component");
    }
    if !trigger.components.is_empty() {
        bail!("`components` (middleware) is not served by Wharf");
    }
    if !trigger.dependencies.is_empty() {
        bail!("trigger `dependencies` are not served by Wharf");
    }
    if let Some(executor) = &trigger.executor {
        match executor.get("type").and_then(toml::Value::as_str) {
            Some("spin") | Some("http") | None => {}
            Some("wagi") => bail!("the WAGI executor is not served by Wharf: only wasi:http components"),
            Some(other) => bail!("executor type {other:?} is unknown"),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments, reason = "one call site; each is a separate input")]
fn component(
    name: &str,
    raw: RawSpinComponent,
    limits: &RawLimits,
    dir: &Path,
    require_sources: bool,
    server: &ServerSettings,
    variables: &Variables,
    all_components: &[String],
) -> Result<ComponentSpec> {
    components::check_name(name)?;
    let source = match &raw.source {
        toml::Value::String(source) => dir.join(source),
        toml::Value::Table(table) if table.contains_key("url") => {
            bail!("source {{ url = ... }}: Wharf does not download components; download it and give its path")
        }
        toml::Value::Table(table) if table.contains_key("package") => {
            bail!(
                "source {{ registry/package = ... }}: Wharf does not pull from registries; give the path of the .wasm file"
            )
        }
        other => bail!("source must be the path of a .wasm file, not {other}"),
    };
    components::check_source(&source, raw.build.is_some(), require_sources)?;
    if !raw.ai_models.is_empty() {
        bail!("ai_models: fermyon:spin/llm is a Spin interface Wharf does not serve");
    }
    if !raw.dependencies.is_empty() {
        bail!("dependencies (component composition) are not served by Wharf: compose the component first");
    }
    components::check_labels("key_value_stores", &raw.key_value_stores)?;
    components::check_labels("sqlite_databases", &raw.sqlite_databases)?;
    let mut config = BTreeMap::new();
    for (key, template) in &raw.variables {
        super::variables::check_name(key).with_context(|| format!("variables.{key}"))?;
        config.insert(key.clone(), variables.expand(template).with_context(|| format!("variables.{key}"))?);
    }
    let mut hosts = Vec::new();
    for entry in raw.allowed_outbound_hosts.iter() {
        hosts.push(variables.expand(entry).context("allowed_outbound_hosts")?);
    }
    // The deprecated spelling: bare hosts meant both http and https.
    for host in &raw.allowed_http_hosts {
        match host.as_str() {
            "insecure:allow-all" => hosts.push("*://*:*".into()),
            host if host.contains("://") => hosts.push(host.into()),
            host => hosts.extend([format!("http://{host}"), format!("https://{host}")]),
        }
    }
    let hosts: Vec<String> = hosts.into_iter().filter(|h| !h.is_empty()).collect();
    let allowed_outbound_hosts =
        AllowList::parse_spin(&hosts, all_components).context("allowed_outbound_hosts")?;
    let files = mount_files(name, &raw.files, &raw.exclude_files, dir, &server.data_dir, require_sources)
        .context("files")?;
    let build = raw.build.map(|b| BuildSpec {
        commands: match b.command {
            Commands::One(command) => vec![command],
            Commands::Many(commands) => commands,
        },
        workdir: dir.join(b.workdir.unwrap_or_default()),
    });
    Ok(ComponentSpec {
        name: name.to_string(),
        source,
        build,
        config,
        environment: raw.environment,
        files,
        key_value_stores: raw.key_value_stores,
        sqlite_databases: raw.sqlite_databases,
        limits: limits.validate(server)?,
        allowed_outbound_hosts,
    })
}

/// Spin's `files`: `{ source, destination }` mounts a directory; a pattern
/// (`static/**/*`, `index.html`) mounts the files it matches at their
/// relative paths under `/`, which Wharf gathers (minus `exclude_files`)
/// into `data_dir/files/COMPONENT` at load, as Spin copies them.
fn mount_files(
    name: &str,
    files: &[toml::Value],
    exclude: &[String],
    dir: &Path,
    data_dir: &Path,
    stage: bool,
) -> Result<Vec<FileMount>> {
    let mut mounts = Vec::new();
    let mut patterns = Vec::new();
    for entry in files {
        match entry {
            toml::Value::String(pattern) => patterns.push(pattern.clone()),
            toml::Value::Table(table) => {
                let (Some(source), Some(destination)) = (
                    table.get("source").and_then(toml::Value::as_str),
                    table.get("destination").and_then(toml::Value::as_str),
                ) else {
                    bail!("a mount is written {{ source = \"dir\", destination = \"/path\" }}");
                };
                if table.len() != 2 || !destination.starts_with('/') {
                    bail!("a mount is written {{ source = \"dir\", destination = \"/path\" }}");
                }
                let host = dir.join(source);
                if stage && !host.is_dir() {
                    bail!("{} is not a directory", host.display());
                }
                mounts.push(FileMount { host, guest: destination.to_string() });
            }
            other => bail!("an entry is a pattern or {{ source, destination }}, not {other}"),
        }
    }
    if patterns.is_empty() {
        return Ok(mounts);
    }
    let staged = data_dir.join("files").join(name);
    if stage {
        stage_matching_files(dir, &patterns, exclude, &staged)?;
    }
    mounts.push(FileMount { host: staged, guest: "/".to_string() });
    Ok(mounts)
}

/// Copies the files under `dir` that `patterns` match (and `exclude` does
/// not) into `staged`, at their paths relative to `dir`.
fn stage_matching_files(dir: &Path, patterns: &[String], exclude: &[String], staged: &Path) -> Result<()> {
    let compile = |pattern: &String| {
        glob::Pattern::new(pattern).with_context(|| format!("{pattern:?} is not a file pattern"))
    };
    let excluded: Vec<glob::Pattern> = exclude.iter().map(compile).collect::<Result<_>>()?;
    if staged.exists() {
        std::fs::remove_dir_all(staged).with_context(|| format!("cannot clear {}", staged.display()))?;
    }
    std::fs::create_dir_all(staged).with_context(|| format!("cannot create {}", staged.display()))?;
    for pattern in patterns {
        if pattern.starts_with('/') || pattern.split('/').any(|part| part == "..") {
            bail!("{pattern:?}: a pattern is relative to the manifest and stays below it");
        }
        let full = dir.join(pattern);
        let matches = glob::glob(&full.to_string_lossy())
            .with_context(|| format!("{pattern:?} is not a file pattern"))?;
        for found in matches {
            let found = found?;
            if !found.is_file() {
                continue;
            }
            let relative = found.strip_prefix(dir).unwrap_or(&found).to_path_buf();
            if excluded.iter().any(|p| p.matches_path(&relative)) {
                continue;
            }
            let target: PathBuf = staged.join(&relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(&found, &target).with_context(|| format!("cannot copy {}", found.display()))?;
        }
    }
    Ok(())
}

fn absolutize(route: &str) -> String {
    if route.starts_with('/') { route.to_string() } else { format!("/{route}") }
}
