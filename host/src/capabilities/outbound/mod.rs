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

mod client;

pub use client::OutboundClient;

use crate::manifest::AllowList;
use futures::future::BoxFuture;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Where a request to `http://self` goes: the app itself, in process
/// (installed by the HTTP layer when it starts serving), so self-requests
/// work over whatever listener the app has, TLS included, and carry their
/// origin with them.
pub trait SelfDispatch: Send + Sync + 'static {
    /// Serves `request` as if `origin`'s client had sent it.
    fn dispatch(
        &self,
        request: http::Request<WasiBody>,
        origin: Origin,
    ) -> BoxFuture<'static, Result<http::Response<WasiBody>, HttpError>>;
}

/// The request an instance serves, as its `http://self` requests carry it
/// on: who the client was and how many self-requests deep it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The client the original request came from.
    pub client: IpAddr,
    /// Self-requests between the client's request and this one (0: the
    /// client's own).
    pub hops: u32,
}

/// The `wasi:http` hooks of one instance: the allow-list check, `self`
/// dispatch and the shared client.
pub struct OutboundHooks {
    pub(crate) client: Arc<OutboundClient>,
    pub(crate) allowed: Arc<AllowList>,
    pub(crate) component: Arc<str>,
    pub(crate) origin: Origin,
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
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
        let no_body_result = || Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>;
        if host == "self" {
            let Some(dispatch) = client.self_dispatch.get().cloned() else {
                return Box::new(async { Err(HttpError::DestinationUnavailable) });
            };
            let origin = self.origin;
            return Box::new(async move {
                let response = dispatch.dispatch(request, origin).await?;
                Ok((response, no_body_result()))
            });
        }
        Box::new(async move {
            let response = client.send(request, options).await?;
            Ok((response, no_body_result()))
        })
    }
}
