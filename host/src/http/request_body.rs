//! Request bodies as the host takes them from clients: read ahead in full
//! before the request may take an admission slot, a worker or an instance
//! (up to `request_body_buffer_bytes`, the way nginx reads a body before
//! its upstream sees any of it), under a pace the client must keep, and
//! then handed to the guest.
//!
//! A slow client therefore costs a connection, never an instance: the
//! slow-POST ("R-U-Dead-Yet") class of attack meets the connection caps
//! and the pace, not `max_concurrent_requests`. The pace, like Apache's
//! `mod_reqtimeout` `body=T,MinRate=R`: no more than `timeout` between two
//! reads, and all of the body received by `timeout` plus one second for
//! every `min_rate` bytes; a client that falls behind gets 408.
//!
//! Read-ahead bytes are held in memory up to a server-wide budget
//! (`max_request_body_memory_bytes`); past it, in an unlinked temporary
//! file in `data_dir/tmp` (nginx's `client_body_temp_path`), so slow
//! bodies from many connections cannot exhaust memory. A body larger than
//! the buffer streams to the guest after what was read ahead, under the
//! same pace and the route's size limit.

use crate::policy::BodyBuffers;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use wasmtime_wasi_http::Error as HttpError;

/// How much of a file-backed body is read back at a time.
const FILE_CHUNK: usize = 64 << 10;

/// The pace a client must keep sending a body (the `[server]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPace {
    /// Longest wait for the next bytes; also the allowance before
    /// `min_rate` applies.
    pub timeout: Duration,
    /// Bytes a second the body must average past the allowance (0: none).
    pub min_rate: u64,
}

/// Why a body did not arrive whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// It passed the route's `max_request_body_bytes`.
    TooLarge,
    /// The client fell behind the pace.
    TooSlow,
    /// The client's stream failed (reset, malformed framing, closed).
    Broken,
}

const NO_FAULT: u8 = 0;

impl BodyFault {
    fn code(self) -> u8 {
        match self {
            Self::TooLarge => 1,
            Self::TooSlow => 2,
            Self::Broken => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::TooLarge),
            2 => Some(Self::TooSlow),
            3 => Some(Self::Broken),
            _ => None,
        }
    }
}

/// The first fault a body met, shared with the request path (so a body
/// cut off while the guest streams it still gets 413 or 408 when no
/// response headers went out yet).
#[derive(Default)]
pub struct BodyFaults(AtomicU8);

impl BodyFaults {
    /// The first fault, if any.
    pub fn get(&self) -> Option<BodyFault> {
        BodyFault::from_code(self.0.load(Ordering::Acquire))
    }

