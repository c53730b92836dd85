//! Capabilities: what guests import beyond WASI itself, implemented on the
//! host. `wasi:keyvalue` over pluggable backends ([`keyvalue`]),
//! `wasi:http/outgoing-handler` through one pooled, allow-listed client
//! ([`outbound`]), and stdout and stderr as prefixed log lines ([`stdio`]).
//! (`wasi:config` is wasmtime's own, fed from the manifest.)
//!
//! This module uses telemetry and the manifest's settings, nothing above.

pub mod keyvalue;
pub mod outbound;
pub mod spin;
pub mod sqlite;
pub mod stdio;

use std::sync::Arc;

/// The shared state behind the capabilities: one key-value backend and one
/// outbound client for the whole server.
pub struct Capabilities {
    /// `wasi:keyvalue`: the backend, its limits, list cursors.
    pub key_value: Arc<keyvalue::KeyValue>,
    /// The client behind `wasi:http/outgoing-handler`.
    pub outbound: Arc<outbound::OutboundClient>,
    /// The SQLite databases behind Spin's SQLite interface.
    pub sqlite: Arc<sqlite::Sqlite>,
    /// Bytes of output one instance may write.
    pub guest_output_budget: usize,
}
