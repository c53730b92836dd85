//! One request through one fresh instance: a new `Store`, instantiation from
//! the pre-instance, the guest's `handle` call in a task of its own (so the
//! body streams after the headers go out), the deadline for the headers, and
//! cancellation of the guest when the client goes away.
//!
//! The guest task is tied to the response: if the request future or the
//! response body is dropped before the body ends (the client disconnected,
//! or the deadline passed), the task is aborted and its instance freed.

use crate::App;
use crate::host::{Host, LiveInstance};
use crate::keyvalue::KeyValueCtx;
use crate::registry::{HandlerPre, Route};
use crate::response::{self, ResponseBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;
use wasmtime::{Store, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
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
    /// The guest returned without setting a response.
    #[error("guest returned no response")]
    NoResponse,
    /// The guest answered with a `wasi:http` error code.
    #[error("guest reported an error: {0}")]
    GuestError(String),
    /// No response headers before the route's deadline.
    #[error("deadline passed before response headers")]
    TimedOut,
}

impl InvokeError {
    /// The status the client sees; the one place these are mapped.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PoolExhausted => StatusCode::SERVICE_UNAVAILABLE,
            Self::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            Self::Instantiation(_) | Self::Trapped(_) | Self::NoResponse | Self::GuestError(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// Runs `route`'s component on `request` and returns its response, or the
/// error explaining why there is none. `permit` (the admission slot) lives
/// exactly as long as the instance.
pub async fn invoke(
    app: &Arc<App>,
    route: &Route,
    request: http::Request<hyper::body::Incoming>,
    permit: OwnedSemaphorePermit,
) -> Result<http::Response<ResponseBody>, InvokeError> {
    let component = route.component.clone();
    let mut store = new_store(app, &component);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (incoming, outparam) = {
        let mut http = store.data_mut().http();
        let incoming = http
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| InvokeError::BadRequest(e.to_string()))?;
        let outparam =
            http.new_response_outparam(sender).map_err(|e| InvokeError::Instantiation(e.to_string()))?;
        (incoming, outparam)
    };

    let task = tokio::spawn(async move {
        let _permit = permit;
        match &component.handler {
            HandlerPre::P2(pre) => {
                let proxy = pre.instantiate_async(&mut store).await.map_err(instantiation_error)?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
                    .map_err(|e| InvokeError::Trapped(format!("{e:#}")))
            }
        }
    });
    let mut guard = GuestTask { abort: task.abort_handle(), armed: true, app: app.clone() };

    let headers = match tokio::time::timeout(route.spec.timeout, receiver).await {
        Err(_elapsed) => return Err(InvokeError::TimedOut),
        Ok(Ok(headers)) => headers,
        // The guest dropped its outparam without setting it: it finished or
        // trapped. Its task says which.
        Ok(Err(_closed)) => {
            guard.armed = false;
            return Err(match task.await {
                Ok(Ok(())) => InvokeError::NoResponse,
                Ok(Err(error)) => error,
                Err(join_error) => InvokeError::Trapped(join_error.to_string()),
            });
        }
    };
    match headers {
        Ok(response) => {
            Ok(response.map(|body| response::boxed(GuestBody { inner: body, guard: Some(guard) })))
        }
        Err(code) => Err(InvokeError::GuestError(format!("{code:?}"))),
    }
}

fn new_store(app: &Arc<App>, component: &crate::registry::LoadedComponent) -> Store<Host> {
    let key_value =
        KeyValueCtx { backend: app.key_value.clone(), allowed_stores: component.key_value_stores.clone() };
    let limits = StoreLimitsBuilder::new().memory_size(app.settings.max_instance_memory as usize).build();
    let host =
        Host::new(component.config.clone(), key_value, limits, LiveInstance::new(&app.stats.live_instances));
    let mut store = Store::new(&app.engine, host);
    store.limiter(|host| &mut host.limits);
    // Yield to the runtime at every epoch tick, so a spinning guest cannot
    // starve the other requests on its thread.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
    store
}

fn instantiation_error(error: wasmtime::Error) -> InvokeError {
    let error = anyhow::Error::from(error);
    if error.chain().any(|cause| cause.to_string().contains("maximum concurrent")) {
        InvokeError::PoolExhausted
    } else {
        InvokeError::Instantiation(format!("{error:#}"))
    }
}

/// Aborts the guest task when dropped while armed: the client left, or the
/// deadline passed, before the response ended.
struct GuestTask {
    abort: AbortHandle,
    armed: bool,
    app: Arc<App>,
}

impl Drop for GuestTask {
    fn drop(&mut self) {
        if self.armed && !self.abort.is_finished() {
            self.abort.abort();
            self.app.stats.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The guest's response body; ending it normally disarms the abort guard.
struct GuestBody {
    inner: HyperOutgoingBody,
    guard: Option<GuestTask>,
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = response::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled
            && let Some(mut guard) = self.guard.take()
        {
            guard.armed = false;
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
