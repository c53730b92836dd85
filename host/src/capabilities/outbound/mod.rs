//! Outbound HTTP: the one pooled, bounded, allow-listed client behind
//! `wasi:http/outgoing-handler`.
//!
//! Every component's outgoing requests go through one shared hyper-util
//! client: connections are pooled and reused (idle limits per host),
//! HTTP/1.1 and HTTP/2 (over TLS, by ALPN), HTTPS through rustls with the
//! system roots plus an optional extra CA. Requests to one host are capped
//! (further ones wait, bounded by the connect timeout); connect, TLS
//! handshake and total time are bounded, and the guest's own request
//! options apply when they are tighter. Before any of that, the request
//! must match the component's `allowed_outbound_hosts` (Spin's syntax;
//! default deny): a denied one gets `HTTP-request-denied`.

pub mod breaker;
mod client;
pub mod sockets;

pub use client::OutboundClient;

use crate::manifest::AllowList;
use crate::manifest::spin::SERVICE_CHAINING_SUFFIX;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Where a request to `http://self` goes: the app itself, in process
/// (installed by the HTTP layer when it starts serving), so self-requests
/// work over whatever listener the app has, TLS included, and carry their
/// origin with them.
pub trait SelfDispatch: Send + Sync + 'static {
    /// Serves `request` as if `origin`'s client had sent it; to component
    /// `target` whatever its path, when chained to one (Spin's
    /// `http://NAME.spin.internal`).
    fn dispatch(
        &self,
        request: http::Request<WasiBody>,
        origin: Origin,
        target: Option<String>,
    ) -> BoxFuture<'static, Result<http::Response<WasiBody>, HttpError>>;
}

/// The request an instance serves, as its `http://self` requests carry it
/// on: who the client was, how many self-requests deep it is, and the
/// outbound budget the whole tree of requests it belongs to shares.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The client the original request came from.
    pub client: IpAddr,
    /// Self-requests between the client's request and this one (0: the
    /// client's own).
    pub hops: u32,
    /// The tree's budget, once some request in it has sent one.
    pub tree: Option<Arc<TreeBudget>>,
}

impl Origin {
    /// A client's own request, from `client`.
    pub fn client(client: IpAddr) -> Self {
        Self { client, hops: 0, tree: None }
    }
}

/// The outbound requests one client request may cause in all: its own,
/// those of every `http://self` request it causes, and theirs. Set by the
/// first instance of the tree that sends one, to its
/// `max_outbound_requests`.
#[derive(Debug)]
pub struct TreeBudget {
    left: AtomicU32,
}

impl TreeBudget {
    fn new(max: u32) -> Self {
        Self { left: AtomicU32::new(max) }
    }

    fn take(&self) -> bool {
        self.left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(1)).is_ok()
    }
}

/// What one instance may send: a number of requests (and socket
/// connections) in all, a number of requests at once (more wait their
/// turn, holding nothing), within what its request tree has left.
pub struct OutboundBudget {
    max: u32,
    concurrent: u32,
    /// Made at the first request: most instances never send one.
    in_flight: Option<Arc<Semaphore>>,
    spent: Arc<Spent>,
}

/// What an instance has spent of its budget, shared with its socket check.
#[derive(Default)]
pub struct Spent {
    sent: AtomicU32,
    tree: std::sync::OnceLock<Arc<TreeBudget>>,
}

impl OutboundBudget {
    /// `max` requests in all, `concurrent` at once, sharing `tree` (the
    /// request tree's budget, when the request is an `http://self` one).
    pub fn new(max: u32, concurrent: u32, tree: Option<Arc<TreeBudget>>) -> Self {
        let spent = Spent::default();
        if let Some(tree) = tree {
            let _ = spent.tree.set(tree);
        }
        Self { max, concurrent, in_flight: None, spent: Arc::new(spent) }
    }

