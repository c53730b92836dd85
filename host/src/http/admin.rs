//! The admin listener, on its own address (loopback by default): `GET
//! /livez` (200 while every server thread turns; 503 when one has stalled),
//! `GET /readyz` (200, or 503 while draining or while Redis is away for an
//! app that needs it), `GET
//! /healthz` (JSON: status, uptime, in-flight requests, live instances, each
//! route's queue depth, loaded components with digests) and `GET /metrics`
//! (Prometheus text format), and `POST /admin/reload` (the whole manifest,
//! or `?component=NAME` for one component; answers what was swapped, or the
//! error while the old version keeps serving).

use super::connection::{self, ConnectionState, Deadlines, TrackedBody, WatchedIo};
use super::response::{self, ResponseBody};
use crate::App;
use crate::telemetry::metrics::Snapshot;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// Admin connections open at once, at most; more are closed at accept.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Serves the admin endpoints on `listener` until `stop` fires, under the
/// same connection deadlines as the public listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let builder = Arc::new(super::server::connection_builder(&app.settings.connections));
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    // Admin connections are not drained: on stop they are dropped, so
    // nothing keeps the app alive after the server returns.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            _ = stop.changed() => {
                connections.shutdown().await;
                return;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let (app, builder) = (app.clone(), builder.clone());
        connections.spawn(async move {
            let _slot = slot;
            let settings = &app.settings.connections;
            let deadlines = Deadlines {
                header_read: settings.header_read_timeout,
                keepalive: settings.keepalive_timeout,
                send: settings.send_timeout,
            };
            let state = ConnectionState::new(deadlines, false);
            let io = WatchedIo::new(stream, state.clone());
            let service =
                service_fn({
                    let (app, state) = (app.clone(), state.clone());
                    move |request| {
                        let (app, state) = (app.clone(), state.clone());
                        async move {
                            let in_flight = state.request_started();
                            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                            let response = route(&app, request).await;
                            let progress = state.response_started(deadline);
                            Ok::<_, Infallible>(response.map(|body| {
                                response::boxed(TrackedBody::new(body, state, progress, in_flight))
                            }))
                        }
                    }
                });
            let connection = builder.serve_connection(TokioIo::new(io), service).into_owned();
            // Nothing drains or cancels admin connections: they are dropped.
            let (_keep, never) = tokio::sync::watch::channel(false);
            let signals =
                connection::Signals { going_away: never.clone(), drain: never.clone(), cancel: never };
            connection::watch(connection, &state, signals).await;
        });
    }
}

async fn route(
    app: &Arc<App>,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<ResponseBody> {
    // The probes say only yes or no, and orchestrators cannot send a
    // secret with them: they need no token. Everything else does.
    let probe = request.method() == Method::GET && matches!(request.uri().path(), "/livez" | "/readyz");
    if !probe
        && let Some(auth) = &app.admin_auth
        && let Err(rejection) = auth.check(request.headers())
    {
        return response::rejection(&rejection);
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => json(health(app)),
        (&Method::GET, "/livez") => {
            let stalled = app.heartbeats.stalled();
            let status = if stalled == 0 { "alive" } else { "stalled" };
            with_status(
                json(serde_json::json!({ "status": status, "stalled_threads": stalled })),
                stalled == 0,
            )
        }
        (&Method::GET, "/readyz") => {
            let not_ready = app.not_ready();
            let status = not_ready.map_or("ready", |reason| reason.as_str());
            with_status(json(serde_json::json!({ "status": status })), not_ready.is_none())
        }
        (&Method::GET, "/metrics") => {
            let text = app.telemetry.metrics.render(&snapshot(app));
            let mut response = http::Response::new(response::boxed(Full::new(Bytes::from(text))));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        (&Method::POST, "/admin/reload") => {
            let component = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("component=")))
                .map(str::to_string);
            let app = app.clone();
            let outcome = tokio::task::spawn_blocking(move || match component {
                Some(name) => app.reload_component(&name),
                None => app.reload_manifest(),
            })
            .await;
            match outcome {
                Ok(Ok(report)) => json(
                    serde_json::json!({ "status": "ok", "swapped": report.swapped, "unchanged": report.unchanged }),
                ),
                Ok(Err(error)) => {
                    let mut response =
                        json(serde_json::json!({ "status": "rejected", "error": format!("{error:#}") }));
                    *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
                    response
                }
                Err(_) => response::plain(StatusCode::INTERNAL_SERVER_ERROR, "reload task failed"),
            }
        }
        _ => response::plain(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// The moment's gauges for `/metrics`.
fn snapshot(app: &App) -> Snapshot {
    let table = app.routes.current();
    Snapshot {
        in_flight: app.admission.in_flight(),
        queue_depths: table
            .routes()
            .iter()
            .filter_map(|r| r.policy.workers.as_ref().map(|pool| (r.spec.path.clone(), pool.queue_depth())))
            .collect(),
        components: table.components().iter().map(|c| (c.name.clone(), c.digest.clone())).collect(),
        breakers_open: app.runtime.capabilities().outbound.breakers.open_count(),
        breaker_trips: app.runtime.capabilities().outbound.breakers.trips(),
    }
}

/// The `/healthz` document.
pub fn health(app: &App) -> serde_json::Value {
    let table = app.routes.current();
    let routes: Vec<_> = table
        .routes()
        .iter()
        .map(|route| {
            let pool = route.policy.workers.as_ref();
            serde_json::json!({
                "path": route.spec.path,
                "component": route.component.name,
                "workers": pool.map(|p| p.spec().workers),
                "queue_depth": pool.map_or(0, |p| p.queue_depth()),
            })
        })
        .collect();
    let components: Vec<_> = table
        .components()
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "digest": c.digest,
                "source": c.source.display().to_string(),
                "loaded_at_unix": c.loaded_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "from_cache": c.cache == crate::runtime::cache::CacheOutcome::Hit,
            })
        })
        .collect();
    let metrics = &app.telemetry.metrics;
    let redis = app.redis.as_ref().map(|redis| redis.health());
    let degraded = app.redis.as_ref().is_some_and(|redis| redis.is_down());
    let status = if app.is_draining() {
        "draining"
    } else if degraded {
        "degraded"
    } else {
        "ok"
    };
    serde_json::json!({
        "status": status,
        "ready": app.not_ready().is_none(),
        "redis": redis,
        "uptime_secs": app.started_at.elapsed().as_secs(),
        "in_flight": app.admission.in_flight(),
        "live_instances": metrics.live_instances(),
        "requests": metrics.requests_total(),
        "cancelled": metrics.cancelled_total(),
        "timed_out": metrics.timed_out_total(),
        "shed": metrics.rejections("overloaded") + metrics.rejections("queue_full"),
        "allocator": format!("{:?}", app.runtime.allocator),
        "pool": app.runtime.mechanisms,
        "outbound_breakers": app.runtime.capabilities().outbound.breakers.report(),
        "routes": routes,
        "components": components,
    })
}

/// `response`, or the same as 503 when not `ok` (probes read the status).
fn with_status(mut response: http::Response<ResponseBody>, ok: bool) -> http::Response<ResponseBody> {
    if !ok {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}

fn json(value: serde_json::Value) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(response::boxed(Full::new(Bytes::from(value.to_string()))));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
