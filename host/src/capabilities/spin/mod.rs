//! Spin's own interfaces, on Wharf's backends and under Wharf's limits and
//! per-component permissions (default deny): key-value ([`key_value`]),
//! variables ([`variables`]) and SQLite ([`sqlite`]), each in the versions
//! Spin's SDKs import. The `wasi:keyvalue` and `wasi:config` versions Spin
//! ships live beside Wharf's own (`keyvalue/draft2.rs`, `variables.rs`).
//!
//! The Spin interfaces Wharf does not serve are named in [`UNSERVED`], so
//! a component importing one fails at load saying so.

pub mod key_value;
pub mod sqlite;
pub mod variables;

/// Spin interfaces Wharf does not serve, by the name a component imports
/// them under (prefix, version ignored), with what they are.
pub const UNSERVED: &[(&str, &str)] = &[
    ("spin:redis/redis", "Redis"),
    ("fermyon:spin/redis", "Redis"),
    ("spin:mqtt/mqtt", "MQTT"),
    ("fermyon:spin/mqtt", "MQTT"),
    ("spin:postgres/postgres", "PostgreSQL"),
    ("fermyon:spin/postgres", "PostgreSQL"),
    ("spin:mysql/mysql", "MySQL"),
    ("fermyon:spin/mysql", "MySQL"),
    ("fermyon:spin/llm", "LLM inference"),
    ("fermyon:spin/rdbms-types", "relational databases"),
    ("wasi:otel/", "OpenTelemetry from guests"),
];

/// What Spin interface `import` names, if Wharf does not serve it.
pub fn unserved(import: &str) -> Option<&'static str> {
    UNSERVED.iter().find(|(prefix, _)| import.starts_with(prefix)).map(|(_, what)| *what)
}
