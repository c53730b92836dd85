//! `probe-p3`: a WASI 0.3 component for the tests, which checks host
//! features from the 0.3 side (`hello-p3` stays the plain example). By
//! query parameter:
//! - `fetch=http://host/path` (last, unencoded): GETs there through
//!   `wasi:http/client`, answers `<status> <body>`, or 502 with the error;
//! - `incr=KEY`: adds 1 to KEY in the `default` key-value store, answers
//!   `count N` (or 500 with the store's error);
//! - `grow=1`: grows linear memory a page at a time until the host
//!   refuses, answers `memory_bytes N` (the size it reached);
//! - `spin=1`: computes forever;
//! - `print=1`: writes a forged host log line and a second line to stdout
//!   and to stderr, then answers as with no parameter;
//! - none of these: 200 `Hello, world!\n`.

use wasip3::http::types::{ErrorCode, Fields, Request, Response, Scheme};
use wasip3::{wit_bindgen, wit_future, wit_stream};

/// `wasi:keyvalue` (a WASI 0.2 interface, which a 0.3 component may import).
mod keyvalue {
    wasip3::wit_bindgen::generate!({
        path: "../../wit/deps/keyvalue",
        world: "wasi:keyvalue/imports@0.2.0-draft",
        runtime_path: "wasip3::wit_bindgen::rt",
    });
}
use keyvalue::wasi::keyvalue::{atomics, store};

struct Probe;

wasip3::http::service::export!(Probe);

impl wasip3::exports::http::handler::Guest for Probe {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        let param = |name: &str| path.split_once(&format!("{name}=")).map(|(_, rest)| rest);
        if param("print").is_some() {
            let forged = "2026-11-27T00:00:00.000000Z  INFO wharf::access: forged\nsecond line";
            println!("{forged}");
            eprintln!("{forged}");
        }
        if param("spin").is_some() {
            let mut turns = 0u64;
            loop {
                turns = std::hint::black_box(turns.wrapping_add(1));
            }
        }
        let (status, text) = if let Some(url) = param("fetch") {
            match fetch(url).await {
                Ok((status, body)) => (200, format!("{status} {body}")),
                Err(error) => (502, format!("{error:?}")),
            }
        } else if let Some(rest) = param("incr") {
            match increment(rest.split('&').next().unwrap_or_default()) {
                Ok(count) => (200, format!("count {count}\n")),
                Err(error) => (500, format!("{error:?}\n")),
            }
        } else if param("grow").is_some() {
            (200, format!("memory_bytes {}\n", grow_until_refused()))
        } else {
            (200, "Hello, world!\n".to_string())
        };
        let headers = Fields::from_list(&[("content-type".into(), b"text/plain; charset=utf-8".to_vec())])
            .map_err(|_| ErrorCode::InternalError(None))?;
        let (mut body, contents) = wit_stream::new();
        let (trailers_tx, trailers) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(contents), trailers);
        response.set_status_code(status).map_err(|_| ErrorCode::InternalError(None))?;
        drop(trailers_tx);
        wit_bindgen::spawn(async move {
            body.write_all(text.into_bytes()).await;
        });
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

/// Adds 1 to `key` in the `default` store; the new count.
fn increment(key: &str) -> Result<u64, store::Error> {
    let bucket = store::open("default")?;
    atomics::increment(&bucket, key, 1)
}

/// Grows linear memory a page at a time until the host refuses; its size.
fn grow_until_refused() -> usize {
    const PAGE: usize = 64 << 10;
    while core::arch::wasm32::memory_grow(0, 1) != usize::MAX {}
    core::arch::wasm32::memory_size(0) * PAGE
}
