//! The path every request takes around its component, in this order:
//! request id, client identity, the request record (log line and metrics),
//! path normalisation, the self-request hop limit, the global token bucket,
//! the per-client bucket, routing, the route's bucket, auth, the
//! request-size check, reading the body ahead (`request_body`), the
//! client's and the server's concurrency limits, the route's worker pool,
//! and finally the component. Each rejection is
//! answered here with its status code, so hyper never sees an error (it
//! would close the connection). Requests to `http://self` enter here too,
//! in process ([`InProcess`]).

use super::connection::{ConnectionState, TrackedBody};
use super::path;
use super::request_body::{BodyFault, BodyFaults, BodyPace, ClientBody};
use super::response::{self, ResponseBody};
use crate::App;
use crate::capabilities::outbound::{Origin, SelfDispatch};
use crate::policy::{Rejection, RequestSlots};
use crate::runtime::invoke::{self, RequestContext};
use crate::telemetry::record::RequestRecord;
use crate::telemetry::trace::SpanGuard;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, header};
use http_body::Body;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit as WorkerSlot;

/// Header carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// How long a response the host makes itself may take to send (a short
/// body; the connection's send timeout applies too).
const HOST_RESPONSE_DEADLINE: Duration = Duration::from_secs(60);

/// Who sent a request, and how it arrived.
#[derive(Clone)]
pub struct Caller {
    /// The socket peer; for `http://self` requests, the origin's client.
    pub peer: IpAddr,
    /// The peer's port (0 for requests made in process).
    pub port: u16,
    /// For a request chained to a component of a Spin app
    /// (`http://NAME.spin.internal`): that component, whatever the path.
    pub target: Option<String>,
    /// Whether it came over TLS (the guest sees `https`).
    pub https: bool,
    /// The connection it came on, whose watchdog tracks its response.
    pub connection: Option<Arc<ConnectionState>>,
    /// For `http://self` requests: where the chain of requests began.
    pub origin: Option<Origin>,
}

impl Caller {
    /// A plain-HTTP caller at `peer` with no connection to track (for
    /// embedders and benchmarks that call [`handle`] directly).
    pub fn direct(peer: SocketAddr) -> Self {
        Self {
            peer: peer.ip(),
            port: peer.port(),
            target: None,
            https: false,
            connection: None,
            origin: None,
        }
    }
}

