//! `hold` (tests only): holds a request until the test releases it, so tests
//! synchronise on events instead of sleeps. Uses key-value store `default`.
//! - `?release=KEY`: sets KEY, answers 200 `released KEY`;
//! - `?wait=KEY`: increments `arrived` (to N), waits until KEY is set,
//!   answers 200 `KEY N` (N shows the order requests reached their instance);
//! - `?wait=KEY&stream=1`: sends headers and `first\n` at once, waits until
//!   KEY is set, then sends `second\n` and ends.

use wharf_guest::bindings::exports::wasi::http::incoming_handler::Guest;
use wharf_guest::bindings::wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wharf_guest::bindings::wasi::keyvalue::{atomics, store};

struct Hold;

impl Guest for Hold {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let bucket = store::open("default").expect("store `default` is allowed");
        if let Some(key) = wharf_guest::query_param(&request, "release") {
            bucket.set(&key, b"1").expect("set");
            return wharf_guest::respond(out, 200, "text/plain", format!("released {key}").as_bytes());
        }
        let key = wharf_guest::query_param(&request, "wait").unwrap_or_else(|| "go".into());
        let arrived = atomics::increment(&bucket, "arrived", 1).expect("increment");
        if wharf_guest::query_param(&request, "stream").is_some() {
            let response = OutgoingResponse::new(Fields::new());
            let body = response.body().expect("body");
            ResponseOutparam::set(out, Ok(response));
            let stream = body.write().expect("stream");
            stream.blocking_write_and_flush(b"first\n").expect("write");
            wharf_guest::wait_for_key(&key);
            stream.blocking_write_and_flush(b"second\n").expect("write");
            drop(stream);
            OutgoingBody::finish(body, None).expect("finish");
            return;
        }
        wharf_guest::wait_for_key(&key);
        wharf_guest::respond(out, 200, "text/plain", format!("{key} {arrived}").as_bytes());
    }
}

wharf_guest::export!(Hold);
