//! Wharf's integration tests: one binary, a module per capability, all of
//! them driving the real host over real sockets with real components.

mod admission;
mod foundation;
mod harness;
mod hostile_clients;
mod hostile_components;
mod keyvalue;
mod lifecycle;
mod manifest_ui;
mod outbound;
mod redis;
mod streaming;
mod tls;
mod upstream;
mod wasi_p3;
