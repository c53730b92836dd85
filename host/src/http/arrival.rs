//! When a request reached the machine, not when the host got round to it:
//! with admission by queueing delay on, each accepted socket asks the
//! kernel for receive timestamps (`SO_TIMESTAMPNS`) and every read notes
//! the arrival time of the bytes it took. A request's wait then includes
//! the time its connection spent on the run queue before anything in user
//! space saw it, which under overload is about half of it.
//!
//! The kernel turns timestamping on for the machine a moment after the
//! first socket asks (deferred work), so the first bytes after start-up may
//! come unstamped: their wait then counts from admission.
//!
//! Hand-rolled on `libc::recvmsg`: tokio's `TcpStream` reads no ancillary
//! data, and no crate of ours wraps it for an async socket.

#![allow(
    unsafe_code,
    reason = "recvmsg with ancillary data has no safe wrapper here; each block says why it holds"
)]

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The kernel's arrival time of the last bytes read from one connection.
#[derive(Debug, Default)]
pub struct ArrivalStamp {
    /// Nanoseconds since the Unix epoch (`CLOCK_REALTIME`, the kernel's
    /// clock for these stamps); 0 before any stamped read.
    unix_nanos: AtomicU64,
}

impl ArrivalStamp {
    fn note(&self, unix_nanos: u64) {
        self.unix_nanos.store(unix_nanos, Ordering::Relaxed);
    }

    /// How long ago the last bytes read arrived, if the socket said.
    pub fn waited(&self) -> Option<Duration> {
        let stamp = self.unix_nanos.load(Ordering::Relaxed);
        if stamp == 0 {
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_nanos() as u64;
        Some(Duration::from_nanos(now.saturating_sub(stamp)))
    }
}

/// Asks the kernel to timestamp what `stream` receives.
pub fn enable(stream: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, and an option value of the size given.
    let status = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if status == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// A TCP stream whose reads note their arrival time in `stamp` (plain
/// reads when there is none).
pub struct StampedStream {
    stream: TcpStream,
    stamp: Option<Arc<ArrivalStamp>>,
}

impl StampedStream {
    /// Reads `stream`, noting arrival times in `stamp` if given (after
    /// [`enable`]).
    pub fn new(stream: TcpStream, stamp: Option<Arc<ArrivalStamp>>) -> Self {
        Self { stream, stamp }
    }
}

impl AsyncRead for StampedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(stamp) = &this.stamp else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            // SAFETY: recvmsg writes only initialised bytes, and only the
            // `read` it reports are marked filled below.
            let unfilled = unsafe { buf.unfilled_mut() };
            let (data, len) = (unfilled.as_mut_ptr().cast::<u8>(), unfilled.len());
            let fd = this.stream.as_raw_fd();
            match this.stream.try_io(Interest::READABLE, || receive(fd, data, len)) {
                Ok((read, arrived)) => {
                    // SAFETY: the kernel wrote `read` bytes there.
                    unsafe { buf.assume_init(read) };
                    buf.advance(read);
                    // Unstamped bytes (timestamping not yet on, below)
                    // leave no stale time behind.
                    stamp.note(arrived.unwrap_or(0));
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

/// One `recvmsg` into `len` bytes at `data`: how many were read, and the
/// arrival time the kernel attached (nanoseconds since the Unix epoch).
fn receive(fd: libc::c_int, data: *mut u8, len: usize) -> io::Result<(usize, Option<u64>)> {
    // Room for one `timespec` message, aligned for `cmsghdr`.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec { iov_base: data.cast(), iov_len: len };
    // SAFETY: all-zero is a valid msghdr; the fields set point at buffers
    // that outlive the call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = size_of_val(&control) as _;
    // SAFETY: `message` describes buffers valid for the call.
    let read = unsafe { libc::recvmsg(fd, &mut message, libc::MSG_DONTWAIT) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut arrived = None;
    // SAFETY: walks the control messages the kernel wrote into `control`,
    // within the length it reported; the data is read unaligned.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_TIMESTAMPNS {
                let time = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::timespec>());
                arrived = Some(time.tv_sec as u64 * 1_000_000_000 + time.tv_nsec as u64);
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Ok((read as usize, arrived))
}

impl AsyncWrite for StampedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_read_tells_how_long_ago_its_bytes_reached_the_machine() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        enable(&server).unwrap();
        let stamp = Arc::new(ArrivalStamp::default());
        let mut server = StampedStream::new(server, Some(stamp.clone()));
        let started = std::time::Instant::now();
        assert_eq!(stamp.waited(), None, "nothing read yet");
        // The first bytes may come unstamped (see the module's doc): send
        // until the kernel stamps them.
        let mut buf = [0u8; 64];
        let (waited, before_write) = loop {
            let before_write = std::time::Instant::now();
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            // The bytes wait in the kernel while nothing reads them.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let read = server.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..read], b"GET / HTTP/1.1\r\n\r\n");
            if let Some(waited) = stamp.waited() {
                break (waited, before_write);
            }
            assert!(before_write.duration_since(started) < Duration::from_secs(5), "never stamped");
        };
        assert!(waited >= Duration::from_millis(25), "they waited the 30 ms unread: {waited:?}");
        assert!(
            waited <= before_write.elapsed() + Duration::from_millis(5),
            "not before they were sent: {waited:?}"
        );
    }
}
