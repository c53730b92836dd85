//! The native baseline: hyper answering the same three handlers as the
//! benchmark app, built the way Wharf is (a current_thread runtime per core,
//! `SO_REUSEPORT`, hyper-util's auto builder), so the difference is what the
//! WebAssembly isolation costs.
//!
//! `/hello`: `Hello, world!`; `/api/...`: a counter behind a mutex, as JSON
//! like the counter component; `/sleep`: waits 100 ms, then `Done`.

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Serves on 127.0.0.1:`port` until killed.
pub fn serve(port: u16) -> Result<()> {
    let counter = Arc::new(Mutex::new(0u64));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    for _ in 0..threads {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        let counter = counter.clone();
        handles.push(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(accept(listener, counter));
        }));
    }
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

async fn accept(listener: std::net::TcpListener, counter: Arc<Mutex<u64>>) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (builder, counter) = (builder.clone(), counter.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let counter = counter.clone();
                async move { Ok::<_, Infallible>(answer(request, &counter).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(
    request: http::Request<hyper::body::Incoming>,
    counter: &Mutex<u64>,
) -> http::Response<Full<Bytes>> {
    let path = request.uri().path();
    let (content_type, body) = if path == "/hello" {
        ("text/plain; charset=utf-8", Bytes::from_static(b"Hello, world!\n"))
    } else if path.starts_with("/api") {
        let n = {
            let mut count = counter.lock().unwrap();
            *count += 1;
            *count
        };
        let json = serde_json::json!({ "request_num": n, "method": request.method().as_str(), "path": path });
        ("application/json", Bytes::from(json.to_string()))
    } else if path == "/sleep" {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ("text/plain", Bytes::from_static(b"Done"))
    } else {
        let mut response = http::Response::new(Full::new(Bytes::from_static(b"Not Found\n")));
        *response.status_mut() = http::StatusCode::NOT_FOUND;
        return response;
    };
    let mut response = http::Response::new(Full::new(body));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
