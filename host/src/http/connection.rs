//! One connection, bounded in time whatever the client does, as nginx's
//! `client_header_timeout`, `keepalive_timeout` and `send_timeout` bound
//! it. hyper enforces none of these across protocol detection, TLS and
//! HTTP/2, and stops polling a response body while the client is not
//! reading (so a body's own deadlines never fire), so each connection has a
//! watchdog that owns it:
//!
//! - from accept, the TLS handshake, protocol detection and the first
//!   request head must be done within `header_read_timeout`;
//! - with no request in flight, an HTTP/1 connection is closed after
//!   `keepalive_timeout`, or `header_read_timeout` after the first byte of
//!   a next request head; an HTTP/2 one gets GOAWAY after
//!   `keepalive_timeout`;
//! - a response whose last frame the client has not taken for
//!   `send_timeout`, or that outlives its route's `max_duration_secs`
//!   (plus a second for its own timers to act first), ends the connection:
//!   its requests' guests are aborted and their slots released, and they
//!   are logged as `timed_out`;
//! - on a graceful shutdown, HTTP/1 connections close after the response in
//!   progress and HTTP/2 ones get GOAWAY.
//!
//! The watchdog reads cheap shared state: counters the request path and
//! response bodies update, and a read hook on the socket.

use super::arrival::ArrivalStamp;
use crate::telemetry::record::{BoxError, EndedBy};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Extra time a response past its deadline gets for its own timers to end
/// it cleanly before the watchdog ends the whole connection.
const DEADLINE_GRACE: Duration = Duration::from_secs(1);

/// How long an HTTP/2 connection told GOAWAY for being idle has to close.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

const NONE: u64 = u64::MAX;

/// The deadlines a connection lives by (from the server settings).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// TLS, protocol detection and a request head must be done within this.
    pub header_read: Duration,
    /// An idle connection lives this long.
    pub keepalive: Duration,
    /// A response the client does not read ends the connection after this.
    pub send: Duration,
}

/// What the watchdog and the request path share about one connection.
pub struct ConnectionState {
    accepted: Instant,
    deadlines: Deadlines,
    http2: AtomicBool,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    idle_since_ms: AtomicU64,
    /// Counts the times the connection became idle; bytes read while idle
    /// note the count, so "a head began in this idle spell" is exact even
    /// when a request takes less than a millisecond.
    idle_spells: AtomicU64,
    head_begun_in_spell: AtomicU64,
    head_begun_ms: AtomicU64,
    responses: Mutex<Vec<Arc<ResponseProgress>>>,
    changed: Notify,
    ended_by: EndedBy,
    /// The kernel's arrival time of the last bytes read, when stamped.
    arrival: Option<Arc<ArrivalStamp>>,
}

impl ConnectionState {
    /// The state of a connection accepted now; `stamped` when its reads
    /// note the kernel's arrival time (see [`arrival`](super::arrival)).
    pub fn new(deadlines: Deadlines, stamped: bool) -> Arc<Self> {
        Arc::new(Self {
            accepted: Instant::now(),
            deadlines,
            http2: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            idle_spells: AtomicU64::new(0),
            head_begun_in_spell: AtomicU64::new(NONE),
            head_begun_ms: AtomicU64::new(0),
            responses: Mutex::default(),
            changed: Notify::new(),
            ended_by: EndedBy::default(),
            arrival: stamped.then(Arc::default),
        })
    }

    fn now_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.accepted + Duration::from_millis(ms)
    }

    /// Where the socket notes the kernel's arrival time, when stamped.
    pub fn arrival(&self) -> Option<&Arc<ArrivalStamp>> {
        self.arrival.as_ref()
    }

    /// How long ago the last bytes read reached the machine, when stamped.
    pub fn waited(&self) -> Option<Duration> {
        self.arrival.as_ref()?.waited()
    }

    /// Notes that the connection speaks HTTP/2.
    pub fn set_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// Why the watchdog ended the connection, once it has; records read
    /// it to log their request as timed out rather than cancelled.
    pub fn ended_by(&self) -> &EndedBy {
        &self.ended_by
    }

    /// A request head arrived; the guard marks it in flight until dropped.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Tracks a response that must end by `deadline`.
    pub fn response_started(&self, deadline: Instant) -> Arc<ResponseProgress> {
        let progress = Arc::new(ResponseProgress {
            deadline_ms: deadline.saturating_duration_since(self.accepted).as_millis() as u64,
            last_taken_ms: AtomicU64::new(NONE),
            done: AtomicBool::new(false),
        });
        let mut responses = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        responses.retain(|r| !r.done.load(Ordering::Relaxed));
        responses.push(progress.clone());
        drop(responses);
        self.changed.notify_one();
        progress
    }

    /// When the watchdog must next act, and how, given the state now.
    fn next_expiry(&self) -> Option<(u64, Expiry)> {
        let Deadlines { header_read, keepalive, send } = self.deadlines;
        let ms = |d: Duration| d.as_millis() as u64;
        if self.in_flight.load(Ordering::Acquire) == 0 {
            if self.requests.load(Ordering::Relaxed) == 0 {
                return Some((ms(header_read), Expiry::Close("header_timeout")));
            }
            let idle_since = self.idle_since_ms.load(Ordering::Relaxed);
            if self.http2.load(Ordering::Relaxed) {
                return Some((idle_since + ms(keepalive), Expiry::GoAway("keepalive_timeout")));
            }
            if self.head_begun_in_spell.load(Ordering::Acquire) == self.idle_spells.load(Ordering::Acquire) {
                let begun = self.head_begun_ms.load(Ordering::Relaxed);
                return Some((begun + ms(header_read), Expiry::Close("header_timeout")));
            }
            return Some((idle_since + ms(keepalive), Expiry::Close("keepalive_timeout")));
        }
        let responses = self.responses.lock().unwrap_or_else(|e| e.into_inner());
        responses
            .iter()
            .filter(|r| !r.done.load(Ordering::Relaxed))
            .flat_map(|r| {
                let taken = r.last_taken_ms.load(Ordering::Relaxed);
                let stalled = (taken != NONE).then(|| (taken + ms(send), Expiry::Close("send_timeout")));
                let deadline = (r.deadline_ms + ms(DEADLINE_GRACE), Expiry::Close("response_deadline"));
                stalled.into_iter().chain(Some(deadline))
            })
            .min_by_key(|(at, _)| *at)
    }
}

