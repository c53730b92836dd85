//! `hello-p3`: `hello` for WASI 0.3 (`wasi:http/handler@0.3.0`, built with
//! the `wasip3` crate): any request gets 200, `text/plain; charset=utf-8`,
//! body `Hello, world!\n`, and header `x-wasi: 0.3`. Tests only: `?wait_ms=N` waits N ms on the host
//! clock before answering; `x-instance-requests` counts the requests this
//! instance has taken and `x-instance-in-hand` those it had in hand at once
//! (with this one), which only differ from 1 when the instance is reused.
//! `?fetch=http://host/path` (the last parameter, unencoded) sends a GET
//! there through `wasi:http/client` first and answers `<status> <body>`, or
//! 502 with the error code. `?spin=1` computes forever; `?grow=1` grows its
//! linear memory a page at a time until the host refuses, then answers
//! `memory_bytes N` (the size it reached). `?incr=KEY` adds 1 to KEY in
//! the `default` key-value store and answers `count N`. `?print=1` writes
//! a forged host log line and a second line to stdout and to stderr.

use std::sync::atomic::{AtomicU64, Ordering};
use wasip3::http::types::{ErrorCode, Fields, Request, Response, Scheme};

/// Requests this instance has taken, and has in hand now (instance memory:
/// shared by the requests of a reused instance, which tests count).
static TAKEN: AtomicU64 = AtomicU64::new(0);
static IN_HAND: AtomicU64 = AtomicU64::new(0);
use wasip3::{wit_bindgen, wit_future, wit_stream};

/// `wasi:keyvalue` (a WASI 0.2 interface, which a 0.3 component may import).
mod keyvalue {
    wasip3::wit_bindgen::generate!({
        path: "../../wit/deps/keyvalue",
        world: "wasi:keyvalue/imports@0.2.0-draft",
        runtime_path: "wasip3::wit_bindgen::rt",
    });
}

struct Hello;

wasip3::http::service::export!(Hello);

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let taken = TAKEN.fetch_add(1, Ordering::Relaxed) + 1;
        let in_hand = IN_HAND.fetch_add(1, Ordering::Relaxed) + 1;
        let path = request.get_path_with_query().unwrap_or_default();
        let wait_ms =
            path.split_once("wait_ms=").and_then(|(_, rest)| rest.split('&').next()?.parse::<u64>().ok());
        if let Some(ms) = wait_ms {
            wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
        }
        if path.contains("print=1") {
            let forged = "2026-11-27T00:00:00.000000Z  INFO wharf::access: forged\nsecond line";
            println!("{forged}");
            eprintln!("{forged}");
        }
        if path.contains("spin=1") {
            let mut turns = 0u64;
            loop {
                turns = std::hint::black_box(turns.wrapping_add(1));
            }
        }
        let (status, text) = match path.split_once("fetch=") {
            Some((_, url)) => match fetch(url).await {
                Ok((status, body)) => (200, format!("{status} {body}")),
                Err(error) => (502, format!("{error:?}")),
            },
            None if path.contains("incr=") => match increment(&path) {
                Ok(count) => (200, format!("count {count}\n")),
                Err(error) => (500, format!("{error:?}\n")),
            },
            None if path.contains("grow=1") => (200, format!("memory_bytes {}\n", grow_until_refused())),
            None => (200, "Hello, world!\n".to_string()),
        };
        let headers = Fields::from_list(&[
            ("content-type".into(), b"text/plain; charset=utf-8".to_vec()),
            ("x-wasi".into(), b"0.3".to_vec()),
            ("x-instance-requests".into(), taken.to_string().into_bytes()),
            ("x-instance-in-hand".into(), in_hand.to_string().into_bytes()),
        ])
        .map_err(|_| ErrorCode::InternalError(None))?;
        let (mut body, contents) = wit_stream::new();
        let (trailers_tx, trailers) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(contents), trailers);
        response.set_status_code(status).map_err(|_| ErrorCode::InternalError(None))?;
        drop(trailers_tx);
        wit_bindgen::spawn(async move {
            body.write_all(text.into_bytes()).await;
        });
        IN_HAND.fetch_sub(1, Ordering::Relaxed);
        Ok(response)
    }
}

/// GETs `url` (`http://authority/path`) and returns its status and body.
async fn fetch(url: &str) -> Result<(u16, String), ErrorCode> {
    let invalid = || ErrorCode::InternalError(Some(format!("not an http:// URL: {url}")));
    let rest = url.strip_prefix("http://").ok_or_else(invalid)?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    let (_trailers_tx, trailers) = wit_future::new(|| Ok(None));
    let (request, _sent) = Request::new(Fields::new(), None, trailers, None);
    request.set_scheme(Some(&Scheme::Http)).map_err(|_| invalid())?;
    request.set_authority(Some(authority)).map_err(|_| invalid())?;
    request.set_path_with_query(Some(path)).map_err(|_| invalid())?;
    let response = wasip3::http::client::send(request).await?;
    let status = response.get_status_code();
    let (_done_tx, done) = wit_future::new(|| Ok(()));
    let (body, _trailers) = Response::consume_body(response, done);
    Ok((status, String::from_utf8_lossy(&body.collect().await).into_owned()))
}

/// Grows linear memory a page at a time until the host refuses; its size.
fn grow_until_refused() -> usize {
    const PAGE: usize = 64 << 10;
    while core::arch::wasm32::memory_grow(0, 1) != usize::MAX {}
    core::arch::wasm32::memory_size(0) * PAGE
}

/// Adds 1 to `incr=KEY` in the `default` store; the new count.
fn increment(path: &str) -> Result<u64, keyvalue::wasi::keyvalue::store::Error> {
    let key = path.split_once("incr=").map_or("", |(_, rest)| rest.split('&').next().unwrap_or(""));
    let bucket = keyvalue::wasi::keyvalue::store::open("default")?;
    keyvalue::wasi::keyvalue::atomics::increment(&bucket, key, 1)
}
