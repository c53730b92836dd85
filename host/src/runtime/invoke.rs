//! One request through one fresh instance: a new `Store` with the
//! component's limits, instantiation from the pre-instance, the guest's
//! `handle` call in a task of its own (so the body streams after the headers
//! go out), and the deadlines: for the headers, between body chunks, and for
//! the whole response.
//!
//! The guest task is tied to the response: if the request future or the
//! response body is dropped before the body ends (the client disconnected),
//! or a deadline passes, the task is aborted and its instance freed at once.
//! Whatever the client does, an instance lives at most the route's
//! `max_duration` from the moment it is created: headers, body and any work
//! the guest does after its response (or after dropping its response
//! outparam) all count, and the slots it holds (admission, worker) are
//! released when it is killed.

use super::Runtime;
use super::component::{HandlerPre, LoadedComponent};
use super::guest_body::{BEFORE_HEADERS, GuestBody, GuestTask, InstanceShared, STREAMING, phase_name};
use super::host::{Host, HostParts, LiveInstance};
use super::host_memory::{Charged, HostMemory, HostMemoryExceeded};
use crate::capabilities::keyvalue::KeyValueCtx;
use crate::capabilities::outbound::{Origin, OutboundBudget, OutboundHooks};
use crate::capabilities::sqlite::SqliteCtx;
use crate::capabilities::stdio::GuestOutput;
use bytes::Bytes;
use http_body::Body;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Why a request did not get a response from its component.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The request could not be handed to the guest (e.g. no `Host` header).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Every instance slot is taken.
    #[error("instance pool exhausted")]
    PoolExhausted,
    /// Instantiation failed for another reason.
    #[error("instantiation failed: {0}")]
    Instantiation(String),
    /// The guest trapped before sending response headers.
    #[error("guest trapped: {0}")]
    Trapped(String),
    /// The guest returned, or dropped its response outparam, without
    /// setting a response.
    #[error("guest returned without a response")]
    NoResponse,
    /// The guest answered with a `wasi:http` error code.
    #[error("guest reported an error: {0}")]
    GuestError(String),
    /// No response headers before the route's deadline.
    #[error("no response headers before the route's timeout")]
    TimedOut,
    /// The instance reached its lifetime bound (`max_duration_secs`).
    #[error("instance killed at its lifetime bound")]
    LifetimeExceeded,
    /// The instance made the host hold more than its host-memory limit.
    #[error("instance killed: {0}")]
    HostMemoryExceeded(HostMemoryExceeded),
    /// The instance tried to hold more resources than `max_resources`.
    #[error("instance killed: it tried to hold more resources than its max_resources")]
    TooManyResources,
    /// Refused as its instance was to start: it had waited past
    /// `queue_delay`'s target on an overloaded thread.
    #[error("refused at the head of the queue: waited past queue_delay's target")]
    Shed,
}

impl InvokeError {
    /// The status the client sees; the one place these are mapped.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PoolExhausted | Self::Shed => StatusCode::SERVICE_UNAVAILABLE,
            Self::TimedOut | Self::LifetimeExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::Instantiation(_)
            | Self::Trapped(_)
            | Self::NoResponse
            | Self::GuestError(_)
            | Self::HostMemoryExceeded(_)
            | Self::TooManyResources => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether a deadline caused it (logged as `timed_out`).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::TimedOut | Self::LifetimeExceeded)
    }

    /// The bound that killed the instance, for a kill by a bound on what
    /// it holds (`wharf_instances_killed_total{reason}`).
    pub fn holding_bound(&self) -> Option<&'static str> {
        match self {
            Self::HostMemoryExceeded(_) => Some("host_memory"),
            Self::TooManyResources => Some("max_resources"),
            _ => None,
        }
    }
}

/// The deadlines one request runs under (a route's).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// For the response headers.
    pub headers: Duration,
    /// Between two chunks of a streamed body.
    pub idle: Duration,
    /// For the whole response, and the instance's whole life.
    pub total: Duration,
}

