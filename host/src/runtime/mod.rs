//! The runtime: everything between a request and a running guest. The
//! wasmtime engine and its instance pool ([`engine`]), components loaded
//! and pre-instantiated ([`component`]) with their compiled code cached on
//! disk ([`cache`]), the per-instance state ([`host`]) and what it may hold
//! ([`limits`]) and what it makes the host hold ([`host_memory`]), one
//! request run through a fresh instance ([`invoke`]) and the response body
//! the connection reads from it ([`guest_body`]), how long the
//! thread's instances run ([`instance_time`]), and
//! fair CPU between the guests of a thread ([`fair`]), instances reused
//! across requests where a route asks for it ([`reuse`]), and the epoch
//! ticker that drives the fairness ([`ticker`]); which server worker a
//! thread is ([`worker`]); which of the pool's fast
//! paths the machine offers ([`mechanisms`]).
//!
//! It uses the capabilities guests import and the telemetry it reports to;
//! it knows nothing of routes, listeners or admission.

pub mod cache;
pub mod component;
pub mod engine;
pub mod fair;
pub mod guest_body;
pub mod host;
pub mod host_memory;
pub mod instance_time;
pub mod invoke;
pub mod limits;
pub mod mechanisms;
pub mod reuse;
pub mod ticker;
pub mod worker;

pub use component::LoadedComponent;
pub use engine::{AllocatorKind, HandlerKind};

use crate::capabilities::Capabilities;
use crate::manifest::ComponentSpec;
use crate::telemetry::Telemetry;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;

/// An engine with its linker and compile cache.
pub struct EngineParts {
    /// The engine.
    pub engine: wasmtime::Engine,
    /// Which instance allocator it uses.
    pub allocator: AllocatorKind,
    pub(crate) linker: wasmtime::component::Linker<host::Host>,
    pub(crate) compile_cache: Option<cache::CompileCache>,
}

/// The engines, their linkers and what every instance is given. The WASI
/// 0.2 engine is made at start; the WASI 0.3 one (with the component-model
/// concurrency machinery, which would cost every 0.2 request) only when a
/// 0.3 component is first loaded.
pub struct Runtime {
    /// The engine WASI 0.2 components are compiled with.
    pub engine: wasmtime::Engine,
    /// Which instance allocator it uses.
    pub allocator: AllocatorKind,
    p2: EngineParts,
    p3: std::sync::OnceLock<EngineParts>,
    settings: engine::EngineSettings,
    cache_dir: Option<PathBuf>,
    pub(crate) fuel_metering: bool,
    pub(crate) epoch_interruption: bool,
    pub(crate) capabilities: Capabilities,
    pub(crate) telemetry: Arc<Telemetry>,
    /// The pool's fast paths in use on this machine.
    pub mechanisms: mechanisms::PoolMechanisms,
    /// Instances alive, for the epoch ticker.
    pub(crate) activity: Arc<ticker::Activity>,
}

impl Runtime {
    /// Builds the WASI 0.2 engine (and its epoch ticker) and linker;
    /// compiled components are cached in `cache_dir` if given.
    pub fn new(
        settings: &engine::EngineSettings,
        cache_dir: Option<PathBuf>,
        capabilities: Capabilities,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self> {
        if !settings.epoch_interruption {
            tracing::warn!("epoch interruption is off: CPU-bound guests cannot be interrupted");
        }
        let activity = Arc::new(ticker::Activity::new(telemetry.metrics.live_instances_gauge().clone()));
        let p2 = Self::engine_parts(settings, cache_dir.as_deref(), HandlerKind::P2, &activity)?;
        let mechanisms = mechanisms::PoolMechanisms::detect(p2.allocator, settings.pagemap_scan);
        mechanisms.log();
        if !host_memory::is_counting() {
            tracing::warn!(
                "host memory per instance is not counted: install wharf::runtime::host_memory::CountingAllocator \
                 as the global allocator (the wharf binary does)"
            );
        }
        Ok(Self {
            mechanisms,
            engine: p2.engine.clone(),
            allocator: p2.allocator,
            p2,
            p3: std::sync::OnceLock::new(),
            settings: settings.clone(),
            cache_dir,
            fuel_metering: settings.fuel,
            epoch_interruption: settings.epoch_interruption,
            capabilities,
            telemetry,
            activity,
        })
    }

    fn engine_parts(
        settings: &engine::EngineSettings,
        cache_dir: Option<&std::path::Path>,
        kind: HandlerKind,
        activity: &Arc<ticker::Activity>,
    ) -> Result<EngineParts> {
        let (engine, allocator) = engine::build_engine(settings, kind)?;
        tracing::info!(
            ?allocator,
            kind = kind.label(),
            max_instances = settings.max_instances,
            "engine ready"
        );
        if settings.epoch_interruption {
            ticker::start(&engine, activity.clone());
        }
        let linker = engine::build_linker(&engine, kind)?;
        let compile_cache = cache_dir.map(|dir| cache::CompileCache::new(dir.to_path_buf(), &engine));
        Ok(EngineParts { engine, allocator, linker, compile_cache })
    }

    /// The engine for `kind`, made now if it is the first of its kind.
    pub fn engine_for(&self, kind: HandlerKind) -> Result<&EngineParts> {
        match kind {
            HandlerKind::P2 => Ok(&self.p2),
            HandlerKind::P3 => {
                if let Some(parts) = self.p3.get() {
                    return Ok(parts);
                }
                let parts = Self::engine_parts(
                    &self.settings,
                    self.cache_dir.as_deref(),
                    HandlerKind::P3,
                    &self.activity,
                )?;
                Ok(self.p3.get_or_init(|| parts))
            }
        }
    }

    /// Whether the WASI 0.3 engine exists (a 0.3 component was loaded).
    pub fn has_p3_engine(&self) -> bool {
        self.p3.get().is_some()
    }

    /// Compiles (or loads from the cache), checks and pre-instantiates the
    /// component `spec` describes.
    /// `reused`: some route reuses its instances.
    pub fn load_component(&self, spec: &ComponentSpec, reused: bool) -> Result<LoadedComponent> {
        component::load(self, spec, reused)
    }

    /// Where the compiled code of `component` is cached, if there is a
    /// cache.
    pub fn compile_cache_entry(&self, component: &LoadedComponent) -> Option<PathBuf> {
        let kind = if component.reused { HandlerKind::P3 } else { component.kind };
        let parts = self.engine_for(kind).ok()?;
        parts.compile_cache.as_ref().map(|cache| cache.entry_path(&component.digest))
    }

    /// Whether fuel is metered (fixed at start).
    pub fn fuel_metering(&self) -> bool {
        self.fuel_metering
    }

    /// The capabilities guests are given (key-value, outbound HTTP).
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
}
