//! Instance reuse, opt-in per route (`reuse = { ... }`): an instance serves
//! up to `max_requests` requests, `max_concurrent` at once (WASI 0.3; a
//! WASI 0.2 instance takes one at a time), and is retired when it has served
//! its maximum, has been idle for `idle_timeout_secs`, or has outlived a
//! request's deadline. It saves instantiation, and it gives up isolation:
//! whatever one request leaves in the instance's memory the next one sees.
//!
//! Built on wasmtime-wasi-http's `ProxyHandler` (what `wasmtime serve`
//! uses): the instances of a route are its workers, started when a request
//! finds none with room, so there are never more than the route's requests
//! in flight at its busiest (admission bounds those), and idle ones retire.
//! Each server thread has a handler of its own, so a request and the
//! instance serving it share a thread: no cross-thread wake-ups (measured
//! at c=100: one `eventfd` write a request with one handler for all).
//! The pool keeps as many slots again for them, so they never take a slot
//! a fresh instance needs. Requests keep their admission slots until their
//! response ends. Reused instances run on the WASI 0.3 engine (concurrent
//! calls need it), and their `http://self` requests and output are
//! attributed to the instance, not to each request.

use super::Runtime;
use super::component::{HandlerPre, LoadedComponent};
use super::host::Host;
use super::invoke::{Deadlines, InvokeError, RequestContext};
use crate::capabilities::outbound::Origin;
use crate::manifest::ReuseSpec;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use wasmtime::StoreContextMut;
use wasmtime::component::GuestTaskId;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, Proxy, ProxyHandler, ShouldAccept, WorkerExpiration,
    WorkerState, WorkerStatus,
};

/// The reused instances of one route's component.
pub struct Reuse {
    /// One handler per server thread (made at the thread's first request),
    /// the last one shared by every other thread.
    handlers: Box<[OnceLock<ProxyHandler<Workers>>]>,
    workers: Workers,
}

/// Server threads with handlers of their own; more share the last one.
const THREAD_HANDLERS: usize = 256;

#[derive(Clone)]
struct Workers {
    runtime: Arc<Runtime>,
    component: Arc<LoadedComponent>,
    spec: ReuseSpec,
    deadlines: Deadlines,
}

impl Reuse {
    /// Reused instances of `component` under `spec`, for a route with
    /// `deadlines`.
    pub fn new(
        runtime: Arc<Runtime>,
        component: Arc<LoadedComponent>,
        spec: ReuseSpec,
        deadlines: Deadlines,
    ) -> Self {
        Self {
            handlers: (0..=THREAD_HANDLERS).map(|_| OnceLock::new()).collect(),
            workers: Workers { runtime, component, spec, deadlines },
        }
    }

    /// Where the instances report.
    pub(crate) fn telemetry(&self) -> &crate::telemetry::Telemetry {
        &self.workers.runtime.telemetry
    }

    /// The component's name, for logs and spans.
    pub(crate) fn component_name(&self) -> &str {
        &self.workers.component.name_for_logs
    }

    /// This thread's handler.
    fn handler(&self) -> &ProxyHandler<Workers> {
        let index = super::worker::this_thread().unwrap_or(THREAD_HANDLERS).min(THREAD_HANDLERS);
        self.handlers[index].get_or_init(|| ProxyHandler::new(self.workers.clone()))
    }

    /// Serves `request` on one of the instances, starting one if needed.
    pub async fn handle(
        &self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
    ) -> Result<http::Response<wasmtime_wasi_http::WasiBody>, InvokeError> {
        let headers_by = tokio::time::Instant::now() + self.workers.deadlines.headers;
        let handled = tokio::time::timeout_at(headers_by, self.handler().handle(headers_by, request)).await;
        match handled {
            Err(_) => Err(InvokeError::TimedOut),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is::<ExpirationError>() => Err(InvokeError::TimedOut),
            Ok(Err(error)) if error.is::<wasmtime::PoolConcurrencyLimitError>() => {
                Err(InvokeError::PoolExhausted)
            }
            Ok(Err(error)) => Err(super::invoke::trap_error(error)),
        }
    }
}

