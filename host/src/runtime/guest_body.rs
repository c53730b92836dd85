//! The guest's response body as the connection sees it: the stream
//! deadlines (between chunks, for the whole response), the instance's fate
//! (a body whose guest trapped ends in an error, not like a finished one),
//! the abort guard that stops the guest when the client leaves, and the
//! look-ahead that lets headers and a ready body leave in one write.

use crate::telemetry::record::{BoxError, DeadlineExceeded};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::invoke::{Deadlines, GuestResponse};

/// At most this many turns of the thread are waited for a fresh instance's
/// body and for a reused instance's, for at most this long, and this many
/// frames and bytes taken, ahead of the headers (`GuestBody::settle`).
const SETTLE_TURNS: usize = 2;
const SETTLE_REUSED_TURNS: usize = 32;
const SETTLE_MAX_WAIT: Duration = Duration::from_millis(10);
const SETTLE_MAX_FRAMES: usize = 8;
const SETTLE_MAX_BYTES: usize = 64 * 1024;

/// Whose body `GuestBody::settle` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instance {
    /// A fresh instance, running in a task of its own on this thread.
    Fresh,
    /// A reused instance, whose worker serves other requests too.
    Reused,
}

/// What the guest task and the response body share about one instance:
/// where it is in its life (for the lifetime bound's log line) and, once it
/// has ended badly, how.
pub(super) struct InstanceShared {
    pub(super) phase: AtomicU8,
    pub(super) failed: OnceLock<&'static str>,
}

/// Where an instance is in its life.
pub(super) const BEFORE_HEADERS: u8 = 0;
pub(super) const STREAMING: u8 = 1;
pub(super) const AFTER_RESPONSE: u8 = 2;

pub(super) fn phase_name(phase: u8) -> &'static str {
    match phase {
        BEFORE_HEADERS => "before_headers",
        STREAMING => "streaming",
        _ => "after_response",
    }
}

/// Aborts the guest task when dropped while armed: the client left before
/// the response ended.
pub(super) struct GuestTask {
    pub(super) abort: AbortHandle,
    pub(super) armed: bool,
    pub(super) shared: Arc<InstanceShared>,
}

impl GuestTask {
    /// The guest may finish on its own (its response is complete), within
    /// its lifetime bound.
    pub(super) fn disarm(mut self) {
        self.armed = false;
        self.shared.phase.store(AFTER_RESPONSE, Ordering::Release);
    }

    /// Stops the guest now.
    pub(super) fn abort(self) {
        self.abort.abort();
        self.disarm();
    }
}

impl Drop for GuestTask {
    fn drop(&mut self) {
        if self.armed {
            self.abort.abort();
        }
    }
}

/// A response body whose guest trapped before finishing it.
#[derive(Debug, thiserror::Error)]
#[error("guest trapped while streaming its response")]
pub struct GuestFailed;

/// The guest's response body, with the stream deadlines; ending it normally
/// disarms the abort guard, dropping it early aborts the guest.
pub struct GuestBody {
    inner: HyperOutgoingBody,
    /// Bytes still to come when the guest declared a length: hyper stops
    /// polling once they are out, so that is where the body ends.
    remaining: Option<u64>,
    /// The instance's fate, when the body has an instance of its own.
    shared: Option<Arc<InstanceShared>>,
    /// Slots held until the body ends (a reused instance's requests).
    _held: Option<Box<dyn Send>>,
    guard: Option<GuestTask>,
    idle_timeout: Duration,
    deadline: Instant,
    // Timers are created the first time the guest keeps the body waiting,
    // so a response that is ready at once costs no timer.
    idle: Option<Pin<Box<Sleep>>>,
    overall: Option<Pin<Box<Sleep>>>,
    /// What `settle` found ready before the headers went out, and whether
    /// the body ended there.
    ahead: VecDeque<Result<Frame<Bytes>, BoxError>>,
    ended: bool,
}

impl GuestBody {
    /// `response` with its body under `deadlines`, counted from `started`;
    /// `shared` and `guard` for a body with an instance of its own, `held`
    /// for the slots of a reused instance's request.
    pub(super) fn wrap(
        response: GuestResponse,
        deadlines: Deadlines,
        started: Instant,
        shared: Option<Arc<InstanceShared>>,
        guard: Option<GuestTask>,
        held: Option<Box<dyn Send>>,
    ) -> http::Response<GuestBody> {
        let remaining = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        response.map(|inner| GuestBody {
            inner,
            remaining,
            shared,
            _held: held,
            guard,
            idle_timeout: deadlines.idle,
            deadline: started + deadlines.total,
            idle: None,
            overall: None,
            ahead: VecDeque::new(),
            ended: false,
        })
    }

