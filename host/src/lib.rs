//! Wharf: a serverless HTTP host for WebAssembly components. Every request
//! gets a fresh, isolated instance of the component its route names; shared
//! state lives in the host behind `wasi:keyvalue`.
//!
//! # Layout
//! - [`manifest`]: `wharf.toml`, parsed and validated with clear errors.
//! - [`engine`]: the wasmtime engine (pooling allocator, epoch ticker) and
//!   the linker with every import Wharf provides.
//! - [`registry`]: loading and checking components; the route table behind
//!   `ArcSwap`.
//! - [`reload`]: hot-swap: file watching, reloading a component or the whole
//!   manifest off the request path.
//! - [`cache`]: compiled components on disk, checksummed, for fast restarts.
//! - [`admission`]: rate limits, auth, worker pools, rejections and their
//!   status codes.
//! - [`admin`], [`metrics`]: `/healthz` and Prometheus `/metrics`.
//! - [`tls`]: inbound HTTPS with ALPN.
//! - [`outbound`]: the pooled, bounded, allow-listed client behind
//!   `wasi:http/outgoing-handler`.
//! - [`signals`]: SIGINT/SIGTERM drain (a second one cancels), SIGHUP reload.
//! - [`service`]: the path around a component: route, admit, invoke, record.
//! - [`invoke`]: one request through one fresh instance: store, limits,
//!   deadlines, streaming, cancellation.
//! - [`observe`]: the per-request record: log line and counters;
//!   [`access_log`] writes the line fast.
//! - [`host`]: the per-instance state (`Store<Host>`).
//! - [`keyvalue`]: `wasi:keyvalue` and its backends (redb, memory).
//! - [`server`]: listeners, a runtime per core, HTTP/1.1 + HTTP/2, drain.
//! - [`response`]: the host's own responses and the body type.
//! - [`build`]: running components' build commands (`wharf up --build`).
//!
//! The binary (`main.rs`) only parses arguments and calls [`App::load`],
//! [`server::Listeners::bind`] and [`run`]; tests call the same three.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod build;
pub mod cache;
pub mod engine;
pub mod host;
pub mod invoke;
pub mod keyvalue;
pub mod manifest;
pub mod metrics;
pub mod observe;
pub mod outbound;
pub mod registry;
pub mod reload;
pub mod response;
pub mod server;
pub mod service;
pub mod signals;
pub mod tls;

pub use observe::Stats;
pub use server::{Listeners, run};

use anyhow::{Context, Result};
use manifest::Manifest;
use registry::Registry;
use std::sync::Arc;
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
    pub stats: Arc<Stats>,
    pub(crate) key_value: Arc<dyn keyvalue::Backend>,
    /// Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// When the app was loaded.
    pub started_at: std::time::Instant,
    pub(crate) admission: Arc<Semaphore>,
    pub(crate) fuel_metering: bool,
    pub(crate) epoch_interruption: bool,
    pub(crate) access_log: Option<Arc<access_log::AccessLog>>,
    pub(crate) global_limit: Option<admission::Limiter>,
    pub(crate) client_limit: Option<Arc<admission::ClientLimiter>>,
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) linker: wasmtime::component::Linker<host::Host>,
    pub(crate) compile_cache: Option<cache::CompileCache>,
    /// The manifest the current routes came from (replaced on reload).
    pub(crate) manifest: std::sync::Mutex<Manifest>,
    /// Serialises reloads; the route table itself is swapped lock-free.
    pub(crate) reloading: std::sync::Mutex<()>,
    pub(crate) watcher: std::sync::Mutex<Option<reload::ComponentWatcher>>,
    /// The shared outbound HTTP client.
    pub outbound: Arc<outbound::OutboundClient>,
    /// Set on a second shutdown signal: cancel what is still in flight.
    pub(crate) force_stop: tokio::sync::watch::Sender<bool>,
}