/// What one instance is told about the request it serves.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// `https` when the request came over TLS.
    pub https: bool,
    /// Who the request is from, carried on to its `http://self` requests.
    pub origin: Origin,
    /// The request's id, for the instance's log lines.
    pub request_id: Arc<str>,
    /// The request's server span, when it is traced.
    pub trace: Option<opentelemetry::Context>,
}

/// How long a guest that dropped its response outparam has to finish (so a
/// trap is told from a plain return) before the client gets its 500.
const OUTPARAM_GRACE: Duration = Duration::from_millis(100);

/// What a request holds while its instance lives (admission permits, a
/// worker slot), told when the instance starts.
pub trait InstanceSlots: Send + 'static {
    /// The instance starts now; `false` refuses the request instead
    /// ([`InvokeError::Shed`]) before any instance state is made.
    fn started(&mut self) -> bool {
        true
    }
}

impl InstanceSlots for () {}

/// Runs `component` on `request` and returns its response, or the error
/// explaining why there is none. `slots` (admission permits, a worker
/// slot) live exactly as long as the instance.
pub async fn invoke<B>(
    runtime: &Arc<Runtime>,
    component: &Arc<LoadedComponent>,
    deadlines: Deadlines,
    context: RequestContext,
    mut request: http::Request<B>,
    mut slots: impl InstanceSlots,
) -> Result<http::Response<GuestBody>, InvokeError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let started = Instant::now();
    // The headers the guest answers with, whichever WASI it speaks.
    let (sender, receiver) = tokio::sync::oneshot::channel::<Result<GuestResponse, String>>();
    let shared = Arc::new(InstanceShared { phase: AtomicU8::new(BEFORE_HEADERS), failed: OnceLock::new() });
    let task_shared = shared.clone();
    let (runtime, component) = (runtime.clone(), component.clone());
    // Boxed: the task's future is 4 KB, and tokio moves a spawned future
    // on its way into its task cell and writes its stage as it runs (a
    // callgrind count of a pinned hello: eleven copies a request); a box
    // moves as a pointer.
    let task = tokio::spawn(Box::pin(async move {
        // Declared first, dropped last: the slots are free only once the
        // instance is gone, so a new request never meets a full pool.
        if !slots.started() {
            return Err(InvokeError::Shed);
        }
        let _slots = slots;
        let telemetry = &runtime.telemetry;
        let guest_span = guest_span(telemetry, &context, &component.name_for_logs, "fresh");
        if let (Some(tracing), Some(span)) = (&telemetry.tracing, &guest_span) {
            tracing.inject(span, request.headers_mut());
        }
        // The store is made when the thread gets to the request, not when
        // it reads it: requests queued behind others hold no instance state,
        // and the epoch deadline (one tick) counts from here.
        let mut store = new_store(&runtime, &component, &context);
        let call = prepare_call(&mut store, &component, &context, request, sender)?;
        let instantiate_span = |span: &Option<opentelemetry::Context>| {
            telemetry.tracing.as_ref().zip(span.as_ref()).map(|(tracing, parent)| {
                tracing.span(
                    parent,
                    "wharf.instantiate",
                    opentelemetry::trace::SpanKind::Internal,
                    Vec::new(),
                )
            })
        };
        let run = async {
            let instantiating = std::time::Instant::now();
            let instantiation = instantiate_span(&guest_span);
            let instantiated = |ok: bool| {
                if let Some(span) = &instantiation {
                    crate::telemetry::trace::end(
                        span,
                        if ok { Ok(()) } else { Err("instantiation failed".into()) },
                    );
                }
            };
            match (&component.handler, call) {
                (HandlerPre::P2(pre), Call::P2 { incoming, outparam }) => {
                    let proxy = pre.instantiate_async(&mut store).await.map_err(instantiation_error);
                    instantiated(proxy.is_ok());
                    let proxy = proxy?;
                    telemetry.metrics.instantiated(instantiating.elapsed().as_secs_f64());
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, incoming, outparam)
                        .await
                        .map_err(trap_error)
                }
                // Boxed: the p3 call's state is a third of this task's
                // size, and every p2 request in flight would carry it
                // (3.9 KB a task inline, 2.6 KB boxed).
                (HandlerPre::P3(pre), Call::P3 { request, io, sender }) => {
                    Box::pin(async {
                        let service = pre.instantiate_async(&mut store).await.map_err(instantiation_error);
                        instantiated(service.is_ok());
                        let service = service?;
                        telemetry.metrics.instantiated(instantiating.elapsed().as_secs_f64());
                        serve_p3(&mut store, service, request, io, sender).await
                    })
                    .await
                }
                _ => unreachable!("the call was prepared for the component's handler"),
            }
        };
        // `timeout_at` polls `run` first: an instance that finishes in its
        // first stretch never arms the timer.
        // Boxed before it is wrapped: the call's state (wasmtime's
        // instantiation and handler futures, 2 KB) is then written once,
        // not once for each wrapper that takes it by value.
        let run = super::instance_time::Timed::new(Box::pin(run));
        let run = crate::telemetry::trace::InSpan::new(Charged::new(run), guest_span.clone());
        let result = match tokio::time::timeout_at(started + deadlines.total, run).await {
            Ok(Err(error)) if error.holding_bound().is_some() => {
                let phase = phase_name(task_shared.phase.load(Ordering::Acquire));
                let reason = error.holding_bound().unwrap_or_default();
                telemetry.metrics.instance_killed(reason, phase);
                killed(&guest_span, reason, phase);
                tracing::warn!(
                    component = %component.name_for_logs,
                    request_id = %context.request_id,
                    phase,
                    reason,
                    "{error}"
                );
                Err(error)
            }
            Ok(result) => result,
            Err(_elapsed) => {
                let phase = phase_name(task_shared.phase.load(Ordering::Acquire));
                telemetry.metrics.instance_killed("max_duration", phase);
                killed(&guest_span, "max_duration", phase);
                tracing::warn!(
                    component = %component.name_for_logs,
                    request_id = %context.request_id,
                    phase,
                    outcome = "timed_out",
                    limit = ?deadlines.total,
                    "instance killed at its lifetime bound (the route's max_duration_secs)"
                );
                Err(InvokeError::LifetimeExceeded)
            }
        };
        // Before the store (and with it the body's sender) is dropped: a
        // body whose guest died must not look finished to the client.
        if let Err(error) = &result {
            let _ = task_shared.failed.set(if error.is_timeout() { "max duration" } else { "trapped" });
        }
        drop(store);
        if let Some(span) = &guest_span {
            crate::telemetry::trace::end(span, result.as_ref().map(drop).map_err(|e| e.to_string().into()));
        }
        result
    }));
    let guard = GuestTask { abort: task.abort_handle(), armed: true, shared: shared.clone() };

    let headers_by = started + deadlines.headers;
    let headers = match tokio::time::timeout_at(headers_by, receiver).await {
        Err(_elapsed) => {
            guard.abort();
            return Err(InvokeError::TimedOut);
        }
        Ok(Ok(headers)) => headers,
        // The guest dropped its outparam without setting it: it returned,
        // trapped, or goes on without a response. Its task says which at
        // once if it ended; one that goes on is left to its lifetime bound.
        Ok(Err(_closed)) => {
            guard.disarm();
            let grace = (Instant::now() + OUTPARAM_GRACE).min(headers_by);
            return Err(match tokio::time::timeout_at(grace, task).await {
                Ok(Ok(Ok(()))) | Err(_) => InvokeError::NoResponse,
                Ok(Ok(Err(error))) => error,
                Ok(Err(join_error)) => InvokeError::Trapped(join_error.to_string()),
            });
        }
    };
    match headers {
        Ok(response) => {
            shared.phase.store(STREAMING, Ordering::Release);
            let mut response = GuestBody::wrap(response, deadlines, started, Some(shared), Some(guard), None);
            response.body_mut().settle(super::guest_body::Instance::Fresh).await;
            Ok(response)
        }
        Err(code) => {
            guard.disarm();
            Err(InvokeError::GuestError(code))
        }
    }
}