    /// Takes what the body has ready before its headers are handed to the
    /// connection, waiting a little for the guest to finish it, so that
    /// headers and a body the guest writes at once leave in one write (and,
    /// when it ends there, with `content-length` instead of chunked).
    /// Without it a WASI 0.3 guest's body, written by a task the guest
    /// spawns as it returns the response, went out as headers and data
    /// first and the chunked terminator in a second write in half the
    /// responses (`wasmtime serve` does the same): two packets and two
    /// wake-ups of the client for one response.
    ///
    /// A fresh instance finishes such a body within one turn of the thread
    /// nearly always (measured: 0.11 turns a WASI 0.3 hello), so up to
    /// `SETTLE_TURNS` turns are waited. A reused instance's worker serves
    /// up to `max_concurrent` requests and yields to the thread before each
    /// guest task it resumes, so its body ends anywhere from 0 to 60 turns
    /// after its headers (measured, one thread, c=100; with two turns about
    /// half went out in two writes): up to `SETTLE_REUSED_TURNS` are waited
    /// there. A turn of an idle thread costs a microsecond or two; of a busy
    /// one, the time the thread takes round its run queue, so no turn starts
    /// after `SETTLE_MAX_WAIT`, which bounds what a streaming response's
    /// headers wait. Where the thread's instances run long each turn waits
    /// behind the whole run queue, so there only what is ready is taken.
    /// Stops at `SETTLE_MAX_FRAMES` frames or `SETTLE_MAX_BYTES` bytes: a
    /// large body streams as it comes.
    pub(super) async fn settle(&mut self, instance: Instance) {
        let turns = match instance {
            _ if super::instance_time::long_here() => 0,
            Instance::Fresh => SETTLE_TURNS,
            Instance::Reused => SETTLE_REUSED_TURNS,
        };
        // The clock is read only once there is something to wait for.
        let mut waiting_since = None;
        for turn in 0..=turns {
            let more = std::future::poll_fn(|cx| Poll::Ready(self.take_ready(cx))).await;
            if !more || turn == turns {
                return;
            }
            if waiting_since.get_or_insert_with(std::time::Instant::now).elapsed() >= SETTLE_MAX_WAIT {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Moves the frames the body has ready into the look-ahead; whether it
    /// could still take more (it has not ended and is within the bounds).
    /// A body that is not ready wakes `cx` when it is.
    fn take_ready(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.ended || self.ahead.len() >= SETTLE_MAX_FRAMES || self.ahead_bytes() >= SETTLE_MAX_BYTES {
                return false;
            }
            match self.poll_inner(cx) {
                Poll::Ready(Some(frame)) => {
                    let failed = frame.is_err();
                    self.ahead.push_back(frame);
                    self.ended = failed || self.remaining == Some(0);
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => return true,
            }
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        let idle_timeout = self.idle_timeout;
        let idle = self.idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle_timeout)));
        if idle.as_mut().poll(cx).is_ready() {
            return Some("idle");
        }
        let deadline = self.deadline;
        let overall = self.overall.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if overall.as_mut().poll(cx).is_ready() {
            return Some("max duration");
        }
        None
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.ahead.pop_front() {
            return Poll::Ready(Some(frame));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        match self.poll_inner(cx) {
            Poll::Pending => match self.expired(cx) {
                None => Poll::Pending,
                Some(which) => {
                    if let Some(guard) = self.guard.take() {
                        guard.abort();
                    }
                    Poll::Ready(Some(Err(Box::new(DeadlineExceeded(which)))))
                }
            },
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && (self.ended || self.remaining == Some(0) || self.inner.is_end_stream())
    }

    /// A body that ended within `settle` has the length of what it took
    /// ahead: hyper sends it with `content-length` instead of chunked (not
    /// when it holds trailers or an error, which need the chunked framing).
    fn size_hint(&self) -> SizeHint {
        let ahead = self.ahead_bytes() as u64;
        let whole = self.ended && self.ahead.iter().all(|f| f.as_ref().is_ok_and(Frame::is_data));
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining + ahead),
            None if whole => SizeHint::with_exact(ahead),
            None => {
                let inner = self.inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + ahead);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + ahead);
                }
                hint
            }
        }
    }
}

impl GuestBody {
    /// Data bytes in the look-ahead.
    fn ahead_bytes(&self) -> usize {
        self.ahead.iter().filter_map(|f| f.as_ref().ok()?.data_ref().map(Bytes::len)).sum()
    }

    /// The guest's next frame, with the instance's fate and the declared
    /// length applied; no timers (the caller decides what a wait means).
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            // A body whose instance was dropped unfinished ends like a
            // finished one; the instance says which it was.
            Poll::Ready(None) => match self.shared.as_ref().and_then(|s| s.failed.get()) {
                None => {
                    if let Some(guard) = self.guard.take() {
                        guard.disarm();
                    }
                    Poll::Ready(None)
                }
                Some(&"max duration") => Poll::Ready(Some(Err(Box::new(DeadlineExceeded("max duration"))))),
                Some(_) => Poll::Ready(Some(Err(Box::new(GuestFailed)))),
            },
            Poll::Ready(Some(Err(error))) => match self.shared.as_ref().and_then(|s| s.failed.get()) {
                Some(&"max duration") => Poll::Ready(Some(Err(Box::new(DeadlineExceeded("max duration"))))),
                _ => Poll::Ready(Some(Err(error.into()))),
            },
            Poll::Ready(Some(Ok(frame))) => {
                let idle_timeout = self.idle_timeout;
                if let Some(idle) = &mut self.idle {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                }
                if let (Some(remaining), Some(data)) = (self.remaining, frame.data_ref()) {
                    let remaining = remaining.saturating_sub(data.len() as u64);
                    self.remaining = Some(remaining);
                    if remaining == 0
                        && let Some(guard) = self.guard.take()
                    {
                        guard.disarm();
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