/// Serves one request (from hyper, in process for `http://self`, or any
/// body, as benchmarks do).
pub async fn handle<B>(
    app: Arc<App>,
    mut request: http::Request<B>,
    caller: Caller,
) -> http::Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let in_flight = caller.connection.as_ref().map(|connection| connection.request_started());
    let waited = caller.connection.as_ref().and_then(|connection| connection.waited());
    let identity = &app.admission.identity;
    let from_trusted_proxy = caller.origin.is_none() && identity.is_trusted_proxy(caller.peer);
    let request_id = request_id(&mut request, from_trusted_proxy);
    let in_process = caller.origin.is_some();
    let origin = match caller.origin {
        Some(origin) => Origin { hops: origin.hops + 1, ..origin },
        None => Origin::client(identity.client_addr(request.headers(), caller.peer)),
    };
    let client = origin.client;
    let http1 = request.version() <= http::Version::HTTP_11;
    let mut record = RequestRecord::new(app.telemetry.clone(), &request, client, request_id.clone());
    if let Some(connection) = &caller.connection {
        record.watch_connection(connection.ended_by().clone());
    }
    record.start_span(&request, caller.https, origin.hops);
    let context = RequestContext {
        https: caller.https,
        origin,
        request_id: request_id.as_str().into(),
        trace: record.trace().cloned(),
    };
    let mut deadline = HOST_RESPONSE_DEADLINE;
    let started = tokio::time::Instant::now();
    let arrival = Arrival {
        client: if in_process {
            super::spin::CHAINED_CLIENT
        } else {
            SocketAddr::new(caller.peer, caller.port)
        },
        target: caller.target,
        reached: waited.and_then(|waited| std::time::Instant::now().checked_sub(waited)),
    };
    let response = match serve(&app, request, &mut record, context, arrival, &mut deadline).await {
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
    match (caller.connection, in_flight) {
        (Some(connection), Some(in_flight)) => {
            let progress = connection.response_started(started + deadline);
            response.map(|body| response::boxed(TrackedBody::new(body, connection, progress, in_flight)))
        }
        _ => response,
    }
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

/// Where a request came from, for Spin's headers, and where it goes when
/// chained to a component.
struct Arrival {
    client: SocketAddr,
    target: Option<String>,
    /// When its bytes reached the machine, if the socket stamps arrivals.
    reached: Option<std::time::Instant>,
}

async fn serve<B>(
    app: &Arc<App>,
    mut request: http::Request<B>,
    record: &mut RequestRecord,
    context: RequestContext,
    arrival: Arrival,
    deadline: &mut Duration,
) -> Served
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    if let Err(rejection) = normalize_path(&mut request) {
        return Served::Rejected(rejection);
    }
    let limit = app.settings.max_self_hops;
    if context.origin.hops > limit {
        tracing::warn!(request_id = %context.request_id, hops = context.origin.hops, limit, "self-request loop refused (server.max_self_hops)");
        return Served::Rejected(Rejection::LoopDetected { limit });
    }
    if let Err(rejection) = app.admission.check_rates(record.client).await {
        return Served::Rejected(rejection);
    }
    let table = app.routes.current();
    if arrival.target.is_some() {
        // Spin's rule: a chained request's Host names no real host.
        request.headers_mut().remove(header::HOST);
    } else if let Some(spin) = &table.spin
        && let Some(answer) = super::spin::well_known(request.uri().path(), spin)
    {
        return answer.into();
    }
    let matched = match &arrival.target {
        Some(component) => table.for_component(component),
        None => table.find(request.uri().path()),
    };
    let Some(matched) = matched else {
        return response::plain(http::StatusCode::NOT_FOUND, "Not Found").into();
    };
    let route = matched.route;
    let spin_headers = table.spin.is_some().then(|| {
        super::spin::headers(request.uri(), request.headers(), &matched, arrival.client, context.https)
    });
    drop(matched);
    for (name, value) in spin_headers.into_iter().flatten() {
        request.headers_mut().insert(name, value);
    }
    record.route = Some(route.name.clone());
    *deadline = route.spec.max_duration;
    if let Some(limiter) = &route.policy.rate_limit
        && let Err(rejection) = limiter.check().await
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
    // A client's body is read before the request takes a slot, a worker or
    // an instance, so a slow one costs only its connection. (An
    // `http://self` request's body comes from a guest already admitted.)
    let faults = Arc::new(BodyFaults::default());
    let settings = &app.settings.request_body;
    let pace = BodyPace { timeout: settings.timeout, min_rate: settings.min_rate };
    let (parts, body) = request.into_parts();
    let mut body = ClientBody::new(body, limit, pace, app.admission.body_buffers.clone(), faults.clone());
    let read_ahead = route.spec.request_body_buffer_bytes;
    if context.origin.hops == 0
        && body.is_streaming()
        && declared.is_none_or(|length| length <= read_ahead)
        && let Err(fault) = body.read_ahead(read_ahead).await
    {
        return Served::Rejected(body_rejection(fault, limit));
    }
    let request = http::Request::from_parts(parts, body);
    // Admission, a worker, then a turn on the thread: the queue span.
    let queue = app.telemetry.tracing.as_ref().zip(context.trace.as_ref()).map(|(tracing, server)| {
        let pool = opentelemetry::KeyValue::new("wharf.worker_pool", route.policy.workers.is_some());
        tracing.span(server, "wharf.queue", opentelemetry::trace::SpanKind::Internal, vec![pool])
    });
    let mut queue = SpanGuard(queue);
    let slots = match app.admission.try_admit(record.client, arrival.reached) {
        Ok(slots) => slots,
        Err(rejection) => return Served::Rejected(rejection),
    };
    let worker = match &route.policy.workers {
        None => None,
        Some(pool) => match pool.acquire().await {
            Ok(worker) => Some(worker),
            Err(rejection) => return Served::Rejected(rejection),
        },
    };

    let deadlines = route.deadlines();
    let outcome = match &route.reuse {
        None => {
            let held = Held { slots, _worker: worker, queue };
            invoke::invoke(&app.runtime, &route.component, deadlines, context, request, held).await
        }
        Some(reuse) => {
            queue.end();
            invoke::invoke_reused(reuse, deadlines, &context, request, (slots, worker)).await
        }
    };
    // A body cut off while streaming in (too large, too slow) wins over
    // whatever the guest made of its truncated input, as long as no headers
    // have gone out.
    if let Some(fault) = faults.get().filter(|f| *f != BodyFault::Broken) {
        return Served::Rejected(body_rejection(fault, limit));
    }
    match outcome {
        Ok(response) => response.map(response::boxed).into(),
        Err(invoke::InvokeError::Shed) => Served::Rejected(Rejection::QueueDelay),
        Err(error) => {
            if error.is_timeout() {
                record.set_timed_out();
            }
            record.set_reason(error.to_string());
            response::for_status(error.status()).into()
        }
    }
}

