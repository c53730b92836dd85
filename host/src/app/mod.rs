//! The app: one server's parts, put together from a manifest. [`App::load`]
//! builds the telemetry, the capabilities, the runtime, the admission state
//! and the route table ([`routes`]); [`reload`] swaps components and
//! manifests in while it serves; [`signals`] turns Unix signals into a
//! drain or a reload.
//!
//! The app is the composition root: it uses every lower part (policy,
//! runtime, capabilities, telemetry, manifest); `http` serves it.

pub mod health;
pub mod reload;
pub mod routes;
pub mod signals;

use crate::capabilities::{Capabilities, keyvalue, outbound::OutboundClient};
use crate::manifest::RateLimitStore;
use crate::manifest::{Manifest, ServerSettings};
use crate::policy::{Admission, SharedBuckets};
use crate::runtime::{Runtime, engine::EngineSettings};
use crate::shared::redis::SharedRedis;
use crate::telemetry::{Telemetry, access_log::AccessLog};
use anyhow::{Context, Result};
use routes::Registry;
use std::sync::{Arc, Mutex};

/// One server's parts, shared by every runtime thread.
pub struct App {
    /// Server-wide settings from the manifest (after CLI overrides).
    pub settings: ServerSettings,
    /// The live route table.
    pub routes: Registry,
    /// Server-wide admission state: concurrency, buckets, connections.
    pub admission: Admission,
    /// Engine, linker and what instances are given.
    pub runtime: Arc<Runtime>,
    /// Metrics and the access log.
    pub telemetry: Arc<Telemetry>,
    /// When the app was loaded.
    pub started_at: std::time::Instant,
    /// The admin listener's bearer token, if it has one.
    pub(crate) admin_auth: Option<crate::policy::BearerAuth>,
    /// The shared Redis, when the key-value backend or the rate limits use it.
    pub redis: Option<Arc<SharedRedis>>,
    /// The server threads' heartbeats, for `/livez`.
    pub heartbeats: health::Heartbeats,
    lifecycle: Lifecycle,
}

/// What reloads and shutdown coordinate on.
struct Lifecycle {
    /// The manifest the current routes came from (replaced on reload).
    manifest: Mutex<Manifest>,
    /// Serialises reloads; the route table itself is swapped lock-free.
    reloading: Mutex<()>,
    watcher: Mutex<Option<reload::ComponentWatcher>>,
    /// Set when a graceful shutdown begins (read on every response).
    draining: std::sync::atomic::AtomicBool,
    /// The same, for connections to wait on (HTTP/2 ones then go away).
    drain_started: tokio::sync::watch::Sender<bool>,
    /// Set on a second shutdown signal: cancel what is still in flight.
    force_stop: tokio::sync::watch::Sender<bool>,
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
    /// Use the kernel's pagemap scan for pool resets where there is one
    /// (default true): off only to measure the fallback.
    pub pagemap_scan: bool,
    /// Where request lines go; `None` (default) makes them `tracing` events.
    pub access_log: Option<Arc<AccessLog>>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pooling: true,
            compile_cache: true,
            watch: true,
            epoch_interruption: true,
            pagemap_scan: true,
            access_log: None,
        }
    }
}