/// Starts the span of the instance serving a traced request: `fresh` or
/// `reused`.
fn guest_span(
    telemetry: &crate::telemetry::Telemetry,
    context: &RequestContext,
    component: &str,
    instance: &'static str,
) -> Option<opentelemetry::Context> {
    let (tracing, parent) = telemetry.tracing.as_ref().zip(context.trace.as_ref())?;
    let attributes = vec![
        opentelemetry::KeyValue::new("wharf.component", component.to_string()),
        opentelemetry::KeyValue::new("wharf.instance", instance),
    ];
    Some(tracing.span(parent, "wharf.guest", opentelemetry::trace::SpanKind::Internal, attributes))
}

/// Notes on the guest's span that a bound killed it.
fn killed(span: &Option<opentelemetry::Context>, reason: &'static str, phase: &'static str) {
    use opentelemetry::trace::TraceContextExt;
    if let Some(span) = span {
        span.span().add_event(
            "wharf.kill",
            vec![
                opentelemetry::KeyValue::new("wharf.kill.reason", reason),
                opentelemetry::KeyValue::new("wharf.kill.phase", phase),
            ],
        );
    }
}

/// A response as hyper sends it, from either kind of guest.
pub(super) type GuestResponse = http::Response<HyperOutgoingBody>;

/// The call prepared for the guest before its task starts.
enum Call {
    P2 {
        incoming:
            wasmtime::component::Resource<wasmtime_wasi_http::p2::bindings::http::types::IncomingRequest>,
        outparam:
            wasmtime::component::Resource<wasmtime_wasi_http::p2::bindings::http::types::ResponseOutparam>,
    },
    P3 {
        request: wasmtime_wasi_http::p3::Request,
        io: Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>>,
        sender: tokio::sync::oneshot::Sender<Result<GuestResponse, String>>,
    },
}

