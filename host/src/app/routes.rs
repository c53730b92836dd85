//! The route table: each route of the manifest bound to its loaded
//! component and its own policies, matched with Spin's rules (an exact
//! route beats a `:name` segment, which beats a wildcard; a longer prefix
//! beats a shorter), behind one `ArcSwap` so a reload replaces it
//! atomically while requests in flight keep the version they started
//! with.

use crate::manifest::{Manifest, RouteSpec};
use crate::policy::{RoutePolicy, SharedBuckets};
use crate::runtime::invoke::Deadlines;
use crate::runtime::reuse::Reuse;
use crate::runtime::{LoadedComponent, Runtime};
use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One route bound to its component.
pub struct Route {
    /// The route as the manifest wrote it.
    pub spec: RouteSpec,
    /// Its path as written, shared with the records and metric labels of
    /// the requests it serves.
    pub name: Arc<str>,
    /// The component serving it.
    pub component: Arc<LoadedComponent>,
    /// Its own rate limit, worker pool and auth (shared across component
    /// swaps, so a swap does not reset a queue).
    pub policy: Arc<RoutePolicy>,
    /// Its reused instances, if it reuses them.
    pub reuse: Option<Arc<Reuse>>,
}

impl Route {
    /// The deadlines its requests run under.
    pub fn deadlines(&self) -> Deadlines {
        Deadlines { headers: self.spec.timeout, idle: self.spec.idle_timeout, total: self.spec.max_duration }
    }
}

/// The routes, and the router that matches paths to them.
pub struct RouteTable {
    routes: Vec<Route>,
    /// Indexes into `routes`, for every route but the private ones.
    router: routefinder::Router<usize>,
    /// For a Spin app: its name and version (its requests get Spin's
    /// headers and well-known paths).
    pub spin: Option<SpinRouting>,
}

/// What Spin's conventions need of a Spin app.
#[derive(Debug, Clone)]
pub struct SpinRouting {
    /// `[application] name`.
    pub name: String,
    /// `[application] version`.
    pub version: String,
}

/// A route that matched a request path, with what the path filled in.
pub struct RouteMatch<'table, 'path> {
    /// The route.
    pub route: &'table Route,
    found: Option<routefinder::Match<'table, 'path, usize>>,
}

impl RouteMatch<'_, '_> {
    /// Whether the request was sent to the component directly (service
    /// chaining) rather than matched by its path.
    pub fn is_chained(&self) -> bool {
        self.found.is_none()
    }

    /// The `:name` segments of the route and what the path had there.
    pub fn named_segments(&self) -> Vec<(String, String)> {
        let Some(found) = &self.found else { return Vec::new() };
        found.captures().params().iter().map(|c| (c.name().to_string(), c.value().to_string())).collect()
    }

    /// The part of the path the route's wildcard took (Spin's "path
    /// info"): `/bar` for `/foo/...` on `/foo/bar`, `/` on `/foo/`, empty
    /// on `/foo` or for an exact route.
    pub fn wildcard(&self) -> String {
        let Some(found) = &self.found else { return String::new() };
        let Some(taken) = found.captures().wildcard().map(str::to_string) else { return String::new() };
        // Spin keeps the trailing slash the router drops.
        match (taken.is_empty(), found.path().ends_with('/')) {
            (true, false) => String::new(),
            (true, true) => "/".into(),
            (false, false) => format!("/{taken}"),
            (false, true) => format!("/{taken}/"),
        }
    }
}

impl RouteTable {
    fn new(routes: Vec<Route>, spin: Option<SpinRouting>) -> Result<Self> {
        let mut router = routefinder::Router::new();
        for (index, route) in routes.iter().enumerate().filter(|(_, r)| !r.spec.private) {
            router
                .add(route.spec.pattern.router_spec.as_str(), index)
                .map_err(|e| anyhow::anyhow!("route {:?}: {e}", route.spec.path))?;
        }
        Ok(Self { routes, router, spin })
    }

    /// The route serving `path`, if any.
    pub fn find<'t, 'p>(&'t self, path: &'p str) -> Option<RouteMatch<'t, 'p>> {
        let found = self.router.best_match(path)?;
        Some(RouteMatch { route: &self.routes[*found.handler()], found: Some(found) })
    }

