//! The one shared outbound client: pooled connections per host, HTTP/1.1
//! and HTTP/2 (over TLS, by ALPN), rustls with the system roots plus an
//! optional extra CA, a cap on connections per host, and deadlines for
//! connect, TLS handshake and the whole exchange.

use crate::manifest::OutboundSettings;
use crate::telemetry::metrics::OutboundMetrics;
use crate::telemetry::record::BoxError;
use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

/// The shared client.
pub struct OutboundClient {
    client: Client<TimedConnector, WasiBody>,
    settings: OutboundSettings,
    pub(super) metrics: Arc<OutboundMetrics>,
    /// Where `http://self` requests go (set when serving starts).
    pub self_dispatch: OnceLock<Arc<dyn super::SelfDispatch>>,
    /// The circuit breaker of each upstream host.
    pub breakers: Arc<super::breaker::Breakers>,
    pub(super) refused_log: crate::telemetry::summary::LogSummary,
    pub(super) denied_log: crate::telemetry::summary::LogSummary,
    /// Where client spans go, when tracing is on.
    pub(super) tracing: Option<Arc<crate::telemetry::trace::Tracing>>,
}

impl OutboundClient {
    /// The client, starting a span for each request it sends (when
    /// `tracing` is some).
    pub fn with_tracing(mut self, tracing: Option<Arc<crate::telemetry::trace::Tracing>>) -> Self {
        self.tracing = tracing;
        self
    }

    /// Builds the client from `settings`.
    pub fn new(settings: &OutboundSettings, metrics: Arc<OutboundMetrics>) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &settings.extra_ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("outbound.extra_ca_file: cannot read {}", ca.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("outbound.extra_ca_file: {} is not PEM", ca.display()))?;
            for cert in certs {
                roots.add(cert).with_context(|| {
                    format!("outbound.extra_ca_file: bad certificate in {}", ca.display())
                })?;
            }
        }
        tracing::debug!(system_roots = added, "outbound TLS roots loaded");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("outbound TLS: no protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let connector = TimedConnector {
            inner: https,
            timeout: settings.connect_timeout + settings.tls_handshake_timeout,
            slot_wait: settings.connect_timeout,
            max_per_host: settings.max_connections_per_host,
            per_host: Arc::default(),
            metrics: metrics.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(settings.max_idle_per_host)
            .pool_idle_timeout(settings.idle_timeout)
            .build(connector);
        Ok(Self {
            client,
            settings: settings.clone(),
            metrics,
            self_dispatch: OnceLock::new(),
            breakers: super::breaker::Breakers::new(settings.breaker_failures, settings.breaker_open),
            refused_log: crate::telemetry::summary::LogSummary::default(),
            denied_log: crate::telemetry::summary::LogSummary::default(),
            tracing: None,
        })
    }

    /// Sends `request` (already allowed by allow-list entry `entry`) through
    /// its host's circuit breaker and returns the response, whose body
    /// holds the host slot and enforces the remaining deadlines.
    pub(super) async fn send(
        self: Arc<Self>,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        entry: &str,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let host = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        let Ok(call) = self.breakers.admit(&host) else {
            self.metrics.request(entry, 0);
            if let Some(count) = self.refused_log.note() {
                tracing::warn!(%host, refused = count, "outbound calls refused at once: the host's circuit breaker is open");
            }
            return Err(HttpError::DestinationUnavailable);
        };
        let result = self.send_now(request, options, entry).await;
        call.done(matches!(&result, Ok(response) if response.status().as_u16() < 500));
        result
    }

    async fn send_now(
        self: Arc<Self>,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        entry: &str,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let started = Instant::now();
        let total = self.settings.total_timeout;
        let connect = tighter(self.settings.connect_timeout, options.and_then(|o| o.connect_timeout));
        let first_byte = options.and_then(|o| o.first_byte_timeout);
        let between_bytes = options.and_then(|o| o.between_bytes_timeout);
        let authority = request.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        if !self.settings.pool {
            // The comparison mode: wasmtime-wasi-http's own sender, a new
            // connection per request.
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            tokio::spawn(io);
            self.metrics.connection_opened(&authority);
            self.metrics.request(entry, response.status().as_u16());
            return Ok(response.map(http_body_util::BodyExt::boxed_unsync));
        }

        // The client sends origin-form itself; keep the absolute URI.
        request.headers_mut().remove(http::header::HOST);
        let headers_within = first_byte.map_or(total, |f| tighter(total, Some(connect + f)));
        let response = match tokio::time::timeout(headers_within, self.client.request(request)).await {
            Err(_) => {
                self.metrics.request(entry, 0);
                return Err(HttpError::ConnectionReadTimeout);
            }
            Ok(Err(error)) => {
                self.metrics.request(entry, 0);
                return Err(client_error(error));
            }
            Ok(Ok(response)) => response,
        };
        self.metrics.request(entry, response.status().as_u16());
        let deadline = tokio::time::Instant::from_std(started) + total;
        Ok(response.map(|body| {
            http_body_util::BodyExt::boxed_unsync(OutboundBody {
                inner: body,
                between_bytes,
                idle: None,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
            })
        }))
    }
}

