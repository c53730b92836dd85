//! `fault` (tests only): misbehaves on request, so tests can show the host
//! bounds it. `?mode=` picks how:
//! - `panic` (default): traps before responding;
//! - `loop`: spins forever without yielding;
//! - `hog`: allocates memory until the allocator fails (traps at the limit);
//! - `grow`: grows its linear memory a page at a time until the host
//!   refuses, then answers 200 `{"memory_bytes": N}` (the size it reached);
//! - `slow`: sends `chunks` (default 5) chunks `ms` (default 1000) apart;
//! - `spin-after`: answers 200 `fine`, then spins forever;
//! - `drop-outparam`: drops its response outparam unset, then spins
//!   (`&then=sleep`: sleeps) forever;
//! - `selfcall`: calls `http://self/fault?mode=selfcall` `fanout` times at
//!   once (default 1) with `depth` one less (default 3); at depth 0 it
//!   answers 200. Answers `{"requests": N}` (N: requests in its subtree,
//!   itself included) with the worst status its calls got (a call that
//!   failed counts as 502);
//! - `print`: writes `text` (default `hello`) to stdout and stderr, then
//!   answers 200 `fine`;
//! - `fields`: makes `count` (default 1000) `fields` resources, each with
//!   one header of `size` bytes (default 100000), keeps them all, then
//!   answers 200 `{"fields": N}`: host memory the guest makes the host hold;
//! - `ok`: answers 200 `fine`.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::outgoing_handler;
use wharf_guest::bindings::wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};
use wharf_guest::bindings::wasi::io::streams::StreamError;

struct Fault;

impl Guest for Fault {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let number = |name: &str, default: u64| {
            wharf_guest::query_param(&request, name).and_then(|v| v.parse().ok()).unwrap_or(default)
        };
        match wharf_guest::query_param(&request, "mode").as_deref().unwrap_or("panic") {
            "ok" => wharf_guest::respond(out, 200, "text/plain", b"fine"),
            "loop" => spin(),
            "hog" => hog(),
            "grow" => grow(out),
            "slow" => slow(out, number("chunks", 5), number("ms", 1000)),
            "spin-after" => {
                wharf_guest::respond(out, 200, "text/plain", b"fine");
                spin()
            }
            "drop-outparam" => {
                drop(out);
                if wharf_guest::query_param(&request, "then").as_deref() == Some("sleep") {
                    loop {
                        wharf_guest::sleep_ms(60_000);
                    }
                }
                spin()
            }
            "selfcall" => selfcall(out, number("depth", 3), number("fanout", 1)),
            "fields" => hold_fields(out, number("count", 1000), number("size", 100_000)),
            "print" => {
                let text = wharf_guest::query_param(&request, "text").unwrap_or_else(|| "hello".into());
                let text = percent_decode(&text);
                use std::io::Write;
                print!("{text}");
                let _ = std::io::stdout().flush();
                eprint!("{text}");
                wharf_guest::respond(out, 200, "text/plain", b"fine");
            }
            _ => panic!("fault component asked to fail"),
        }
    }
}

#[allow(clippy::empty_loop)]
fn spin() -> ! {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn hog() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Touch every page so the memory is really used.
        hoard.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

fn grow(out: ResponseOutparam) {
    const PAGE: usize = 64 << 10;
    while core::arch::wasm32::memory_grow(0, 1) != usize::MAX {}
    let reached = core::arch::wasm32::memory_size(0) * PAGE;
    let body = format!("{{\"memory_bytes\":{reached}}}");
    wharf_guest::respond(out, 200, "application/json", body.as_bytes());
}

fn slow(out: ResponseOutparam, chunks: u64, ms: u64) {
    let response = OutgoingResponse::new(Fields::new());
    let body = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("stream");
    for i in 0..chunks {
        if i > 0 {
            wharf_guest::sleep_ms(ms);
        }
        if stream.blocking_write_and_flush(format!("chunk {i}\n").as_bytes()).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

fn hold_fields(out: ResponseOutparam, count: u64, size: u64) {
    let value = vec![b'a'; size as usize];
    let mut kept = Vec::new();
    for i in 0..count {
        let fields = Fields::new();
        if size > 0 {
            fields.append("x-big", &value).expect("append");
        }
        kept.push(fields);
        std::hint::black_box(i);
    }
    let body = format!("{{\"fields\":{}}}", kept.len());
    wharf_guest::respond(out, 200, "application/json", body.as_bytes());
}

fn selfcall(out: ResponseOutparam, depth: u64, fanout: u64) {
    if depth == 0 {
        return wharf_guest::respond(out, 200, "application/json", b"{\"requests\":1}");
    }
    let path = format!("/fault?mode=selfcall&depth={}&fanout={fanout}", depth - 1);
    let calls: Vec<_> = (0..fanout)
        .map(|_| {
            let request = OutgoingRequest::new(Fields::new());
            request.set_scheme(Some(&Scheme::Http)).expect("scheme");
            request.set_authority(Some("self")).expect("authority");
            request.set_path_with_query(Some(&path)).expect("path");
            outgoing_handler::handle(request, None)
        })
        .collect();
    let (mut requests, mut worst) = (1u64, 200u16);
    for call in calls {
        let status = match call {
            Err(_) => 502,
            Ok(future) => {
                future.subscribe().block();
                match future.get() {
                    Some(Ok(Ok(response))) => {
                        let status = response.status();
                        let body = response.consume().expect("body");
                        let stream = body.stream().expect("stream");
                        let mut bytes = Vec::new();
                        loop {
                            match stream.blocking_read(4096) {
                                Ok(chunk) => bytes.extend_from_slice(&chunk),
                                Err(StreamError::Closed) => break,
                                Err(_) => break,
                            }
                        }
                        requests += String::from_utf8_lossy(&bytes)
                            .split(':')
                            .nth(1)
                            .and_then(|n| n.trim_end_matches('}').parse::<u64>().ok())
                            .unwrap_or(0);
                        status
                    }
                    _ => 502,
                }
            }
        };
        if status >= 400 {
            worst = worst.max(status);
        }
    }
    let body = format!("{{\"requests\":{requests}}}");
    wharf_guest::respond(out, worst, "application/json", body.as_bytes());
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
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

wharf_guest::export!(Fault);
