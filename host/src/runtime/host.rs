//! `Host`: the per-request state inside each `Store` (the `T` of
//! `Store<T>`), and the views wasmtime's WASI crates borrow from it.
//!
//! One `Host` lives exactly as long as one instance; dropping it is how the
//! live-instance count goes down, whether the request finished, trapped or
//! was cancelled.

use crate::capabilities::keyvalue::{KeyValueCtx, KeyValueView};
use crate::capabilities::outbound::OutboundHooks;
use crate::capabilities::spin::sqlite::SqliteView;
use crate::capabilities::spin::variables::Variables;
use crate::capabilities::sqlite::SqliteCtx;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// State of one instance, created fresh for every request.
pub struct Host {
    pub(crate) table: ResourceTable,
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) config: Arc<WasiConfigVariables>,
    pub(crate) key_value: KeyValueCtx,
    pub(crate) variables: Variables,
    pub(crate) sqlite: SqliteCtx,
    pub(crate) limits: super::limits::InstanceLimiter,
    pub(crate) outbound: OutboundHooks,
    /// The epoch ticks the instance ran into lately (see `fair`).
    pub(crate) epoch_ticks: super::fair::Ticks,
    /// What its host calls made the host hold (see `host_memory`).
    pub(crate) host_memory: super::host_memory::HostMemory,
    _live: LiveInstance,
}

/// What one instance's state is made of.
pub(crate) struct HostParts {
    pub(crate) wasi: WasiCtx,
    pub(crate) config: Arc<WasiConfigVariables>,
    pub(crate) variables: Variables,
    pub(crate) key_value: KeyValueCtx,
    pub(crate) sqlite: SqliteCtx,
    pub(crate) limits: super::limits::InstanceLimiter,
    pub(crate) outbound: OutboundHooks,
    pub(crate) live: LiveInstance,
    pub(crate) host_memory: super::host_memory::HostMemory,
}

impl Host {
    pub(crate) fn new(parts: HostParts) -> Self {
        let HostParts { wasi, config, variables, key_value, sqlite, limits, outbound, live, host_memory } =
            parts;
        Self {
            table: ResourceTable::new(),
            wasi,
            http: WasiHttpCtx::new(),
            config,
            key_value,
            variables,
            sqlite,
            limits,
            outbound,
            epoch_ticks: super::fair::Ticks::fresh(),
            host_memory,
            _live: live,
        }
    }

    pub(crate) fn key_value(&mut self) -> KeyValueView<'_> {
        KeyValueView { ctx: &self.key_value, table: &mut self.table }
    }

    pub(crate) fn variables(&mut self) -> &Variables {
        &self.variables
    }

    pub(crate) fn sqlite(&mut self) -> SqliteView<'_> {
        SqliteView { ctx: &self.sqlite, table: &mut self.table }
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outbound }
    }
}

/// Counts one live instance from creation until drop, for the metrics and
/// the epoch ticker.
pub(crate) struct LiveInstance(Gauge);

impl LiveInstance {
    pub(crate) fn new(gauge: &Gauge, activity: &super::ticker::Activity) -> Self {
        activity.enter();
        Self(gauge.clone())
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.dec();
    }
}