/// Hands `request` to `store` the way the component's handler takes it;
/// the guest's response headers will come through `sender`.
fn prepare_call<B>(
    store: &mut Store<Host>,
    component: &LoadedComponent,
    context: &RequestContext,
    request: http::Request<B>,
    sender: tokio::sync::oneshot::Sender<Result<GuestResponse, String>>,
) -> Result<Call, InvokeError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    match &component.handler {
        HandlerPre::P2(_) => {
            let scheme = if context.https { Scheme::Https } else { Scheme::Http };
            let mut http = store.data_mut().http();
            let incoming = http
                .new_incoming_request(scheme, request)
                .map_err(|e| InvokeError::BadRequest(e.to_string()))?;
            // The headers reach the connection through a task of their own,
            // which puts the response behind the work the thread already
            // has: responses go out in bursts, and a client on this host is
            // woken once per burst instead of once per response. Measured
            // (hello, one pinned thread): 34 us a request instead of 50-60,
            // the load generator's context switches from one in two
            // responses to one in ten. (Waking the connection straight from
            // the outparam, or sending it once round the run queue, measured
            // the slow way.) Where this thread's instances run long
            // (measured where admission is by delay) there is little to
            // batch, and under overload each trip round the run queue waits
            // behind the whole queue: there the outparam wakes the connection
            // itself (open-loop overload of 1 ms requests: p99 of served
            // 26 ms -> 21 ms, on a fresh server 150-190 ms -> 90-100 ms).
            // A dropped outparam drops the sender, which the receiver sees
            // as closed.
            let deliver = move |headers: Result<GuestResponse, ErrorCode>| {
                let _ = sender.send(headers.map_err(|code| format!("{code:?}")));
            };
            let outparam = if super::instance_time::long_here() {
                http.new_response_outparam_from_callback(deliver)
            } else {
                let (p2_sender, p2_receiver) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    if let Ok(headers) = p2_receiver.await {
                        deliver(headers);
                    }
                });
                http.new_response_outparam(p2_sender)
            };
            let outparam = outparam.map_err(|e| InvokeError::Instantiation(e.to_string()))?;
            Ok(Call::P2 { incoming, outparam })
        }
        HandlerPre::P3(_) => {
            let mut request = request;
            let authority = request.uri().authority().cloned().or_else(|| {
                request.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()?.parse().ok())
            });
            let mut parts = request.uri().clone().into_parts();
            parts.scheme =
                Some(if context.https { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP });
            parts.authority = authority;
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            *request.uri_mut() = http::Uri::from_parts(parts)
                .map_err(|e| InvokeError::BadRequest(format!("no authority: {e}")))?;
            let (request, io) =
                wasmtime_wasi_http::p3::Request::from_http(store.data_mut().http().hooks, request);
            // Through a task of its own where instances are short, as for
            // WASI 0.2 above.
            if super::instance_time::long_here() {
                return Ok(Call::P3 { request, io: Box::pin(io), sender });
            }
            let (p3_sender, p3_receiver) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if let Ok(headers) = p3_receiver.await {
                    let _ = sender.send(headers);
                }
            });
            Ok(Call::P3 { request, io: Box::pin(io), sender: p3_sender })
        }
    }
}

