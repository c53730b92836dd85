//! `Host`: the per-request state inside each `Store` (the `T` of
//! `Store<T>`), and the views wasmtime's WASI crates borrow from it.
//!
//! One `Host` lives exactly as long as one instance; dropping it is how the
//! live-instance count goes down, whether the request finished, trapped or
//! was cancelled.

use crate::capabilities::keyvalue::{KeyValueCtx, KeyValueView};
use crate::capabilities::outbound::OutboundHooks;
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
    pub(crate) limits: super::limits::InstanceLimiter,
    pub(crate) outbound: OutboundHooks,
    /// The epoch ticks the instance ran into lately (see `fair`).
    pub(crate) epoch_ticks: super::fair::Ticks,
    /// What its host calls made the host hold (see `host_memory`).
    pub(crate) host_memory: super::host_memory::HostMemory,
    _live: LiveInstance,
}

impl Host {
    pub(crate) fn new(
        config: Arc<WasiConfigVariables>,
        key_value: KeyValueCtx,
        limits: super::limits::InstanceLimiter,
        outbound: OutboundHooks,
        output: crate::capabilities::stdio::GuestOutput,
        live: LiveInstance,
        host_memory: super::host_memory::HostMemory,
    ) -> Self {
        Self {
            table: ResourceTable::new(),
            wasi: WasiCtx::builder().stdout(output.stdout()).stderr(output.stderr()).build(),
            http: WasiHttpCtx::new(),
            config,
            key_value,
            limits,
            outbound,
            epoch_ticks: super::fair::Ticks::default(),
            host_memory,
            _live: live,
        }
    }

    pub(crate) fn key_value(&mut self) -> KeyValueView<'_> {
        KeyValueView { ctx: &self.key_value, table: &mut self.table }
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
