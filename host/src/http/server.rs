//! Serving: one single-threaded tokio runtime per core, each accepting on
//! its own `SO_REUSEPORT` socket, serving HTTP/1.1 (keep-alive) and HTTP/2
//! on the same port under the connection deadlines of [`super::connection`],
//! and draining on shutdown.
//!
//! A runtime per core keeps a request, its instance and its connection on
//! one thread: no work stealing, no cross-core wake-ups. Measured here, that
//! is worth more than half again the throughput of one multi-thread runtime.

use super::connection::{self, ConnectionState, Deadlines, Ended, GracefulConnection, WatchedIo};
use super::listener::Listeners;
use super::service::{self, Caller, InProcess};
use crate::App;
use crate::policy::{ConnectionRefusal, ConnectionSlots};
use anyhow::{Context, Result};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// Serves `app` on `listeners` until `shutdown` resolves, then stops
/// accepting, lets requests in flight finish (up to the app's shutdown
/// timeout) and returns.
pub async fn run(listeners: Listeners, app: Arc<App>, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let self_dispatch: Arc<dyn crate::capabilities::outbound::SelfDispatch> =
        Arc::new(InProcess(Arc::downgrade(&app)));
    let _ = app.runtime.capabilities().outbound.self_dispatch.set(self_dispatch);
    let refusals = Arc::new(Refusals::default());
    // When the last connection was accepted (ms since the app started),
    // for the shutdown's log lines.
    let last_accept = Arc::new(AtomicU64::new(0));
    let (serving_tx, serving) = watch::channel(listeners.sockets.len());
    let serving_tx = Arc::new(serving_tx);
    let mut workers = Vec::new();
    for (index, socket) in listeners.sockets.into_iter().enumerate() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let app = app.clone();
        let stop = stop_rx.clone();
        let tls = listeners.tls.clone();
        let refusals = refusals.clone();
        let last_accept = last_accept.clone();
        let still_serving = StillServing(serving_tx.clone());
        let mut serving = serving.clone();
        std::thread::Builder::new()
            .name(format!("wharf-worker-{index}"))
            .spawn(move || {
                crate::runtime::fair::install_on_this_thread();
                crate::runtime::worker::mark_this_thread(index);
                crate::telemetry::batch::install_on_this_thread();
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .on_thread_park(|| {
                        crate::telemetry::batch::flush_this_thread();
                        crate::runtime::fair::on_park();
                    })
                    .build()
                    .context("cannot start a worker runtime")
                    .and_then(|runtime| {
                        runtime.block_on(async move {
                            let served = serve(socket, app, tls, refusals, last_accept, stop).await;
                            drop(still_serving);
                            let _ = serving.wait_for(|workers| *workers == 0).await;
                            served
                        })
                    });
                crate::telemetry::batch::flush_this_thread();
                let _ = done_tx.send(result);
            })
            .context("cannot spawn a worker thread")?;
        workers.push(done_rx);
    }
    let tls = listeners.tls.is_some();
    tracing::info!(addr = %listeners.local_addr, threads = workers.len(), tls, "listening");
    let admin = match listeners.admin {
        Some(admin) => {
            let listener = tokio::net::TcpListener::from_std(admin)?;
            tracing::info!(addr = %listener.local_addr()?, "admin listening (/healthz, /metrics)");
            Some(tokio::spawn(super::admin::serve(listener, app.clone(), stop_rx.clone())))
        }
        None => None,
    };

    shutdown.await;
    app.begin_drain();
    let delay = app.settings.drain_delay;
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "drain begun: readiness 503, HTTP/1 responses close their connections, HTTP/2 ones get GOAWAY; still accepting"
        );
        let mut cancel = app.cancel_requested();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = cancel.wait_for(|cancel| *cancel) => {}
        }
    }
    let draining = app.admission.in_flight();
    let cancelled_before = app.telemetry.metrics.cancelled_total();
    let _ = stop_tx.send(true);
    let last_connection_ms_ago =
        (app.started_at.elapsed().as_millis() as u64).saturating_sub(last_accept.load(Ordering::Relaxed));
    tracing::info!(
        draining,
        timeout = ?app.settings.shutdown_timeout,
        last_connection_ms_ago,
        "shutting down: no new connections; draining requests in flight"
    );
    for worker in workers {
        worker.await.context("a worker thread died")??;
    }
    refusals.flush(&app);
    // The spans of the last requests, before the process goes.
    if let Some(tracing) = app.telemetry.tracing.clone() {
        let timeout = app.settings.shutdown_timeout;
        let _ = tokio::task::spawn_blocking(move || tracing.flush(timeout)).await;
    }
    // Stop watching files: a reload must not start (and hold the app) now.
    app.stop_watching();
    // The admin task holds the app too; once it is gone, so is everything
    // the app owns (the key-value database among them), so a new server can
    // open the same data directory at once.
    if let Some(admin) = admin {
        admin.abort();
        let _ = admin.await;
    }
    // Requests still running when the drain gave up were dropped with their
    // runtime, and their records counted them as cancelled.
    let cancelled = app.telemetry.metrics.cancelled_total() - cancelled_before;
    tracing::info!(drained = draining.saturating_sub(cancelled as usize), cancelled, "shutdown complete");
    Ok(())
}

