//! The runtime: everything between a request and a running guest. The
//! wasmtime engine and its instance pool ([`engine`]), components loaded
//! and pre-instantiated ([`component`]) with their compiled code cached on
//! disk ([`cache`]), the per-instance state ([`host`]) and what it may hold
//! ([`limits`]), one request run through a fresh instance ([`invoke`]), and
//! fair CPU between the guests of a thread ([`fair`]).
//!
//! It uses the capabilities guests import and the telemetry it reports to;
//! it knows nothing of routes, listeners or admission.

pub mod cache;
pub mod component;
pub mod engine;
pub mod fair;
pub mod host;
pub mod invoke;
pub mod limits;

pub use component::LoadedComponent;
pub use engine::AllocatorKind;

use crate::capabilities::Capabilities;
use crate::manifest::ComponentSpec;
use crate::telemetry::Telemetry;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;

/// The engine, the linker and what every instance is given.
pub struct Runtime {
    /// The engine every component is compiled with.
    pub engine: wasmtime::Engine,
    /// Which instance allocator the engine uses.
    pub allocator: AllocatorKind,
    pub(crate) linker: wasmtime::component::Linker<host::Host>,
    pub(crate) compile_cache: Option<cache::CompileCache>,
    pub(crate) fuel_metering: bool,
    pub(crate) epoch_interruption: bool,
    pub(crate) capabilities: Capabilities,
    pub(crate) telemetry: Arc<Telemetry>,
}

impl Runtime {
    /// Builds the engine (and its epoch ticker) and the linker; compiled
    /// components are cached in `cache_dir` if given.
    pub fn new(
        settings: &engine::EngineSettings,
        cache_dir: Option<PathBuf>,
        capabilities: Capabilities,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self> {
        let (engine, allocator) = engine::build_engine(settings)?;
        tracing::info!(?allocator, max_instances = settings.max_instances, "engine ready");
        if settings.epoch_interruption {
            engine::start_epoch_ticker(&engine);
        } else {
            tracing::warn!("epoch interruption is off: CPU-bound guests cannot be interrupted");
        }
        let linker = engine::build_linker(&engine)?;
        let compile_cache = cache_dir.map(|dir| cache::CompileCache::new(dir, &engine));
        Ok(Self {
            engine,
            allocator,
            linker,
            compile_cache,
            fuel_metering: settings.fuel,
            epoch_interruption: settings.epoch_interruption,
            capabilities,
            telemetry,
        })
    }

    /// Compiles (or loads from the cache), checks and pre-instantiates the
    /// component `spec` describes.
    pub fn load_component(&self, spec: &ComponentSpec) -> Result<LoadedComponent> {
        component::load(&self.engine, &self.linker, spec, self.compile_cache.as_ref())
    }

    /// Where the compiled code of the component with SHA-256 `digest` is
    /// cached, if there is a cache.
    pub fn compile_cache_entry(&self, digest: &str) -> Option<PathBuf> {
        self.compile_cache.as_ref().map(|cache| cache.entry_path(digest))
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
