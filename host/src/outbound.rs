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

use crate::manifest::OutboundSettings;
use crate::response::BoxError;
use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// One entry of `allowed_outbound_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedHost {
    /// The app itself (`http://self` or `self`): requests whose authority
    /// is `self`, sent to Wharf's own listener.
    SelfApp,
    /// `scheme://host[:port]` with `*` wildcards.
    Pattern {
        /// `http`, `https` or `*`.
        scheme: String,
        /// A host, `*`, or `*.suffix`.
        host: String,
        /// A port, or `None` for any (`*`); an omitted port means the
        /// scheme's default.
        port: Option<u16>,
    },
}

/// A component's outbound allow-list; empty denies everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<AllowedHost>);

impl AllowList {
    /// Parses Spin-style entries: `https://api.example.com`,
    /// `http://127.0.0.1:8080`, `https://*.example.com`, `http://*:*`,
    /// `*://localhost:*`, `http://self`.
    pub fn parse(entries: &[String]) -> Result<Self> {
        entries
            .iter()
            .map(|entry| parse_entry(entry).with_context(|| format!("allowed_outbound_hosts: {entry:?}")))
            .collect::<Result<_>>()
            .map(Self)
    }

    /// Whether a request to `scheme://host:port` may go out.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.0.iter().any(|entry| match entry {
            AllowedHost::SelfApp => host == "self",
            AllowedHost::Pattern { scheme: s, host: h, port: p } => {
                (s == "*" || s == scheme)
                    && p.is_none_or(|p| p == port)
                    && (h == "*"
                        || h.eq_ignore_ascii_case(host)
                        || h.strip_prefix("*.").is_some_and(|suffix| {
                            host.len() > suffix.len() + 1
                                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                        }))
            }
        })
    }
}

fn parse_entry(entry: &str) -> Result<AllowedHost> {
    if entry == "self" || entry == "http://self" {
        return Ok(AllowedHost::SelfApp);
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        bail!("expected scheme://host[:port], like \"https://api.example.com\"");
    };
    if !matches!(scheme, "http" | "https" | "*") {
        bail!("scheme must be http, https or *");
    }
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        bail!("paths are not allowed, only scheme://host[:port]");
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, "*")) => (host, None),
        Some((host, port)) => (
            host,
            Some(port.parse::<u16>().map_err(|_| anyhow::anyhow!("port {port:?} is not a number or *"))?),
        ),
        None => match scheme {
            "http" => (rest, Some(80)),
            "https" => (rest, Some(443)),
            _ => bail!("with scheme * give a port (or :*)"),
        },
    };
    let wildcard_ok =
        host == "*" || host.strip_prefix("*.").is_some_and(|rest| !rest.is_empty() && !rest.contains('*'));
    if host.is_empty() || (host.contains('*') && !wildcard_ok) {
        bail!("host must be a name, an address, * or *.domain");
    }
    Ok(AllowedHost::Pattern { scheme: scheme.into(), host: host.to_ascii_lowercase(), port })
}

/// The shared client.
pub struct OutboundClient {
    client: Client<TimedConnector, WasiBody>,
    settings: OutboundSettings,
    metrics: Arc<crate::metrics::OutboundMetrics>,
    /// Wharf's own listener, for `self` requests (set when serving starts).
    pub self_addr: OnceLock<SocketAddr>,
}

impl OutboundClient {
    /// Builds the client from `settings`.
    pub fn new(settings: &OutboundSettings, metrics: Arc<crate::metrics::OutboundMetrics>) -> Result<Self> {
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
        Ok(Self { client, settings: settings.clone(), metrics, self_addr: OnceLock::new() })
    }

    /// Sends `request` (already allowed) and returns the response, whose
    /// body holds the host slot and enforces the remaining deadlines.
    async fn send(
        self: Arc<Self>,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
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
            self.metrics.request(&authority, response.status().as_u16());
            return Ok(response.map(http_body_util::BodyExt::boxed_unsync));
        }

        // The client sends origin-form itself; keep the absolute URI.
        request.headers_mut().remove(http::header::HOST);
        let headers_within = first_byte.map_or(total, |f| tighter(total, Some(connect + f)));
        let response = match tokio::time::timeout(headers_within, self.client.request(request)).await {
            Err(_) => {
                self.metrics.request(&authority, 0);
                return Err(HttpError::ConnectionReadTimeout);
            }
            Ok(Err(error)) => {
                self.metrics.request(&authority, 0);
                return Err(client_error(error));
            }
            Ok(Ok(response)) => response,
        };
        self.metrics.request(&authority, response.status().as_u16());
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
    metrics: Arc<crate::metrics::OutboundMetrics>,
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

/// The `wasi:http` hooks of one instance: the allow-list check, `self`
/// resolution and the shared client.
pub struct OutboundHooks {
    pub(crate) client: Arc<OutboundClient>,
    pub(crate) allowed: Arc<AllowList>,
    pub(crate) component: Arc<str>,
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
        if !self.allowed.allows(&scheme, &host, port) {
            tracing::warn!(component = %self.component, url = %uri, "outbound request denied: not in allowed_outbound_hosts");
            client.metrics.denied(&format!("{host}:{port}"));
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        if host == "self" {
            let Some(addr) = client.self_addr.get().copied() else {
                return Box::new(async { Err(HttpError::DestinationUnavailable) });
            };
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            match format!("http://{addr}{path}").parse() {
                Ok(uri) => *request.uri_mut() = uri,
                Err(_) => return Box::new(async { Err(HttpError::HttpRequestUriInvalid) }),
            }
        }
        Box::new(async move {
            let response = client.send(request, options).await?;
            Ok((response, Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn allow_list_follows_spin_syntax() {
        let allowed =
            list(&["https://api.example.com", "http://127.0.0.1:*", "https://*.cdn.net", "http://self"]);
        assert!(allowed.allows("https", "api.example.com", 443));
        assert!(!allowed.allows("https", "api.example.com", 8443), "omitted port means the default");
        assert!(!allowed.allows("http", "api.example.com", 80), "scheme must match");
        assert!(allowed.allows("http", "127.0.0.1", 9999));
        assert!(allowed.allows("https", "a.cdn.net", 443));
        assert!(!allowed.allows("https", "cdn.net", 443), "*.x does not match x itself");
        assert!(!allowed.allows("https", "evilcdn.net", 443));
        assert!(allowed.allows("http", "self", 80));
        assert!(!AllowList::default().allows("http", "example.com", 80), "default deny");
        assert!(list(&["*://*:*"]).allows("https", "anything", 1));
        for bad in ["example.com", "ftp://x", "http://a/b", "http://x:notaport", "*://x", "http://a*b"] {
            assert!(AllowList::parse(&[bad.to_string()]).is_err(), "{bad} should be rejected");
        }
    }
}
