//! Loaded components and the route table, behind one `ArcSwap` so a reload
//! replaces them atomically while requests in flight keep the version they
//! started with.
//!
//! Loading is where a component is checked: its bytes must be a component
//! (not a core module, not something else), it must export
//! `wasi:http/incoming-handler`, and every import must be one Wharf provides.

use crate::admission::RoutePolicy;
use crate::cache::{CacheOutcome, CompileCache};
use crate::host::Host;
use crate::manifest::{ComponentSpec, Manifest, RouteSpec};
use anyhow::{Context, Result, anyhow, bail};
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_config::WasiConfigVariables;

/// The export a WASI 0.2 HTTP component must have (any 0.2.x version).
const P2_HANDLER_PREFIX: &str = "wasi:http/incoming-handler@0.2";
/// The export of a WASI 0.3 HTTP component (recognised, not yet served).
const P3_HANDLER_PREFIX: &str = "wasi:http/handler@0.3";

/// A component compiled, checked against the linker and pre-instantiated.
pub struct LoadedComponent {
    /// Name from the manifest.
    pub name: String,
    /// The `.wasm` file it was loaded from.
    pub source: PathBuf,
    /// SHA-256 of the file's bytes, hex.
    pub digest: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    pub(crate) handler: HandlerPre,
    pub(crate) config: Arc<WasiConfigVariables>,
    pub(crate) key_value_stores: Arc<[String]>,
    pub(crate) limits: crate::manifest::InstanceLimits,
    pub(crate) allowed_outbound_hosts: Arc<crate::outbound::AllowList>,
    pub(crate) name_for_logs: Arc<str>,
    /// Whether its compiled code came from the on-disk cache.
    pub cache: CacheOutcome,
}

/// The pre-instantiated handler, by WASI version. WASI 0.3 handlers will sit
/// beside this variant.
pub(crate) enum HandlerPre {
    /// `wasi:http/incoming-handler@0.2.x`.
    P2(wasmtime_wasi_http::p2::bindings::ProxyPre<Host>),
}

/// One route bound to its loaded component.
pub struct Route {
    /// The route as the manifest wrote it.
    pub spec: RouteSpec,
    /// The component serving it.
    pub component: Arc<LoadedComponent>,
    /// Its own rate limit, worker pool and auth (shared across component
    /// swaps, so a swap does not reset a queue).
    pub policy: Arc<RoutePolicy>,
}

/// Routes ordered most specific first.
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// The route serving `path`, if any: exact beats prefix, longer beats
    /// shorter.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|route| route.spec.matcher.matches(path))
    }

    /// Every route, most specific first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The component named `name`, if a route uses it.
    pub fn component(&self, name: &str) -> Option<&Arc<LoadedComponent>> {
        self.routes.iter().map(|r| &r.component).find(|c| c.name == name)
    }

    /// This table with `component` serving every route that names it.
    pub fn with_component(&self, component: &Arc<LoadedComponent>) -> RouteTable {
        let routes = self
            .routes
            .iter()
            .map(|route| Route {
                spec: route.spec.clone(),
                component: if route.component.name == component.name {
                    component.clone()
                } else {
                    route.component.clone()
                },
                policy: route.policy.clone(),
            })
            .collect();
        RouteTable { routes }
    }
}

/// The live route table.
pub struct Registry {
    table: ArcSwap<RouteTable>,
}

impl Registry {
    /// A registry serving `table`.
    pub fn new(table: RouteTable) -> Self {
        Self { table: ArcSwap::from_pointee(table) }
    }

    /// The current table; requests hold it for their whole life.
    pub fn current(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Replaces the table atomically.
    pub fn replace(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }
}

/// Compiles (or loads from `cache`) and checks every component of
/// `manifest`, then binds routes.
pub fn load_routes(
    engine: &Engine,
    linker: &Linker<Host>,
    manifest: &Manifest,
    cache: Option<&CompileCache>,
) -> Result<RouteTable> {
    let mut loaded: BTreeMap<&str, Arc<LoadedComponent>> = BTreeMap::new();
    for route in &manifest.routes {
        if loaded.contains_key(route.component.as_str()) {
            continue;
        }
        let spec = &manifest.components[&route.component];
        let component = load_component(engine, linker, spec, cache)
            .with_context(|| format!("component {:?} ({})", spec.name, spec.source.display()))?;
        loaded.insert(&spec.name, Arc::new(component));
    }
    let mut routes = Vec::with_capacity(manifest.routes.len());
    for spec in &manifest.routes {
        let policy = RoutePolicy::from_spec(spec).with_context(|| format!("route {:?}", spec.path))?;
        let component = loaded[spec.component.as_str()].clone();
        routes.push(Route { spec: spec.clone(), component, policy: Arc::new(policy) });
    }
    routes.sort_by_key(|route| std::cmp::Reverse(route.spec.matcher.specificity()));
    Ok(RouteTable { routes })
}

/// Compiles (or loads from `cache`) one component and checks its exports
/// and imports.
pub fn load_component(
    engine: &Engine,
    linker: &Linker<Host>,
    spec: &ComponentSpec,
    cache: Option<&CompileCache>,
) -> Result<LoadedComponent> {
    let bytes = std::fs::read(&spec.source).context("cannot read the component file")?;
    check_is_component(&bytes)?;
    let digest = hex(&Sha256::digest(&bytes));
    let (component, cache) = match cache {
        Some(cache) => cache.load_or_compile(engine, &bytes, &digest)?,
        None => (crate::cache::compile(engine, &bytes)?, CacheOutcome::Disabled),
    };
    let handler = pre_instantiate(engine, linker, &component)?;
    Ok(LoadedComponent {
        name: spec.name.clone(),
        source: spec.source.clone(),
        digest,
        cache,
        loaded_at: SystemTime::now(),
        handler,
        config: Arc::new(spec.config.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()),
        key_value_stores: spec.key_value_stores.clone().into(),
        limits: spec.limits.clone(),
        allowed_outbound_hosts: Arc::new(spec.allowed_outbound_hosts.clone()),
        name_for_logs: spec.name.as_str().into(),
    })
}

fn check_is_component(bytes: &[u8]) -> Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const COMPONENT_LAYER: [u8; 2] = [0x01, 0x00];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        bail!("not a WebAssembly component: the file does not start with the wasm magic bytes");
    }
    if bytes[6..8] != COMPONENT_LAYER {
        bail!(
            "this is a core WebAssembly module, not a component: build for `wasm32-wasip2` \
             (or use `cargo component build`) to produce a component"
        );
    }
    Ok(())
}

fn pre_instantiate(engine: &Engine, linker: &Linker<Host>, component: &Component) -> Result<HandlerPre> {
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow!("it imports something Wharf does not provide: {e}"))?;
    let exports: Vec<String> =
        component.component_type().exports(engine).map(|(name, _)| name.to_string()).collect();
    if exports.iter().any(|name| name.starts_with(P2_HANDLER_PREFIX)) {
        let pre = wasmtime_wasi_http::p2::bindings::ProxyPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .context("its wasi:http/incoming-handler export has an unexpected type")?;
        return Ok(HandlerPre::P2(pre));
    }
    if exports.iter().any(|name| name.starts_with(P3_HANDLER_PREFIX)) {
        bail!("WASI 0.3 (wasi:http/handler@0.3) components are not served yet; build for WASI 0.2");
    }
    bail!(
        "it does not export wasi:http/incoming-handler (it exports: {})",
        if exports.is_empty() { "nothing".to_string() } else { exports.join(", ") }
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
