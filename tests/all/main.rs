//! Wharf's integration tests: one binary, a module per capability, all of
//! them driving the real host over real sockets with real components.

/// The server's allocator: host memory is counted per instance here too.
#[global_allocator]
static GLOBAL: wharf::runtime::host_memory::CountingAllocator =
    wharf::runtime::host_memory::CountingAllocator;

mod admission;
mod deploy;
mod foundation;
mod harness;
mod host_memory;
mod hostile_clients;
mod hostile_components;
mod keyvalue;
mod lifecycle;
mod manifest_ui;
mod outbound;
mod redis;
mod request_bodies;
mod spin;
mod streaming;
mod tls;
mod traces;
mod upstream;
mod wasi_p3;
