//! The `[tracing]` table: where OpenTelemetry traces go and how many are
//! recorded (the standard `OTEL_*` variables fill in what it leaves out;
//! see `telemetry::trace::settings`).

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::time::Duration;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTracing {
    endpoint: Option<String>,
    service_name: Option<String>,
    sampler: Option<String>,
    sampler_arg: Option<f64>,
    max_queue_spans: Option<usize>,
    max_export_batch: Option<usize>,
    schedule_delay_ms: Option<u64>,
    export_timeout_secs: Option<f64>,
}

impl RawTracing {
    /// Validates the table.
    pub(super) fn validate(self) -> Result<TraceSettings> {
        if self.sampler_arg.is_some() && self.sampler.is_none() {
            bail!("tracing.sampler_arg needs tracing.sampler");
        }
        let sampler = self
            .sampler
            .map(|name| SamplerSpec::parse(&name, self.sampler_arg))
            .transpose()
            .context("tracing.sampler")?;
        if self.max_queue_spans == Some(0) || self.max_export_batch == Some(0) {
            bail!("tracing.max_queue_spans and tracing.max_export_batch must be at least 1");
        }
        if self.schedule_delay_ms.is_some_and(|ms| ms == 0 || ms > 600_000) {
            bail!("tracing.schedule_delay_ms must be between 1 and 600000");
        }
        let export_timeout = self
            .export_timeout_secs
            .map(|secs| {
                super::settings::parse_secs(Some(secs), Duration::ZERO, "tracing.export_timeout_secs")
            })
            .transpose()?;
        Ok(TraceSettings {
            endpoint: self.endpoint.filter(|e| !e.trim().is_empty()),
            service_name: self.service_name,
            sampler,
            max_queue_spans: self.max_queue_spans,
            max_export_batch: self.max_export_batch,
            schedule_delay: self.schedule_delay_ms.map(Duration::from_millis),
            export_timeout,
        })
    }
}

/// The `[tracing]` table, validated; every field optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended).
    pub endpoint: Option<String>,
    /// `service.name` of every span.
    pub service_name: Option<String>,
    /// Which traces are recorded.
    pub sampler: Option<SamplerSpec>,
    /// Spans waiting for export at most; more are dropped and counted.
    pub max_queue_spans: Option<usize>,
    /// Spans in one export request at most.
    pub max_export_batch: Option<usize>,
    /// The longest a span waits for a batch to fill.
    pub schedule_delay: Option<Duration>,
    /// How long one export may take.
    pub export_timeout: Option<Duration>,
}

/// A sampler, named as `OTEL_TRACES_SAMPLER` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSpec {
    /// Every trace.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// This share of traces, decided by trace id.
    TraceIdRatio(f64),
    /// The parent's decision; for a root, the one inside.
    ParentBasedAlwaysOn,
    /// The parent's decision; no root is sampled.
    ParentBasedAlwaysOff,
    /// The parent's decision; a share of roots.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerSpec {
    /// The sampler `name` (with `arg`, a ratio, for the ratio samplers).
    pub fn parse(name: &str, arg: Option<f64>) -> Result<Self> {
        let ratio = || -> Result<f64> {
            let ratio = arg.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&ratio) {
                bail!("the sampler's ratio must be between 0 and 1, not {ratio}");
            }
            Ok(ratio)
        };
        Ok(match name {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::TraceIdRatio(ratio()?),
            "parentbased_always_on" => Self::ParentBasedAlwaysOn,
            "parentbased_always_off" => Self::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => Self::ParentBasedTraceIdRatio(ratio()?),
            other => bail!(
                "unknown sampler {other:?}: always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio"
            ),
        })
    }
}
