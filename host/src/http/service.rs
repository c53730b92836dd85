//! The path every request takes around its component, in this order:
//! request id, the request record (log line and metrics), the global token
//! bucket, the per-client limiter, routing, the route's bucket, auth, the
//! request-size check, the server's concurrency limit, the route's worker
//! pool, and finally the component. Each rejection is answered here with its
//! status code, so hyper never sees an error (it would close the connection).

use super::response::{self, ResponseBody};
use crate::App;
use crate::policy::{self, Rejection};
use crate::runtime::invoke::{self, Deadlines, InvokeError};
use crate::telemetry::record::RequestRecord;
use bytes::Bytes;
use http::{HeaderValue, header};
use http_body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// Header carrying the request id, accepted from the client or generated.
pub const REQUEST_ID: &str = "x-request-id";

/// Serves one request (from hyper, or any body, as benchmarks do).
pub async fn handle<B>(
    app: Arc<App>,
    mut request: http::Request<B>,
    peer: SocketAddr,
) -> http::Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let request_id = request_id(&mut request);
    let http1 = request.version() <= http::Version::HTTP_11;
    let client =
        policy::client_addr(request.headers(), peer.ip(), app.settings.trusted_proxy_header.as_ref());
    let mut record = RequestRecord::new(app.telemetry.clone(), &request, client, request_id.clone());
    let response = match serve(&app, request, &mut record).await {
        Served::Response(response) => response,
        Served::Rejected(rejection) => {
            record.set_rejected(rejection.reason());
            response::rejection(&rejection)
        }
    };
    let mut response = record.attach(response).map(response::boxed);
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    // hyper closes an HTTP/1 connection after this response once a drain
    // has begun, but does not say so; RFC 9112 asks the server to.
    if http1 && app.is_draining() {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// What the chain produced: a response to record, or a rejection.
enum Served {
    Response(http::Response<ResponseBody>),
    Rejected(Rejection),
}

impl From<http::Response<ResponseBody>> for Served {
    fn from(response: http::Response<ResponseBody>) -> Self {
        Self::Response(response)
    }
}

async fn serve<B>(app: &Arc<App>, request: http::Request<B>, record: &mut RequestRecord) -> Served
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    if let Err(rejection) = app.admission.check_rates(record.client) {
        return Served::Rejected(rejection);
    }
    let table = app.routes.current();
    let Some(route) = table.find(request.uri().path()) else {
        return response::plain(http::StatusCode::NOT_FOUND, "Not Found").into();
    };
    record.route = Some(route.spec.path.clone());
    if let Some(limiter) = &route.policy.rate_limit
        && let Err(rejection) = limiter.check()
    {
        return Served::Rejected(rejection);
    }
    if let Some(auth) = &route.policy.auth
        && let Err(rejection) = auth.check(request.headers())
    {
        return Served::Rejected(rejection);
    }
    let limit = route.spec.max_request_body_bytes;
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Served::Rejected(Rejection::BodyTooLarge { limit });
    }
    let permit = match app.admission.try_admit() {
        Ok(permit) => permit,
        Err(rejection) => return Served::Rejected(rejection),
    };
    let worker = match &route.policy.workers {
        None => None,
        Some(pool) => match pool.acquire().await {
            Ok(worker) => Some(worker),
            Err(rejection) => return Served::Rejected(rejection),
        },
    };

    let too_large = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| SizeLimitedBody {
        inner: body,
        remaining: limit,
        limit,
        too_large: too_large.clone(),
    });
    let deadlines = Deadlines {
        headers: route.spec.timeout,
        idle: route.spec.idle_timeout,
        total: route.spec.max_duration,
    };
    let outcome = invoke::invoke(&app.runtime, &route.component, deadlines, request, (permit, worker)).await;
    // A body found too large while streaming in wins over whatever the guest
    // made of its truncated input, as long as no headers have gone out.
    if too_large.load(Ordering::Acquire) {
        return Served::Rejected(Rejection::BodyTooLarge { limit });
    }
    match outcome {
        Ok(response) => response.map(response::boxed).into(),
        Err(error) => {
            if matches!(error, InvokeError::TimedOut) {
                record.set_timed_out();
            }
            record.set_reason(error.to_string());
            response::for_status(error.status()).into()
        }
    }
}

/// Accepts a well-formed `x-request-id` from the client or makes one, and
/// puts it on the request so the component sees it too.
fn request_id<B>(request: &mut http::Request<B>) -> String {
    let given = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string);
    given.unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        if let Ok(value) = HeaderValue::from_str(&id) {
            request.headers_mut().insert(REQUEST_ID, value);
        }
        id
    })
}

/// The request body, cut off with an error once it passes the route's
/// limit (counted as it streams in, never buffered); the flag tells the
/// service to answer 413.
pub struct SizeLimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    too_large: Arc<AtomicBool>,
}

impl<B> Body for SizeLimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, |d| d.len() as u64);
                if size > self.remaining {
                    self.too_large.store(true, Ordering::Release);
                    let limit = self.limit;
                    return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(Some(
                        limit,
                    )))));
                }
                self.remaining -= size;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