/// One worker still serving. A worker's runtime keeps running until no
/// worker is: a background task made for all of them (the Redis
/// connection's driver, a pooled outbound connection) runs on the runtime
/// of the worker that first needed it, so a worker that drained early and
/// dropped its runtime would cut off another's request in flight (seen: a
/// Redis call failing with "broken pipe" in a rolling restart). Dropped
/// when the worker's thread is done serving, or unwinds, or never built its
/// runtime.
struct StillServing(Arc<watch::Sender<usize>>);

impl Drop for StillServing {
    fn drop(&mut self) {
        self.0.send_modify(|workers| *workers -= 1);
    }
}

/// The hyper connection builder with Wharf's HTTP/1 and HTTP/2 settings.
/// Header-read and idle deadlines are the watchdog's, not hyper's.
pub(super) fn connection_builder(
    settings: &crate::manifest::ConnectionSettings,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .keep_alive_interval(settings.http2_ping_interval)
        .keep_alive_timeout(settings.http2_ping_timeout);
    builder
}

/// Keeps a timer due within a second on this thread's runtime, so a
/// request's deadline timers (seconds away) are never the earliest one.
/// Arming a timer earlier than every other makes tokio wake its driver with
/// an `eventfd` write; a WASI 0.3 instance's lifetime timer is armed before
/// its header timer and expires later, so without the anchor every such
/// request paid a syscall and a spurious wake-up (measured: 0.45 `write`
/// calls a request at c=100, 0.02 with the anchor). Costs one wake-up a
/// second on an idle thread.
/// The anchor is also the thread's heartbeat for `/livez`.
async fn timer_anchor(heartbeat: crate::app::health::Heartbeat) {
    loop {
        heartbeat.beat();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn serve(
    socket: std::net::TcpListener,
    app: Arc<App>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    refusals: Arc<Refusals>,
    last_accept: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::from_std(socket)?;
    let anchor = tokio::spawn(timer_anchor(app.heartbeats.register()));
    let _anchor = AbortOnDrop(anchor);
    let builder = Arc::new(connection_builder(&app.settings.connections));
    let open = Arc::new(OpenConnections::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off
                        // briefly rather than spin.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                // Over a cap: close at once, so the client fails fast
                // rather than waiting in the backlog.
                let slots = match app.admission.try_connection(peer.ip()) {
                    Ok(slots) => slots,
                    Err(refusal) => {
                        refusals.record(&app, refusal);
                        continue;
                    }
                };
                last_accept.store(app.started_at.elapsed().as_millis() as u64, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let connection = Connection {
                    app: app.clone(),
                    peer,
                    tls: tls.clone(),
                    builder: builder.clone(),
                    drain: stop.clone(),
                    going_away: app.drain_started(),
                    _open: open.enter(),
                    _slots: slots,
                };
                // Boxed: tokio moves a spawned future into its task cell and
                // writes its stage as it runs; a connection's future was
                // 12.9 KB, and its copies cost 100k instructions a
                // connection (callgrind, one request a connection: 252k
                // instructions a request then, 151k now that it is boxed and
                // 832 bytes).
                tokio::spawn(Box::pin(connection.serve(stream)));
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let timeout = app.settings.shutdown_timeout;
    let mut force = app.cancel_requested();
    tokio::select! {
        () = open.all_closed() => {}
        () = tokio::time::sleep(timeout) => {
            tracing::warn!(?timeout, "shutdown timeout passed; cancelling requests still in flight");
        }
        _ = force.wait_for(|cancel| *cancel) => {}
    }
    Ok(())
}

/// One accepted connection and what it holds.
struct Connection {
    app: Arc<App>,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    drain: watch::Receiver<bool>,
    going_away: watch::Receiver<bool>,
    _open: OpenGuard,
    _slots: ConnectionSlots,
}

impl Connection {
    async fn serve(self, stream: tokio::net::TcpStream) {
        let settings = &self.app.settings.connections;
        // Admission by delay reads the kernel's arrival time of requests.
        let stamped = self.app.settings.queue_delay.is_some() && super::arrival::enable(&stream).is_ok();
        let state = ConnectionState::new(
            Deadlines {
                header_read: settings.header_read_timeout,
                keepalive: settings.keepalive_timeout,
                send: settings.send_timeout,
            },
            stamped,
        );
        let stream = super::arrival::StampedStream::new(stream, state.arrival().cloned());
        let io = WatchedIo::new(stream, state.clone());
        let ended = match &self.tls {
            None => self.serve_http(io, &state, false).await,
            // Boxed: the handshake's and the TLS stream's state would
            // otherwise size every connection's future, TLS or not (12.9 KB
            // against 4.1 KB).
            Some(acceptor) => Box::pin(self.serve_tls(acceptor, io, &state)).await,
        };
        match ended {
            Ended::TimedOut(reason) => {
                self.app.telemetry.metrics.connection_timed_out(reason);
                tracing::debug!(peer = %self.peer, reason, "connection ended by its deadline");
            }
            Ended::CutOff => {
                self.app.telemetry.metrics.connection_cut_off();
                tracing::debug!(peer = %self.peer, "connection cut off for flooding (HTTP/2 ENHANCE_YOUR_CALM)");
            }
            Ended::Closed | Ended::Cancelled => {}
        }
    }

    /// Completes the TLS handshake (within the header deadline), then serves
    /// HTTP over it.
    async fn serve_tls<I>(
        &self,
        acceptor: &tokio_rustls::TlsAcceptor,
        io: I,
        state: &Arc<ConnectionState>,
    ) -> Ended
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // The handshake counts against the header deadline.
        let deadline = tokio::time::Instant::now() + self.app.settings.connections.header_read_timeout;
        match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
            Ok(Ok(stream)) => {
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    state.set_http2();
                }
                self.serve_http(stream, state, true).await
            }
            Ok(Err(error)) => {
                tracing::debug!(peer = %self.peer, %error, "TLS handshake failed");
                Ended::Closed
            }
            Err(_) => Ended::TimedOut("header_timeout"),
        }
    }

    async fn serve_http<I>(&self, io: I, state: &Arc<ConnectionState>, https: bool) -> Ended
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let caller = Caller {
            peer: self.peer.ip(),
            port: self.peer.port(),
            target: None,
            https,
            connection: Some(state.clone()),
            origin: None,
        };
        let app = self.app.clone();
        let service = service_fn(move |request| {
            let (app, caller) = (app.clone(), caller.clone());
            async move { Ok::<_, Infallible>(service::handle(app, request, caller).await) }
        });
        // Boxed, so that handing it to `watch` moves a pointer, not hyper's
        // 1.6 KB of connection state.
        let connection = Box::pin(self.builder.serve_connection(TokioIo::new(io), service).into_owned());
        let signals = connection::Signals {
            going_away: self.going_away.clone(),
            drain: self.drain.clone(),
            cancel: self.app.cancel_requested(),
        };
        connection::watch(connection, state, signals).await
    }
}

