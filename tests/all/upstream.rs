//! In-process upstream servers for outbound tests: on 127.0.0.1, plain or
//! TLS, counting the connections they accept. Paths: `/ok`, `/delay?ms=N`,
//! `/fail` (500), `/hang` (never answers), `/barrier?key=K&n=N` (answers
//! once N requests with key K are waiting: only concurrent callers get
//! through), `/stall-body` (sends its headers, never its body), `/switchable`
//! (500 or 200, as [`Upstream::set_failing`] says; counted in
//! [`Upstream::switchable_hits`]). Beside
//! them, a [`Silent`] listener that accepts and never speaks, and an
//! [`Unaccepting`] one whose backlog is full, so connecting hangs.

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub struct Upstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    switch: Arc<Switch>,
    task: tokio::task::JoinHandle<()>,
}

/// What `/switchable` answers, and how often it was asked.
#[derive(Default)]
struct Switch {
    failing: std::sync::atomic::AtomicBool,
    hits: AtomicUsize,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    pub async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let barriers: Barriers = Arc::default();
        let switch = Arc::new(Switch::default());
        let task_switch = switch.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                let barriers = barriers.clone();
                let switch = task_switch.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request| answer(request, barriers.clone(), switch.clone()));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(config) => {
                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                            else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self { addr, accepted, switch, task }
    }

    /// Makes `/switchable` answer 500 (`true`) or 200.
    pub fn set_failing(&self, failing: bool) {
        self.switch.failing.store(failing, Ordering::SeqCst);
    }

    /// Requests `/switchable` has answered.
    pub fn switchable_hits(&self) -> usize {
        self.switch.hits.load(Ordering::SeqCst)
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Arrivals per barrier key, and a channel announcing each arrival.
type Barriers = Arc<Mutex<HashMap<String, watch::Sender<usize>>>>;

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    request: http::Request<hyper::body::Incoming>,
    barriers: Barriers,
    switch: Arc<Switch>,
) -> Result<http::Response<UpstreamBody>, Infallible> {
    use http_body_util::BodyExt;
    let query = request.uri().query().unwrap_or("");
    let param = |name: &str| {
        query.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
    };
    let reply = |status: u16, body: &'static str| {
        let mut response = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok(response)
    };
    match request.uri().path() {
        "/delay" => {
            let ms: u64 = param("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(200, "delayed")
        }
        "/barrier" => {
            let key = param("key").unwrap_or("").to_string();
            let n: usize = param("n").and_then(|v| v.parse().ok()).unwrap_or(1);
            let mut arrivals = {
                let mut barriers = barriers.lock().unwrap();
                let sender = barriers.entry(key).or_insert_with(|| watch::Sender::new(0));
                sender.send_modify(|count| *count += 1);
                sender.subscribe()
            };
            let _ = arrivals.wait_for(|count| *count >= n).await;
            reply(200, "barrier")
        }
        "/stall-body" => {
            let body = http_body_util::StreamBody::new(futures::stream::pending::<
                Result<http_body::Frame<Bytes>, Infallible>,
            >());
            Ok(http::Response::new(body.boxed()))
        }
        "/switchable" => {
            switch.hits.fetch_add(1, Ordering::SeqCst);
            if switch.failing.load(Ordering::SeqCst) {
                reply(500, "switched off")
            } else {
                reply(200, "switched on")
            }
        }
        "/fail" => reply(500, "upstream failed"),
        "/hang" => std::future::pending().await,
        _ => reply(200, "ok"),
    }
}

/// Accepts connections and never says a word (a TLS handshake with it
/// never finishes).
pub struct Silent {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self { addr, task }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener that never accepts, with its one-place backlog already
/// taken: the kernel drops further SYNs, so connecting hangs until the
/// connector gives up.
pub struct Unaccepting {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _filler: std::net::TcpStream,
}

impl Unaccepting {
    pub fn start() -> Self {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let filler = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        Self { addr, _listener: listener, _filler: filler }
    }
}