    /// The route that serves component `name` when a request is chained to
    /// it directly (Spin's `http://NAME.spin.internal`), as if matched by
    /// a wildcard at the root.
    pub fn for_component(&self, name: &str) -> Option<RouteMatch<'_, '_>> {
        let route = self.routes.iter().find(|r| r.component.name == name)?;
        Some(RouteMatch { route, found: None })
    }

    /// Every route, as the manifest wrote them.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The component named `name`, if a route uses it.
    pub fn component(&self, name: &str) -> Option<&Arc<LoadedComponent>> {
        self.routes.iter().map(|r| &r.component).find(|c| c.name == name)
    }

    /// Each loaded component once, by name.
    pub fn components(&self) -> Vec<Arc<LoadedComponent>> {
        let mut components: Vec<_> = self.routes.iter().map(|r| r.component.clone()).collect();
        components.sort_by(|a, b| a.name.cmp(&b.name));
        components.dedup_by(|a, b| a.name == b.name);
        components
    }

    /// Whether some route reuses the instances of component `name`.
    pub fn reuses(&self, name: &str) -> bool {
        self.routes.iter().any(|r| r.component.name == name && r.spec.reuse.is_some())
    }

    /// This table with `component` serving every route that names it.
    pub fn with_component(&self, runtime: &Arc<Runtime>, component: &Arc<LoadedComponent>) -> RouteTable {
        let routes = self
            .routes
            .iter()
            .map(|route| {
                if route.component.name != component.name {
                    return Route {
                        spec: route.spec.clone(),
                        name: route.name.clone(),
                        component: route.component.clone(),
                        policy: route.policy.clone(),
                        reuse: route.reuse.clone(),
                    };
                }
                Route {
                    spec: route.spec.clone(),
                    name: route.name.clone(),
                    component: component.clone(),
                    policy: route.policy.clone(),
                    reuse: reuse_for(runtime, &route.spec, component),
                }
            })
            .collect();
        RouteTable::new(routes, self.spin.clone()).expect("the same routes as before")
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

/// Loads every component of `manifest` through `runtime`, then binds
/// routes with their policies; a route of `previous` with the same path
/// keeps the policy state whose settings did not change.
pub fn load_routes(
    runtime: &Arc<Runtime>,
    manifest: &Manifest,
    previous: Option<&RouteTable>,
    shared_buckets: Option<&Arc<SharedBuckets>>,
) -> Result<RouteTable> {
    let mut loaded: BTreeMap<&str, Arc<LoadedComponent>> = BTreeMap::new();
    for route in &manifest.routes {
        if loaded.contains_key(route.component.as_str()) {
            continue;
        }
        let spec = &manifest.components[&route.component];
        let reused = manifest.routes.iter().any(|r| r.component == spec.name && r.reuse.is_some());
        let component = runtime
            .load_component(spec, reused)
            .with_context(|| format!("component {:?} ({})", spec.name, spec.source.display()))?;
        loaded.insert(&spec.name, Arc::new(component));
    }
    let mut routes = Vec::with_capacity(manifest.routes.len());
    for spec in &manifest.routes {
        let before = previous
            .and_then(|table| {
                table.routes.iter().find(|r| r.spec.pattern == spec.pattern && r.spec.private == spec.private)
            })
            .map(|r| (&r.spec, &*r.policy));
        let policy = RoutePolicy::from_spec(spec, before, shared_buckets)
            .with_context(|| format!("route {:?}", spec.path))?;
        let component = loaded[spec.component.as_str()].clone();
        let reuse = reuse_for(runtime, spec, &component);
        routes.push(Route {
            spec: spec.clone(),
            name: spec.path.as_str().into(),
            component,
            policy: Arc::new(policy),
            reuse,
        });
    }
    let spin =
        manifest.spin_app().map(|app| SpinRouting { name: app.name.clone(), version: app.version.clone() });
    RouteTable::new(routes, spin)
}

/// The reused instances a route with `spec` keeps of `component`, if it
/// reuses them.
fn reuse_for(
    runtime: &Arc<Runtime>,
    spec: &RouteSpec,
    component: &Arc<LoadedComponent>,
) -> Option<Arc<Reuse>> {
    let reuse = spec.reuse?;
    let deadlines = Deadlines { headers: spec.timeout, idle: spec.idle_timeout, total: spec.max_duration };
    Some(Arc::new(Reuse::new(runtime.clone(), component.clone(), reuse, deadlines)))
}
