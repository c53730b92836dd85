//! Wharf: a serverless HTTP host for WebAssembly components. Every request
//! gets a fresh, isolated instance of the component its route names; shared
//! state lives in the host behind `wasi:keyvalue`.
//!
//! # Layout
//! - [`manifest`]: `wharf.toml`, parsed and validated with clear errors.
//! - [`engine`]: the wasmtime engine (pooling allocator, epoch ticker) and
//!   the linker with every import Wharf provides.
//! - [`registry`]: loading and checking components; the route table behind
//!   `ArcSwap` (the hook for hot-swap).
//! - [`invoke`]: one request through one fresh instance: store, deadline,
//!   streaming, cancellation.
//! - [`host`]: the per-instance state (`Store<Host>`).
//! - [`keyvalue`]: `wasi:keyvalue` and its backends (redb, memory).
//! - [`server`]: listeners, a runtime per core, HTTP/1.1 + HTTP/2, drain.
//! - [`response`]: the host's own responses and the body type.
//! - [`build`]: running components' build commands (`wharf up --build`).
//!
//! The binary (`main.rs`) only parses arguments and calls [`App::load`],
//! [`server::Listeners::bind`] and [`run`]; tests call the same three.

pub mod build;
pub mod engine;
pub mod host;
pub mod invoke;
pub mod keyvalue;
pub mod manifest;
pub mod registry;
pub mod response;
pub mod server;

pub use server::{Listeners, run};

use anyhow::{Context, Result};
use manifest::Manifest;
use registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::Semaphore;

/// Everything a running server shares across threads.
pub struct App {
    /// Server-wide settings from the manifest (after CLI overrides).
    pub settings: manifest::ServerSettings,
    /// The engine every component was compiled with.
    pub engine: wasmtime::Engine,
    /// Which instance allocator the engine uses.
    pub allocator: engine::AllocatorKind,
    /// The live route table.
    pub registry: Registry,
    /// Live counters.
    pub stats: Stats,
    pub(crate) key_value: Arc<dyn keyvalue::Backend>,
    admission: Arc<Semaphore>,
}

/// Counters the server keeps while it runs.
#[derive(Default)]
pub struct Stats {
    /// Instances alive now (a request's instance lives until its body ends).
    pub live_instances: Arc<AtomicUsize>,
    /// Requests answered, by any status.
    pub requests: AtomicU64,
    /// Guests stopped because their client left or their deadline passed.
    pub cancelled: AtomicU64,
    /// Requests turned away with 503 because the server was at capacity.
    pub shed: AtomicU64,
}

/// Options that do not come from the manifest.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Try the pooling allocator (default true).
    pub pooling: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { pooling: true }
    }
}

impl App {
    /// Builds the engine, opens the key-value backend and loads every
    /// component of `manifest`.
    pub fn load(manifest: &Manifest, options: &LoadOptions) -> Result<Arc<Self>> {
        let settings = manifest.server.clone();
        let engine_settings = engine::EngineSettings {
            max_instances: settings.max_concurrent_requests,
            max_instance_memory: settings.max_instance_memory,
            pooling: options.pooling,
        };
        let (engine, allocator) = engine::build_engine(&engine_settings)?;
        tracing::info!(?allocator, max_instances = settings.max_concurrent_requests, "engine ready");
        engine::start_epoch_ticker(&engine);
        let linker = engine::build_linker(&engine)?;
        let table = registry::load_routes(&engine, &linker, manifest)
            .with_context(|| format!("cannot load the app in {}", manifest.path.display()))?;
        for route in table.routes() {
            tracing::info!(route = %route.spec.path, component = %route.component.name, digest = %&route.component.digest[..12], "route ready");
        }
        let key_value = keyvalue::open_backend(settings.key_value, &settings.data_dir)?;
        Ok(Arc::new(Self {
            admission: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            settings,
            engine,
            allocator,
            registry: Registry::new(table),
            stats: Stats::default(),
            key_value,
        }))
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.settings.max_concurrent_requests - self.admission.available_permits()
    }
}

/// Serves one request: route, admit, invoke, log.
pub(crate) async fn handle(
    app: Arc<App>,
    request: http::Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> server::Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let table = app.registry.current();
    let (response, route, error) = match table.find(&path) {
        None => (response::plain(http::StatusCode::NOT_FOUND, "Not Found"), None, None),
        Some(route) => {
            let outcome = match app.admission.clone().try_acquire_owned() {
                Err(_) => {
                    app.stats.shed.fetch_add(1, Ordering::Relaxed);
                    Err(invoke::InvokeError::PoolExhausted)
                }
                Ok(permit) => invoke::invoke(&app, route, request, permit).await,
            };
            match outcome {
                Ok(response) => (response, Some(route.spec.path.as_str()), None),
                Err(error) => {
                    (response::for_status(error.status()), Some(route.spec.path.as_str()), Some(error))
                }
            }
        }
    };
    app.stats.requests.fetch_add(1, Ordering::Relaxed);
    let status = response.status().as_u16();
    let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
    match &error {
        Some(error) if status >= 500 && status != 503 => tracing::error!(
            %method, %path, route, status, latency_ms, %peer, error = %error, "request failed"
        ),
        _ => {
            tracing::info!(%method, %path, route, status, latency_ms, %peer, error = error.as_ref().map(tracing::field::display), "request")
        }
    }
    response
}