/// Options that do not come from the manifest.
#[derive(Clone)]
pub struct LoadOptions {
    /// Try the pooling allocator (default true).
    pub pooling: bool,
    /// Cache compiled components in `data_dir/cache` (default true).
    pub compile_cache: bool,
    /// Hot-swap components when their files change (default true).
    pub watch: bool,
    /// Epoch interruption (default true). Without it a CPU-bound guest
    /// cannot be stopped or made to yield: only for measuring its cost.
    pub epoch_interruption: bool,
    /// Where request lines go; `None` (default) makes them `tracing` events.
    pub access_log: Option<Arc<access_log::AccessLog>>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { pooling: true, compile_cache: true, watch: true, epoch_interruption: true, access_log: None }
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
            fuel: manifest.uses_fuel(),
            epoch_interruption: options.epoch_interruption,
        };
        let (engine, allocator) = engine::build_engine(&engine_settings)?;
        tracing::info!(?allocator, max_instances = settings.max_concurrent_requests, "engine ready");
        if options.epoch_interruption {
            engine::start_epoch_ticker(&engine);
        } else {
            tracing::warn!("epoch interruption is off: CPU-bound guests cannot be interrupted");
        }
        let linker = engine::build_linker(&engine)?;
        let compile_cache =
            options.compile_cache.then(|| cache::CompileCache::new(settings.data_dir.join("cache"), &engine));
        let table = registry::load_routes(&engine, &linker, manifest, compile_cache.as_ref())
            .with_context(|| format!("cannot load the app in {}", manifest.path.display()))?;
        for route in table.routes() {
            let component = &route.component;
            tracing::info!(route = %route.spec.path, component = %component.name, digest = %&component.digest[..12], cache = ?component.cache, "route ready");
        }
        let key_value = keyvalue::open_backend(settings.key_value, &settings.data_dir)?;
        let tls = settings.tls.as_ref().map(tls::acceptor).transpose()?;
        let client_limit = settings.client_rate_limit.as_ref().map(|spec| {
            let limiter = Arc::new(admission::ClientLimiter::new(spec));
            start_client_limiter_eviction(&limiter, spec.window);
            limiter
        });
        let metrics = metrics::Metrics::default();
        let outbound = Arc::new(outbound::OutboundClient::new(&settings.outbound, metrics.outbound.clone())?);
        Ok(Arc::new(Self {
            outbound,
            metrics,
            started_at: std::time::Instant::now(),
            global_limit: settings.rate_limit.as_ref().map(|spec| admission::Limiter::new(spec, "global")),
            client_limit,
            tls,
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            admission: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
            fuel_metering: engine_settings.fuel,
            epoch_interruption: engine_settings.epoch_interruption,
            access_log: options.access_log.clone(),
            settings,
            engine,
            allocator,
            registry: Registry::new(table),
            stats: Arc::default(),
            key_value,
            linker,
            compile_cache,
            manifest: std::sync::Mutex::new(manifest.clone()),
            reloading: std::sync::Mutex::new(()),
            watcher: std::sync::Mutex::new(None),
            force_stop: tokio::sync::watch::Sender::new(false),
        }))
        .inspect(|app| {
            if options.watch {
                reload::watch(app);
            }
        })
    }

    /// Cancels every request still in flight during a graceful shutdown
    /// (the second ctrl-c).
    pub fn cancel_in_flight(&self) {
        self.force_stop.send_replace(true);
    }

    /// The key-value backend components share (for operators and tests).
    pub fn key_value(&self) -> &Arc<dyn keyvalue::Backend> {
        &self.key_value
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.settings.max_concurrent_requests - self.admission.available_permits()
    }
}

/// Evicts idle clients from the per-client limiter once per window, from a
/// thread that ends when the limiter is dropped.
fn start_client_limiter_eviction(limiter: &Arc<admission::ClientLimiter>, window: std::time::Duration) {
    let weak = Arc::downgrade(limiter);
    let period = window.clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(60));
    let _ = std::thread::Builder::new().name("wharf-limiter-eviction".into()).spawn(move || {
        loop {
            std::thread::sleep(period);
            let Some(limiter) = weak.upgrade() else { return };
            limiter.evict_idle();
        }
    });
}