    fn in_flight(&mut self) -> Arc<Semaphore> {
        let concurrent = self.concurrent as usize;
        self.in_flight.get_or_insert_with(|| Arc::new(Semaphore::new(concurrent))).clone()
    }

    /// The spending, for a socket check that draws on the same budget.
    pub fn spent(&self) -> Arc<Spent> {
        self.spent.clone()
    }

    /// Takes one request from the instance's budget and its tree's, or
    /// says which is spent.
    fn take(&self) -> Result<Arc<TreeBudget>, &'static str> {
        self.spent.take(self.max)
    }
}

impl Spent {
    /// Takes one request or connection from a budget of `max` and from the
    /// tree's (made now, at `max`, for the tree's first), or says which is
    /// spent.
    pub fn take(&self, max: u32) -> Result<Arc<TreeBudget>, &'static str> {
        let taken = self
            .sent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |sent| (sent < max).then_some(sent + 1));
        if taken.is_err() {
            return Err("the instance used its max_outbound_requests");
        }
        let tree = self.tree.get_or_init(|| Arc::new(TreeBudget::new(max))).clone();
        if !tree.take() {
            return Err("the client request's tree of requests used its max_outbound_requests");
        }
        Ok(tree)
    }
}

/// The `wasi:http` hooks of one instance: the allow-list check, its
/// outbound budget, `self` dispatch and the shared client.
pub struct OutboundHooks {
    pub(crate) client: Arc<OutboundClient>,
    pub(crate) allowed: Arc<AllowList>,
    pub(crate) component: Arc<str>,
    pub(crate) origin: Origin,
    pub(crate) budget: OutboundBudget,
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>),
                    HttpError,
                >,
            > + Send,
    > {
        drop(fut);
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        let host = uri.host().unwrap_or("").to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
        let client = self.client.clone();
        let Some(entry) = self.allowed.matching(&scheme, &host, port).map(ToString::to_string) else {
            client.metrics.denied();
            if client.tracing.is_some() {
                use opentelemetry::trace::TraceContextExt;
                let denied = opentelemetry::KeyValue::new("server.address", host.clone());
                opentelemetry::Context::current().span().add_event("wharf.outbound.denied", vec![denied]);
            }
            if let Some(count) = client.denied_log.note() {
                tracing::warn!(component = %self.component, url = %uri, denied = count,
                    "outbound requests denied: not in allowed_outbound_hosts (this one and the count since the last such line)");
            }
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        };
        let tree = match self.budget.take() {
            Ok(tree) => tree,
            Err(which) => {
                client.metrics.over_budget();
                if let Some(count) = client.denied_log.note() {
                    tracing::warn!(component = %self.component, max = self.budget.max, refused = count,
                        "outbound request refused: {which}");
                }
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            }
        };
        let span = client.tracing.as_ref().map(|tracing| {
            use opentelemetry::KeyValue;
            // The URL as far as the allow-list entry that let it out: a path
            // or query may carry what a trace should not.
            let attributes = vec![
                KeyValue::new("http.request.method", request.method().to_string()),
                KeyValue::new("server.address", host.clone()),
                KeyValue::new("server.port", i64::from(port)),
                KeyValue::new("url.full", entry.clone()),
            ];
            let span = tracing.client_span(request.headers(), request.method().to_string(), attributes);
            tracing.inject(&span, request.headers_mut());
            span
        });
        let mut span = crate::telemetry::trace::SpanGuard(span);
        let in_flight = self.budget.in_flight();
        // How sending the request's body ended reaches the guest through
        // the future returned beside the response (a WASI 0.3 request's
        // transmit result).
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
        let request = request.map(|body| http_body_util::BodyExt::boxed_unsync(SentBody::new(body, sent_tx)));
        let body_sent = Box::new(async move { sent_rx.await.unwrap_or(Ok(())) })
            as Box<dyn Future<Output = Result<(), HttpError>> + Send>;
        let origin = Origin { tree: Some(tree), ..self.origin.clone() };
        Box::new(async move {
            // Waits its turn under max_concurrent_outbound_requests; the
            // slot is held until the response body is done with.
            let permit = in_flight.acquire_owned().await.map_err(|_| HttpError::ConnectionLimitReached)?;
            let chained = host.strip_suffix(SERVICE_CHAINING_SUFFIX).map(str::to_string);
            let response = if host == "self" || chained.is_some() {
                match client.self_dispatch.get().cloned() {
                    Some(dispatch) => dispatch.dispatch(request, origin, chained).await,
                    None => Err(HttpError::DestinationUnavailable),
                }
            } else {
                client.send(request, options, &entry).await
            };
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    if let Some(context) = span.0.take() {
                        let kind = opentelemetry::KeyValue::new("error.type", format!("{error:?}"));
                        opentelemetry::trace::TraceContextExt::span(&context).set_attribute(kind);
                        crate::telemetry::trace::end(&context, Err(error.to_string().into()));
                    }
                    return Err(error);
                }
            };
            if let Some(context) = &span.0 {
                let status = i64::from(response.status().as_u16());
                let span = opentelemetry::trace::TraceContextExt::span(context);
                span.set_attribute(opentelemetry::KeyValue::new("http.response.status_code", status));
                if status >= 500 {
                    span.set_status(opentelemetry::trace::Status::error(status.to_string()));
                }
            }
            let response = response.map(|body| {
                http_body_util::BodyExt::boxed_unsync(PermitBody {
                    inner: body,
                    _permit: permit,
                    _span: span,
                })
            });
            Ok((response, body_sent))
        })
    }
}

