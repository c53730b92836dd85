//! Where traces go and how many: the `[tracing]` table (as the manifest
//! validated it) resolved against the standard OpenTelemetry environment
//! variables (the table wins where both say something).

pub use crate::manifest::traces::{SamplerSpec, TraceSettings};
use anyhow::{Context as _, Result, bail};
use std::time::Duration;

impl SamplerSpec {
    pub(super) fn to_sdk(self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler;
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(ratio) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}

/// Tracing as it will run: every setting decided.
#[derive(Debug, Clone)]
pub struct ResolvedTracing {
    /// The full URL spans are posted to.
    pub endpoint: String,
    pub service_name: Option<String>,
    pub sampler: SamplerSpec,
    pub max_queue_spans: usize,
    pub max_export_batch: usize,
    pub schedule_delay: Duration,
    pub export_timeout: Duration,
}

/// The OTLP/HTTP path for traces under a base URL.
const TRACES_PATH: &str = "/v1/traces";

impl TraceSettings {
    /// Decides every setting from the table, then the variables `env`
    /// reads, then the defaults; `None` when tracing is off (no endpoint,
    /// `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none` without one
    /// in the table).
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<Option<ResolvedTracing>> {
        let env = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let endpoint = match &self.endpoint {
            Some(base) => traces_url(base),
            None if env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none") => return Ok(None),
            None => match (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), env("OTEL_EXPORTER_OTLP_ENDPOINT")) {
                (Some(full), _) => full,
                (None, Some(base)) => traces_url(&base),
                (None, None) => return Ok(None),
            },
        };
        check_url(&endpoint)?;
        let sampler = match self.sampler {
            Some(sampler) => sampler,
            None => match env("OTEL_TRACES_SAMPLER") {
                Some(name) => {
                    let arg = env("OTEL_TRACES_SAMPLER_ARG")
                        .map(|a| a.parse::<f64>().with_context(|| format!("OTEL_TRACES_SAMPLER_ARG={a:?}")))
                        .transpose()?;
                    SamplerSpec::parse(&name, arg).context("OTEL_TRACES_SAMPLER")?
                }
                None => SamplerSpec::TraceIdRatio(1.0),
            },
        };
        let number = |name: &str| -> Result<Option<u64>> {
            env(name).map(|v| v.parse::<u64>().with_context(|| format!("{name}={v:?}"))).transpose()
        };
        let millis =
            |name: &str| -> Result<Option<Duration>> { Ok(number(name)?.map(Duration::from_millis)) };
        let max_queue_spans = match self.max_queue_spans {
            Some(n) => n,
            None => number("OTEL_BSP_MAX_QUEUE_SIZE")?.map_or(2048, |n| n as usize),
        };
        let max_export_batch = match self.max_export_batch {
            Some(n) => n,
            None => number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")?.map_or(512, |n| n as usize),
        };
        if max_queue_spans == 0 || max_export_batch == 0 {
            bail!("tracing: the queue and the batch must hold at least one span");
        }
        Ok(Some(ResolvedTracing {
            endpoint,
            service_name: self.service_name.clone().or_else(|| {
                // The SDK reads OTEL_SERVICE_NAME itself; Wharf's name is
                // the default instead of `unknown_service`.
                env("OTEL_SERVICE_NAME").is_none().then(|| "wharf".to_string())
            }),
            sampler,
            max_queue_spans,
            max_export_batch: max_export_batch.min(max_queue_spans),
            schedule_delay: match self.schedule_delay {
                Some(delay) => delay,
                None => millis("OTEL_BSP_SCHEDULE_DELAY")?.unwrap_or(Duration::from_secs(5)),
            },
            export_timeout: match self.export_timeout {
                Some(timeout) => timeout,
                None => millis("OTEL_EXPORTER_OTLP_TIMEOUT")?.unwrap_or(Duration::from_secs(10)),
            },
        }))
    }
}

/// `base` with the traces path appended, unless it is there already.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with(TRACES_PATH) { base.to_string() } else { format!("{base}{TRACES_PATH}") }
}

fn check_url(url: &str) -> Result<()> {
    let uri: http::Uri = url.parse().with_context(|| format!("the traces endpoint {url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => Ok(()),
        _ => bail!("the traces endpoint {url:?} must be an http:// or https:// URL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(settings: &TraceSettings, vars: &[(&str, &str)]) -> Option<ResolvedTracing> {
        settings.resolve(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())).unwrap()
    }

    #[test]
    fn off_without_an_endpoint_on_with_one_from_either_place() {
        assert!(resolve(&TraceSettings::default(), &[]).is_none());
        let env =
            resolve(&TraceSettings::default(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]).unwrap();
        assert_eq!(env.endpoint, "http://c:4318/v1/traces");
        assert_eq!(env.sampler, SamplerSpec::TraceIdRatio(1.0));
        assert_eq!(env.service_name.as_deref(), Some("wharf"));
        let full = resolve(
            &TraceSettings::default(),
            &[
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ],
        )
        .unwrap();
        assert_eq!(full.endpoint, "http://t:1/x", "the signal's own variable is taken as it is");
        let table = TraceSettings { endpoint: Some("http://m:4318".into()), ..Default::default() };
        assert_eq!(
            resolve(&table, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c")]).unwrap().endpoint,
            "http://m:4318/v1/traces"
        );
        assert!(resolve(&table, &[("OTEL_SDK_DISABLED", "true")]).is_none());
        assert!(
            resolve(
                &TraceSettings::default(),
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_TRACES_EXPORTER", "none")]
            )
            .is_none()
        );
    }

    #[test]
    fn the_sampler_comes_from_the_table_then_the_environment() {
        let base = TraceSettings { endpoint: Some("http://m".into()), ..Default::default() };
        let vars = [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")];
        assert_eq!(resolve(&base, &vars).unwrap().sampler, SamplerSpec::ParentBasedTraceIdRatio(0.25));
        let table = TraceSettings { sampler: Some(SamplerSpec::AlwaysOff), ..base.clone() };
        assert_eq!(resolve(&table, &vars).unwrap().sampler, SamplerSpec::AlwaysOff);
        assert!(base.resolve(|n| (n == "OTEL_TRACES_SAMPLER").then(|| "sometimes".into())).is_err());
        assert!(SamplerSpec::parse("traceidratio", Some(1.5)).is_err());
        assert!(
            TraceSettings { endpoint: Some("ftp://x".into()), ..Default::default() }
                .resolve(|_| None)
                .is_err()
        );
    }
}
