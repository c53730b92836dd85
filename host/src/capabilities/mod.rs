//! Capabilities: what guests import beyond WASI itself, implemented on the
//! host. `wasi:keyvalue` over pluggable backends ([`keyvalue`]) and
//! `wasi:http/outgoing-handler` through one pooled, allow-listed client
//! ([`outbound`]). (`wasi:config` is wasmtime's own, fed from the manifest.)
//!
//! This module uses telemetry and the manifest's settings, nothing above.

pub mod keyvalue;
pub mod outbound;

use std::sync::Arc;

/// The shared state behind the capabilities: one key-value backend and one
/// outbound client for the whole server.
pub struct Capabilities {
    /// Where `wasi:keyvalue` data lives.
    pub key_value: Arc<dyn keyvalue::Backend>,
    /// The client behind `wasi:http/outgoing-handler`.
    pub outbound: Arc<outbound::OutboundClient>,
}