/// An outgoing request body that reports how it ended: `Ok` once sent
/// whole (or dropped unread: the receiver answered without it), the error
/// when the guest's body failed (a length that does not match, say).
struct SentBody {
    inner: WasiBody,
    outcome: Option<tokio::sync::oneshot::Sender<Result<(), HttpError>>>,
}

impl SentBody {
    fn new(inner: WasiBody, outcome: tokio::sync::oneshot::Sender<Result<(), HttpError>>) -> Self {
        Self { inner, outcome: Some(outcome) }
    }

    fn report(&mut self, outcome: Result<(), HttpError>) {
        if let Some(sender) = self.outcome.take() {
            let _ = sender.send(outcome);
        }
    }
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.report(Ok(())),
            Poll::Ready(Some(Err(error))) => {
                let copy = match error {
                    HttpError::HttpRequestBodySize(size) => HttpError::HttpRequestBodySize(*size),
                    other => HttpError::InternalError(Some(format!("sending the request body: {other}"))),
                };
                self.report(Err(copy));
            }
            _ => {}
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

impl Drop for SentBody {
    fn drop(&mut self) {
        self.report(Ok(()));
    }
}

/// A response body that holds its instance's outbound slot (and the
/// call's span) until it is done with.
struct PermitBody {
    inner: WasiBody,
    _permit: OwnedSemaphorePermit,
    _span: crate::telemetry::trace::SpanGuard,
}

impl Body for PermitBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(frames: Vec<Result<Frame<Bytes>, HttpError>>) -> WasiBody {
        http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn how_a_request_body_ended_reaches_the_sender() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = SentBody::new(body(vec![Ok(Frame::data(Bytes::from_static(b"ab")))]), tx);
        assert_eq!(&sent.collect().await.unwrap().to_bytes()[..], b"ab");
        assert!(rx.await.unwrap().is_ok());

        let (tx, rx) = tokio::sync::oneshot::channel();
        let frames =
            vec![Ok(Frame::data(Bytes::from_static(b"a"))), Err(HttpError::HttpRequestBodySize(Some(1)))];
        let sent = SentBody::new(body(frames), tx);
        assert!(sent.collect().await.is_err());
        assert!(matches!(rx.await.unwrap(), Err(HttpError::HttpRequestBodySize(Some(1)))));
    }
}