    fn set(&self, fault: BodyFault) {
        let _ = self.0.compare_exchange(NO_FAULT, fault.code(), Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The time a body has left, from its pace; the clock starts when the
/// body is first read (a body-less request never reads the clock).
struct Pace {
    pace: BodyPace,
    /// When reading began, and when the last bytes came.
    clock: Option<(Instant, Instant)>,
    received: u64,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Pace {
    fn new(pace: BodyPace) -> Self {
        Self { pace, clock: None, received: 0, timer: None }
    }

    fn start(&mut self) {
        if self.clock.is_none() {
            let now = Instant::now();
            self.clock = Some((now, now));
        }
    }

    fn deadline(&self) -> Instant {
        let (started, last_read) = self.clock.unwrap_or_else(|| (Instant::now(), Instant::now()));
        let idle = last_read + self.pace.timeout;
        if self.pace.min_rate == 0 {
            return idle;
        }
        let earned = Duration::from_secs_f64(self.received as f64 / self.pace.min_rate as f64);
        idle.min(started + self.pace.timeout + earned)
    }

    fn note(&mut self, bytes: u64) {
        self.received += bytes;
        if let Some((_, last_read)) = &mut self.clock {
            *last_read = Instant::now();
        }
    }

    /// Ready once the client has fallen behind (the timer is armed only
    /// while the body waits on the client).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline();
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx)
    }
}

/// Bytes read ahead and held in an unlinked temporary file.
struct Spill {
    file: tokio::fs::File,
    /// Bytes written; then, while replaying, bytes still to read.
    len: u64,
    replaying: bool,
}

/// A request body from a client: what was read ahead (memory, then a
/// file), then the rest as it streams in, then the trailers; under the
/// route's size limit and the pace throughout.
pub struct ClientBody<B> {
    inner: Option<B>,
    memory: VecDeque<Bytes>,
    /// Bytes of `memory` reserved from the budget.
    reserved: u64,
    spill: Option<Spill>,
    trailers: Option<HeaderMap>,
    remaining: u64,
    limit: u64,
    pace: Pace,
    faults: Arc<BodyFaults>,
    buffers: Arc<BodyBuffers>,
    read_buf: BytesMut,
}

impl<B> ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<HttpError>,
{
    /// `inner` under `limit` bytes and `pace`; faults are reported to
    /// `faults`.
    pub fn new(
        inner: B,
        limit: u64,
        pace: BodyPace,
        buffers: Arc<BodyBuffers>,
        faults: Arc<BodyFaults>,
    ) -> Self {
        Self {
            inner: (!inner.is_end_stream()).then_some(inner),
            memory: VecDeque::new(),
            reserved: 0,
            spill: None,
            trailers: None,
            remaining: limit,
            limit,
            pace: Pace::new(pace),
            faults,
            buffers,
            read_buf: BytesMut::new(),
        }
    }

    /// Whether the client may still send more.
    pub fn is_streaming(&self) -> bool {
        self.inner.is_some()
    }

    /// Reads the body ahead until it ends or `up_to` bytes are held, under
    /// the size limit and the pace.
    pub async fn read_ahead(&mut self, up_to: u64) -> Result<(), BodyFault> {
        let reading = self.buffers.reading_gauge().clone();
        reading.inc();
        let _reading = DecOnDrop(&reading);
        while self.inner.is_some() && self.pace.received < up_to {
            match std::future::poll_fn(|cx| self.poll_client(cx)).await {
                Some(Ok(frame)) => self.hold(frame).await?,
                Some(Err(fault)) => return Err(fault),
                None => {}
            }
        }
        if let Some(spill) = &mut self.spill {
            spill.file.flush().await.map_err(|_| BodyFault::Broken)?;
            spill.file.rewind().await.map_err(|_| BodyFault::Broken)?;
            spill.replaying = true;
        }
        Ok(())
    }

    /// Keeps one frame read ahead: in memory while the budget allows, in
    /// the spill file once there is one.
    async fn hold(&mut self, frame: Frame<Bytes>) -> Result<(), BodyFault> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    self.trailers = Some(trailers);
                }
                return Ok(());
            }
        };
        let len = data.len() as u64;
        if self.spill.is_none() && self.buffers.reserve_memory(len) {
            self.reserved += len;
            self.memory.push_back(data);
            return Ok(());
        }
        if self.spill.is_none() {
            let dir = self.buffers.spill_dir().to_path_buf();
            let file = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)?;
                tempfile::tempfile_in(&dir)
            })
            .await
            .map_err(|_| BodyFault::Broken)?
            .map_err(|error| {
                tracing::warn!(%error, "cannot create a temporary file for a request body");
                BodyFault::Broken
            })?;
            self.buffers.spilled();
            self.spill = Some(Spill { file: tokio::fs::File::from_std(file), len: 0, replaying: false });
        }
        let spill = self.spill.as_mut().expect("made above");
        spill.file.write_all(&data).await.map_err(|_| BodyFault::Broken)?;
        spill.len += len;
        Ok(())
    }

    /// The next frame from the client, with the size limit and the pace
    /// applied; `None` inside `Ready` once the body has ended.
    fn poll_client(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        self.pace.start();
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, |d| d.len() as u64);
                if size > self.remaining {
                    return Poll::Ready(Some(Err(self.fault(BodyFault::TooLarge))));
                }
                self.remaining -= size;
                self.pace.note(size);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(self.fault(BodyFault::Broken)))),
            Poll::Ready(None) => {
                self.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                ready!(self.pace.poll_expired(cx));
                Poll::Ready(Some(Err(self.fault(BodyFault::TooSlow))))
            }
        }
    }

    fn fault(&mut self, fault: BodyFault) -> BodyFault {
        self.faults.set(fault);
        self.inner = None;
        fault
    }

    fn poll_spill(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, HttpError>>> {
        let Some(spill) = self.spill.as_mut().filter(|s| s.replaying && s.len > 0) else {
            return Poll::Ready(None);
        };
        let want = FILE_CHUNK.min(usize::try_from(spill.len).unwrap_or(FILE_CHUNK));
        self.read_buf.resize(want, 0);
        let mut buf = ReadBuf::new(&mut self.read_buf[..]);
        match ready!(Pin::new(&mut spill.file).poll_read(cx, &mut buf)) {
            Ok(()) if !buf.filled().is_empty() => {
                let n = buf.filled().len();
                spill.len -= n as u64;
                Poll::Ready(Some(Ok(self.read_buf.split_to(n).freeze())))
            }
            _ => {
                self.spill = None;
                Poll::Ready(Some(Err(HttpError::InternalError(Some(
                    "the request body's temporary file could not be read".into(),
                )))))
            }
        }
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<HttpError>,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        if let Some(chunk) = this.memory.pop_front() {
            let len = chunk.len() as u64;
            this.reserved -= len;
            this.buffers.release_memory(len);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(chunk) = ready!(this.poll_spill(cx)) {
            return Poll::Ready(Some(chunk.map(Frame::data)));
        }
        this.spill = None;
        match ready!(this.poll_client(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(fault)) => Poll::Ready(Some(Err(match fault {
                BodyFault::TooLarge => HttpError::HttpRequestBodySize(Some(this.limit)),
                BodyFault::TooSlow => HttpError::ConnectionReadTimeout,
                BodyFault::Broken => HttpError::HttpProtocolError,
            }))),
            None => Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.memory.is_empty() && self.spill.is_none() && self.inner.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.memory.iter().map(|c| c.len() as u64).sum::<u64>()
            + self.spill.as_ref().map_or(0, |s| s.len);
        match &self.inner {
            None => SizeHint::with_exact(held),
            Some(inner) => {
                let rest = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(held + rest.lower());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(held + upper);
                }
                hint
            }
        }
    }
}

impl<B> Drop for ClientBody<B> {
    fn drop(&mut self) {
        self.buffers.release_memory(self.reserved);
    }
}

struct DecOnDrop<'a>(&'a Gauge);

