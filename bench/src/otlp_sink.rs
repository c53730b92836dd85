//! A trace collector for the tracing cells: accepts OTLP/HTTP exports on
//! 127.0.0.1 and answers 200 with an empty export response, reading each
//! body whole (as a collector does) and keeping nothing.

use anyhow::Result;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;

/// Starts the sink on a thread of its own; its address.
pub fn start() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("otlp-sink".into()).spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async {
                            let _ = request.into_body().collect().await;
                            http::Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(bytes::Bytes::new()))
                        });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        })
    })?;
    Ok(addr)
}
