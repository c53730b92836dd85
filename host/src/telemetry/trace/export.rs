//! Getting spans to the collector without making a request wait: a
//! bounded queue that ended spans enter without blocking (a full queue
//! drops the span and counts it), and one thread that takes them out in
//! batches and posts them with the OTLP exporter, each post bounded by a
//! timeout (a failed post drops its batch and counts it). The bound is a
//! count beside the channel, so a flush never waits behind spans for room.
//!
//! Hand-rolled instead of the SDK's `BatchSpanProcessor`, which does the
//! same but only logs its drops: here they are counted in `/metrics`.

use super::settings::ResolvedTracing;
use crate::telemetry::summary::LogSummary;
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// Counters of what became of ended, sampled spans.
pub struct TraceMetrics {
    exported: Counter,
    dropped: Family<Reason, Counter>,
    queue_full_log: LogSummary,
    export_failed_log: LogSummary,
}

impl TraceMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let exported = Counter::default();
        registry.register("trace_spans_exported", "Spans the trace collector accepted", exported.clone());
        let dropped = Family::<Reason, Counter>::default();
        registry.register(
            "trace_spans_dropped",
            "Spans not exported, by reason (queue_full: the collector is slower than the spans come; export_failed: it refused or did not answer)",
            dropped.clone(),
        );
        Self {
            exported,
            dropped,
            queue_full_log: LogSummary::default(),
            export_failed_log: LogSummary::default(),
        }
    }

    /// Spans exported so far.
    pub fn exported(&self) -> u64 {
        self.exported.get()
    }

    /// Spans dropped so far for `reason` (`queue_full`, `export_failed`).
    pub fn dropped(&self, reason: &'static str) -> u64 {
        self.dropped.get_or_create(&Reason { reason }).get()
    }

    fn drop_spans(&self, reason: &'static str, count: u64, detail: &dyn std::fmt::Display) {
        self.dropped.get_or_create(&Reason { reason }).inc_by(count);
        let log = if reason == "queue_full" { &self.queue_full_log } else { &self.export_failed_log };
        if let Some(events) = log.note() {
            tracing::warn!(
                reason,
                events,
                "trace spans dropped: {detail} (this and the count since the last such line)"
            );
        }
    }
}

enum Message {
    Span(Box<SpanData>),
    /// Export everything queued before this, then say so.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The span processor: the queue's sending end.
pub struct QueuedExport {
    queue: Sender<Message>,
    /// Spans in the queue, at most `max_queued`.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    metrics: Arc<TraceMetrics>,
    flush_timeout: Duration,
}

impl std::fmt::Debug for QueuedExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuedExport").finish_non_exhaustive()
    }
}

impl QueuedExport {
    /// Builds the exporter for `settings` and starts the thread that feeds
    /// it.
    pub(super) fn start(
        settings: &ResolvedTracing,
        resource: &opentelemetry_sdk::Resource,
        metrics: Arc<TraceMetrics>,
    ) -> anyhow::Result<Self> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout)
            .build()?;
        exporter.set_resource(resource);
        let (queue, spans) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            spans,
            queued: queued.clone(),
            exporter,
            metrics: metrics.clone(),
            batch: settings.max_export_batch,
            delay: settings.schedule_delay,
            timeout: settings.export_timeout,
        };
        std::thread::Builder::new().name("wharf-traces".into()).spawn(move || worker.run())?;
        Ok(Self {
            queue,
            queued,
            max_queued: settings.max_queue_spans,
            metrics,
            flush_timeout: settings.export_timeout,
        })
    }

    /// Exports everything queued so far, waiting at most `timeout`.
    pub(super) fn flush_within(&self, timeout: Duration) -> OTelSdkResult {
        let (done, finished) = std::sync::mpsc::channel();
        self.queue.send(Message::Flush(done)).map_err(|_| OTelSdkError::AlreadyShutdown)?;
        finished.recv_timeout(timeout).map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueuedExport {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.metrics.drop_spans("queue_full", 1, &"the export queue is full");
            return;
        }
        if self.queue.send(Message::Span(Box::new(span))).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush_within(self.flush_timeout)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // Nothing to wait for: once this processor is dropped, the thread
        // exports what is left and ends (shutdown flushes first).
        Ok(())
    }
}

/// The processor as the provider holds it, shared with the [`super::Tracing`]
/// that flushes it.
#[derive(Debug)]
pub(super) struct Shared(pub(super) Arc<QueuedExport>);

impl SpanProcessor for Shared {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
}

/// The export thread's state.
struct Worker {
    spans: Receiver<Message>,
    queued: Arc<AtomicUsize>,
    exporter: opentelemetry_otlp::SpanExporter,
    metrics: Arc<TraceMetrics>,
    batch: usize,
    delay: Duration,
    timeout: Duration,
}

impl Worker {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start the trace export thread: no traces will be exported");
                return;
            }
        };
        let mut batch = Vec::with_capacity(self.batch);
        let mut due = Instant::now() + self.delay;
        loop {
            let message = self.spans.recv_timeout(due.saturating_duration_since(Instant::now()));
            match message {
                Ok(Message::Span(span)) => {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    batch.push(*span);
                    if batch.len() >= self.batch {
                        self.export(&runtime, &mut batch);
                        due = Instant::now() + self.delay;
                    }
                }
                Ok(Message::Flush(done)) => {
                    self.export(&runtime, &mut batch);
                    let _ = done.send(());
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.export(&runtime, &mut batch);
                    due = Instant::now() + self.delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.export(&runtime, &mut batch);
                    return;
                }
            }
        }
    }

    fn export(&self, runtime: &tokio::runtime::Runtime, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let spans = std::mem::replace(batch, Vec::with_capacity(self.batch));
        let result =
            runtime.block_on(async { tokio::time::timeout(self.timeout, self.exporter.export(spans)).await });
        match result {
            Ok(Ok(())) => {
                self.metrics.exported.inc_by(count);
            }
            Ok(Err(error)) => self.metrics.drop_spans("export_failed", count, &error),
            Err(_) => {
                self.metrics.drop_spans("export_failed", count, &"the collector did not answer in time")
            }
        }
    }
}
