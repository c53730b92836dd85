//! The `[tracing]` table: where OpenTelemetry traces go and how many are
//! recorded (the standard `OTEL_*` variables fill in what it leaves out;
//! see `telemetry::trace::settings`).

use crate::telemetry::trace::{SamplerSpec, TraceSettings};
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
