//! HTTP: everything that faces clients. Listening sockets and TLS
//! ([`listener`], [`tls`]), the per-core runtimes that accept connections
//! and drain them on shutdown ([`server`]), each connection's deadlines
//! ([`connection`]), path normalisation ([`path`]), request bodies read
//! ahead of admission under a pace ([`request_body`]), the kernel's arrival
//! time of requests for admission by delay ([`arrival`]), the request path
//! around a component ([`service`]) with Spin's conventions for Spin apps
//! ([`spin`]), the host's own responses ([`response`]) and the admin
//! listener ([`admin`]).
//!
//! It serves an [`App`](crate::App): it uses the route table, admission
//! policy, runtime and telemetry the app is made of.

pub mod admin;
pub mod arrival;
pub mod connection;
pub mod listener;
pub mod path;
pub mod request_body;
pub mod response;
pub mod server;
pub mod service;
pub mod spin;
pub mod tls;

pub use listener::Listeners;
pub use server::run;