impl App {
    /// Builds every part for `manifest` and loads every component.
    pub fn load(manifest: &Manifest, options: &LoadOptions) -> Result<Arc<Self>> {
        let settings = manifest.server.clone();
        let telemetry = Arc::new(
            Telemetry::with_tracing(options.access_log.clone(), &settings.tracing).context("[tracing]")?,
        );
        let redis = settings
            .uses_redis()
            .then(|| SharedRedis::new(&settings.redis_url, settings.redis_timeout).map(Arc::new))
            .transpose()?;
        let shared_buckets = (settings.rate_limit_store == RateLimitStore::Redis)
            .then(|| {
                redis.as_ref().map(|r| SharedBuckets::new(r.clone(), settings.rate_limit_on_store_error))
            })
            .flatten();
        let limits = settings.key_value_limits;
        let backend = keyvalue::open_backend(
            settings.key_value,
            &settings.data_dir,
            limits,
            redis.as_ref(),
            telemetry.tracing.as_ref(),
        )?;
        let capabilities = Capabilities {
            key_value: Arc::new(keyvalue::KeyValue::new(backend, limits)),
            outbound: Arc::new(
                OutboundClient::new(&settings.outbound, telemetry.metrics.outbound.clone())?
                    .with_tracing(telemetry.tracing.clone()),
            ),
            sqlite: Arc::new(
                crate::capabilities::sqlite::Sqlite::new(
                    settings.data_dir.join("sqlite"),
                    crate::capabilities::sqlite::SqliteLimits {
                        query_timeout: settings.max_sqlite_query,
                        max_result_bytes: settings.max_sqlite_result_bytes,
                    },
                )
                .with_tracing(telemetry.tracing.clone()),
            ),
            guest_output_budget: settings.max_guest_output_bytes,
        };
        let engine_settings = EngineSettings {
            // A slot per request in flight; with reuse, as many again for the
            // reused instances (at most one per request at a route's peak).
            max_instances: settings.max_concurrent_requests * if manifest.reuses_instances() { 2 } else { 1 },
            max_instance_memory: settings.max_instance_memory,
            pooling: options.pooling,
            fuel: manifest.uses_fuel(),
            epoch_interruption: options.epoch_interruption,
            pagemap_scan: options.pagemap_scan,
        };
        let cache_dir = options.compile_cache.then(|| settings.data_dir.join("cache"));
        let runtime = Arc::new(Runtime::new(&engine_settings, cache_dir, capabilities, telemetry.clone())?);
        let table = routes::load_routes(&runtime, manifest, None, shared_buckets.as_ref())
            .with_context(|| format!("cannot load the app in {}", manifest.path.display()))?;
        for route in table.routes() {
            let component = &route.component;
            tracing::info!(route = %route.spec.path, component = %component.name, digest = %&component.digest[..12], cache = ?component.cache, "route ready");
        }
        let admin_auth = settings
            .admin_auth
            .as_ref()
            .map(crate::policy::BearerAuth::load)
            .transpose()
            .context("server.admin_auth")?;
        let app = Arc::new(Self {
            admin_auth,
            admission: Admission::new(&settings, shared_buckets, &telemetry.metrics),
            redis,
            routes: Registry::new(table),
            runtime,
            telemetry,
            started_at: std::time::Instant::now(),
            heartbeats: health::Heartbeats::default(),
            lifecycle: Lifecycle {
                manifest: Mutex::new(manifest.clone()),
                reloading: Mutex::new(()),
                watcher: Mutex::new(None),
                draining: std::sync::atomic::AtomicBool::new(false),
                drain_started: tokio::sync::watch::Sender::new(false),
                force_stop: tokio::sync::watch::Sender::new(false),
            },
            settings,
        });
        if options.watch {
            reload::watch(&app);
        }
        Ok(app)
    }

    /// Notes that a graceful shutdown has begun: readiness says 503,
    /// responses from now on tell HTTP/1.1 clients the connection closes,
    /// and HTTP/2 connections are sent GOAWAY.
    pub fn begin_drain(&self) {
        self.lifecycle.draining.store(true, std::sync::atomic::Ordering::Release);
        self.lifecycle.drain_started.send_replace(true);
    }

    /// Resolves (`wait_for(|d| *d)`) once a graceful shutdown has begun.
    pub fn drain_started(&self) -> tokio::sync::watch::Receiver<bool> {
        self.lifecycle.drain_started.subscribe()
    }

    /// Why the host should get no traffic now, if it should not.
    pub fn not_ready(&self) -> Option<health::NotReady> {
        if self.is_draining() {
            return Some(health::NotReady::Draining);
        }
        let redis_down = self.redis.as_ref().is_some_and(|redis| redis.is_down());
        (redis_down && self.settings.readiness_requires_redis).then_some(health::NotReady::RedisDown)
    }

    /// Whether a graceful shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.lifecycle.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Cancels every request still in flight during a graceful shutdown
    /// (the second ctrl-c).
    pub fn cancel_in_flight(&self) {
        self.lifecycle.force_stop.send_replace(true);
    }

    /// Resolves (`wait_for(|c| *c)`) once [`Self::cancel_in_flight`] is called.
    pub fn cancel_requested(&self) -> tokio::sync::watch::Receiver<bool> {
        self.lifecycle.force_stop.subscribe()
    }

    /// Stops watching component files (at shutdown: a reload must not start
    /// and hold the app now).
    pub fn stop_watching(&self) {
        self.lifecycle.watcher.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The key-value backend components share (for operators and tests).
    pub fn key_value(&self) -> &Arc<dyn keyvalue::Backend> {
        self.runtime.capabilities().key_value.backend()
    }
}