fn tighter(ours: Duration, theirs: Option<Duration>) -> Duration {
    theirs.map_or(ours, |t| t.min(ours))
}

fn client_error(error: hyper_util::client::legacy::Error) -> HttpError {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.is::<ConnectionLimitReached>() {
            return HttpError::ConnectionLimitReached;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => HttpError::ConnectionRefused,
                std::io::ErrorKind::TimedOut => HttpError::ConnectionTimeout,
                _ => HttpError::Connect(std::io::Error::new(io.kind(), io.to_string())),
            };
        }
        if cause.to_string().contains("certificate") {
            return HttpError::TlsCertificateError;
        }
        source = cause.source();
    }
    if error.is_connect() { HttpError::ConnectionRefused } else { HttpError::HttpProtocolError }
}

/// A response body that enforces the total deadline and the guest's
/// between-bytes timeout.
struct OutboundBody {
    inner: hyper::body::Incoming,
    between_bytes: Option<Duration>,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for OutboundBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let between_bytes = self.between_bytes;
                if let (Some(idle), Some(wait)) = (&mut self.idle, between_bytes) {
                    idle.as_mut().reset(tokio::time::Instant::now() + wait);
                }
                Poll::Ready(frame.map(|f| f.map_err(HttpError::from)))
            }
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
                }
                if let Some(wait) = self.between_bytes {
                    let idle = self.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                    if idle.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The HTTPS-or-HTTP connector with one timeout over TCP connect and TLS
/// handshake together (hyper-rustls has no handshake timeout of its own),
/// and a cap on open connections per host: a connection holds a slot until
/// it closes, and a new one waits for a slot at most the connect timeout
/// (meanwhile the client's pool hands the request any connection that
/// frees up).
#[derive(Clone)]
struct TimedConnector {
    inner: hyper_rustls::HttpsConnector<HttpConnector>,
    timeout: Duration,
    slot_wait: Duration,
    max_per_host: usize,
    per_host: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    pub(super) metrics: Arc<OutboundMetrics>,
}

type HttpsStream =
    <hyper_rustls::HttpsConnector<HttpConnector> as tower_service::Service<http::Uri>>::Response;

impl tower_service::Service<http::Uri> for TimedConnector {
    type Response = SlotStream<HttpsStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        let slots = {
            let mut per_host = self.per_host.lock().unwrap_or_else(|e| e.into_inner());
            per_host
                .entry(authority.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_host)))
                .clone()
        };
        let mut inner = self.inner.clone();
        let (timeout, slot_wait, metrics) = (self.timeout, self.slot_wait, self.metrics.clone());
        Box::pin(async move {
            let waiting = Instant::now();
            let slot = match tokio::time::timeout(slot_wait, slots.acquire_owned()).await {
                Ok(Ok(slot)) => slot,
                _ => return Err(Box::new(ConnectionLimitReached) as BoxError),
            };
            metrics.waited(waiting.elapsed());
            let stream =
                tokio::time::timeout(timeout, inner.call(uri)).await.map_err(|_| -> BoxError {
                    Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect or TLS handshake timed out",
                    ))
                })??;
            metrics.connection_opened(&authority);
            Ok(SlotStream { inner: stream, _slot: slot })
        })
    }
}

/// Every connection slot to a host is taken.
#[derive(Debug, thiserror::Error)]
#[error("connection limit per host reached")]
struct ConnectionLimitReached;

/// A connection that frees its host slot when it closes.
pub struct SlotStream<T> {
    inner: T,
    _slot: OwnedSemaphorePermit,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for SlotStream<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for SlotStream<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<T: hyper_util::client::legacy::connect::Connection> hyper_util::client::legacy::connect::Connection
    for SlotStream<T>
{
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected()
    }
}
