//! The route table: each route of the manifest bound to its loaded
//! component and its own policies, ordered most specific first, behind one
//! `ArcSwap` so a reload replaces it atomically while requests in flight
//! keep the version they started with.

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
                        component: route.component.clone(),
                        policy: route.policy.clone(),
                        reuse: route.reuse.clone(),
                    };
                }
                Route {
                    spec: route.spec.clone(),
                    component: component.clone(),
                    policy: route.policy.clone(),
                    reuse: reuse_for(runtime, &route.spec, component),
                }
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
            .and_then(|table| table.routes.iter().find(|r| r.spec.matcher == spec.matcher))
            .map(|r| (&r.spec, &*r.policy));
        let policy = RoutePolicy::from_spec(spec, before, shared_buckets)
            .with_context(|| format!("route {:?}", spec.path))?;
        let component = loaded[spec.component.as_str()].clone();
        let reuse = reuse_for(runtime, spec, &component);
        routes.push(Route { spec: spec.clone(), component, policy: Arc::new(policy), reuse });
    }
    routes.sort_by_key(|route| std::cmp::Reverse(route.spec.matcher.specificity()));
    Ok(RouteTable { routes })
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
