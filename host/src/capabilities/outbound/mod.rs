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
use std::future::Future;
use std::sync::Arc;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

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