impl Drop for DecOnDrop<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn buffers(budget: u64) -> (Arc<BodyBuffers>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (
            Arc::new(BodyBuffers::new(budget, dir.path().join("tmp"), Gauge::default(), Default::default())),
            dir,
        )
    }

    const PACE: BodyPace = BodyPace { timeout: Duration::from_secs(10), min_rate: 1000 };

    fn chunks(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = HttpError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, HttpError>> =
            parts.iter().map(|p| Ok(Frame::data(Bytes::from_static(p)))).collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_read_ahead_replays_whole_from_memory_and_from_a_file() {
        // A budget of 5 bytes: the first chunk stays in memory, the rest spills.
        let (buffers, _dir) = buffers(5);
        let faults = Arc::new(BodyFaults::default());
        let mut body =
            ClientBody::new(chunks(&[b"hello", b" big", b" world"]), 100, PACE, buffers.clone(), faults);
        body.read_ahead(1 << 20).await.unwrap();
        assert!(!body.is_streaming());
        assert_eq!(buffers.in_memory(), 5);
        assert_eq!(body.size_hint().exact(), Some(15));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello big world");
        assert_eq!(buffers.in_memory(), 0, "the budget is given back");
    }

    #[tokio::test]
    async fn a_body_past_the_read_ahead_streams_the_rest_under_the_size_limit() {
        let (buffers, _dir) = buffers(1 << 20);
        let faults = Arc::new(BodyFaults::default());
        let mut body =
            ClientBody::new(chunks(&[b"aaaa", b"bbbb", b"cccc"]), 10, PACE, buffers, faults.clone());
        body.read_ahead(4).await.unwrap();
        assert!(body.is_streaming(), "stopped reading ahead at the buffer size");
        let error = body.collect().await.unwrap_err();
        assert!(matches!(error, HttpError::HttpRequestBodySize(Some(10))), "{error:?}");
        assert_eq!(faults.get(), Some(BodyFault::TooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_behind_the_pace_is_cut_and_one_keeping_it_is_not() {
        let pace = BodyPace { timeout: Duration::from_secs(1), min_rate: 100 };
        // Keeps the pace: 100 bytes every 0.9 s, 500 in all (4.5 s).
        let (buffers, _dir) = buffers(1 << 20);
        let steady = futures::stream::unfold(0, |sent| async move {
            (sent < 5).then_some(())?;
            tokio::time::sleep(Duration::from_millis(900)).await;
            Some((Ok::<_, HttpError>(Frame::data(Bytes::from(vec![b'x'; 100]))), sent + 1))
        });
        let faults = Arc::new(BodyFaults::default());
        let mut body =
            ClientBody::new(StreamBody::new(Box::pin(steady)), 1 << 20, pace, buffers.clone(), faults);
        let started = Instant::now();
        body.read_ahead(1 << 20).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(4500));

        // Trickles: 1 byte every 0.5 s; cut when it falls behind 1 s + 1 s per 100 bytes.
        let trickle = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some((Ok::<_, HttpError>(Frame::data(Bytes::from_static(b"x"))), ()))
        });
        let faults = Arc::new(BodyFaults::default());
        let mut body =
            ClientBody::new(StreamBody::new(Box::pin(trickle)), 1 << 20, pace, buffers, faults.clone());
        let started = Instant::now();
        assert_eq!(body.read_ahead(1 << 20).await, Err(BodyFault::TooSlow));
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(1) && took < Duration::from_millis(1100), "cut after {took:?}");
        assert_eq!(faults.get(), Some(BodyFault::TooSlow));
    }
}