impl HandlerState for Workers {
    type StoreData = Host;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    fn instantiate(
        &self,
    ) -> impl Future<Output = wasmtime::Result<Instance<Host, Expiration, Worker>>> + Send {
        let runtime = self.runtime.clone();
        let component = self.component.clone();
        let (spec, deadlines) = (self.spec, self.deadlines);
        async move {
            let context = RequestContext {
                https: false,
                origin: Origin::client(std::net::Ipv4Addr::UNSPECIFIED.into()),
                request_id: format!("reused-{}", component.name_for_logs).into(),
                trace: None,
            };
            let mut store = super::invoke::new_store(&runtime, &component, &context);
            // A reused instance computes for request after request: its
            // ticks in a row are work, not spinning (see `fair`).
            store.data_mut().epoch_ticks = super::fair::Ticks::reused();
            let instantiating = Instant::now();
            let proxy = match &component.handler {
                HandlerPre::P2(pre) => Proxy::P2(pre.instantiate_async(&mut store).await?),
                HandlerPre::P3(pre) => Proxy::P3(pre.instantiate_async(&mut store).await?),
            };
            runtime.telemetry.metrics.instantiated(instantiating.elapsed().as_secs_f64());
            Ok(Instance {
                store,
                proxy,
                view: <Host as WasiHttpView>::http,
                expiration: Expiration {
                    spec,
                    deadlines,
                    timer: Box::pin(tokio::time::sleep(deadlines.total)),
                },
                state: Worker {
                    spec,
                    p2: component.kind == super::HandlerKind::P2,
                    component: component.name_for_logs.clone(),
                    telemetry: runtime.telemetry.clone(),
                },
            })
        }
    }
}

/// One reused instance's policy.
pub struct Worker {
    spec: ReuseSpec,
    p2: bool,
    component: Arc<str>,
    telemetry: Arc<crate::telemetry::Telemetry>,
}

impl WorkerState for Worker {
    type StoreData = Host;
    type RequestData = tokio::time::Instant;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        let max_concurrent = if self.p2 { 1 } else { self.spec.max_concurrent };
        if total >= self.spec.max_requests {
            ShouldAccept::Never
        } else if concurrent >= max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, Host>,
        headers_by: tokio::time::Instant,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + 'static + Send + Sync>> {
        Box::pin(tokio::time::sleep_until(headers_by))
    }

    fn drop(&self, store: wasmtime::Store<Host>, result: wasmtime::Result<()>) {
        let Err(error) = result else { return };
        // wasmtime's handler says "worker panicked" for any worker dropped
        // mid-flight; only an unwinding thread means it.
        if error.to_string() == "worker panicked" && !std::thread::panicking() {
            drop(store);
            tracing::debug!(component = %self.component, "a reused instance was stopped while working (shutdown or cancellation)");
            return;
        }
        let error = super::invoke::trap_error(error);
        if let Some(reason) = error.holding_bound() {
            self.telemetry.metrics.instance_killed(reason, "reused");
        }
        tracing::warn!(component = %self.component, %error, "a reused instance ended with an error");
    }
}

/// When a reused instance is retired: idle too long, or a request or the
/// work after it outlived the route's deadlines.
pub struct Expiration {
    spec: ReuseSpec,
    deadlines: Deadlines,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiration {
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>, state: WorkerStatus, start: Instant) -> Poll<()> {
        let limit = match state {
            WorkerStatus::Idle => self.spec.idle_timeout,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.deadlines.total,
        };
        let deadline = tokio::time::Instant::from_std(start) + limit;
        self.timer.as_mut().reset(deadline);
        self.timer.as_mut().poll(cx)
    }
}