/// What a request holds while its instance lives: its admission slots and
/// its worker, if the route has a pool (held, never read: dropping them
/// frees them), and the span of its wait, which ends as the instance
/// starts.
struct Held {
    slots: RequestSlots,
    _worker: Option<WorkerSlot>,
    queue: SpanGuard,
}

impl invoke::InstanceSlots for Held {
    fn started(&mut self) -> bool {
        self.queue.end();
        self.slots.started()
    }
}

/// The rejection for a body that did not arrive whole.
fn body_rejection(fault: BodyFault, limit: u64) -> Rejection {
    match fault {
        BodyFault::TooLarge => Rejection::BodyTooLarge { limit },
        BodyFault::TooSlow => Rejection::BodyTimeout,
        BodyFault::Broken => Rejection::BadRequest("the request body could not be read"),
    }
}

/// Replaces the request's path with its normalised form (see
/// [`path::normalize`]), keeping the query, or refuses it.
fn normalize_path<B>(request: &mut http::Request<B>) -> Result<(), Rejection> {
    let normalized = match path::normalize(request.uri().path()).map_err(Rejection::BadRequest)? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(normalized) => normalized,
    };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    let mut parts = request.uri().clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| Rejection::BadRequest("the normalised path is not a valid URI"))?,
    );
    *request.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| Rejection::BadRequest("the normalised path is not a valid URI"))?;
    Ok(())
}

/// The request's id: one Wharf makes, unless the request came through a
/// trusted proxy that sent a well-formed one. It replaces whatever the
/// client sent, so the component and the logs see the same id.
fn request_id<B>(request: &mut http::Request<B>, keep_forwarded: bool) -> String {
    if keep_forwarded
        && let Some(given) = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
    {
        return given.to_string();
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    if let Ok(value) = HeaderValue::from_str(&id) {
        request.headers_mut().insert(REQUEST_ID, value);
    }
    id
}

/// `http://self` requests served in process: they reach the app whatever
/// listener it has (TLS included) and carry their origin, so hop limits and
/// the originating client's limits apply.
pub(crate) struct InProcess(pub(crate) Weak<App>);

impl SelfDispatch for InProcess {
    fn dispatch(
        &self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        origin: Origin,
        target: Option<String>,
    ) -> BoxFuture<'static, Result<http::Response<wasmtime_wasi_http::WasiBody>, wasmtime_wasi_http::Error>>
    {
        let app = self.0.upgrade();
        Box::pin(async move {
            let Some(app) = app else { return Err(wasmtime_wasi_http::Error::DestinationUnavailable) };
            let caller = Caller {
                peer: origin.client,
                port: 0,
                target,
                https: false,
                connection: None,
                origin: Some(origin),
            };
            let response = handle(app, request, caller).await;
            Ok(response.map(|body| {
                use http_body_util::BodyExt;
                body.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))).boxed_unsync()
            }))
        })
    }
}