/// Runs a WASI 0.3 handler: calls it, hands its response to the client,
/// and keeps the store's event loop turning while the guest streams the
/// body and until every task it started is done.
async fn serve_p3(
    store: &mut Store<Host>,
    service: wasmtime_wasi_http::p3::bindings::Service,
    request: wasmtime_wasi_http::p3::Request,
    io: Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>>,
    sender: tokio::sync::oneshot::Sender<Result<GuestResponse, String>>,
) -> Result<(), InvokeError> {
    let outcome = store
        .run_concurrent(async move |accessor| {
            match service.handle(accessor, request).await {
                Err(trap) => return Err(trap_error(trap)),
                Ok(Err(code)) => {
                    let _ = sender.send(Err(format!("{code:?}")));
                }
                Ok(Ok(response)) => {
                    let converted = accessor.with(|mut access| {
                        response.into_http_with_getter(&mut access, io, <Host as WasiHttpView>::http)
                    });
                    let _ = sender.send(converted.map_err(|e| format!("{e:#}")));
                }
            }
            std::future::poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
            Ok(())
        })
        .await;
    outcome.map_err(trap_error)?
}

pub(crate) fn new_store(
    runtime: &Runtime,
    component: &LoadedComponent,
    context: &RequestContext,
) -> Store<Host> {
    let capabilities = &runtime.capabilities;
    let key_value = KeyValueCtx {
        shared: capabilities.key_value.clone(),
        allowed_stores: component.key_value_stores.clone(),
        max_response_bytes: usize::try_from(component.limits.max_memory).unwrap_or(usize::MAX),
    };
    let output = GuestOutput::new(
        component.name_for_logs.clone(),
        context.request_id.clone(),
        context.trace.as_ref().and_then(crate::telemetry::trace::trace_id).map(|id| id.to_string().into()),
        capabilities.guest_output_budget,
    );
    let budget = OutboundBudget::new(
        component.limits.max_outbound_requests,
        component.limits.max_concurrent_outbound_requests,
        context.origin.tree.clone(),
    );
    let wasi = guest_wasi(runtime, component, &output, &budget);
    let outbound = OutboundHooks {
        client: capabilities.outbound.clone(),
        allowed: component.allowed_outbound_hosts.clone(),
        component: component.name_for_logs.clone(),
        origin: context.origin.clone(),
        budget,
    };
    let mut host = Host::new(HostParts {
        wasi,
        config: component.config.clone(),
        variables: component.variables.clone(),
        key_value,
        sqlite: SqliteCtx {
            shared: capabilities.sqlite.clone(),
            allowed: component.sqlite_databases.clone(),
        },
        limits: super::limits::InstanceLimiter::new(&component.limits),
        outbound,
        live: LiveInstance::new(runtime.telemetry.metrics.live_instances_gauge(), &runtime.activity),
        host_memory: HostMemory::open(
            usize::try_from(component.limits.max_host_memory).unwrap_or(usize::MAX),
        ),
    });
    host.table.set_max_capacity(component.limits.max_resources);
    let mut store = Store::new(&component.engine, host);
    store.limiter(|host| &mut host.limits);
    store.call_hook(|mut store, hook| store.data_mut().host_memory.on_call(hook));
    if runtime.fuel_metering {
        let _ = store.set_fuel(component.limits.fuel.unwrap_or(u64::MAX));
    }
    // Yield at every epoch tick, and after the first behind everything else
    // the thread has to do (see `fair`), so a spinning guest cannot starve
    // the other requests on its thread, and can be aborted.
    if runtime.epoch_interruption {
        store.set_epoch_deadline(1);
        let counters = runtime.telemetry.metrics.epoch_ticks().clone();
        store.epoch_deadline_callback(move |mut store| {
            Ok(super::fair::counted(super::fair::at_tick(&mut store.data_mut().epoch_ticks), &counters))
        });
    }
    store
}

