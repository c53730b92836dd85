//! `fault` (tests only): misbehaves on request, so tests can show the host
//! survives it. `?mode=` picks how:
//! - `panic` (default): traps before responding;
//! - `loop`: spins forever without yielding;
//! - `hog`: allocates memory until the allocator fails (traps at the limit);
//! - `slow`: sends `chunks` (default 5) chunks `ms` (default 1000) apart;
//! - `ok`: answers 200 `fine`.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

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
            "slow" => slow(out, number("chunks", 5), number("ms", 1000)),
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

wharf_guest::export!(Fault);
