//! Wharf: a serverless HTTP host for WebAssembly components. Every request
//! gets a fresh, isolated instance of the component its route names; shared
//! state lives in the host behind `wasi:keyvalue`.
//!
//! # Map
//! Each folder owns one concern; arrows point down (a module uses the ones
//! listed after it, never those before):
//!
//! - [`http`]: what faces clients: listeners and TLS, the per-core servers,
//!   connection handling and drain, the request path around a component,
//!   the host's own responses, the admin listener.
//! - [`app`]: the composition root: [`App`] (one server's parts),
//!   the route table, hot-swap and manifest reload, Unix signals, liveness
//!   and readiness.
//! - [`policy`]: admission control: concurrency, rate limits, worker
//!   pools, auth, client identity; each rejection and its status code.
//! - [`runtime`]: the engines (WASI 0.2 and 0.3) and instance pools, loading
//!   and caching components, the per-instance state and limits, one request
//!   through one instance, fair CPU, instance reuse.
//! - [`capabilities`]: what guests import: `wasi:keyvalue` and its backends,
//!   the outbound HTTP client and its breakers, stdout and stderr.
//! - [`telemetry`]: the request record, the access log, the metrics, the
//!   OpenTelemetry traces and their export.
//! - [`shared`]: state shared by many hosts: the Redis (or Redis Cluster)
//!   connection the key-value backend and the shared rate limits use.
//! - [`manifest`]: `wharf.toml` and Spin's `spin.toml`, each parsed into
//!   its own raw types and resolved into one [`manifest::Manifest`] with
//!   clear errors; running components' build commands. It depends on
//!   nothing else of Wharf.
//!
//! The binary (`main.rs`) only parses arguments and calls [`App::load`],
//! [`Listeners::bind_for`] and [`run`]; tests call the same three.

pub mod app;
pub mod capabilities;
pub mod http;
pub mod manifest;
pub mod policy;
pub mod runtime;
pub mod shared;
pub mod telemetry;

pub use app::{App, LoadOptions};

// The unit tests count host memory the way the server does.
#[cfg(test)]
#[global_allocator]
static GLOBAL: runtime::host_memory::CountingAllocator = runtime::host_memory::CountingAllocator;
pub use http::{Listeners, run};