/// A trap, told apart when a Wharf bound caused it.
pub(crate) fn trap_error(error: wasmtime::Error) -> InvokeError {
    if let Some(exceeded) = error.downcast_ref::<HostMemoryExceeded>() {
        return InvokeError::HostMemoryExceeded(*exceeded);
    }
    if let Some(wasmtime::component::ResourceTableError::Full) = error.downcast_ref() {
        return InvokeError::TooManyResources;
    }
    InvokeError::Trapped(format!("{error:#}"))
}

/// The WASI context of one instance of `component`: its output, its
/// environment and files, and sockets as its allow-list and budget permit.
fn guest_wasi(
    runtime: &Runtime,
    component: &LoadedComponent,
    output: &GuestOutput,
    budget: &OutboundBudget,
) -> wasmtime_wasi::WasiCtx {
    let mut wasi = wasmtime_wasi::WasiCtx::builder();
    wasi.stdout(output.stdout()).stderr(output.stderr());
    if !component.environment.is_empty() {
        wasi.envs(&component.environment);
    }
    for mount in component.files.iter() {
        if let Err(error) = wasi.preopened_dir(&mount.host, &mount.guest, wasmtime_wasi::FsPerms::ReadOnly) {
            tracing::warn!(component = %component.name_for_logs, dir = %mount.host.display(), %error,
                "cannot give the component its files");
        }
    }
    if component.allowed_outbound_hosts.has_sockets() {
        let check = crate::capabilities::outbound::sockets::check(
            component.allowed_outbound_hosts.clone(),
            budget.spent(),
            component.limits.max_outbound_requests,
            runtime.capabilities.outbound.clone(),
            component.name_for_logs.clone(),
        );
        wasi.socket_addr_check(check).allow_ip_name_lookup(true).allow_tcp(true).allow_udp(true);
    }
    wasi.build()
}

fn instantiation_error(error: wasmtime::Error) -> InvokeError {
    if error.is::<wasmtime::PoolConcurrencyLimitError>() {
        InvokeError::PoolExhausted
    } else {
        InvokeError::Instantiation(format!("{:#}", anyhow::Error::from(error)))
    }
}

/// Runs `request` on one of `reuse`'s instances; `slots` are held until the
/// response body ends.
pub async fn invoke_reused<B>(
    reuse: &Arc<super::reuse::Reuse>,
    deadlines: Deadlines,
    context: &RequestContext,
    mut request: http::Request<B>,
    slots: impl Send + 'static,
) -> Result<http::Response<GuestBody>, InvokeError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let started = Instant::now();
    // A reused instance serves several requests at once, so no span is
    // current inside it: the guest span goes to it in `traceparent`, for
    // the outbound calls that pass it on.
    let telemetry = reuse.telemetry();
    let span = guest_span(telemetry, context, reuse.component_name(), "reused");
    if let (Some(tracing), Some(span)) = (&telemetry.tracing, &span) {
        tracing.inject(span, request.headers_mut());
    }
    let span = crate::telemetry::trace::SpanGuard(span);
    let request = request.map(|body| {
        http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(body, Into::into))
    });
    // Awaited here, not through a task of its own as a fresh instance's
    // headers are (the instance already runs in a task of its own: a relay
    // task measured pinned WASI 0.3 reused hello 14.3-17.5k/s against
    // 16.4-18.2k/s without, four pairs). Dropping this future (the client
    // went away) drops the call's receiver; the instance finishes the call
    // or meets its deadline (wasmtime's handler cannot cancel one), as it
    // did when a relay task was aborted.
    let response = reuse.handle(request).await?;
    let mut response =
        GuestBody::wrap(response, deadlines, started, None, None, Some(Box::new((slots, span))));
    response.body_mut().settle(super::guest_body::Instance::Reused).await;
    Ok(response)
}