/// What the watchdog does when a deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Drop the connection now.
    Close(&'static str),
    /// Tell the client (HTTP/2 GOAWAY) and close soon after.
    GoAway(&'static str),
}

/// A request in flight on its connection; dropping it may make the
/// connection idle.
pub struct InFlight(Arc<ConnectionState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        state.idle_since_ms.store(state.now_ms(), Ordering::Relaxed);
        if state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            state.idle_spells.fetch_add(1, Ordering::AcqRel);
            state.changed.notify_one();
        }
    }
}

/// How far the client has taken one response.
pub struct ResponseProgress {
    deadline_ms: u64,
    /// When hyper last took a frame and has not asked for the next since
    /// (`NONE` while it waits on the guest, or before the first frame).
    last_taken_ms: AtomicU64,
    done: AtomicBool,
}

/// A response body that tells its connection's watchdog how far the client
/// has taken it, and holds its request in flight until it ends.
pub struct TrackedBody<B> {
    inner: B,
    state: Arc<ConnectionState>,
    progress: Arc<ResponseProgress>,
    _in_flight: InFlight,
}

impl<B> TrackedBody<B> {
    /// Tracks `inner` on `state`'s connection; `in_flight` is released
    /// when the body ends or is dropped.
    pub fn new(
        inner: B,
        state: Arc<ConnectionState>,
        progress: Arc<ResponseProgress>,
        in_flight: InFlight,
    ) -> Self {
        Self { inner, state, progress, _in_flight: in_flight }
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        self.progress.done.store(true, Ordering::Relaxed);
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let progress = &self.progress;
        match &polled {
            Poll::Ready(Some(Ok(_))) if !self.inner.is_end_stream() => {
                let was = progress.last_taken_ms.swap(self.state.now_ms(), Ordering::Relaxed);
                if was == NONE {
                    // The watchdog may be asleep with no deadline for it.
                    self.state.changed.notify_one();
                }
            }
            Poll::Pending => progress.last_taken_ms.store(NONE, Ordering::Relaxed),
            _ => progress.done.store(true, Ordering::Relaxed),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting for the watchdog when bytes of a next request head
/// arrive on an idle HTTP/1 connection.
pub struct WatchedIo<T> {
    inner: T,
    state: Arc<ConnectionState>,
}

impl<T> WatchedIo<T> {
    /// Watches reads from `inner` for `state`.
    pub fn new(inner: T, state: Arc<ConnectionState>) -> Self {
        Self { inner, state }
    }

    /// The socket.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let state = &self.state;
            if state.requests.load(Ordering::Relaxed) == 0 && before == 0 && buf.filled().starts_with(b"PRI ")
            {
                state.set_http2();
            }
            if state.in_flight.load(Ordering::Acquire) == 0 {
                let spell = state.idle_spells.load(Ordering::Acquire);
                if state.head_begun_in_spell.load(Ordering::Relaxed) != spell {
                    state.head_begun_ms.store(state.now_ms(), Ordering::Relaxed);
                    state.head_begun_in_spell.store(spell, Ordering::Release);
                    state.changed.notify_one();
                }
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection hyper serves, which the watchdog can ask to shut down
/// gracefully.
pub trait GracefulConnection: Future<Output = Result<(), BoxError>> {
    /// Stop taking requests; finish the ones in progress.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

/// A boxed connection (moved as a pointer) shuts down as the connection.
impl<C: GracefulConnection + ?Sized> GracefulConnection for Pin<Box<C>> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().as_mut().graceful_shutdown();
    }
}

/// Why [`watch`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The connection ended by itself (the client closed it, or it was
    /// drained).
    Closed,
    /// A deadline ended it, for this reason.
    TimedOut(&'static str),
    /// The server cut it off for flooding it (HTTP/2 GOAWAY
    /// `ENHANCE_YOUR_CALM`: rapid reset, endless header blocks, too many
    /// refused streams).
    CutOff,
    /// The shutdown stopped waiting for it.
    Cancelled,
}

/// Whether `error` is the server's own HTTP/2 GOAWAY `ENHANCE_YOUR_CALM`,
/// which h2 sends a peer that floods it.
fn told_to_calm_down(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && !h2.is_remote() && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        source = error.source();
    }
    false
}

/// What the server tells a connection while it lives.
pub struct Signals {
    /// A drain has begun: an HTTP/2 connection is sent GOAWAY (its
    /// streams finish; the client opens new ones elsewhere), an HTTP/1 one
    /// goes on (its responses say `connection: close`).
    pub going_away: tokio::sync::watch::Receiver<bool>,
    /// The listeners have stopped: finish gracefully.
    pub drain: tokio::sync::watch::Receiver<bool>,
    /// The shutdown gave up: end now.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

/// What [`Signals`] said, as a connection's loop receives it.
enum ServerSignal {
    GoingAway,
    Drain,
    Cancel,
}

/// Serves `connection` under `state`'s deadlines until it ends, a deadline
/// ends it, `signals` ask it to go away or finish gracefully, or to end.
pub async fn watch<C: GracefulConnection>(connection: C, state: &ConnectionState, signals: Signals) -> Ended {
    let Signals { going_away: mut drain_begun, mut drain, mut cancel } = signals;
    let mut connection = std::pin::pin!(connection);
    let timer = tokio::time::sleep_until(state.accepted + state.deadlines.header_read);
    let mut timer = std::pin::pin!(timer);
    // The waits live across turns of the loop (the connection's task turns
    // it a few times a request): made anew at each turn, registering and
    // dropping their waiters measured 4-5 thousand instructions a request.
    // `changed` is `notify_one`d, so a wait made after a notification still
    // sees it. The server's signals, which come once in a connection's life
    // if ever, wait in a `FuturesUnordered`, which polls only those woken:
    // a turn of the loop does not look at them (2.6 thousand instructions a
    // request when each was polled at every turn).
    let mut changed = std::pin::pin!(state.changed.notified());
    let mut server_signals =
        futures::stream::FuturesUnordered::<Pin<Box<dyn Future<Output = ServerSignal> + Send>>>::new();
    server_signals.push(Box::pin(async move {
        let _ = drain_begun.wait_for(|begun| *begun).await;
        ServerSignal::GoingAway
    }));
    server_signals.push(Box::pin(async move {
        let _ = drain.wait_for(|stop| *stop).await;
        ServerSignal::Drain
    }));
    server_signals.push(Box::pin(async move {
        let _ = cancel.wait_for(|stop| *stop).await;
        ServerSignal::Cancel
    }));
    let mut draining = false;
    let mut going_away: Option<&'static str> = None;
    let mut drain_has_begun = false;
    loop {
        // An HTTP/2 connection is known as one only once its preface is
        // read, so this is checked again at every turn after the drain
        // begins.
        if drain_has_begun && !draining && state.http2.load(Ordering::Relaxed) {
            draining = true;
            connection.as_mut().graceful_shutdown();
        }
        // Once GOAWAY is sent the timer stays at its grace period.
        let armed = match going_away {
            Some(_) => true,
            None => match state.next_expiry() {
                Some((at_ms, _)) => {
                    timer.as_mut().reset(state.at(at_ms));
                    true
                }
                None => false,
            },
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                    if told_to_calm_down(&*error) {
                        return Ended::CutOff;
                    }
                }
                // A connection told GOAWAY by a deadline that then closes
                // cleanly was still ended by that deadline.
                if let Some(reason) = going_away {
                    let _ = state.ended_by.set(reason);
                    return Ended::TimedOut(reason);
                }
                return Ended::Closed;
            }
            () = timer.as_mut(), if armed => {
                if let Some(reason) = going_away {
                    let _ = state.ended_by.set(reason);
                    return Ended::TimedOut(reason);
                }
                // Re-check: a request may have arrived since the timer was set.
                let now = state.now_ms();
                match state.next_expiry().filter(|(at, _)| *at <= now).map(|(_, expiry)| expiry) {
                    Some(Expiry::Close(reason)) => {
                        let _ = state.ended_by.set(reason);
                        return Ended::TimedOut(reason);
                    }
                    Some(Expiry::GoAway(reason)) => {
                        connection.as_mut().graceful_shutdown();
                        going_away = Some(reason);
                        timer.as_mut().reset(Instant::now() + GOAWAY_GRACE);
                    }
                    None => {}
                }
            }
            () = changed.as_mut() => changed.set(state.changed.notified()),
            Some(signal) = futures::StreamExt::next(&mut server_signals) => match signal {
                // Only HTTP/2 connections act on it (HTTP/1 responses read
                // the app's flag): at the top of the loop, once known as one.
                ServerSignal::GoingAway => drain_has_begun = true,
                ServerSignal::Drain => {
                    if !draining {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                ServerSignal::Cancel => return Ended::Cancelled,
            },
        }
    }
}
