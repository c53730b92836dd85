//! OpenTelemetry traces: one server span per request, child spans for what
//! happens to it (queueing, instantiation, the guest, its outbound,
//! key-value and SQLite calls), W3C trace context in and out, exported
//! over OTLP/HTTP by [`export`] without ever making a request wait.
//!
//! Off unless an endpoint is configured (`[tracing] endpoint`, or the
//! standard `OTEL_EXPORTER_OTLP_*ENDPOINT` variables). The sampling
//! decision is Wharf's: by default every trace, decided by trace id
//! (`traceidratio`), so a client's `sampled` flag cannot make the server
//! record more than its sampler says, and every span of one trace gets the
//! same decision, in process or on another host.

pub mod export;
pub mod settings;

pub use export::TraceMetrics;
pub use settings::{SamplerSpec, TraceSettings};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

pub use opentelemetry::trace::TraceId;

/// The tracer of one app: where its spans start, and the exporter they end
/// in.
pub struct Tracing {
    tracer: SdkTracer,
    /// Kept for its processor's life: the spans' way out.
    _provider: SdkTracerProvider,
    processor: Arc<export::QueuedExport>,
    propagator: TraceContextPropagator,
    flush_timeout: Duration,
}

impl Tracing {
    /// Starts tracing as `settings` and the environment say, or `None`
    /// when neither names an endpoint.
    pub fn start(settings: &TraceSettings, metrics: &Arc<TraceMetrics>) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(resolved) = settings.resolve(|name| std::env::var(name).ok())? else {
            return Ok(None);
        };
        let mut resource = opentelemetry_sdk::Resource::builder();
        if let Some(name) = &resolved.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let resource =
            resource.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build();
        let processor = Arc::new(export::QueuedExport::start(&resolved, &resource, metrics.clone())?);
        let provider = SdkTracerProvider::builder()
            .with_span_processor(export::Shared(processor.clone()))
            .with_sampler(resolved.sampler.to_sdk())
            .with_resource(resource)
            .build();
        tracing::info!(endpoint = %resolved.endpoint, sampler = ?resolved.sampler, "exporting traces over OTLP/HTTP");
        Ok(Some(Arc::new(Self {
            tracer: provider.tracer("wharf"),
            _provider: provider,
            processor,
            propagator: TraceContextPropagator::new(),
            flush_timeout: resolved.export_timeout,
        })))
    }

    /// Starts the server span of a request whose headers are `headers`,
    /// continuing the trace their `traceparent`/`tracestate` carry, if any.
    pub fn server_span(&self, headers: &http::HeaderMap, name: String, attributes: Vec<KeyValue>) -> Context {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        self.span(&parent, name, SpanKind::Server, attributes)
    }

    /// Starts a span under `parent` (an internal one, unless `kind` says
    /// otherwise); the context returned holds it.
    pub fn span(
        &self,
        parent: &Context,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// Starts a client span under the span current on this thread (the
    /// guest's, while a fresh instance runs) or else the context `headers`
    /// carry (what a reused instance passed on from its request).
    pub fn client_span(&self, headers: &http::HeaderMap, name: String, attributes: Vec<KeyValue>) -> Context {
        let current = Context::current();
        let parent = if current.has_active_span() {
            current
        } else {
            self.propagator.extract(&HeaderExtractor(headers))
        };
        self.span(&parent, name, SpanKind::Client, attributes)
    }

    /// Starts an internal span under the one current on this thread, if
    /// there is one (a host call made by a fresh instance).
    pub fn span_in_current(&self, name: &'static str, attributes: Vec<KeyValue>) -> Option<Context> {
        let current = Context::current();
        current.has_active_span().then(|| self.span(&current, name, SpanKind::Internal, attributes))
    }

    /// Writes `context` into `headers` as `traceparent` (and `tracestate`),
    /// replacing what was there.
    pub fn inject(&self, context: &Context, headers: &mut http::HeaderMap) {
        headers.remove("traceparent");
        headers.remove("tracestate");
        self.propagator.inject_context(context, &mut HeaderInjector(headers));
    }

    /// Exports what is queued, waiting at most `timeout` (at shutdown) or
    /// the export timeout, whichever is shorter.
    pub fn flush(&self, timeout: Duration) {
        let timeout = timeout.min(self.flush_timeout);
        if let Err(error) = self.processor.flush_within(timeout) {
            tracing::warn!(%error, ?timeout, "traces not all exported");
        }
    }
}

/// Ends the span `context` holds with `status` (`Err` carries the
/// reason).
pub fn end(context: &Context, outcome: Result<(), Cow<'static, str>>) {
    let span = context.span();
    if let Err(reason) = outcome {
        span.set_status(Status::error(reason));
    }
    span.end();
}

/// The trace id of the span `context` holds, when it is being recorded
/// (for log lines).
pub fn trace_id(context: &Context) -> Option<TraceId> {
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_sampled().then(|| span_context.trace_id())
}

pin_project_lite::pin_project! {
    /// A future with a span current while it is polled: the guest's, so
    /// the host calls it makes (outbound, key-value, SQLite) start their
    /// spans under it.
    pub struct InSpan<F> {
        #[pin]
        inner: F,
        context: Option<Context>,
    }
}

impl<F> InSpan<F> {
    /// `inner`, with `context` current while polled (nothing if `None`).
    pub fn new(inner: F, context: Option<Context>) -> Self {
        Self { inner, context }
    }
}

impl<F: std::future::Future> std::future::Future for InSpan<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = self.project();
        let _attached = this.context.as_ref().map(|context| context.clone().attach());
        this.inner.poll(cx)
    }
}

/// A span that ends when dropped, if it has not yet (held by what lives as
/// long as the work it measures: a response body, a wait).
pub struct SpanGuard(pub Option<Context>);

impl SpanGuard {
    /// Ends the span now.
    pub fn end(&mut self) {
        if let Some(context) = self.0.take() {
            context.span().end();
        }
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        self.end();
    }
}
