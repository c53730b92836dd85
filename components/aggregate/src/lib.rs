//! `aggregate`: fans out GET requests to several URLs at once, under one
//! overall deadline, through `wasi:http/outgoing-handler`.
//!
//! - URLs: config `urls` (separated by commas, semicolons or spaces), or,
//!   when config `allow_query_urls` is `true`, the query's `url=` parameters
//!   (percent-encoded). A URL starting with `/` is sent to the app itself
//!   (`http://self/...`).
//! - Deadline: `?timeout_ms=` (else config `deadline_ms`, default 2000).
//! - `?mode=fail-fast` (default): the first error (transport error or a
//!   status of 400 and above) answers 502; the deadline passing answers 504;
//!   otherwise 200 with the results. `?mode=partial`: always 200, listing
//!   each URL's status, latency and size, or its error, and which timed out.

use serde_json::json;
use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::clocks::monotonic_clock;
use wharf_guest::bindings::wasi::http::outgoing_handler;
use wharf_guest::bindings::wasi::http::types::{
    FutureIncomingResponse, IncomingBody, IncomingRequest, OutgoingRequest, ResponseOutparam, Scheme,
};
use wharf_guest::bindings::wasi::io::poll::{self, Pollable};
use wharf_guest::bindings::wasi::io::streams::{InputStream, StreamError};

struct Aggregate;

/// Where one fan-out call stands. Pollables come first in each variant so
/// they are dropped before the resource they watch.
enum Call {
    Waiting { ready: Pollable, future: FutureIncomingResponse },
    Reading { ready: Pollable, stream: InputStream, body: IncomingBody, status: u16, size: u64 },
    Done { status: u16, size: u64, latency_ms: u64 },
    Failed { error: String, latency_ms: u64 },
}

