//! Telemetry: what the server says about itself. One request record per
//! request ([`record`]), written as one access-log line ([`access_log`],
//! gathered per runtime thread by [`batch`]) and
//! counted in the one set of Prometheus metrics ([`metrics`]) that
//! `/metrics`, `/healthz` and the tests all read, and lines for floods of
//! events written at most once a second ([`summary`]), and OpenTelemetry
//! spans exported over OTLP when configured ([`trace`]).
//!
//! Everything else uses this module; it uses nothing of the server's but
//! the settings types the manifest validates.

pub mod access_log;
pub mod batch;
pub mod metrics;
pub mod record;
pub mod summary;
pub mod trace;

use std::sync::Arc;

/// Where requests are reported: the metrics and, if installed, the fast
/// access-log writer.
#[derive(Default)]
pub struct Telemetry {
    /// Every counter the server keeps.
    pub metrics: metrics::Metrics,
    /// Where request lines go; `None` makes them `tracing` events.
    pub(crate) access_log: Option<Arc<access_log::AccessLog>>,
    /// Where spans go, when tracing is on.
    pub tracing: Option<Arc<trace::Tracing>>,
}

impl Telemetry {
    /// Telemetry writing request lines to `access_log` (or as `tracing`
    /// events when `None`).
    pub fn new(access_log: Option<Arc<access_log::AccessLog>>) -> Self {
        Self { metrics: metrics::Metrics::default(), access_log, tracing: None }
    }

    /// Telemetry as [`Self::new`], exporting spans as `settings` (and the
    /// OpenTelemetry variables) say.
    pub fn with_tracing(
        access_log: Option<Arc<access_log::AccessLog>>,
        settings: &trace::TraceSettings,
    ) -> anyhow::Result<Self> {
        let metrics = metrics::Metrics::default();
        let tracing = trace::Tracing::start(settings, &metrics.traces)?;
        Ok(Self { metrics, access_log, tracing })
    }
}
