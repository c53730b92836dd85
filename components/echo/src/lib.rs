//! `echo` (tests only): reads the whole request body and answers 200 with
//! it, as `application/octet-stream`. A body cut off by the host (too large)
//! gets 400 `incomplete body`. With `?inspect` it answers the request as the
//! guest sees it instead: JSON with `method`, `path_with_query`, `scheme`,
//! `authority` and `headers` (a list of `[name, value]`). With `?count` it
//! answers how many requests this instance has taken (1 unless reused).

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{IncomingBody, IncomingRequest, ResponseOutparam, Scheme};
use wharf_guest::bindings::wasi::io::streams::StreamError;

struct Echo;

/// Requests this instance has taken (more than one only when reused).
static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let taken = TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if wharf_guest::query_param(&request, "count").is_some() {
            return wharf_guest::respond(out, 200, "text/plain", taken.to_string().as_bytes());
        }
        if wharf_guest::query_param(&request, "inspect").is_some() {
            return inspect(&request, out);
        }
        let body = request.consume().expect("body taken once");
        let stream = body.stream().expect("stream taken once");
        let mut bytes = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => {
                    return wharf_guest::respond(out, 400, "text/plain", b"incomplete body");
                }
            }
        }
        drop(stream);
        let _ = IncomingBody::finish(body);
        wharf_guest::respond(out, 200, "application/octet-stream", &bytes);
    }
}

fn inspect(request: &IncomingRequest, out: ResponseOutparam) {
    let scheme = match request.scheme() {
        Some(Scheme::Http) => "http".to_string(),
        Some(Scheme::Https) => "https".to_string(),
        Some(Scheme::Other(other)) => other,
        None => String::new(),
    };
    let headers: Vec<(String, String)> = request
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let body = serde_json::json!({
        "method": wharf_guest::method_name(request),
        "path_with_query": request.path_with_query(),
        "scheme": scheme,
        "authority": request.authority(),
        "headers": headers,
    });
    wharf_guest::respond(out, 200, "application/json", body.to_string().as_bytes());
}

wharf_guest::export!(Echo);
