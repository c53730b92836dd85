//! The wasmtime `Engine` every component is compiled with, its instance
//! allocator, and the `Linker` that provides Wharf's imports.
//!
//! The pooling allocator is sized from the server's concurrency limit, so a
//! burst meets the admission semaphore, never an exhausted pool. Its reset
//! settings are the ones measured to matter: pagemap scan (so only dirty pages
//! are reset) and keep-resident memory and tables (memset instead of
//! `madvise`, which costs TLB-shootdown IPIs).

use super::host::Host;
use super::mechanisms::PoolMechanisms;
use crate::capabilities::keyvalue;
use anyhow::{Context, Result};
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::limits::{CORE_INSTANCES_PER_INSTANCE, MEMORIES_PER_INSTANCE, TABLES_PER_INSTANCE};

/// Settings that shape the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Instances alive at once; sizes the pool. Requests beyond the admission
    /// limit are turned away before they reach it.
    pub max_instances: usize,
    /// Largest linear memory one instance may have, in bytes.
    pub max_instance_memory: u64,
    /// Whether to try the pooling allocator (falls back to on-demand).
    pub pooling: bool,
    /// Whether to meter fuel (only when some component sets `fuel`).
    pub fuel: bool,
    /// Epoch interruption (default on): running guests yield every tick
    /// and CPU-bound ones can be stopped. Off only to measure its cost.
    pub epoch_interruption: bool,
    /// Use the kernel's pagemap scan where it has one (default on). Off
    /// only to measure the fallback.
    pub pagemap_scan: bool,
}

/// Which WASI HTTP handler an engine runs: WASI 0.2 ones need none of the
/// component-model concurrency machinery, WASI 0.3 ones need all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandlerKind {
    /// `wasi:http/incoming-handler@0.2.x`.
    P2,
    /// `wasi:http/handler@0.3.0`.
    P3,
}

impl HandlerKind {
    /// How logs and `/healthz` name it.
    pub fn label(self) -> &'static str {
        match self {
            Self::P2 => "wasi-0.2",
            Self::P3 => "wasi-0.3",
        }
    }
}

/// Which instance allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorKind {
    /// Pre-reserved slots, reused across requests.
    Pooling,
    /// mmap per instance: slower, used where the pool cannot be reserved.
    OnDemand,
}

/// Builds the engine for `kind`, preferring the pooling allocator.
pub fn build_engine(settings: &EngineSettings, kind: HandlerKind) -> Result<(Engine, AllocatorKind)> {
    if settings.pooling {
        match Engine::new(&config(settings, kind, Some(pooling_config(settings)))) {
            Ok(engine) => return Ok((engine, AllocatorKind::Pooling)),
            Err(error) => tracing::warn!(
                error = %error,
                "pooling allocator unavailable on this machine; falling back to on-demand allocation"
            ),
        }
    }
    let engine = Engine::new(&config(settings, kind, None))
        .map_err(anyhow::Error::from)
        .context("cannot create the wasmtime engine")?;
    Ok((engine, AllocatorKind::OnDemand))
}

