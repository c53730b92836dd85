//! Telemetry: what the server says about itself. One request record per
//! request ([`record`]), written as one access-log line ([`access_log`],
//! gathered per runtime thread by [`batch`]) and
//! counted in the one set of Prometheus metrics ([`metrics`]) that
//! `/metrics`, `/healthz` and the tests all read, and lines for floods of
//! events written at most once a second ([`summary`]).
//!
//! Everything else uses this module; it uses nothing of the server's.

pub mod access_log;
pub mod batch;
pub mod metrics;
pub mod record;
pub mod summary;

use std::sync::Arc;

/// Where requests are reported: the metrics and, if installed, the fast
/// access-log writer.
#[derive(Default)]
pub struct Telemetry {
    /// Every counter the server keeps.
    pub metrics: metrics::Metrics,
    /// Where request lines go; `None` makes them `tracing` events.
    pub(crate) access_log: Option<Arc<access_log::AccessLog>>,
}

impl Telemetry {
    /// Telemetry writing request lines to `access_log` (or as `tracing`
    /// events when `None`).
    pub fn new(access_log: Option<Arc<access_log::AccessLog>>) -> Self {
        Self { metrics: metrics::Metrics::default(), access_log }
    }
}
