//! What happened to each request: one structured log line when it ends
//! (method, path, route, status, latency, bytes out, client, outcome, and
//! the reason for a rejection or failure) and the metrics.
//!
//! A [`RequestRecord`] is created when a request arrives and travels with
//! it: first inside the request future, then inside the response body. It
//! reports when it is dropped, so a request whose client vanished (the
//! future or the body dropped early) is still logged and counted, as
//! cancelled.

use super::Telemetry;
use super::access_log::AccessLine;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Error type of the response bodies a record follows.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set (once) to the reason a connection was ended by one of its deadlines;
/// a record whose request it cut off logs it as timed out, not cancelled.
pub type EndedBy = Arc<std::sync::OnceLock<&'static str>>;

/// A response body ended by one of its deadlines; the record counts the
/// request as timed out rather than failed.
#[derive(Debug, thiserror::Error)]
#[error("response stream ended by its {0} deadline")]
pub struct DeadlineExceeded(pub &'static str);

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was sent in full.
    Completed,
    /// The client went away first.
    Cancelled,
    /// A deadline ended it.
    TimedOut,
    /// The response body failed midway (the guest trapped while streaming).
    Failed,
}

/// The record of one request; logs and counts itself when dropped.
pub struct RequestRecord {
    telemetry: Arc<Telemetry>,
    method: http::Method,
    path: String,
    /// The address limits and logs attribute the request to.
    pub client: std::net::IpAddr,
    /// The request's id (`x-request-id`).
    pub request_id: String,
    start: Instant,
    /// The route that served it, once known.
    pub route: Option<Arc<str>>,
    status: Option<u16>,
    bytes_out: u64,
    outcome: Option<Outcome>,
    reason: Option<String>,
    connection_ended_by: Option<EndedBy>,
    /// The request's server span, when tracing is on.
    span: Option<opentelemetry::Context>,
}

impl RequestRecord {
    /// Starts the record of a request.
    pub fn new(
        telemetry: Arc<Telemetry>,
        request: &http::Request<impl Sized>,
        client: std::net::IpAddr,
        request_id: String,
    ) -> Self {
        Self {
            telemetry,
            method: request.method().clone(),
            path: request.uri().path().to_string(),
            client,
            request_id,
            start: Instant::now(),
            route: None,
            status: None,
            bytes_out: 0,
            outcome: None,
            reason: None,
            connection_ended_by: None,
            span: None,
        }
    }

    /// Starts the request's server span (when tracing is on), continuing
    /// the trace context its headers carry.
    pub fn start_span(&mut self, request: &http::Request<impl Sized>, https: bool, hops: u32) {
        let Some(tracing) = &self.telemetry.tracing else { return };
        use opentelemetry::KeyValue;
        let version = match request.version() {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", self.method.as_str().to_string()),
            KeyValue::new("url.path", self.path.clone()),
            KeyValue::new("url.scheme", if https { "https" } else { "http" }),
            KeyValue::new("client.address", self.client.to_string()),
            KeyValue::new("network.protocol.version", version),
            KeyValue::new("wharf.request_id", self.request_id.clone()),
        ];
        if hops > 0 {
            attributes.push(KeyValue::new("wharf.self_hops", i64::from(hops)));
        }
        self.span = Some(tracing.server_span(request.headers(), self.method.to_string(), attributes));
    }

    /// The server span's context, when the request is traced.
    pub fn trace(&self) -> Option<&opentelemetry::Context> {
        self.span.as_ref()
    }

    /// Follows the request's connection: if a connection deadline ends it
    /// before the response does, the request is logged as timed out.
    pub fn watch_connection(&mut self, ended_by: EndedBy) {
        self.connection_ended_by = Some(ended_by);
    }

    /// Notes why the request was rejected or failed (logged, never sent).
    pub fn set_reason(&mut self, reason: impl Into<String>) {
        self.reason = Some(reason.into());
    }

    /// Notes that the request was turned away for `reason` (counted, and
    /// logged as the reason).
    pub fn set_rejected(&mut self, reason: &'static str) {
        self.telemetry.metrics.rejected(reason);
        self.set_reason(reason);
    }

    /// Notes that a deadline ended the request.
    pub fn set_timed_out(&mut self) {
        self.outcome = Some(Outcome::TimedOut);
    }