fn config(settings: &EngineSettings, kind: HandlerKind, pooling: Option<PoolingAllocationConfig>) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(settings.epoch_interruption);
    config.consume_fuel(settings.fuel);
    // WASI 0.2 handlers need none of the component-model concurrency
    // machinery; with it on, every guest-to-host call allocates a host task
    // (measured: several microseconds a request). So the WASI 0.3 engine,
    // made only when a 0.3 component is loaded, is the only one with it.
    match kind {
        HandlerKind::P2 => {
            config.concurrency_support(false);
        }
        HandlerKind::P3 => {
            config.concurrency_support(true);
            config.wasm_component_model_async(true);
        }
    }
    // A reservation as large as the largest memory allowed: small slots keep
    // the pool's address space and page tables small (bounds checks are
    // explicit, which costs guests little).
    config.memory_reservation(settings.max_instance_memory);
    config.memory_reservation_for_growth(0);
    if let Some(pooling) = pooling {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

fn pooling_config(settings: &EngineSettings) -> PoolingAllocationConfig {
    let mechanisms = PoolMechanisms::detect(AllocatorKind::Pooling, settings.pagemap_scan);
    let instances = u32::try_from(settings.max_instances).unwrap_or(u32::MAX);
    let mut pool = PoolingAllocationConfig::new();
    // Every instance can have its full share of memories and tables at
    // once (components needing more are refused at load), so no component
    // can exhaust the pool's slots for the others.
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
        .max_core_instances_per_component(CORE_INSTANCES_PER_INSTANCE)
        .max_memories_per_component(MEMORIES_PER_INSTANCE)
        .max_memories_per_module(MEMORIES_PER_INSTANCE)
        .total_memories(instances.saturating_mul(MEMORIES_PER_INSTANCE))
        .max_tables_per_component(TABLES_PER_INSTANCE)
        .max_tables_per_module(TABLES_PER_INSTANCE)
        .total_tables(instances.saturating_mul(TABLES_PER_INSTANCE))
        .total_stacks(instances)
        .max_memory_size(settings.max_instance_memory as usize)
        // Measured (hello, c=100): 64 KiB, 1 MiB and 4 MiB keep-resident
        // cost the same CPU with pagemap scan on (only dirty pages are
        // reset); without pagemap scan, resetting 1 MiB by memset made a
        // request 5x dearer, so less is kept then; decommit batches of 100
        // made it 10% dearer.
        .linear_memory_keep_resident(mechanisms.memory_keep_resident_bytes)
        .table_keep_resident(mechanisms.table_keep_resident_bytes)
        .pagemap_scan(if mechanisms.pagemap_scan { Enabled::Auto } else { Enabled::No })
        // Measured: keeping every slot warm (instead of wasmtime's 100)
        // saved 0-4 us a hello request at c=1000 but raised the memory per
        // request in flight from 31 to 52 KiB; memory wins.
        .max_unused_warm_slots(100);
    pool
}

/// The linker with every import Wharf provides: all of WASI 0.2 (a Rust
/// component built with std imports `wasi:cli/*`), `wasi:http`,
/// `wasi:keyvalue` and `wasi:config`, Spin's interfaces; for WASI 0.3
/// components, all of WASI 0.3 and its `wasi:http` as well (they may import
/// 0.2 interfaces too), and Spin's async interfaces.
pub fn build_linker(engine: &Engine, kind: HandlerKind) -> Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    if kind == HandlerKind::P3 {
        wasmtime_wasi::p3::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
    }
    wasmtime_wasi_config::add_to_linker(&mut linker, |host: &mut Host| {
        wasmtime_wasi_config::WasiConfig::new(&host.config)
    })
    .map_err(anyhow::Error::from)?;
    keyvalue::add_to_linker(&mut linker, Host::key_value).map_err(anyhow::Error::from)?;
    add_spin_to_linker(&mut linker, kind).map_err(anyhow::Error::from)?;
    Ok(linker)
}

/// Spin's interfaces and the standard ones at Spin's versions; those that
/// are component-model `async` only on the WASI 0.3 engine.
fn add_spin_to_linker(linker: &mut Linker<Host>, kind: HandlerKind) -> wasmtime::Result<()> {
    use crate::capabilities::spin;
    keyvalue::draft2::add_to_linker(linker, Host::key_value)?;
    spin::key_value::add_v2_to_linker(linker, Host::key_value)?;
    spin::variables::add_sync_to_linker(linker, Host::variables)?;
    spin::sqlite::add_sync_to_linker(linker, Host::sqlite)?;
    if kind == HandlerKind::P3 {
        spin::key_value::add_v3_to_linker(linker, Host::key_value)?;
        spin::variables::add_async_to_linker(linker, Host::variables)?;
        spin::sqlite::add_async_to_linker(linker, Host::sqlite)?;
    }
    Ok(())
}