impl<I, S, B> GracefulConnection for auto::Connection<'static, I, S, TokioExecutor>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::Connection::graceful_shutdown(self);
    }
}

/// Aborts a task when dropped (the thread's anchor, when it stops serving).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connections open on one thread, so the drain can wait for them.
#[derive(Default)]
struct OpenConnections {
    count: AtomicUsize,
    closed: Notify,
}

impl OpenConnections {
    fn enter(self: &Arc<Self>) -> OpenGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        OpenGuard(self.clone())
    }

    async fn all_closed(&self) {
        loop {
            let notified = self.closed.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct OpenGuard(Arc<OpenConnections>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// Refused connections: each is counted in the metrics; the log gets the
/// first of a burst at once and then a summary at most once a second (a
/// flood must not flood the log too).
#[derive(Default)]
struct Refusals {
    server_full: AtomicU64,
    client_full: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
}

impl Refusals {
    fn record(&self, app: &App, refusal: ConnectionRefusal) {
        app.telemetry.metrics.connection_refused(refusal.reason());
        match refusal {
            ConnectionRefusal::ServerFull => self.server_full.fetch_add(1, Ordering::Relaxed),
            ConnectionRefusal::ClientFull => self.client_full.fetch_add(1, Ordering::Relaxed),
        };
        let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            drop(last);
            self.flush(app);
        }
    }

    /// Logs what was refused since the last line, if anything.
    fn flush(&self, app: &App) {
        let server_full = self.server_full.swap(0, Ordering::Relaxed);
        let client_full = self.client_full.swap(0, Ordering::Relaxed);
        if server_full + client_full > 0 {
            let settings = &app.settings.connections;
            tracing::warn!(
                max_connections = server_full,
                max_connections_per_client = client_full,
                limit = settings.max_connections,
                limit_per_client = settings.max_connections_per_client,
                "connections refused at accept (counts since the last such line; at most one a second)"
            );
        }
    }
}