    /// Wraps `response` so the record follows its body to the end.
    pub fn attach<B>(mut self, response: http::Response<B>) -> http::Response<RecordedBody<B>>
    where
        B: Body<Data = Bytes, Error = BoxError>,
    {
        self.status = Some(response.status().as_u16());
        if response.body().is_end_stream() {
            self.outcome.get_or_insert(Outcome::Completed);
        }
        response.map(|body| RecordedBody { inner: body, record: self })
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let ended_by = self.connection_ended_by.as_ref().and_then(|e| e.get().copied());
        let outcome = match (self.outcome, ended_by) {
            (Some(outcome), _) => outcome,
            (None, Some(reason)) => {
                self.reason = Some(format!("connection ended by its {reason}"));
                Outcome::TimedOut
            }
            (None, None) => Outcome::Cancelled,
        };
        let metrics = &self.telemetry.metrics;
        match outcome {
            Outcome::Cancelled => metrics.cancelled(),
            Outcome::TimedOut => metrics.timed_out(),
            Outcome::Completed | Outcome::Failed => {}
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        metrics.request_ended(self.route.as_ref(), self.status, elapsed);
        let latency_ms = (elapsed * 1e6).round() / 1e3;
        let error = self.status.is_some_and(|s| s >= 500 && s != 503) || outcome == Outcome::Failed;
        let outcome = match outcome {
            Outcome::Completed => "completed",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed_out",
            Outcome::Failed => "failed",
        };
        let trace_id = self.span.as_ref().and_then(|span| self.end_span(span, outcome, error));
        let trace_id = trace_id.map(|id| id.to_string());
        let trace_id = trace_id.as_deref();
        let (method, path, client, request_id) = (&self.method, &self.path, &self.client, &self.request_id);
        let (route, status, bytes_out, reason) =
            (self.route.as_deref(), self.status, self.bytes_out, self.reason.as_deref());
        let worker = crate::runtime::worker::this_thread();
        if let Some(access_log) = &self.telemetry.access_log {
            if access_log.enabled() {
                access_log.write(&AccessLine {
                    error,
                    method: method.as_str(),
                    path,
                    route,
                    status,
                    latency_ms,
                    bytes_out,
                    client: *client,
                    worker,
                    request_id,
                    outcome,
                    reason,
                    trace_id,
                });
            }
        } else if error {
            tracing::error!(target: "wharf::access", %method, %path, route, status, latency_ms, bytes_out, %client, worker, %request_id, outcome, reason, trace_id, "request");
        } else {
            tracing::info!(target: "wharf::access", %method, %path, route, status, latency_ms, bytes_out, %client, worker, %request_id, outcome, reason, trace_id, "request");
        }
    }
}

impl RequestRecord {
    /// Ends the server span with what the record knows; its trace id, if
    /// the trace is recorded.
    fn end_span(
        &self,
        span: &opentelemetry::Context,
        outcome: &'static str,
        error: bool,
    ) -> Option<super::trace::TraceId> {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::TraceContextExt;
        let trace_id = super::trace::trace_id(span)?;
        let server = span.span();
        if let Some(route) = &self.route {
            server.update_name(format!("{} {route}", self.method));
            server.set_attribute(KeyValue::new("http.route", route.to_string()));
        }
        if let Some(status) = self.status {
            server.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        }
        server.set_attribute(KeyValue::new("wharf.outcome", outcome));
        server.set_attribute(KeyValue::new("http.response.body.size", self.bytes_out as i64));
        if let Some(reason) = &self.reason {
            server.set_attribute(KeyValue::new("wharf.reason", reason.clone()));
        }
        let failed = error || self.status.is_some_and(|s| s >= 500);
        if failed {
            let kind =
                self.status.filter(|s| *s >= 500).map_or_else(|| outcome.to_string(), |s| s.to_string());
            server.set_attribute(KeyValue::new("error.type", kind));
        }
        super::trace::end(
            span,
            if failed { Err(self.reason.clone().unwrap_or_default().into()) } else { Ok(()) },
        );
        Some(trace_id)
    }
}

/// A response body that counts bytes out and settles its record at the end.
pub struct RecordedBody<B> {
    inner: B,
    record: RequestRecord,
}

impl<B> Body for RecordedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.record.bytes_out += data.len() as u64;
                }
                // hyper stops polling a body that says it has ended.
                if self.inner.is_end_stream() {
                    self.record.outcome.get_or_insert(Outcome::Completed);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                if self.record.outcome.is_none() {
                    self.record.outcome = Some(if error.is::<DeadlineExceeded>() {
                        Outcome::TimedOut
                    } else {
                        Outcome::Failed
                    });
                }
                self.record.reason = Some(error.to_string());
            }
            Poll::Ready(None) => {
                self.record.outcome.get_or_insert(Outcome::Completed);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