impl Guest for Aggregate {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let urls = urls(&request);
        if urls.is_empty() {
            let body = json!({ "error": "no URLs: set config `urls` (or allow `url=` query parameters)" });
            return wharf_guest::respond(out, 400, "application/json", body.to_string().as_bytes());
        }
        let fail_fast = wharf_guest::query_param(&request, "mode").as_deref() != Some("partial");
        let deadline_ms: u64 = wharf_guest::query_param(&request, "timeout_ms")
            .or_else(|| wharf_guest::config("deadline_ms"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        let start = monotonic_clock::now();
        let deadline = start + deadline_ms * 1_000_000;
        let elapsed_ms = || (monotonic_clock::now() - start) / 1_000_000;

        let mut calls: Vec<Call> = urls.iter().map(|url| send(url, &elapsed_ms)).collect();
        let mut timed_out = false;
        loop {
            let failed = calls.iter().position(|c| matches!(c, Call::Failed { .. }));
            if fail_fast && let Some(index) = failed {
                let Call::Failed { error, .. } = &calls[index] else { unreachable!() };
                let body = json!({ "error": error, "url": urls[index] });
                return wharf_guest::respond(out, 502, "application/json", body.to_string().as_bytes());
            }
            let pending: Vec<usize> = (0..calls.len())
                .filter(|&i| matches!(calls[i], Call::Waiting { .. } | Call::Reading { .. }))
                .collect();
            if pending.is_empty() {
                break;
            }
            let timer = monotonic_clock::subscribe_instant(deadline);
            let mut watched: Vec<&Pollable> = pending
                .iter()
                .map(|&i| match &calls[i] {
                    Call::Waiting { ready, .. } | Call::Reading { ready, .. } => ready,
                    _ => unreachable!(),
                })
                .collect();
            watched.push(&timer);
            let ready = poll::poll(&watched);
            drop(watched);
            if ready.contains(&(pending.len() as u32)) {
                timed_out = true;
                break;
            }
            for index in ready {
                let i = pending[index as usize];
                let call =
                    std::mem::replace(&mut calls[i], Call::Failed { error: String::new(), latency_ms: 0 });
                calls[i] = advance(call, &elapsed_ms);
            }
        }

        let results: Vec<_> = urls
            .iter()
            .zip(&calls)
            .map(|(url, call)| match call {
                Call::Done { status, size, latency_ms } => {
                    json!({ "url": url, "status": status, "latency_ms": latency_ms, "size": size })
                }
                Call::Failed { error, latency_ms } => {
                    json!({ "url": url, "error": error, "latency_ms": latency_ms })
                }
                _ => json!({ "url": url, "timed_out": true }),
            })
            .collect();
        let timed_out_urls: Vec<&String> = urls
            .iter()
            .zip(&calls)
            .filter(|(_, c)| matches!(c, Call::Waiting { .. } | Call::Reading { .. }))
            .map(|(url, _)| url)
            .collect();
        let body = json!({
            "results": results,
            "timed_out": timed_out_urls,
            "deadline_ms": deadline_ms,
            "elapsed_ms": elapsed_ms(),
        });
        let status = if fail_fast && timed_out { 504 } else { 200 };
        // Drop the unfinished calls (and their pollables first) before answering.
        drop(calls);
        wharf_guest::respond(out, status, "application/json", body.to_string().as_bytes());
    }
}

fn send(url: &str, elapsed_ms: &dyn Fn() -> u64) -> Call {
    let failed = |error: String| Call::Failed { error, latency_ms: elapsed_ms() };
    let Some((scheme, rest)) = url.split_once("://") else {
        return failed(format!("not an absolute URL: {url}"));
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(wharf_guest::bindings::wasi::http::types::Fields::new());
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    if request.set_scheme(Some(&scheme)).is_err()
        || request.set_authority(Some(authority)).is_err()
        || request.set_path_with_query(Some(path)).is_err()
    {
        return failed(format!("invalid URL: {url}"));
    }
    match outgoing_handler::handle(request, None) {
        Ok(future) => Call::Waiting { ready: future.subscribe(), future },
        Err(code) => failed(format!("{code:?}")),
    }
}

fn advance(call: Call, elapsed_ms: &dyn Fn() -> u64) -> Call {
    match call {
        Call::Waiting { ready, future } => {
            drop(ready);
            match future.get() {
                None => Call::Waiting { ready: future.subscribe(), future },
                Some(Err(())) => {
                    Call::Failed { error: "response already taken".into(), latency_ms: elapsed_ms() }
                }
                Some(Ok(Err(code))) => Call::Failed { error: format!("{code:?}"), latency_ms: elapsed_ms() },
                Some(Ok(Ok(response))) => {
                    let status = response.status();
                    if status >= 400 {
                        return Call::Failed { error: format!("status {status}"), latency_ms: elapsed_ms() };
                    }
                    let body = response.consume().expect("body taken once");
                    let stream = body.stream().expect("stream taken once");
                    Call::Reading { ready: stream.subscribe(), stream, body, status, size: 0 }
                }
            }
        }
        Call::Reading { ready, stream, body, status, mut size } => loop {
            match stream.read(64 * 1024) {
                Ok(chunk) if chunk.is_empty() => return Call::Reading { ready, stream, body, status, size },
                Ok(chunk) => size += chunk.len() as u64,
                Err(StreamError::Closed) => {
                    drop(ready);
                    drop(stream);
                    let _ = IncomingBody::finish(body);
                    return Call::Done { status, size, latency_ms: elapsed_ms() };
                }
                Err(StreamError::LastOperationFailed(e)) => {
                    // Children before their parent: a body dropped before
                    // its stream traps ("resource has children").
                    let error = e.to_debug_string();
                    drop(e);
                    drop(ready);
                    drop(stream);
                    drop(body);
                    return Call::Failed { error, latency_ms: elapsed_ms() };
                }
            }
        },
        done => done,
    }
}

fn urls(request: &IncomingRequest) -> Vec<String> {
    let mut urls: Vec<String> = wharf_guest::config("urls")
        .map(|list| {
            list.split([',', ';', ' ']).map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect()
        })
        .unwrap_or_default();
    if wharf_guest::config("allow_query_urls").as_deref() == Some("true") {
        let query = request.path_with_query().and_then(|p| p.split_once('?').map(|(_, q)| q.to_string()));
        let from_query: Vec<String> = query
            .iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| pair.strip_prefix("url="))
            .map(percent_decode)
            .collect();
        if !from_query.is_empty() {
            urls = from_query;
        }
    }
    urls.into_iter().map(|u| if u.starts_with('/') { format!("http://self{u}") } else { u }).collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(high * 16 + low);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

wharf_guest::export!(Aggregate);
